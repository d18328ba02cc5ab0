"""What a reviewer's time buys: correcting the items ``crowdloop disputed`` lists first, against
correcting as many labeled items drawn at random.

The real round engine (no Prefect server) runs digits with margin sampling, 3 judgments per item
and Dawid-Skene (`auto`) on a simulated crowd of ``benchmarks/crowd_volume.py``. After every
round, a simulated reviewer (who knows the true label) corrects ``--per-round`` items through
``crowdloop.corrections``, as ``crowdloop correct`` does: either the top of ``disputed`` (least
sure consensus first) or labeled items drawn at random; ``none`` reviews nothing. Reported: the
share of the project's labels that are right at the end (and of those nobody reviewed), the labels
the review changed (a correction that confirms the consensus changes nothing), the model's test
accuracy; and, on each run's final label log, the unreviewed labels right when the consensus holds
the corrections as known truth (``consensus.learn_from_corrections``) and when it does not.

    python benchmarks/review_value.py --crowd structured --seeds 10 --rounds 8 --per-round 10 \\
        --out benchmarks/results/review_value_structured.json   # likewise --crowd mixed
    python benchmarks/review_value.py --crowd structured --seeds 10 --policies none random both \\
        --learn-from-corrections both --out benchmarks/results/review_learning_structured.json
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

sys.path.insert(0, str(Path(__file__).resolve().parent))
from crowd_volume import CROWDS

from crowdloop import corrections, engine
from crowdloop.config import parse_config
from crowdloop.engine import Project

POLICIES = ("none", "random", "crowd", "model", "both")


def one_run(crowd: str, policy: str, seed: int, rounds: int, per_round: int, workdir: Path, *,
            learn: bool = True) -> dict[str, Any]:
    cfg = {
        "project": f"review-{policy}", "seed": seed,
        "pool": {"source": "sklearn", "name": "digits", "test_size": 0.25},
        "model": {"estimator": "sklearn.linear_model.LogisticRegression", "params": {"C": 0.1, "max_iter": 2000}},
        "sampler": {"name": "margin", "initial_size": 50, "batch_size": 50},
        "vendor": {"name": "simulated", "params": {**CROWDS[crowd], "median_seconds": 8}},
        "consensus": {"method": "auto", "redundancy": 3, "learn_from_corrections": learn},
        "stopping": {"max_rounds": rounds},
    }
    p = Project.prepare(parse_config(cfg), str(workdir / f"{crowd}-{policy}-{seed}-{learn}"))
    truth = dict(zip(p.pool.ids.tolist(), p.pool.y.astype(str).tolist(), strict=True))
    rng = np.random.default_rng([seed, 7])
    changed = 0
    for r in range(rounds):
        if engine.run_round(p, r) is not None:
            break
        if policy == "none" or r == rounds - 1:  # corrections after the last round would never be aggregated
            continue
        if policy in corrections.RANKINGS:
            items = [row["item_id"] for row in corrections.disputed(p, top=per_round, rank=policy)]
        else:
            done = set(corrections.latest(p))
            labeled = sorted(label.item_id for label in p.human_labels(before_round=r + 1) if label.item_id not in done)
            items = [labeled[k] for k in rng.choice(len(labeled), size=min(per_round, len(labeled)), replace=False)]
        current = {label.item_id: label.label for label in p.human_labels(before_round=r + 1)}
        changed += sum(current.get(i) != truth[i] for i in items)
        if items:
            corrections.record(p, [(i, truth[i]) for i in items], by="oracle")
    engine.run_rounds(p)  # the last round's stop step (and aggregation of the last corrections, if any round is left)
    last = p.rounds()[-1] + 1
    labels = p.human_labels(before_round=last)
    right = float(np.mean([label.label == truth[label.item_id] for label in labels]))
    unreviewed = [label.label == truth[label.item_id] for label in labels if label.source != "reviewed"]
    metrics = p.metrics()
    same_log = _same_log(p, truth, {label.item_id for label in labels if label.source != "reviewed"})
    return {"crowd": crowd, "policy": policy, "seed": seed, "learn_from_corrections": learn, "n_labels": len(labels),
            "label_accuracy": round(right, 4), "unreviewed_accuracy": round(float(np.mean(unreviewed)), 4),
            "same_log_unreviewed": same_log, "reviewed": len(corrections.latest(p)), "changed": changed,
            "test_accuracy": metrics[-1]["accuracy"] if metrics else None}


def _same_log(p: Project, truth: dict[str, str], unreviewed: set[str]) -> dict[str, float]:
    """The project's final label log aggregated twice, with and without the corrections held as
    known truth: the share of the unreviewed labeled items each gets right. The same judgments on
    the same items, so the difference is the consensus model's alone (the runs themselves part
    ways after the first correction, as margin sampling follows the labels)."""
    from crowdloop.engine.aggregation import known_truths
    from crowdloop.engine.quality import annotation_table

    table = annotation_table(p.annotations())
    fixes = {item: c for item, c in corrections.latest(p).items() if item not in p.gold_set}
    items = sorted(unreviewed & set(table["task"]))
    out = {}
    for name, taught in (("without", {}), ("with", fixes)):
        labels = p.aggregator().fit(table, true_labels=known_truths(table, p.gold_set, taught)).labels_
        out[name] = round(float(np.mean([labels[i] == truth[i] for i in items])), 4) if items else None
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--crowd", default="structured", choices=sorted(CROWDS))
    ap.add_argument("--seeds", type=int, default=5)
    ap.add_argument("--rounds", type=int, default=8)
    ap.add_argument("--per-round", type=int, default=10)
    ap.add_argument("--policies", nargs="+", default=list(POLICIES), choices=POLICIES)
    ap.add_argument("--learn-from-corrections", choices=("on", "off", "both"), default="on",
                    help="consensus.learn_from_corrections; both: every run twice, to compare")
    ap.add_argument("--out", type=Path)
    args = ap.parse_args()
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for seed in range(args.seeds):
            for policy in args.policies:
                for learn in {"on": [True], "off": [False], "both": [False, True]}[args.learn_from_corrections]:
                    rows.append(one_run(args.crowd, policy, seed, args.rounds, args.per_round, Path(tmp), learn=learn))
                    print(json.dumps(rows[-1]), flush=True)
    print(f"\n| review ({args.per_round} items per round, {args.crowd} crowd) | learn from corrections | runs "
          "| labels right: median (min–max) | unreviewed labels right: median | labels the review changed: median "
          "| test accuracy: median |")
    print("|---|---|---|---|---|---|---|")
    for policy in args.policies:
        for learn in (False, True):
            mine = [r for r in rows if r["policy"] == policy and r["learn_from_corrections"] == learn]
            if not mine:
                continue
            acc = [r["label_accuracy"] for r in mine]
            print(f"| {policy} | {'yes' if learn else 'no'} | {len(mine)} | {median(acc):.3f} ({min(acc):.3f}–{max(acc):.3f}) | "
                  f"{median(r['unreviewed_accuracy'] for r in mine):.3f} | {median(r['changed'] for r in mine):g} | "
                  f"{median(r['test_accuracy'] for r in mine):.4f} |")
    print("\nThe same final label log aggregated with and without the corrections held as truth "
          "(unreviewed labeled items right: median, and the per-run change)")
    for policy in args.policies:
        mine = [r for r in rows if r["policy"] == policy and r["same_log_unreviewed"]["with"] is not None]
        if policy == "none" or not mine:
            continue
        gain = [r["same_log_unreviewed"]["with"] - r["same_log_unreviewed"]["without"] for r in mine]
        print(f"| {policy} | {len(mine)} | {median(r['same_log_unreviewed']['without'] for r in mine):.3f} → "
              f"{median(r['same_log_unreviewed']['with'] for r in mine):.3f} | change median {median(gain):+.3f} "
              f"(min {min(gain):+.3f}, max {max(gain):+.3f}; better in {sum(g > 0 for g in gain)}, "
              f"worse in {sum(g < 0 for g in gain)}) |")
    if args.out:
        args.out.write_text(json.dumps({"args": vars(args) | {"out": str(args.out)}, "runs": rows}, indent=1) + "\n")


if __name__ == "__main__":
    main()
