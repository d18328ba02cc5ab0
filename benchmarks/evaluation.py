"""Your own data, no answers known: the loop runs blind and this benchmark keeps the truth.

Each (dataset, seed, audit method) runs the real loop in process over a pool written as a CSV
*without* labels; a simulated crowd answers from an answer key the loop never sees, and the
benchmark holds out a test split the loop never sees either. The loop estimates its accuracy
from a human-labeled audit (``evaluation.method``: random or active) and stops by
``stopping.stabilizing_predictions``; the benchmark then lets the same project go on (the
stopping section is resumable) to find the oracle: the labels at which the true test accuracy
first reached 98 % of full-data accuracy.

    python benchmarks/evaluation.py --datasets digits breast_cancer synthetic fashion_mnist --seeds 20 --out FILE

``--out`` gets a JSON list of rows ``{dataset, seed, audit, coverage,
judgments_to_half_width_0.03, stop_labels, oracle_labels_98, stop_accuracy_share}``:
``coverage`` is the share of rounds whose 95 % interval holds the true test accuracy,
``judgments_to_half_width_0.03`` the audit's human judgments when its interval first got that
narrow (null: never), ``stop_labels`` the bought labels when the loop stopped,
``oracle_labels_98`` the bought labels at the first round at 98 % of full-data accuracy (null:
never reached), ``stop_accuracy_share`` the stopped model's test accuracy over full-data
accuracy; and ``coverage_unseen``, the same against the model's accuracy on the pool items it
did not train on (not a uniform sample: active learning took the hard ones; the details files
also hold each round's accuracy on the audit reserve and test split together, which is).
``--details`` (default ``<out>_details.json``) gets each run's rounds and where
small-text 1.4.1's stopping criteria (``KappaAverage``, ``DeltaFScore``,
``ClassificationChange``) stop on the same models' predictions over the same stop set.

``python benchmarks/evaluation.py --summarize DETAILS...`` prints BENCHMARKS.md's tables from
``--details`` files (coverage pooled over every round of every run, the active audit's judgments
against the random one's seed by seed, and each stopping criterion against the oracle).

Needs the ``bench`` extra (small-text) and, for ``fashion_mnist``, Debian's
``dataset-fashion-mnist``.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # the keyed crowd lives under tests/
sys.path.insert(0, str(Path(__file__).resolve().parent))

from label_efficiency import load_dataset  # noqa: E402  (the same splits as the label-efficiency benchmark)

from crowdloop.engine.budget import KAPPA_SLACK  # noqa: E402  (the loop's own float slack for the mean)

DATASETS = ("digits", "breast_cancer", "synthetic", "fashion_mnist")
HALF_WIDTH = 0.03
Z95 = 1.959963984540054
RULE = {"agreement": 0.99, "rounds": 3, "stop_set": 2000}
# the averaged rule BENCHMARKS.md recommends (window picked on the even seeds; the odd ones are held out)
AVERAGED = {"agreement": 0.99, "rounds": 5, "average": True}
AVERAGED_NAME = "crowdloop stabilizing_predictions(0.99, 5 rounds, average)"
LOOP_RULES = {"every": RULE, "average": AVERAGED}
# per set: initial and batch of the loop, audit batch and most audit items, rounds the oracle may take
SIZES: dict[str, dict[str, int]] = {
    "digits": {"initial": 20, "batch": 10, "audit_batch": 20, "audit_max": 300, "max_rounds": 60},
    "breast_cancer": {"initial": 20, "batch": 10, "audit_batch": 20, "audit_max": 150, "max_rounds": 25},
    "synthetic": {"initial": 20, "batch": 20, "audit_batch": 20, "audit_max": 400, "max_rounds": 70},
    "fashion_mnist": {"initial": 40, "batch": 40, "audit_batch": 20, "audit_max": 400, "max_rounds": 45},
}
CROWD = {"n_workers": 40, "accuracy": [0.85, 0.99], "spammer_fraction": 0.05}


def write_blind(setting, root: Path) -> tuple[Path, Path, list[str]]:
    """The pool as a CSV with no label column, and the crowd's answer key."""
    import pandas as pd

    ids = [f"i{i:06d}" for i in range(len(setting.X_pool))]
    frame = pd.DataFrame(setting.X_pool, columns=[f"x{k}" for k in range(setting.X_pool.shape[1])])
    frame.insert(0, "id", ids)
    frame.to_csv(root / "pool.csv", index=False)
    pd.DataFrame({"id": ids, "label": [str(v) for v in setting.y_pool]}).to_csv(root / "key.csv", index=False)
    return root / "pool.csv", root / "key.csv", ids


