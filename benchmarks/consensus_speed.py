"""Dawid-Skene speed and accuracy against crowd-kit 1.4.2: 200k items × 3 judgments, 10 classes.

Usage: ``python benchmarks/consensus_speed.py [--items 200000] [--out benchmarks/results/consensus_speed.json]``
(crowd-kit comes with the ``test`` extra).
"""

from __future__ import annotations

import argparse
import json
import time
import warnings
from pathlib import Path

import numpy as np
import pandas as pd


def simulate(n_items: int, *, k: int = 10, n_workers: int = 200, per_item: int = 3, seed: int = 0):
    rng = np.random.default_rng(seed)
    truth = rng.integers(k, size=n_items)
    acc = rng.uniform(0.5, 0.95, n_workers)
    t = np.repeat(np.arange(n_items), per_item)
    w = rng.integers(n_workers, size=n_items * per_item)
    right = rng.random(len(t)) < acc[w]
    labels = np.where(right, truth[t], (truth[t] + 1 + rng.integers(k - 1, size=len(t))) % k)
    return pd.DataFrame({"task": t, "worker": w, "label": labels}), truth


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--items", type=int, default=200_000)
    ap.add_argument("--out", default="benchmarks/results/consensus_speed.json")
    args = ap.parse_args()
    from crowdloop.consensus import AutoDawidSkene, DawidSkene, OneCoinDawidSkene, WeightedMajorityVote

    data, truth = simulate(args.items)
    rows = []

    def record(name, fit):
        start = time.perf_counter()
        labels = fit()
        seconds = time.perf_counter() - start
        acc = float((labels.sort_index().to_numpy() == truth).mean())
        rows.append({"method": name, "seconds": round(seconds, 3), "accuracy": round(acc, 5)})
        print(rows[-1], flush=True)

    import scipy.sparse  # noqa: F401 - import cost is not the aggregator's

    for cls in (DawidSkene, OneCoinDawidSkene, AutoDawidSkene, WeightedMajorityVote):
        record(f"crowdloop.{cls.__name__}", lambda cls=cls: cls().fit(data).labels_)
    import crowdkit.aggregation as ca

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        record("crowdkit.DawidSkene", lambda: ca.DawidSkene(n_iter=100).fit_predict(data))
        record("crowdkit.OneCoinDawidSkene", lambda: ca.OneCoinDawidSkene(n_iter=100).fit_predict(data))
    ck = next(r["seconds"] for r in rows if r["method"] == "crowdkit.DawidSkene")
    for r in rows:
        r["speedup_vs_crowdkit_ds"] = round(ck / r["seconds"], 2)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    result = {"items": args.items, "judgments_per_item": 3, "classes": 10, "rows": rows}
    Path(args.out).write_text(json.dumps(result, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
