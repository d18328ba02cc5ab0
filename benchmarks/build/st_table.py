"""Markdown rows of the label-spreading ("+st") table in BENCHMARKS.md from the results JSON."""

import collections
import json
from pathlib import Path

import numpy as np

RESULTS = Path("benchmarks/results")


def _load(name: str) -> list[dict]:
    return json.loads((RESULTS / name).read_text())


def med(rows: list[dict], level: str) -> str:
    v = float(np.median([np.inf if r["labels_to"][level] is None else r["labels_to"][level] for r in rows]))
    return "not reached" if not np.isfinite(v) else f"{v:g}"


fashion = _load("label_efficiency_fashion_mnist.json")
spread = _load("label_efficiency_selftraining.json") + [r for r in fashion if r["strategy"].endswith("+st")]
base = _load("label_efficiency_small.json") + fashion
by = collections.defaultdict(list)
for r in spread:
    by[(r["dataset"], r["strategy"])].append(r)
for r in base:
    if r["strategy"] in ("crowdloop:best", "crowdloop:margin") and (r["dataset"], r["strategy"] + "+st") in by:
        by[(r["dataset"], r["strategy"])].append(r)
for (d, s), rows in sorted(by.items()):
    aulc = np.mean([r["aulc"] for r in rows])
    print(f"| {d} | {s} | {len(rows)} | {med(rows, '0.95')} | {med(rows, '0.98')} | {med(rows, '0.99')} | {aulc:.4f} |")