def config(dataset: str, seed: int, method: str, pool: Path, key: Path, classes: list[str], n_pool: int,
           stop_rule: dict[str, Any] | None, reserve_share: float = 1 / 3,
           active: dict[str, Any] | None = None, audit_max: int | None = None) -> dict[str, Any]:
    """The blind loop's config; ``active`` holds evaluation fields for the active audit only
    (``estimator``, ``tilt``, ``uniform_share``, ``surrogate``: the command line's, else the library's defaults);
    ``audit_max`` replaces the set's most audit items (``SIZES``)."""
    size = {**SIZES[dataset], **({"audit_max": audit_max} if audit_max else {})}
    reserve = min(3 * size["audit_max"], int(n_pool * reserve_share + 1e-9))  # 1e-9: 1/3 of 3k is k
    stopping: dict[str, Any] = {"max_rounds": size["max_rounds"]}
    if stop_rule:
        stopping["stabilizing_predictions"] = {"stop_set": RULE["stop_set"], **stop_rule}
    return {
        "project": f"eval-{dataset.replace('_', '-')}", "seed": seed,
        "pool": {"source": "csv", "path": str(pool), "id_column": "id", "classes": classes},
        "model": {"estimator": "sklearn.linear_model.LogisticRegression", "params": {"max_iter": 1000}},
        "sampler": {"name": "margin", "batch_size": size["batch"], "initial_size": size["initial"]},
        "vendor": {"name": "keyed_crowd", "params": {"answer_key": str(key), **CROWD}},
        "consensus": {"method": "auto", "redundancy": 3},
        # the same reserve for both methods, so they audit the same models; a small pool (breast
        # cancer) caps the audit at its reserve
        "evaluation": {"method": method, "reask_below": 0.8, "target_half_width": HALF_WIDTH,
                       "max_items": min(size["audit_max"], reserve), "batch_size": size["audit_batch"], "reserve": reserve,
                       **((active or {}) if method == "active" else {})},
        "stopping": stopping,
        "collect": {"poll_interval_s": 0.01},
    }


def full_data_accuracy(setting) -> float:
    from sklearn.base import clone

    from crowdloop.config import ModelConfig
    from crowdloop.models.sklearn import build_model

    model = clone(build_model(ModelConfig(params={"max_iter": 1000}))).fit(setting.X_pool, setting.y_pool.astype(str))
    return float(model.score(setting.X_test, setting.y_test.astype(str)))


def small_text_stops(predictions: list[np.ndarray | None], classes: list[str]) -> dict[str, int | None]:
    """The first round at which each small-text 1.4.1 criterion says stop, fed the same stop-set predictions."""
    from small_text.stopping_criteria import ClassificationChange, DeltaFScore, KappaAverage

    index = {c: k for k, c in enumerate(classes)}
    criteria: dict[str, Any] = {"small-text KappaAverage(0.99, window 3)": KappaAverage(len(classes), window_size=3, kappa=0.99),
                                "small-text ClassificationChange(0.0)": ClassificationChange(len(classes), threshold=0.0)}
    if len(classes) == 2:
        criteria["small-text DeltaFScore(0.05, window 3)"] = DeltaFScore(2, window_size=3, threshold=0.05)
    stops: dict[str, int | None] = dict.fromkeys(criteria)
    for r, pred in enumerate(predictions):
        if pred is None:
            continue
        encoded = np.array([index[c] for c in pred])
        for name, criterion in criteria.items():
            if stops[name] is None and criterion.stop(predictions=encoded):
                stops[name] = r
    return stops


