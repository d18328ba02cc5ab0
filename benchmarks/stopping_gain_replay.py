"""Replay a stopping rule that watches the audit's *estimated accuracy* stop rising, on the learning
curves `benchmarks/evaluation.py` recorded (its ``*_details.json``), beside the loop's own
``stabilizing_predictions(0.99, 3 rounds)``.

The rule: stop at the first round ``t`` where the estimate rose by at most ``delta`` over the last
``window`` rounds (``est[t] - est[t - window] <= delta``) and consecutive models agree with kappa at
least ``min_kappa``. It needs no new run: every figure comes from the rounds already recorded.
A run the rule never stops counts at its last round. Per set it prints the median labels at the
stop over the oracle's (labels to 98 % of full-data accuracy), how many runs were over 1.3x, the
lowest stopped accuracy as a share of full-data accuracy and how many runs stopped below 97 %.

    python benchmarks/stopping_gain_replay.py benchmarks/results/evaluation_v5_active*_details.json
"""

from __future__ import annotations

import argparse
import itertools
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
from evaluation import ours_stop  # the loop's rule, recomputed (this folder is on sys.path when run as a script)

Rounds = list[dict[str, Any]]
Rule = Callable[[Rounds], "int | None"]


def kappa_rule(agreement: float, rounds: int) -> Rule:
    """The loop's own rule, as ``benchmarks/evaluation.py`` recomputes it: kappa >= agreement for
    ``rounds`` consecutive rounds."""
    return lambda curve: ours_stop([x["kappa"] for x in curve], agreement, rounds)


def gain_rule(window: int, delta: float, min_kappa: float) -> Rule:
    """Stop when the estimated accuracy rose by at most ``delta`` over ``window`` rounds."""
    def rule(curve: Rounds) -> int | None:
        for t in range(window, len(curve)):
            now, before = curve[t]["estimated_accuracy"], curve[t - window]["estimated_accuracy"]
            if now is None or before is None:
                continue
            if now - before <= delta and (curve[t]["kappa"] or 0.0) >= min_kappa:
                return t
        return None
    return rule


def score(runs: list[dict[str, Any]], rule: Rule) -> dict[str, Any]:
    ratios, shares = [], []
    for run in runs:
        curve = [x for x in run["rounds"] if x["n_labeled"] > 0]
        stop = rule(curve)
        at = curve[-1 if stop is None else stop]
        if run["oracle_labels_98"]:
            ratios.append(at["n_labeled"] / run["oracle_labels_98"])
        shares.append(at["true_accuracy"] / run["full_data_accuracy"])
    return {"median_ratio": round(float(np.median(ratios)), 2) if ratios else None,
            "over_1.3": int(np.sum(np.array(ratios) > 1.3)), "lowest_share": round(min(shares), 3),
            "below_97": int(np.sum(np.array(shares) < 0.97)), "runs": len(runs)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("details", nargs="+", type=Path, help="benchmarks/evaluation.py --details files")
    parser.add_argument("--windows", nargs="+", type=int, default=[3, 5, 8])
    parser.add_argument("--deltas", nargs="+", type=float, default=[0.0, 0.005, 0.01])
    parser.add_argument("--min-kappas", nargs="+", type=float, default=[0.9, 0.95, 0.97])
    args = parser.parse_args()
    runs: dict[str, list[dict[str, Any]]] = {}
    seen = set()
    for path in args.details:
        for run in json.loads(path.read_text()):
            key = (run["dataset"], run["seed"], run["audit"])
            if key not in seen:  # the first file wins, as in benchmarks/evaluation.py --summarize
                seen.add(key)
                runs.setdefault(run["dataset"], []).append(run)
    rules: list[tuple[str, Rule]] = [("stabilizing_predictions(0.99, 3 rounds)", kappa_rule(0.99, 3))]
    rules += [(f"gain(window {w}, delta {d}, kappa >= {k})", gain_rule(w, d, k))
              for w, d, k in itertools.product(args.windows, args.deltas, args.min_kappas)]
    sets = sorted(runs)
    print("| rule | " + " | ".join(f"{s}: labels / oracle (over 1.3x), lowest share (below 97 %)" for s in sets) + " |")
    print("|---|" + "---|" * len(sets))
    for name, rule in rules:
        cells = []
        for s in sets:
            r = score(runs[s], rule)
            cells.append(f"{r['median_ratio']} ({r['over_1.3']}/{r['runs']}), {r['lowest_share']} ({r['below_97']}/{r['runs']})")
        print(f"| {name} | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()
