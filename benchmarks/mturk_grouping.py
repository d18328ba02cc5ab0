"""MTurk HITs and fees for a batch that mixes the audit's redundancy with the round's (items_per_hit > 1).

A batch of 30 items asking 3 judgments and 10 audit items asking 5, $0.03 a judgment, shuffled
as the engine mixes audit items in, grouped by ``items_per_hit: 5`` two ways: the earlier rule
(chunks of five in batch order, a chunk of mixed redundancy split into one-item HITs) and
bundling items of equal redundancy (``MTurkVendor._groups`` now). Fees by MTurk's rule
(``crowdloop.vendors.mturk.fee_for``: 20 %, at least $0.01 an assignment). Median over 20 shuffles.

    python benchmarks/mturk_grouping.py
"""

from __future__ import annotations

import statistics
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from crowdloop.records import Task
from crowdloop.vendors import mturk

ITEMS_PER_HIT, REWARD = 5, 0.03


def fees_and_hits(groups: list[list[Task]]) -> tuple[float, int]:
    fees = 0.0
    for group in groups:
        reward = round(sum(t.reward for t in group), 2)
        fees += group[0].replicas * mturk.fee_for(reward, group[0].replicas)
    return round(fees, 2), len(groups)


def main() -> None:
    rows = {"in batch order, mixed chunks split": [], "bundled by redundancy": []}
    for seed in range(20):
        replicas = np.array([3] * 30 + [5] * 10)
        np.random.default_rng(seed).shuffle(replicas)
        tasks = [Task(item_id=f"i{k}", round=0, batch_id="b", replicas=int(r), reward=REWARD)
                 for k, r in enumerate(replicas)]
        rows["in batch order, mixed chunks split"].append(fees_and_hits(list(mturk._chunks_in_order(tasks, ITEMS_PER_HIT))))
        rows["bundled by redundancy"].append(fees_and_hits(list(mturk._bundled_by_redundancy(tasks, ITEMS_PER_HIT))))
    rewards = (30 * 3 + 10 * 5) * REWARD
    print(f"rewards ${rewards:.2f} in every grouping")
    print("| grouping | HITs (median) | MTurk fees (median) |")
    print("|---|---:|---:|")
    for name, got in rows.items():
        print(f"| {name} | {statistics.median(h for _, h in got):.0f} | ${statistics.median(f for f, _ in got):.2f} |")


if __name__ == "__main__":
    main()