def ours_stop(kappas: list[float | None], agreement: float | None = None, rounds: int | None = None,
              average: bool = False) -> int | None:
    """Where ``stabilizing_predictions`` fires on a kappa sequence (the loop's rule, recomputed;
    by default with the benchmark's setting); ``average``: the window's mean kappa must reach the
    agreement (``stabilizing_predictions.average``), else every kappa in it."""
    k = RULE["agreement"] if agreement is None else agreement
    need = RULE["rounds"] if rounds is None else rounds
    for r in range(need - 1, len(kappas)):
        window = kappas[r - need + 1:r + 1]
        if any(v is None for v in window):
            continue
        if (math.fsum(window) / need + KAPPA_SLACK >= k) if average else all(v >= k for v in window):
            return r
    return None


def run_one(dataset: str, seed: int, method: str, workdir: Path,
            loop_rule: dict[str, Any] | None = None, reserve_share: float = 1 / 3,
            active: dict[str, Any] | None = None, audit_max: int | None = None) -> tuple[dict[str, Any], dict[str, Any]]:
    from sklearn.metrics import cohen_kappa_score

    from crowdloop import engine, keys
    from crowdloop.config import parse_config
    from crowdloop.engine import Project
    from crowdloop.storage import read_json
    from tests.crowd_helpers import register_keyed_crowd

    register_keyed_crowd()
    setting = load_dataset(dataset, seed)
    classes = sorted({str(v) for v in setting.y_pool})
    pool, key, ids = write_blind(setting, workdir)
    location = str(workdir / "project")
    started = time.perf_counter()
    # 1. the loop as a user runs it: blind, stopping by itself
    blind = parse_config(config(dataset, seed, method, pool, key, classes, len(setting.X_pool),
                                  stop_rule=loop_rule or RULE, reserve_share=reserve_share, active=active,
                                  audit_max=audit_max))
    p = engine.run_in_process(Project.prepare(blind, location))
    stop_rows = p.pool.X[p.stop_set_rows]  # the loop's own stop set, for every criterion below
    stop = read_json(p.store, keys.STOP)
    stopped_by_rule = stop["reason"].startswith("stabilizing_predictions")
    stop_round = stop["round"]
    # 2. the benchmark lets it go on (stopping is resumable) to find the oracle on the same curve
    cfg = config(dataset, seed, method, pool, key, classes, len(setting.X_pool), stop_rule=None,
                 reserve_share=reserve_share, active=active, audit_max=audit_max)
    p = engine.run_in_process(Project.prepare(parse_config(cfg), location))
    full = full_data_accuracy(setting)
    y_test = setting.y_test.astype(str)
    rounds, predictions, kappas = [], [], []
    previous = None
    truth = dict(zip(ids, setting.y_pool.astype(str), strict=True))
    pool_ids = p.pool.ids.astype(str)
    y_pool = np.array([truth[item] for item in pool_ids])
    reserve_rows = p.rows_of(list(p.audit_reserve))
    for m in p.metrics():
        r = m["round"]
        model = p.load_model(r)
        acc = None if model is None else float(model.score(setting.X_test, y_test))
        # the same model on every pool item it did not train on: a far larger truth, of the
        # distribution the audit samples, than the test split (whose own sampling error is ±0.036
        # on breast cancer's 143 items)
        trained = {label.item_id for label in p.known_labels(before_round=r)}
        unseen = np.array([item not in trained for item in pool_ids])
        unseen_acc = None if model is None else float(np.mean(model.predict(p.pool.X[unseen]).astype(str) == y_pool[unseen]))
        # ... but active learning picked the trained items, so the rest is no uniform sample; the
        # audit reserve and the test split are (never trained on): their union is the fair larger truth
        fresh = None if model is None else float(np.mean(np.r_[
            model.predict(p.pool.X[reserve_rows]).astype(str) == y_pool[reserve_rows],
            model.predict(setting.X_test).astype(str) == y_test]))
        pred = None if model is None else model.predict(stop_rows).astype(str)
        kappa = None
        if pred is not None and previous is not None:
            kappa = 1.0 if np.array_equal(pred, previous) else float(cohen_kappa_score(pred, previous, labels=classes))
        previous = pred if pred is not None else previous
        predictions.append(pred)
        kappas.append(kappa)
        rounds.append({"round": r, "n_labeled": m["n_labeled"], "true_accuracy": acc,
                       "estimated_accuracy": m.get("estimated_accuracy"), "ci_low": m.get("ci_low"),
                       "ci_high": m.get("ci_high"), "n_eval_labels": m.get("n_eval_labels"),
                       "audit_judgments": m.get("audit_judgments"), "kappa": None if kappa is None else round(kappa, 6),
                       "unseen_accuracy": unseen_acc, "reserve_and_test_accuracy": fresh})
    with_ci = [r for r in rounds if r["ci_low"] is not None and r["true_accuracy"] is not None]
    coverage = float(np.mean([r["ci_low"] <= r["true_accuracy"] <= r["ci_high"] for r in with_ci])) if with_ci else None
    coverage_unseen = (float(np.mean([r["ci_low"] <= r["unseen_accuracy"] <= r["ci_high"] for r in with_ci]))
                       if with_ci else None)
    narrow = next((r["audit_judgments"] for r in with_ci if (r["ci_high"] - r["ci_low"]) / 2 <= HALF_WIDTH), None)
    oracle = next((r for r in rounds if r["true_accuracy"] is not None and r["true_accuracy"] >= 0.98 * full), None)
    stop_at = rounds[stop_round]
    recomputed = ours_stop(kappas)
    criteria = {"crowdloop stabilizing_predictions(0.99, 3 rounds)": recomputed, AVERAGED_NAME: ours_stop(kappas, **AVERAGED),
                **small_text_stops(predictions, classes)}
    row = {
        "dataset": dataset, "seed": seed, "audit": method,
        "coverage": None if coverage is None else round(coverage, 4),
        "coverage_unseen": None if coverage_unseen is None else round(coverage_unseen, 4),
        "judgments_to_half_width_0.03": narrow,
        "stop_labels": stop_at["n_labeled"],
        "oracle_labels_98": None if oracle is None else oracle["n_labeled"],
        "stop_accuracy_share": None if stop_at["true_accuracy"] is None else round(stop_at["true_accuracy"] / full, 4),
    }
    detail = {**row, "full_data_accuracy": round(full, 4), "stop_round": stop_round, "stop_reason": stop["reason"],
              "loop_rule": {"stop_set": RULE["stop_set"], **(loop_rule or RULE)},
              "stopped_by_rule": stopped_by_rule, "seconds": round(time.perf_counter() - started, 1),
              "reserve": len(p.audit_reserve),
              "stops": {name: None if r is None else {"round": r, "labels": rounds[r]["n_labeled"],
                                                      "accuracy_share": round(rounds[r]["true_accuracy"] / full, 4)}
                        for name, r in criteria.items()},
              "rounds": rounds}
    return row, detail


