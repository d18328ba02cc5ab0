"""Which consensus model: label accuracy of each aggregator on every simulated crowd.

For each crowd of ``benchmarks/crowd_volume.py`` (the simulated vendor's parameters), each
number of judgments per item (3, 5) and each seed, the simulated vendor answers the same 600
randomly chosen digits items; every aggregator sees the same ``task, worker, label`` table.
Output: a JSON list of ``{crowd, judgments, seed, aggregator, label_accuracy, chosen}``.

    python benchmarks/consensus_choice.py --seeds 5 --out benchmarks/results/consensus_choice.json
    python benchmarks/consensus_choice.py --summarize benchmarks/results/consensus_choice.json
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from collections import defaultdict
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parent))
from crowd_volume import CROWDS

from crowdloop import registry
from crowdloop.records import Task
from crowdloop.storage import PrefixedStore
from crowdloop.storage.local import LocalStore
from crowdloop.vendor import VendorContext
from crowdloop.vendors.simulated import SimulatedCrowd

AGGREGATORS = ("majority_vote", "one_coin_dawid_skene", "dawid_skene", "auto")


def answers(crowd: str, judgments: int, seed: int, n_items: int, workdir: Path) -> tuple[pd.DataFrame, pd.Series]:
    """The simulated crowd's answers for ``n_items`` digits items drawn by ``seed``."""
    from sklearn.datasets import load_digits

    y = load_digits().target
    items = np.random.default_rng([seed, 18]).choice(len(y), size=n_items, replace=False)
    truth = {f"d{i}": str(y[i]) for i in items}
    classes = tuple(str(c) for c in range(10))
    ctx = VendorContext(project="choice", name="simulated", seed=seed, classes=classes,
                        store=PrefixedStore(LocalStore(workdir / f"{crowd}-{judgments}-{seed}"), "vendor/simulated"),
                        item_payload=lambda i: {}, ground_truth=lambda ids: [truth.get(i) for i in ids])
    vendor = SimulatedCrowd({**CROWDS[crowd], "median_seconds": 8}, ctx)
    tasks = [Task(item_id=i, round=0, batch_id="b0", replicas=judgments, reward=0.03) for i in truth]
    got = vendor.poll(vendor.submit(tasks, batch_id="b0"))
    table = pd.DataFrame({"task": [a.item_id for a in got], "worker": [a.worker_id for a in got],
                          "label": [a.label for a in got]})
    return table, pd.Series(truth)


def run(crowds: list[str], seeds: int, n_items: int, aggregators: list[str]) -> list[dict[str, Any]]:
    rows = []
    with tempfile.TemporaryDirectory(prefix="consensus-choice-") as tmp:
        for crowd in crowds:
            for judgments in (3, 5):
                for seed in range(seeds):
                    table, truth = answers(crowd, judgments, seed, n_items, Path(tmp))
                    for name in aggregators:
                        agg = registry.aggregators.load(name)(classes=[str(c) for c in range(10)])
                        start = time.perf_counter()
                        labels = agg.fit(table).labels_
                        acc = float((labels.reindex(truth.index) == truth).mean())
                        row = {"crowd": crowd, "judgments": judgments, "seed": seed, "aggregator": name,
                               "label_accuracy": round(acc, 4), "seconds": round(time.perf_counter() - start, 3)}
                        if hasattr(agg, "chosen_"):
                            row["chosen"] = agg.chosen_
                        rows.append(row)
                        print(json.dumps(row), file=sys.stderr, flush=True)
    return rows


def summarize(rows: list[dict[str, Any]]) -> str:
    """Markdown: median label accuracy per crowd × judgments × aggregator, and auto's gap."""
    by: dict[tuple[str, int], dict[str, list[float]]] = defaultdict(lambda: defaultdict(list))
    chosen: dict[tuple[str, int], list[str]] = defaultdict(list)
    for r in rows:
        by[(r["crowd"], r["judgments"])][r["aggregator"]].append(r["label_accuracy"])
        if r["aggregator"] == "auto" and "chosen" in r:
            chosen[(r["crowd"], r["judgments"])].append(r["chosen"])
    names = [a for a in AGGREGATORS if any(a in v for v in by.values())]
    out = ["| crowd | judgments | seeds | " + " | ".join(names)
           + " | auto − better fixed DS (points) | worst seed | auto − MV | auto chose |",
           "|---|---:|---:|" + "---:|" * len(names) + "---:|---:|---:|---|"]
    for (crowd, j), accs in by.items():
        med = {a: statistics.median(accs[a]) for a in names if accs.get(a)}
        better = max(med.get("one_coin_dawid_skene", 0.0), med.get("dawid_skene", 0.0))
        gap = med["auto"] - better if "auto" in med else float("nan")
        vs_mv = med["auto"] - med["majority_vote"] if "auto" in med and "majority_vote" in med else float("nan")
        per_seed = [a - max(o, d) for a, o, d in zip(accs.get("auto", []), accs.get("one_coin_dawid_skene", []),
                                                       accs.get("dawid_skene", []), strict=False)]
        worst = f"{100 * min(per_seed):+.1f}" if per_seed else "–"
        picks = ", ".join(f"{c}×{chosen[(crowd, j)].count(c)}" for c in sorted(set(chosen[(crowd, j)])))
        out.append(f"| {crowd} | {j} | {len(accs[names[0]])} | " + " | ".join(f"{med[a]:.3f}" for a in names)
                   + f" | {100 * gap:+.1f} | {worst} | {100 * vs_mv:+.1f} | {picks} |")
    return "\n".join(out)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--crowds", nargs="+", default=sorted(CROWDS), choices=sorted(CROWDS))
    ap.add_argument("--seeds", type=int, default=5)
    ap.add_argument("--items", type=int, default=600)
    ap.add_argument("--aggregators", nargs="+", default=list(AGGREGATORS))
    ap.add_argument("--out", type=Path, default=Path("consensus_choice.json"))
    ap.add_argument("--summarize", type=Path, help="print the Markdown table of a result file and exit")
    args = ap.parse_args(argv)
    if args.summarize:
        print(summarize(json.loads(args.summarize.read_text())))
        return 0
    rows = run(args.crowds, args.seeds, args.items, args.aggregators)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(rows, indent=1) + "\n")
    print(summarize(rows))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
