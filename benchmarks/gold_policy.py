"""Gold blocking and rejection: honest workers hit versus spammers caught, over seeds.

The engine runs the gold test's crowd (``tests/consensus/test_gold_questions.py``: 12 workers,
honest accuracy 0.85-0.95, a third spammers, 30% gold, block below 0.4 and reject below 0.5
after at least 4 gold answers) for ``--rounds`` rounds at seeds 0..``--seeds``-1 and counts the
workers ever blocked or rejected. ``--rule observed`` replaces the policy's evidence test
(``consensus.adaptive.evidently_below``, a one-sided binomial test) with the observed share
below the bar, the rule before issue 21, for comparison.

    python benchmarks/gold_policy.py --seeds 20 --rounds 4 --out benchmarks/results/gold_policy.json
    python benchmarks/gold_policy.py --seeds 20 --rounds 4 --rule observed --out benchmarks/results/gold_policy_observed.json
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from crowdloop import keys
from crowdloop.consensus import adaptive, policy
from crowdloop.storage import read_json
from tests.conftest import small_config
from tests.consensus.test_gold_questions import GOLD
from tests.crowd_helpers import run_engine


def observed_share_below(n_correct, n_gold, bar, **_):  # type: ignore[no-untyped-def]
    """The rule before issue 21: the observed gold accuracy below the bar."""
    return np.asarray(np.asarray(n_correct) / np.maximum(np.asarray(n_gold), 1) < bar)


def run(seeds: int, rounds: int) -> dict[str, int]:
    tot = {"honest": 0, "honest_blocked": 0, "honest_rejected": 0, "spammers": 0, "spammers_blocked": 0, "spammers_rejected": 0}
    for seed in range(seeds):
        p = run_engine(small_config(**{**GOLD, "seed": seed, "stopping.max_rounds": rounds}), tempfile.mkdtemp() + "/p")
        blocked: set[str] = set()
        rejected: set[str] = set()
        for r in p.rounds():
            blocked |= set((read_json(p.store, keys.round_key(r, keys.AGGREGATE), default=None) or {}).get("blocked_workers", []))
            pay = read_json(p.store, keys.round_key(r, keys.PAY), default=None) or {}
            rejected |= {x["worker_id"] for x in pay.get("rejections", [])}
        for worker, spam in zip(p.vendor.worker_ids, p.vendor.is_spammer, strict=True):
            kind = "spammers" if spam else "honest"
            tot[kind] += 1
            tot[f"{kind}_blocked"] += worker in blocked
            tot[f"{kind}_rejected"] += worker in rejected
    return tot


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=20)
    parser.add_argument("--rounds", type=int, default=4)
    parser.add_argument("--rule", choices=["evidence", "observed"], default="evidence")
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    if args.rule == "observed":
        adaptive.evidently_below = observed_share_below
        policy.evidently_below = observed_share_below
    result = {"rule": args.rule, "seeds": args.seeds, "rounds": args.rounds, **run(args.seeds, args.rounds)}
    print(json.dumps(result))
    if args.out:
        args.out.write_text(json.dumps(result, indent=1) + "\n")


if __name__ == "__main__":
    main()