def _median(values: list[float]) -> float | None:
    return None if not values else float(np.median(values))


def _inside_allowing_test_noise(r: dict[str, Any], n_test: int) -> bool:
    """Whether the true test accuracy lies in the reported interval widened by the test split's
    own 95 % sampling error (each side: the root of the sum of squares): the interval is for the
    accuracy on new items, the test split is a finite sample of them."""
    est, truth = r["estimated_accuracy"], r["true_accuracy"]
    test_half = Z95 * np.sqrt(max(truth * (1 - truth), 1e-12) / n_test)
    low = est - np.hypot(est - r["ci_low"], test_half)
    high = est + np.hypot(r["ci_high"] - est, test_half)
    return bool(low <= truth <= high)


def _judgments_or_all(detail: dict[str, Any]) -> int | None:
    """Judgments to the half-width, else every audit judgment the run made."""
    found = detail["judgments_to_half_width_0.03"]
    return found if found is not None else max((r["audit_judgments"] or 0 for r in detail["rounds"]), default=None)


def _stop_at(d: dict[str, Any], r: int) -> dict[str, Any]:
    return {"round": r, "labels": d["rounds"][r]["n_labeled"],
            "accuracy_share": round(d["rounds"][r]["true_accuracy"] / d["full_data_accuracy"], 4)}


