"""How the agreement report reads the simulated crowds: alpha, and whether the class pairs it
names are the ones the crowd really mixes up.

For each crowd of ``benchmarks/crowd_volume.py`` and each number of items, a fresh simulated crowd
(its own seed) answers digits items (true labels from scikit-learn's set, 10 classes) with 3
judgments each, as a round's first ask does; ``crowdloop.consensus.agreement.krippendorff_alpha``
reads the answers. A named pair is one the report calls ``notable``; it is *real* when the crowd
was built to mix it up: a pair confuser's pairs (``structured``), or a confuser's ``c`` → ``c + 1``
(``adversarial``). Spammers, colluders, rings and honest slips spread their errors and should name
nothing.

    python benchmarks/agreement_report.py --seeds 20 --items 50 100 200 400 \\
        --out benchmarks/results/agreement_report.json
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path
from statistics import median
from typing import Any

import numpy as np
import pandas as pd
from sklearn.datasets import load_digits

sys.path.insert(0, str(Path(__file__).resolve().parent))
from crowd_volume import CROWDS

from crowdloop.consensus.agreement import krippendorff_alpha
from crowdloop.records import Task
from crowdloop.storage import PrefixedStore
from crowdloop.storage.local import LocalStore
from crowdloop.vendor import VendorContext
from crowdloop.vendors.simulated import SimulatedCrowd

CLASSES = tuple(str(c) for c in range(10))
REDUNDANCY = 3


def real_pairs(crowd: SimulatedCrowd, params: dict[str, Any]) -> set[tuple[str, str]]:
    """The class pairs the crowd was built to mix up (unordered, by name)."""
    pairs = {tuple(sorted((CLASSES[a], CLASSES[b]))) for a, b in crowd.pair_of.items()}
    if params.get("confuser_fraction", 0) > 0:
        pairs |= {tuple(sorted((CLASSES[c], CLASSES[(c + 1) % len(CLASSES)]))) for c in range(len(CLASSES))}
    return pairs


def one_run(crowd_name: str, n_items: int, seed: int, truth: np.ndarray) -> dict[str, Any]:
    params = CROWDS[crowd_name]
    rng = np.random.default_rng(seed)
    picked = rng.choice(len(truth), size=n_items, replace=False)
    answers = {f"i{k}": CLASSES[truth[k]] for k in picked}
    with tempfile.TemporaryDirectory() as tmp:
        ctx = VendorContext(project="agreement", name="simulated", seed=seed, classes=CLASSES,
                            store=PrefixedStore(LocalStore(tmp), "vendor/simulated"), item_payload=lambda i: {},
                            ground_truth=lambda ids: [answers.get(i) for i in ids])
        crowd = SimulatedCrowd(dict(params), ctx)
        tasks = [Task(item_id=i, round=0, batch_id="b0", replicas=REDUNDANCY, reward=0.03) for i in answers]
        judged = crowd.poll(crowd.submit(tasks, batch_id="b0"))
    table = pd.DataFrame({"task": [a.item_id for a in judged], "worker": [a.worker_id for a in judged],
                          "label": [a.label for a in judged]})
    a = krippendorff_alpha(table, top_splits=len(CLASSES) * (len(CLASSES) - 1) // 2)
    real = real_pairs(crowd, params)
    named = {s.classes for s in a.splits if s.notable}
    return {"crowd": crowd_name, "items": n_items, "seed": seed, "alpha": a.alpha, "n_real": len(real),
            "named": len(named), "named_real": len(named & real), "named_wrong": len(named - real)}


def summarize(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    out = []
    for (crowd, items), group in pd.DataFrame(rows).groupby(["crowd", "items"], sort=False):
        n_real = int(group["n_real"].iloc[0])
        out.append({"crowd": crowd, "items": int(items), "runs": len(group),
                    "alpha_median": round(float(median(group["alpha"])), 3),
                    "alpha_range": [round(float(group["alpha"].min()), 3), round(float(group["alpha"].max()), 3)],
                    "real_pairs": n_real,
                    "real_named_share": (None if n_real == 0
                                         else round(float(group["named_real"].sum() / (n_real * len(group))), 3)),
                    "runs_naming_a_wrong_pair": int((group["named_wrong"] > 0).sum())})
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seeds", type=int, default=20)
    ap.add_argument("--items", type=int, nargs="+", default=[50, 100, 200, 400])
    ap.add_argument("--crowds", nargs="+", default=list(CROWDS), choices=sorted(CROWDS))
    ap.add_argument("--out", type=Path)
    args = ap.parse_args()
    truth = load_digits().target
    rows = [one_run(c, n, s, truth) for c in args.crowds for n in args.items for s in range(args.seeds)]
    summary = summarize(rows)
    print("| crowd | items (3 judgments each) | runs | alpha: median (range) | real confused pairs | of them named "
          "| runs naming a pair the crowd does not mix up |")
    print("|---|---|---|---|---|---|---|")
    for r in summary:
        share = "–" if r["real_named_share"] is None else f"{r['real_named_share']:.0%}"
        print(f"| {r['crowd']} | {r['items']} | {r['runs']} | {r['alpha_median']:.3f} ({r['alpha_range'][0]:.3f}–"
              f"{r['alpha_range'][1]:.3f}) | {r['real_pairs']} | {share} | {r['runs_naming_a_wrong_pair']} |")
    if args.out:
        args.out.write_text(json.dumps({"redundancy": REDUNDANCY, "summary": summary, "runs": rows}, indent=1) + "\n")


if __name__ == "__main__":
    main()
