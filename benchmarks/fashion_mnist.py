"""Deep-model label efficiency on Fashion-MNIST: human labels a small CNN needs to reach
80/85/88 % absolute test accuracy, per query strategy, plus warm start vs retraining.

Every strategy sees the same pool, test set, initial labeled set, model and seeds; only the
picks differ. The model is ``crowdloop.models.torch.TorchClassifier`` (arch ``cnn``), warm
started between rounds (``warm_start=True``), 1 torch thread per run. Output: the
label-efficiency schema of ``benchmarks/label_efficiency.py`` with ``labels_to`` keyed by
absolute test accuracy (``"0.80"``, ``"0.85"``, ``"0.88"``), written after every finished run
(a killed benchmark keeps what finished; a rerun skips it)::

    python benchmarks/fashion_mnist.py --seeds 3 --jobs 2 --pool 10000 --test 2000 --budget 3200 \
        --validation-fraction 0 --epochs 40 --warm-epochs 20 --out benchmarks/results/fashion-mnist.json
    python benchmarks/fashion_mnist.py --warm-study --seeds 3 --out benchmarks/results/fashion-mnist-warmstart.json
    python benchmarks/fashion_mnist.py --report benchmarks/results/fashion-mnist.json

``crowdloop:best`` is crowdloop's recommended combination for deep models: a deep ensemble of
three of the same CNNs (``crowdloop.models.ensemble.SeedEnsemble``, seeds ``seed..seed+2``) with
margin sampling on their averaged probabilities. Other combinations run as
``crowdloop:<sampler>+<flag>...``: ``ens`` (the ensemble), ``ml`` (machine labels with
probability >= ``--pseudo-threshold`` in training, as ``autolabel.use_in_training`` does in the
loop; never counted as human labels), ``aug`` (random shifts/flips). The committed results use
``--validation-fraction 0 --epochs 40 --warm-epochs 20`` (see BENCHMARKS.md); the defaults are
the earlier early-stopping recipe the warm-start study was measured with.
Needs Debian's ``dataset-fashion-mnist`` and ``crowdloop[torch]``.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from concurrent.futures import ProcessPoolExecutor, as_completed
from pathlib import Path
from typing import Any

import numpy as np

LEVELS = ("0.80", "0.85", "0.88")
STRATEGIES = ["crowdloop:random", "crowdloop:margin", "crowdloop:bald", "crowdloop:badge", "crowdloop:coreset",
              "crowdloop:best"]


def load(seed: int, pool: int, test: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """A seeded pool from the 60k training images and a seeded test set from the 10k test images."""
    from torchvision.datasets import FashionMNIST

    from crowdloop.models.images import fashion_mnist_root

    root = str(fashion_mnist_root(os.environ.get("FASHION_MNIST_DIR")))
    tr, te = FashionMNIST(root, train=True), FashionMNIST(root, train=False)
    rng = np.random.default_rng([seed, 0])
    p = rng.choice(len(tr.data), size=pool, replace=False)
    t = rng.choice(len(te.data), size=test, replace=False)
    X = tr.data.numpy().reshape(len(tr.data), -1)[p].astype(np.float32)
    Xt = te.data.numpy().reshape(len(te.data), -1)[t].astype(np.float32)
    return X, tr.targets.numpy()[p], Xt, te.targets.numpy()[t]


BEST_RECIPE = "margin+ens"  # what ``crowdloop:best`` stands for (sampler + recipe flags, see ``recipe``)


def recipe(strategy: str) -> tuple[str, set[str]]:
    """``crowdloop:<sampler>[+flag...]`` -> (sampler, flags). Flags change the model or its
    training: ``ml`` machine labels in training, ``aug`` random shifts/flips of the training
    images, ``ens`` a ``SeedEnsemble`` of ``--ensemble`` CNNs (whose probabilities the sampler sees)."""
    name = strategy.split(":", 1)[1].split("@", 1)[0]
    if name == "best":
        name = BEST_RECIPE
    sampler, *flags = name.split("+")
    unknown = set(flags) - {"ml", "aug", "ens"}
    if unknown:
        raise SystemExit(f"--strategies: {strategy!r}: unknown recipe flag(s) {sorted(unknown)}; expected ml, aug, ens")
    return sampler, set(flags)


def make_model(seed: int, warm: bool, args: argparse.Namespace, augment: bool = False, ensemble: int = 1):
    from crowdloop.models.torch import TorchClassifier

    if ensemble > 1:  # members get seeds seed, seed + 1, ...; member 0 is the single model
        from crowdloop.models.ensemble import SeedEnsemble

        return SeedEnsemble(make_model(seed, warm, args, augment), n_members=ensemble, warm_start=warm, random_state=seed)
    return TorchClassifier(arch="cnn", width=args.width, epochs=args.epochs, warm_epochs=args.warm_epochs if warm else None,
                           patience=3 if args.validation_fraction else None, validation_fraction=args.validation_fraction,
                           warm_start=warm, num_threads=1, random_state=seed, augment=augment)


def run_one(strategy: str, seed: int, warm: bool, args: argparse.Namespace) -> dict[str, Any]:
    import torch

    torch.set_num_threads(1)
    from crowdloop import registry

    X, y, Xt, yt = load(seed, args.pool, args.test)
    name, flags = recipe(strategy)
    pseudo, augment = "ml" in flags, "aug" in flags
    ens = args.ensemble if "ens" in flags else 1
    sampler = registry.samplers.load(name)
    labeled = np.zeros(len(X), dtype=bool)
    labeled[np.random.default_rng([seed, 1]).choice(len(X), size=args.initial, replace=False)] = True
    rng = np.random.default_rng([seed, 2])
    model = make_model(seed, warm, args, augment, ens)
    sizes: list[int] = []
    accs: list[float] = []
    q_sec: list[float] = []
    fit_sec: list[float] = []
    round_sec: list[float] = []
    while True:
        t0 = time.perf_counter()
        if not warm:
            model = make_model(seed, warm, args, augment, ens)
        Xf, yf = X[labeled], y[labeled]
        if pseudo and len(sizes):  # machine labels from the previous round's model (never counted)
            rest = np.flatnonzero(~labeled)
            proba = model.predict_proba(X[rest])
            conf = proba.max(axis=1)
            sure = np.flatnonzero(conf >= args.pseudo_threshold)
            cap = min(int(args.pseudo_ratio * labeled.sum()), args.max_pseudo)
            sure = sure[np.argsort(-conf[sure], kind="stable")[:cap]]
            Xf = np.concatenate([Xf, X[rest[sure]]])
            yf = np.concatenate([yf, model.classes_[proba[sure].argmax(axis=1)]])
        tf = time.perf_counter()
        model.fit(Xf, yf)
        fit_sec.append(time.perf_counter() - tf)
        sizes.append(int(labeled.sum()))
        accs.append(float(model.score(Xt, yt)))
        if labeled.sum() >= args.budget:
            round_sec.append(time.perf_counter() - t0)
            break
        batch = int(min(args.batch, args.budget - labeled.sum()))
        cand = np.flatnonzero(~labeled)
        tq = time.perf_counter()
        picked = cand[np.asarray(sampler(model, X[cand], batch_size=batch, rng=rng), dtype=np.int64)]
        q_sec.append(time.perf_counter() - tq)
        if len(np.unique(picked)) != batch or labeled[picked].any():
            raise RuntimeError(f"{strategy} broke the sampler contract")
        labeled[picked] = True
        round_sec.append(time.perf_counter() - t0)
        print(f"  {strategy} seed={seed} warm={warm} n={sizes[-1]} acc={accs[-1]:.4f} fit={fit_sec[-1]:.1f}s "
              f"q={q_sec[-1]:.1f}s", file=sys.stderr, flush=True)
    x = np.asarray(sizes, dtype=float)
    return {
        "dataset": "fashion_mnist", "strategy": strategy, "seed": seed,
        "labels_to": {lv: next((n for n, a in zip(sizes, accs, strict=True) if a >= float(lv)), None) for lv in LEVELS},
        "aulc": round(float(np.trapezoid(accs, x) / (x[-1] - x[0])), 4),
        "query_seconds": round(float(np.mean(q_sec)), 4),
        "round_seconds": round(float(np.mean(round_sec)), 3),
        "fit_seconds_total": round(float(np.sum(fit_sec)), 2),
        "warm_start": warm, "final_accuracy": round(accs[-1], 4),
        "setup": {"pool": args.pool, "test": args.test, "initial": args.initial, "batch": args.batch,
                  "budget": args.budget, "arch": "cnn", "width": args.width, "epochs": args.epochs,
                  "warm_epochs": args.warm_epochs, "validation_fraction": args.validation_fraction,
                  "ensemble": ens, "torch_threads": 1},
        "curve": {"labels": sizes, "accuracy": [round(a, 4) for a in accs]},
    }


def _run(job: tuple[str, int, bool, argparse.Namespace]) -> dict[str, Any]:
    try:
        return run_one(*job)
    except Exception as exc:  # noqa: BLE001 - one failed run must not lose the others
        return {"error": f"{type(exc).__name__}: {exc}", "strategy": job[0], "seed": job[1]}


# -- report --------------------------------------------------------------------------------


def _median(rows: list[dict[str, Any]], level: str) -> float:
    return float(np.median([np.inf if r["labels_to"][level] is None else r["labels_to"][level] for r in rows]))


def _fmt(v: float) -> str:
    return "not reached" if not np.isfinite(v) else f"{v:g}"


def report(results: list[dict[str, Any]], warm: list[dict[str, Any]] | None = None) -> str:
    """Markdown table (median labels over seeds) and the target ratios."""
    by: dict[str, list[dict[str, Any]]] = {}
    for r in results:
        by.setdefault(r["strategy"], []).append(r)
    lines = ["| strategy | seeds | labels to 80 % | to 85 % | to 88 % | AULC | final acc. | s / query | s / round |",
             "|---|---|---|---|---|---|---|---|---|"]
    order = sorted(by, key=lambda s: (_median(by[s], "0.85"), _median(by[s], "0.80"), -np.mean([r["aulc"] for r in by[s]])))
    for s in order:
        rows = by[s]
        cells = " | ".join(_fmt(_median(rows, lv)) for lv in LEVELS)
        name = f"**{s}**" if s == "crowdloop:best" else s
        lines.append(f"| {name} | {len(rows)} | {cells} | {np.mean([r['aulc'] for r in rows]):.4f} | "
                     f"{np.mean([r['final_accuracy'] for r in rows]):.4f} | {np.mean([r['query_seconds'] for r in rows]):.2f} | "
                     f"{np.mean([r['round_seconds'] for r in rows]):.1f} |")
    lines += ["", "| strategy | labels to 85 % per seed | to 88 % per seed | final accuracy per seed |", "|---|---|---|---|"]
    for s in order:
        rows = sorted(by[s], key=lambda r: r["seed"])
        per = [", ".join("–" if r["labels_to"][lv] is None else str(r["labels_to"][lv]) for r in rows) for lv in ("0.85", "0.88")]
        lines.append(f"| {s} (seeds {', '.join(str(r['seed']) for r in rows)}) | {per[0]} | {per[1]} | "
                     + ", ".join(f"{r['final_accuracy']:.4f}" for r in rows) + " |")
    if "crowdloop:best" in by and "crowdloop:random" in by:
        out = []
        for lv in LEVELS:
            b, r = _median(by["crowdloop:best"], lv), _median(by["crowdloop:random"], lv)
            peers = {s: _median(rows, lv) for s, rows in by.items()  # single strategies: no recipe flags
                     if s not in ("crowdloop:best", "crowdloop:random") and "+" not in s}
            peer = min(peers, key=peers.get) if peers else None
            ratio_r = f"×{b / r:.2f}" if np.isfinite(b) and np.isfinite(r) else "n/a"
            ratio_p = f"×{b / peers[peer]:.2f}" if peer and np.isfinite(b) and np.isfinite(peers[peer]) else "n/a"
            out.append(f"{lv}: best {_fmt(b)} vs random {_fmt(r)} ({ratio_r}), vs best peer {peer} "
                       f"{_fmt(peers[peer]) if peer else 'n/a'} ({ratio_p})")
        lines += ["", "Targets — " + "; ".join(out)]
    if warm:
        lines += ["", "| run | seeds | labels to 80 % | to 85 % | final acc. | AULC | training s (all rounds) | s / round |",
                  "|---|---|---|---|---|---|---|---|"]
        for mode in (True, False):
            rows = [r for r in warm if r["warm_start"] is mode]
            if rows:
                lines.append(f"| {rows[0]['strategy']} {'warm start' if mode else 'from scratch'} | {len(rows)} | "
                             f"{_fmt(_median(rows, '0.80'))} | {_fmt(_median(rows, '0.85'))} | "
                             f"{np.mean([r['final_accuracy'] for r in rows]):.4f} | {np.mean([r['aulc'] for r in rows]):.4f} | "
                             f"{np.mean([r['fit_seconds_total'] for r in rows]):.0f} | "
                             f"{np.mean([r['round_seconds'] for r in rows]):.1f} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--strategies", nargs="+", default=STRATEGIES)
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--pool", type=int, default=12000)
    ap.add_argument("--test", type=int, default=3000)
    ap.add_argument("--initial", type=int, default=200)
    ap.add_argument("--batch", type=int, default=200)
    ap.add_argument("--budget", type=int, default=3600)
    ap.add_argument("--width", type=int, default=16)
    ap.add_argument("--epochs", type=int, default=30)
    ap.add_argument("--warm-epochs", type=int, default=10)
    ap.add_argument("--validation-fraction", type=float, default=0.1,
                    help="early stopping split (patience 3); 0 trains every round for the full epoch count")
    ap.add_argument("--ensemble", type=int, default=3, help="members of the +ens recipe")
    ap.add_argument("--max-pseudo", type=int, default=4000)
    ap.add_argument("--pseudo-threshold", type=float, default=0.99)
    ap.add_argument("--pseudo-ratio", type=float, default=2.0, help="at most this many machine labels per human label")
    ap.add_argument("--jobs", type=int, default=1)
    ap.add_argument("--warm-study", action="store_true", help="margin, --seeds seeds: warm start vs retraining from scratch")
    ap.add_argument("--out", type=Path, default=Path("benchmarks/results/fashion-mnist.json"))
    ap.add_argument("--report", type=Path, nargs="*", help="print the Markdown table of these result files and exit")
    args = ap.parse_args(argv)
    if args.report is not None:
        main_rows = json.loads(args.report[0].read_text())
        warm_rows = json.loads(args.report[1].read_text()) if len(args.report) > 1 else None
        print(report(main_rows, warm_rows))
        return 0
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    if args.warm_study:
        jobs = [("crowdloop:margin", seed, w, args) for seed in range(args.seeds) for w in (True, False)]
    else:
        jobs = [(s, seed, True, args) for seed in range(args.seeds) for s in args.strategies]
    results: list[dict[str, Any]] = json.loads(args.out.read_text()) if args.out.exists() else []
    done = {(r["strategy"], r["seed"], r.get("warm_start", True)) for r in results}
    todo = [j for j in jobs if (j[0], j[1], j[2]) not in done]

    def save() -> None:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        tmp = args.out.with_suffix(".tmp")
        tmp.write_text(json.dumps(results, indent=1))
        tmp.replace(args.out)

    with ProcessPoolExecutor(max_workers=args.jobs) as ex:
        futures = {ex.submit(_run, job): job for job in todo}
        for fut in as_completed(futures):
            job, res = futures[fut], fut.result()
            if "error" in res:
                print(f"{job[0]} seed={job[1]} FAILED {res['error']}", flush=True)
                continue
            results.append(res)
            save()
            print(f"{job[0]:<20} seed={job[1]} warm={job[2]} to={res['labels_to']} aulc={res['aulc']} "
                  f"q={res['query_seconds']}s round={res['round_seconds']}s", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