def _stops(d: dict[str, Any]) -> dict[str, dict[str, Any] | None]:
    """A run's stop points by criterion; the averaged rule recomputed from the kappas where a
    details file predates it."""
    if AVERAGED_NAME in d["stops"]:
        return d["stops"]
    r = ours_stop([q["kappa"] for q in d["rounds"]], **AVERAGED)
    ours = {k: v for k, v in d["stops"].items() if k.startswith("crowdloop")}
    theirs = {k: v for k, v in d["stops"].items() if not k.startswith("crowdloop")}
    return ours | {AVERAGED_NAME: None if r is None else _stop_at(d, r)} | theirs


def _below_beyond_test_noise(d: dict[str, Any], r: int, n_test: int) -> bool:
    """Whether round ``r``'s share of full-data accuracy is below 0.97 by more than the test
    split's own 95 % sampling error (the share is measured on a finite test split too)."""
    acc = d["rounds"][r]["true_accuracy"]
    return acc / d["full_data_accuracy"] < 0.97 - Z95 * np.sqrt(acc * (1 - acc) / n_test) / d["full_data_accuracy"]


def _stopping_figures(runs: list[dict[str, Any]], stop_of, n_test: int) -> str:
    """``runs stopped | stopped before 97 % (lowest share) | of them beyond the test split's noise |
    labels / oracle's: median (max) | runs over 1.3x | as run: median, runs over 1.3x`` for a rule
    ``stop_of(run) -> round | None``; *as run* puts the last round (``max_rounds``) where the rule
    never fires."""
    fired = [(r, d) for d in runs if (r := stop_of(d)) is not None]
    shares = [_stop_at(d, r)["accuracy_share"] for r, d in fired]
    beyond = sum(_stop_at(d, r)["accuracy_share"] < 0.97 and _below_beyond_test_noise(d, r, n_test) for r, d in fired)
    ratios = [d["rounds"][r]["n_labeled"] / d["oracle_labels_98"] for r, d in fired if d["oracle_labels_98"]]
    as_run = [d["rounds"][r if r is not None else len(d["rounds"]) - 1]["n_labeled"] / d["oracle_labels_98"]
              for d in runs if d["oracle_labels_98"] for r in (stop_of(d),)]
    early = f"{sum(v < 0.97 for v in shares)} ({min(shares):.3f})" if shares else "– (–)"
    cost = f"{_median(ratios):.2f} ({max(ratios):.2f}) | {sum(v > 1.3 for v in ratios)}" if ratios else "– | –"
    loop = f"{_median(as_run):.2f}, {sum(v > 1.3 for v in as_run)}" if as_run else "–"
    return f"{len(fired)}/{len(runs)} | {early} | {beyond if shares else '–'} | {cost} | {loop}"


