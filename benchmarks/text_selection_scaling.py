"""Selection over a hashed text pool of up to 1M texts: time against one predict_proba pass, peak memory.

The pool's features never exist whole: ``model.features.kind: hashing`` featurizes rows chunk by
chunk as they are scored (``crowdloop.models.text.TextRows``). Texts are synthetic but worded
like the fortunes: each of 20-40 words drawn from one category's word frequencies in Debian's
fortunes files (8 categories), so the classifier has something to learn. The model is
``HashingVectorizer(2**18) + LogisticRegression`` (crowdloop's ``TextClassifier``) fitted on
2,000 of the texts, which are the labeled set: every strategy excludes them, as
``engine.select`` does.

Each measurement runs in a fresh subprocess that loads the texts and the model, resets the
kernel's peak-RSS mark and runs one selection, timed by the wall clock and by the process's CPU
time (the fairer figure on a shared machine: another job's load stretches wall time only)
(or the floor: one chunked ``predict_proba`` pass
over every text, which includes hashing them, since that is what scoring a hashed pool costs).

    python benchmarks/text_selection_scaling.py --sizes 100000 1000000 --batch 100 \\
        --out benchmarks/results/text_selection_scaling.json
"""

from __future__ import annotations

import argparse
import json
import os
import re
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from selection_scaling import _reset_peak, _status_mb, measure, save

CATEGORIES = ["computers", "definitions", "linux", "politics", "science", "songs-poems", "startrek", "work"]
STRATEGIES = ["floor:predict_proba", "crowdloop:margin", "crowdloop:entropy", "crowdloop:least_confident",
              "crowdloop:best", 'crowdloop:prefiltered?{"base": "coreset"}']
N_LABELED = 2000


def make_texts(path: Path, n: int) -> None:
    """``n`` texts (and their categories) into a Parquet file, generated in 100k-text blocks."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from crowdloop.config import PoolConfig
    from crowdloop.models.text_pools import FORTUNES_DIR, read_fortunes

    words, probs = [], []
    for c in CATEGORIES:
        counts = Counter(w for t in read_fortunes(FORTUNES_DIR / c, max_chars=PoolConfig(source="fortunes").max_text_chars)
                         for w in re.findall(r"[a-z']+", t.lower()))
        vocab = [w for w, k in counts.items() if k >= 2]
        freq = np.array([counts[w] for w in vocab], dtype=np.float64)
        words.append(np.array(vocab, dtype=object))
        probs.append(freq / freq.sum())
    rng = np.random.default_rng(0)
    writer = None
    for start in range(0, n, 100_000):
        m = min(n, start + 100_000) - start
        y = rng.integers(0, len(CATEGORIES), size=m)
        lengths = rng.integers(20, 41, size=m)
        texts = [" ".join(rng.choice(words[c], size=k, p=probs[c])) for c, k in zip(y, lengths, strict=True)]
        table = pa.table({"text": texts, "label": [CATEGORIES[c] for c in y]})
        writer = writer or pq.ParquetWriter(path, table.schema)
        writer.write_table(table)
    writer.close()


def child(path: str, strategy: str, batch: int) -> dict[str, Any]:
    import warnings

    warnings.filterwarnings("ignore")
    import pyarrow.parquet as pq
    from sklearn.linear_model import LogisticRegression

    from crowdloop import registry
    from crowdloop.config import FeaturesConfig
    from crowdloop.models.text import TextClassifier, TextRows, fit_text_features
    from crowdloop.samplers.scoring import stream_top_k

    table = pq.read_table(path)
    texts = np.array(table.column("text").to_pylist(), dtype=object)
    labels = np.array(table.column("label").to_pylist(), dtype=object)
    del table
    X = TextRows(fit_text_features(texts, FeaturesConfig(kind="hashing")))
    labeled = np.zeros(len(texts), dtype=bool)
    labeled[np.random.default_rng(1).choice(len(texts), size=N_LABELED, replace=False)] = True
    model = TextClassifier(LogisticRegression(C=10, solver="newton-cg", max_iter=1000))
    model.fit(X[labeled], labels[labeled])
    lib, _, name = strategy.partition(":")
    name, _, raw = name.partition("?")
    params = json.loads(raw) if raw else {}
    fn = registry.samplers.load(name) if lib == "crowdloop" else None
    candidates = X.take_view(np.flatnonzero(~labeled)) if fn is not None and not hasattr(fn, "proba_score") else None
    base = _reset_peak()
    start, cpu = time.perf_counter(), time.process_time()
    if lib == "floor":
        for _, chunk in X.chunks(8192):
            model.predict_proba(chunk)
    elif hasattr(fn, "proba_score"):  # what engine.select does: stream the whole pool with an exclude mask
        out = stream_top_k(model, X, fn.proba_score, batch_size=batch, rng=np.random.default_rng(0), exclude=labeled)
        if len(np.unique(out)) != batch or labeled[out].any():
            raise RuntimeError("contract broken")
    else:  # diversity samplers get the candidates as a view of the pool (nothing featurized yet)
        out = fn(model, candidates, batch_size=batch, rng=np.random.default_rng(0), **params)
        if len(np.unique(out)) != batch:
            raise RuntimeError("contract broken")
    seconds, cpu_seconds = time.perf_counter() - start, time.process_time() - cpu
    return {"seconds": round(seconds, 3), "cpu_seconds": round(cpu_seconds, 3),
            "extra_peak_mb": round(max(0.0, _status_mb("VmHWM") - base), 1),
            "rss_before_mb": round(base, 1)}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", nargs="+", type=int, default=[100_000, 1_000_000])
    ap.add_argument("--batch", type=int, default=100)
    ap.add_argument("--strategies", nargs="+", default=STRATEGIES)
    ap.add_argument("--repeat", type=int, default=1, help="fresh subprocesses per measurement (median time, max memory)")
    ap.add_argument("--timeout", type=float, default=900.0)
    ap.add_argument("--out", type=Path, default=Path("text_selection_scaling.json"))
    ap.add_argument("--child", nargs=3, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.child:
        print(json.dumps(child(args.child[0], args.child[1], int(args.child[2]))))
        return 0
    results: list[dict[str, Any]] = json.loads(args.out.read_text()) if args.out.exists() else []
    done = {(r["pool_size"], r["strategy"]) for r in results}
    env = dict(os.environ, OMP_NUM_THREADS="1", OPENBLAS_NUM_THREADS="1")
    with tempfile.TemporaryDirectory() as tmp:
        for n in args.sizes:
            path = Path(tmp) / f"texts_{n}.parquet"
            make_texts(path, n)
            for strategy in args.strategies:
                if (n, strategy) in done:
                    continue
                rec: dict[str, Any] = {"pool_size": n, "batch_size": args.batch, "strategy": strategy, "seconds": None,
                                       "extra_peak_mb": None, "error": None}
                measure(rec, [sys.executable, __file__, "--child", str(path), strategy, str(args.batch)],
                        repeat=args.repeat, timeout=args.timeout, env=env)
                save(results, rec, args.out, f"{n:>8} {strategy:<48} wall {rec['seconds']} s, cpu {rec.get('cpu_seconds')} s, "
                                             f"+{rec['extra_peak_mb']} MB {rec['error'] or ''}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
