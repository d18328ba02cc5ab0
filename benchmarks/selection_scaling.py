"""Selection scaling: wall time and extra peak RSS to pick a batch from pools of 10k-1M rows.

Pools are 64 float32 features, 10 classes; the model is a logistic regression fitted on 1,000
rows. Every measurement runs in a fresh subprocess that first loads the pool into memory and
the model, then records its RSS, runs one selection and reports the wall time and the growth of
its peak RSS (``ru_maxrss``) over that baseline. The floor is one plain ``predict_proba`` pass.

    python benchmarks/selection_scaling.py --sizes 10000 100000 1000000 --batches 100 1000 \
        --out benchmarks/results/selection_scaling.json

Output: a JSON list of ``{pool_size, batch_size, strategy, seconds, extra_peak_mb, error}``.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

N_FEATURES, N_CLASSES = 64, 10

# Strategies: crowdloop:<registered name>[?json params], modal:<fn>, skal:<class>[.method], floor:predict_proba
DEFAULT_STRATEGIES = [
    "floor:predict_proba",
    "crowdloop:random", "crowdloop:margin", "crowdloop:entropy", "crowdloop:least_confident",
    "crowdloop:best",
    'crowdloop:prefiltered?{"base": "badge"}',
    'crowdloop:prefiltered?{"base": "coreset"}',
    'crowdloop:prefiltered?{"base": "ranked_batch"}',
    'crowdloop:prefiltered?{"base": "typiclust", "prefilter": "random"}',
    "crowdloop:kmeans_margin", "crowdloop:cluster_margin",
    "modal:margin_sampling", "modal:entropy_sampling", "modal:uncertainty_sampling",
    "modal:uncertainty_batch_sampling",
    "skal:UncertaintySampling.margin_sampling", "skal:Badge", "skal:CoreSet",
]
# Whole-pool diversity peers are quadratic or worse: only run them up to this pool size.
SLOW_PEER_LIMIT = {"modal:uncertainty_batch_sampling": 10_000, "skal:Badge": 100_000, "skal:CoreSet": 100_000}


def make_pool(path: Path, n: int) -> None:
    """Gaussian class blobs, written in 100k-row chunks into a .npy file."""
    rng = np.random.default_rng(0)
    centres = rng.normal(scale=1.5, size=(N_CLASSES, N_FEATURES)).astype(np.float32)
    mm = np.lib.format.open_memmap(path, mode="w+", dtype=np.float32, shape=(n, N_FEATURES))
    for s in range(0, n, 100_000):
        m = min(n, s + 100_000) - s
        y = rng.integers(0, N_CLASSES, size=m)
        mm[s : s + m] = centres[y] + rng.normal(size=(m, N_FEATURES)).astype(np.float32)
    mm.flush()


def _status_mb(field: str) -> float:
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith(field + ":"):
                return int(line.split()[1]) / 1024
    return float("nan")


def _reset_peak() -> float:
    """Reset the kernel's peak-RSS mark (VmHWM) to the current RSS; return that RSS in MB."""
    with open("/proc/self/clear_refs", "w") as fh:
        fh.write("5")
    return _status_mb("VmRSS")


def child(pool_path: str, strategy: str, batch: int) -> dict[str, Any]:
    """Runs in the subprocess: load, baseline, select once, measure."""
    import warnings

    warnings.filterwarnings("ignore")
    from sklearn.linear_model import LogisticRegression

    X = np.load(pool_path)  # in memory for every strategy, so the baseline is the same
    rng = np.random.default_rng(0)
    train = rng.choice(len(X), size=1000, replace=False)
    centres_y = np.argmax(X[train] @ np.random.default_rng(1).normal(size=(N_FEATURES, N_CLASSES)), axis=1)
    model = LogisticRegression(max_iter=300).fit(X[train], centres_y)
    labeled = np.zeros(len(X), dtype=bool)
    labeled[train] = True
    cand = np.flatnonzero(~labeled)
    lib, _, name = strategy.partition(":")
    name, _, raw = name.partition("?")
    params = json.loads(raw) if raw else {}
    # imports before the baseline: they are not the selection's memory
    if lib == "crowdloop":
        import inspect

        from crowdloop import registry

        fn = registry.samplers.load(name)
        accepts = inspect.signature(fn).parameters
        if "X_labeled" in accepts:
            params["X_labeled"] = X[train]
    elif lib == "modal":
        import modAL.batch
        import modAL.uncertainty
    elif lib == "skal":
        import skactiveml.pool
        from skactiveml.classifier import SklearnClassifier
    X_cand = X[cand] if lib in ("crowdloop", "modal") else None  # the candidates, as engine.select passes them
    base = _reset_peak()
    start = time.perf_counter()
    if lib == "floor":
        model.predict_proba(X)
    elif lib == "crowdloop":
        out = fn(model, X_cand, batch_size=batch, rng=np.random.default_rng(0), **params)
        if len(np.unique(out)) != batch:
            raise RuntimeError("contract broken")
    elif lib == "modal":
        fn = getattr(modAL.uncertainty, name, None) or getattr(modAL.batch, name)

        class Shim:
            on_transformed = False
            X_training = X[train]

            def predict_proba(self, Z, **kw):
                return model.predict_proba(Z, **kw)

        fn(Shim(), X_cand, n_instances=batch)
    elif lib == "skal":
        cls_name, _, method = name.partition(".")
        qs = getattr(skactiveml.pool, cls_name)(random_state=0, **({"method": method} if method else {}))
        y = np.full(len(X), np.nan)
        y[train] = centres_y
        clf = SklearnClassifier(LogisticRegression(max_iter=300), classes=np.arange(N_CLASSES), random_state=0)
        clf.estimator_ = model
        clf.fit(X[train], centres_y)
        import inspect

        base = _reset_peak()
        start = time.perf_counter()

        kw: dict[str, Any] = {"batch_size": batch}
        sig = inspect.signature(qs.query).parameters
        if "clf" in sig:
            kw.update(clf=clf, fit_clf=False)
        qs.query(X, y, **kw)
    else:
        raise SystemExit(f"unknown strategy {strategy!r}")
    seconds = time.perf_counter() - start
    peak = _status_mb("VmHWM")
    return {"seconds": round(seconds, 4), "extra_peak_mb": round(max(0.0, peak - base), 1)}