def summarize(detail_files: list[Path]) -> str:
    """BENCHMARKS.md's tables from ``--details`` files: per dataset and audit method, coverage,
    judgments to a half-width of 0.03 (active against random, seed by seed) and where each
    stopping criterion stops against the oracle."""
    # a (dataset, seed, audit) run in two files counts once (runs are deterministic: same rows)
    details = list({(d["dataset"], d["seed"], d["audit"]): d
                    for f in reversed(detail_files) for d in json.loads(f.read_text())}.values())
    sets = sorted({d["dataset"] for d in details}, key=lambda name: DATASETS.index(name) if name in DATASETS else len(DATASETS))
    n_test = {name: len(load_dataset(name, 0).y_test) for name in sets}
    lines = ["| set | audit | runs | coverage: all rounds (runs' min) | runs with coverage >= 0.90 | coverage allowing "
             "for the test split's own noise | coverage of the accuracy on the pool items not trained on | coverage of the "
             "accuracy on the audit reserve and test split | estimate - truth: mean | judgments to ±0.03: median (never) | "
             "active / random, median of seeds (max) |", "|---|---|---|---|---|---|---|---|---|---|---|"]
    for name in sets:
        by = {m: {d["seed"]: d for d in details if d["dataset"] == name and d["audit"] == m} for m in ("random", "active")}
        for method, runs in by.items():
            if not runs:
                continue
            cov = [d["coverage"] for d in runs.values() if d["coverage"] is not None]
            scored = [r for d in runs.values() for r in d["rounds"]
                      if r["ci_low"] is not None and r["true_accuracy"] is not None]
            pooled = float(np.mean([r["ci_low"] <= r["true_accuracy"] <= r["ci_high"] for r in scored]))
            bias = float(np.mean([r["estimated_accuracy"] - r["true_accuracy"] for r in scored]))
            loose = float(np.mean([_inside_allowing_test_noise(r, n_test[name]) for r in scored]))
            on_pool = [r["ci_low"] <= r["unseen_accuracy"] <= r["ci_high"] for r in scored
                       if r.get("unseen_accuracy") is not None]
            unseen = f"{np.mean(on_pool):.3f}" if on_pool else "–"  # older details files lack it
            on_fresh = [r["ci_low"] <= r["reserve_and_test_accuracy"] <= r["ci_high"] for r in scored
                        if r.get("reserve_and_test_accuracy") is not None]
            fresh = f"{np.mean(on_fresh):.3f}" if on_fresh else "–"
            judg = [d["judgments_to_half_width_0.03"] for d in runs.values()]
            reached = [j for j in judg if j is not None]
            ratio = ""
            if method == "active":
                # a random audit that never got there counts with all its judgments (the ratio is then an upper bound)
                pairs = [(d["judgments_to_half_width_0.03"], _judgments_or_all(by["random"][s]))
                         for s, d in runs.items() if s in by["random"]]
                ratios = [a / r for a, r in pairs if a is not None and r]
                ratio = f"{_median(ratios):.2f} ({max(ratios):.2f})" if ratios else "–"
            lines.append(f"| {name} | {method} | {len(runs)} | {pooled:.3f} ({min(cov):.3f}) | "
                         f"{sum(c >= 0.90 for c in cov)}/{len(cov)} | {loose:.3f} | {unseen} | {fresh} | {bias:+.4f} | "
                         f"{format(_median(reached), 'g') if reached else '–'} ({len(judg) - len(reached)}) | {ratio} |")
    lines += ["", "| set | criterion | runs stopped | share of full-data accuracy at the stop: min (median) | "
              "runs stopped before 97 % | labels / oracle's labels to 98 %: median (max) | runs over 1.3x |",
              "|---|---|---|---|---|---|---|"]
    for name in sets:
        runs = [d for d in details if d["dataset"] == name]
        shares = [d["stop_accuracy_share"] for d in runs]
        ratios = [d["stop_labels"] / d["oracle_labels_98"] for d in runs if d["oracle_labels_98"]]
        by_rule = sum(d["stopped_by_rule"] for d in runs)
        cost = f"{_median(ratios):.2f} ({max(ratios):.2f}) | {sum(v > 1.3 for v in ratios)} |" if ratios else "– | – |"
        lines.append(f"| {name} | **the loop as run** (the rule, else max_rounds) | {by_rule}/{len(runs)} by the rule | "
                     f"{min(shares):.3f} ({_median(shares):.3f}) | {sum(a < 0.97 for a in shares)} | {cost}")
        for criterion in dict.fromkeys(c for d in runs for c in _stops(d)):
            stops = [(_stops(d).get(criterion), d["oracle_labels_98"]) for d in runs if criterion in _stops(d)]
            fired = [(s, o) for s, o in stops if s is not None]
            shares = [s["accuracy_share"] for s, _ in fired]
            ratios = [s["labels"] / o for s, o in fired if o]
            if not fired:
                lines.append(f"| {name} | {criterion} | 0/{len(stops)} | – | – | – | – |")
                continue
            lines.append(f"| {name} | {criterion} | {len(fired)}/{len(stops)} | {min(shares):.3f} ({_median(shares):.3f}) | "
                         f"{sum(v < 0.97 for v in shares)} | "
                         f"{_median(ratios):.2f} ({max(ratios):.2f}) | {sum(v > 1.3 for v in ratios)} |"
                         if ratios else f"| {name} | {criterion} | {len(fired)}/{len(stops)} | {min(shares):.3f} | "
                         f"{sum(v < 0.97 for v in shares)} | – | – |")
    lines += ["", "| set | stabilizing_predictions setting (recomputed on the same curves) | runs stopped | "
              "stopped before 97 % | labels / oracle's: median (max) | runs over 1.3x |", "|---|---|---|---|---|---|"]
    for name in sets:
        runs = [d for d in details if d["dataset"] == name]
        for agreement in (0.99, 0.995, 0.998):
            for need in (2, 3, 5):
                fired = [(stop, d) for d in runs
                         if (stop := ours_stop([r["kappa"] for r in d["rounds"]], agreement, need)) is not None]
                shares = [round(d["rounds"][r]["true_accuracy"] / d["full_data_accuracy"], 4) for r, d in fired]
                ratios = [d["rounds"][r]["n_labeled"] / d["oracle_labels_98"] for r, d in fired if d["oracle_labels_98"]]
                cost = f"{_median(ratios):.2f} ({max(ratios):.2f}) | {sum(v > 1.3 for v in ratios)}" if ratios else "– | –"
                lines.append(f"| {name} | agreement {agreement}, {need} rounds | {len(fired)}/{len(runs)} | "
                             f"{sum(v < 0.97 for v in shares)} | {cost} |")
    lines += ["", "| set | stabilizing_predictions setting, average: true (recomputed on the same curves) | runs stopped | "
              "stopped before 97 % (lowest share) | of them beyond the test split's noise | labels / oracle's: median (max) | "
              "runs over 1.3x | as run (max_rounds where it never fires): median, runs over 1.3x |",
              "|---|---|---|---|---|---|---|---|"]
    for name in sets:
        runs = [d for d in details if d["dataset"] == name]
        for agreement in (0.98, 0.985, 0.99, 0.995):
            for need in (2, 3, 4, 5, 6):
                figures = _stopping_figures(runs, lambda d, a=agreement, n=need: ours_stop(
                    [r["kappa"] for r in d["rounds"]], a, n, average=True), n_test[name])
                lines.append(f"| {name} | agreement {agreement}, {need} rounds | {figures} |")
    # held out: the averaged rule's window was picked on the even seeds; the odd ones judge it
    rules = {"stabilizing_predictions(0.99, 3 rounds), every kappa": lambda d: ours_stop([r["kappa"] for r in d["rounds"]]),
             "stabilizing_predictions(0.99, 5 rounds, average)": lambda d: ours_stop([r["kappa"] for r in d["rounds"]],
                                                                                     **AVERAGED),
             "small-text KappaAverage(0.99, window 3)": lambda d: ours_stop([r["kappa"] for r in d["rounds"]], 0.99, 3,
                                                                            average=True)}
    lines += ["", "| set | seeds | rule | runs stopped | stopped before 97 % (lowest share) | of them beyond the test "
              "split's noise | labels / oracle's: median (max) | runs over 1.3x | as run (max_rounds where it never "
              "fires): median, runs over 1.3x |", "|---|---|---|---|---|---|---|---|---|"]
    for name in sets:
        for half, parity in (("even (tuned on)", 0), ("odd (held out)", 1)):
            runs = [d for d in details if d["dataset"] == name and d["seed"] % 2 == parity]
            for rule, stop_of in rules.items():
                lines.append(f"| {name} | {half} | {rule} | {_stopping_figures(runs, stop_of, n_test[name])} |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--datasets", nargs="+", default=list(DATASETS), choices=DATASETS)
    parser.add_argument("--seeds", type=int, default=20)
    parser.add_argument("--first-seed", type=int, default=0)
    parser.add_argument("--audits", nargs="+", default=["random", "active"], choices=["random", "active"])
    parser.add_argument("--out", help="results JSON (required unless --summarize)")
    parser.add_argument("--details", default=None, help="per-run rounds and stop points (default <out>_details.json)")
    parser.add_argument("--loop-rule", choices=sorted(LOOP_RULES), default="every",
                        help="the rule the loop itself stops by: stabilizing_predictions(0.99, 3 rounds) (every, the "
                             "default) or (0.99, 5 rounds, average); keep the two in separate --out files")
    parser.add_argument("--reserve-share", type=float, default=1 / 3,
                        help="audit reserve as a share of the pool, at most 3 x the set's audit_max (default 1/3; the "
                             "library's own default for the active audit is 1/2); keep shares in separate --out files")
    parser.add_argument("--estimator", choices=["inclusion", "draws"], default=None,
                        help="the active audit's estimator (evaluation.estimator; default: the library's, inclusion; "
                             "v3's rows were made with draws); keep the two in separate --out files")
    parser.add_argument("--uniform-share", type=float, default=None,
                        help="the active audit's uniform share (evaluation.uniform_share; default: the library's, 0.2); "
                             "keep shares in separate --out files")
    parser.add_argument("--surrogate", type=json.loads, default=None, metavar="JSON",
                        help="the active audit's surrogate model (evaluation.surrogate, e.g. '{\"estimator\": "
                             "\"sklearn.neighbors.KNeighborsClassifier\", \"params\": {\"n_neighbors\": 15}}'; default: "
                             "the library's); keep surrogates in separate --out files")
    parser.add_argument("--tilt", type=float, default=None,
                        help="the active audit's proposal tilt (evaluation.tilt; default: the library's, 2 with "
                             "inclusion; v4's rows and earlier were made with 1); keep tilts in separate --out files")
    parser.add_argument("--audit-max", type=int, default=None,
                        help="most audit items for every set of the run (evaluation.max_items; the reserve is 3x it, at "
                             "most --reserve-share of the pool; default: each set's own, SIZES); keep sizes in separate "
                             "--out files")
    parser.add_argument("--summarize", nargs="+", type=Path, default=None, metavar="DETAILS",
                        help="print BENCHMARKS.md's tables from these --details files and exit (runs nothing)")
    args = parser.parse_args()
    if args.summarize:
        print(summarize(args.summarize))
        return
    if not args.out:
        parser.error("--out is required (unless --summarize)")
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    active = {k: v for k, v in (("estimator", args.estimator), ("tilt", args.tilt), ("uniform_share", args.uniform_share),
                                ("surrogate", args.surrogate)) if v is not None}
    out = Path(args.out)
    details_path = Path(args.details) if args.details else out.with_name(out.stem + "_details.json")
    rows: list[dict[str, Any]] = json.loads(out.read_text()) if out.exists() else []
    details: list[dict[str, Any]] = json.loads(details_path.read_text()) if details_path.exists() else []
    done = {(r["dataset"], r["seed"], r["audit"]) for r in rows}
    for dataset in args.datasets:
        for seed in range(args.first_seed, args.first_seed + args.seeds):
            for method in args.audits:
                if (dataset, seed, method) in done:
                    continue
                workdir = Path(tempfile.mkdtemp(prefix=f"eval-{dataset}-{seed}-{method}-"))
                try:
                    row, detail = run_one(dataset, seed, method, workdir, loop_rule=LOOP_RULES[args.loop_rule],
                                          reserve_share=args.reserve_share, active=active, audit_max=args.audit_max)
                finally:
                    shutil.rmtree(workdir, ignore_errors=True)
                rows.append(row)
                details.append(detail)
                out.write_text(json.dumps(rows, indent=1) + "\n")  # after every run: a long job can be resumed
                details_path.write_text(json.dumps(details) + "\n")
                print(json.dumps({k: detail[k] for k in (*row, "stop_reason", "seconds")}), flush=True)


if __name__ == "__main__":
    main()
