"""Stopping rules without ground truth, explored offline on the evaluation benchmark's stored curves.

Every run in ``benchmarks/results/evaluation*_details.json`` keeps each round's kappa between
consecutive models on the loop's stop set, its true and estimated accuracy with the interval,
and the labels bought; a stopping rule is a function of those, so a candidate is scored in
seconds, with no loop run. The families BENCHMARKS.md reports (section "Stopping without ground
truth", "The averaged rule"):

- ``every``: every kappa of the last ``rounds`` at least the agreement (the loop's default rule);
- ``average``: their mean (``stabilizing_predictions.average: true``, small-text's KappaAverage);
- ``+rise``: either, and the audit estimate rose by at most ``delta`` over the last ``w`` rounds;
- ``+slope``: either, and the estimate's least-squares slope over the last ``w`` rounds is at
  most ``delta`` per 100 labels;
- ``relative``: 1 - kappa <= c * (1 - estimated accuracy) for ``rounds`` rounds (agreement
  relative to the estimated error).

    python benchmarks/stopping_rules.py benchmarks/results/evaluation*_details.json [--seeds odd|even|all]

prints, per set and rule, the same columns as ``evaluation.py --summarize``'s stopping tables.
Tune on ``--seeds even``, judge on ``--seeds odd``.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

from evaluation import DATASETS, _stopping_figures, ours_stop
from label_efficiency import load_dataset

Rule = Callable[[dict[str, Any]], int | None]


def kappa_rule(agreement: float, rounds: int, average: bool) -> Rule:
    return lambda d: ours_stop([r["kappa"] for r in d["rounds"]], agreement, rounds, average=average)


def with_estimate(base: tuple[float, int, bool], w: int, delta: float, how: str) -> Rule:
    """The kappa rule ``base`` and the audit estimate's plateau: the first round where both hold."""
    agreement, rounds, average = base

    def stop(d: dict[str, Any]) -> int | None:
        kappas = [r["kappa"] for r in d["rounds"]]
        for r in range(max(rounds - 1, w), len(d["rounds"])):
            if ours_stop(kappas[:r + 1][-rounds:], agreement, rounds, average=average) is None:
                continue
            recent = d["rounds"][r - w:r + 1] if how == "rise" else d["rounds"][r - w + 1:r + 1]
            estimates = [q["estimated_accuracy"] for q in recent]
            if None in estimates:
                continue
            if how == "rise":
                change = estimates[-1] - estimates[0]
            else:  # slope per 100 labels
                change = float(np.polyfit([q["n_labeled"] for q in recent], estimates, 1)[0]) * 100
            if change <= delta:
                return r
        return None

    return stop


def relative_rule(c: float, rounds: int) -> Rule:
    """1 - kappa at most c times the estimated error rate, ``rounds`` rounds in a row."""
    def stop(d: dict[str, Any]) -> int | None:
        ok = [q["kappa"] is not None and q["estimated_accuracy"] is not None
              and 1 - q["kappa"] <= c * (1 - q["estimated_accuracy"]) for q in d["rounds"]]
        return next((r for r in range(rounds - 1, len(ok)) if all(ok[r - rounds + 1:r + 1])), None)

    return stop


def candidates() -> dict[str, Rule]:
    rules: dict[str, Rule] = {}
    for agreement in (0.98, 0.985, 0.99, 0.995):
        for rounds in (2, 3, 4, 5, 6):
            rules[f"every({agreement}, {rounds})"] = kappa_rule(agreement, rounds, False)
            rules[f"average({agreement}, {rounds})"] = kappa_rule(agreement, rounds, True)
    for base in ((0.99, 3, False), (0.99, 5, True), (0.985, 5, False)):
        name = f"{'average' if base[2] else 'every'}({base[0]}, {base[1]})"
        for w in (3, 5, 8):
            for delta in (0.0, 0.005, 0.01):
                rules[f"{name}+rise(w {w}, {delta})"] = with_estimate(base, w, delta, "rise")
            for delta in (0.0, 0.01, 0.02):
                rules[f"{name}+slope(w {w}, {delta})"] = with_estimate(base, w, delta, "slope")
    for c in (0.1, 0.15, 0.2, 0.25, 0.3):
        for rounds in (2, 3, 4):
            rules[f"relative(c {c}, {rounds})"] = relative_rule(c, rounds)
    return rules


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("details", nargs="+", type=Path, help="evaluation.py --details files")
    parser.add_argument("--seeds", choices=["even", "odd", "all"], default="all")
    args = parser.parse_args()
    details = list({(d["dataset"], d["seed"], d["audit"]): d
                    for f in reversed(args.details) for d in json.loads(f.read_text())}.values())
    keep = {"even": lambda s: s % 2 == 0, "odd": lambda s: s % 2 == 1, "all": lambda s: True}[args.seeds]
    sets = [name for name in DATASETS if any(d["dataset"] == name for d in details)]
    print(f"| set | rule ({args.seeds} seeds) | runs stopped | stopped before 97 % (lowest share) | of them beyond the "
          "test split's noise | labels / oracle's: median (max) | runs over 1.3x | as run: median, runs over 1.3x |")
    print("|---|---|---|---|---|---|---|---|")
    rules = candidates()
    for name in sets:
        runs = [d for d in details if d["dataset"] == name and keep(d["seed"])]
        n_test = len(load_dataset(name, 0).y_test)
        for rule, stop_of in rules.items():
            print(f"| {name} | {rule} | {_stopping_figures(runs, stop_of, n_test)} |")


if __name__ == "__main__":
    main()