def measure(rec: dict[str, Any], cmd: list[str], *, repeat: int, timeout: float, env: dict[str, str]) -> None:
    """Run the measurement ``cmd`` (a ``--child`` call) ``repeat`` times, each in a fresh
    subprocess, into ``rec``: median times and max memory (:func:`summarize`), or the first
    error (a timeout, or stderr's last line)."""
    runs: list[dict[str, Any]] = []
    for _ in range(repeat):
        try:
            proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=env)
        except subprocess.TimeoutExpired:
            rec["error"] = f"timeout after {timeout:g} s"
            return
        if proc.returncode != 0:
            rec["error"] = (proc.stderr.strip().splitlines() or ["failed"])[-1][:300]
            return
        runs.append(json.loads(proc.stdout.strip().splitlines()[-1]))
    rec.update(summarize(runs))


def summarize(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """Median times and the largest memory figures over repeated runs."""
    out: dict[str, Any] = {"runs": len(runs)}
    for key in runs[0]:
        values = [r[key] for r in runs]
        out[key] = float(np.median(values)) if key.endswith("seconds") else max(values)
    return out


def save(results: list[dict[str, Any]], rec: dict[str, Any], out: Path, line: str) -> None:
    """Append ``rec``, rewrite the results file (a killed run keeps what it measured), print ``line``."""
    results.append(rec)
    out.write_text(json.dumps(results, indent=1))
    print(line, flush=True)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", nargs="+", type=int, default=[10_000, 100_000, 1_000_000])
    ap.add_argument("--batches", nargs="+", type=int, default=[100, 1000])
    ap.add_argument("--strategies", nargs="+", default=DEFAULT_STRATEGIES)
    ap.add_argument("--timeout", type=float, default=300.0, help="seconds per measurement")
    ap.add_argument("--out", type=Path, default=Path("selection_scaling.json"))
    ap.add_argument("--repeat", type=int, default=1, help="subprocess runs per measurement (median time)")
    ap.add_argument("--child", nargs=3, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.child:
        print(json.dumps(child(args.child[0], args.child[1], int(args.child[2]))))
        return 0
    results: list[dict[str, Any]] = json.loads(args.out.read_text()) if args.out.exists() else []
    done = {(r["pool_size"], r["batch_size"], r["strategy"]) for r in results}
    env = dict(os.environ, OMP_NUM_THREADS="1", OPENBLAS_NUM_THREADS="1")
    with tempfile.TemporaryDirectory() as tmp:
        for n in args.sizes:
            path = Path(tmp) / f"pool_{n}.npy"
            make_pool(path, n)
            for batch in args.batches:
                for strategy in args.strategies:
                    if (n, batch, strategy) in done:
                        continue
                    rec: dict[str, Any] = {"pool_size": n, "batch_size": batch, "strategy": strategy,
                                           "seconds": None, "extra_peak_mb": None, "error": None}
                    if n > SLOW_PEER_LIMIT.get(strategy, n):
                        rec["error"] = f"skipped: whole-pool peer, run only up to {SLOW_PEER_LIMIT[strategy]} rows"
                    else:
                        measure(rec, [sys.executable, __file__, "--child", str(path), strategy, str(batch)],
                                repeat=args.repeat, timeout=args.timeout, env=env)
                    save(results, rec, args.out, f"{n:>8} {batch:>5} {strategy:<60} {rec['seconds']} s "
                                                 f"{rec['extra_peak_mb']} MB {rec['error'] or ''}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
