"""Crowd volume: label quality, judgments, money and wages per consensus strategy.

Runs the real round engine (no Prefect server) on a simulated crowd for each method:

* ``mv3`` / ``mv5`` / ``ds3``: random sampling, fixed 3× / 5× majority vote, fixed 3× Dawid-Skene
  (``auto``: one-coin or full confusion by data size), the same item budget;
* ``adaptive``: the same items, 1 judgment each to start, one more while Dawid-Skene (with gold,
  combined with the model's out-of-fold probability) is below 0.5, at most 4;
  5% gold questions, workers below 50% gold accuracy (after 3 gold answers) blocked, and workers
  whose answers on multiply-judged items agree with the aggregated truth less than 30% of the
  time (after 10 such answers) blocked too (still paid);
* ``pipeline``: margin sampling + adaptive redundancy + gold + auto-labeling (machine labels used
  in training), and ``random+mv3``: random sampling with fixed 3× majority vote. Their rows carry
  ``judgments_to_98``: human judgments spent when test accuracy first reached 98% of the accuracy
  of the same model trained on the whole pool with true labels (null if never).

Usage: ``python benchmarks/crowd_volume.py --dataset digits --crowd mixed --seeds 3 --out results.json``
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

from crowdloop import engine, keys
from crowdloop.config import parse_config
from crowdloop.engine import Project
from crowdloop.storage import read_json
from crowdloop.workers import worker_accounts

CROWDS: dict[str, dict[str, Any]] = {
    "good": {"n_workers": 50, "accuracy": [0.8, 0.95], "spammer_fraction": 0.0},
    "mixed": {"n_workers": 50, "accuracy": [0.5, 0.95], "spammer_fraction": 0.2},
    "adversarial": {"n_workers": 50, "accuracy": [0.5, 0.95], "spammer_fraction": 0.1,
                    "confuser_fraction": 0.1, "colluder_fraction": 0.1},
    # Structured errors (issue 18): workers who mix up the same class pairs, spammers, and a ring
    # who share one answer per item (right 30% of the time, else the same wrong class).
    "structured": {"n_workers": 50, "accuracy": [0.6, 0.95], "spammer_fraction": 0.1,
                   "pair_confuser_fraction": 0.4, "confused_pairs": 3, "pair_confusion": 0.7,
                   "ring_fraction": 0.1, "ring_accuracy": 0.3},
    # A ring alone beside honest workers: the ring's shared answers outvote singles.
    "ring": {"n_workers": 50, "accuracy": [0.6, 0.95], "spammer_fraction": 0.0,
             "ring_fraction": 0.2, "ring_accuracy": 0.2},
}
LABEL_METHODS = ("mv3", "mv5", "ds3", "adaptive")
LOOP_METHODS = ("pipeline", "random+mv3")
METHODS = LABEL_METHODS + LOOP_METHODS

ADAPTIVE = {"method": "auto", "confidence_threshold": 0.5, "min_judgments": 1, "max_judgments": 4, "model_weight": 1.0,
            "block_below_agreement": 0.3, "block_min_judgments": 10}
GOLD = {"share": 0.05, "n_items": 60, "min_answers": 3, "min_accuracy": 0.5}


def synthetic_pool(directory: Path, seed: int = 0) -> str:
    """A 10-class tabular pool (make_classification), written once as CSV."""
    from sklearn.datasets import make_classification

    path = directory / "synthetic10.csv"
    if not path.exists():
        X, y = make_classification(n_samples=3000, n_features=20, n_informative=12, n_redundant=2, n_classes=10,
                                   n_clusters_per_class=1, class_sep=1.6, random_state=seed)
        header = ",".join([f"f{i}" for i in range(X.shape[1])] + ["label"])
        rows = [",".join([f"{v:.6f}" for v in x] + [str(int(c))]) for x, c in zip(X, y, strict=True)]
        path.write_text(header + "\n" + "\n".join(rows) + "\n")
    return str(path)


def make_config(dataset: str, crowd: str, method: str, seed: int, workdir: Path) -> dict[str, Any]:
    pool: dict[str, Any]
    if dataset == "digits":
        pool = {"source": "sklearn", "name": "digits", "test_size": 0.25}
    elif dataset == "synthetic":
        pool = {"source": "csv", "path": synthetic_pool(workdir), "label_column": "label", "test_size": 0.25}
    else:
        raise SystemExit(f"--dataset={dataset!r}: expected digits or synthetic")
    cfg: dict[str, Any] = {
        "project": f"bench-{method.replace('+', '-')}",
        "seed": seed,
        "pool": pool,
        "model": {"estimator": "sklearn.linear_model.LogisticRegression", "params": {"C": 0.1, "max_iter": 2000}},
        "vendor": {"name": "simulated", "params": {**CROWDS[crowd], "median_seconds": 8}},
        "pay": {"hourly_wage": 12.0, "pilot_seconds_per_task": 8},
    }
    if method in LABEL_METHODS:
        # Label quality on the same budget of randomly chosen items, 6 batches of 100.
        cfg["sampler"] = {"name": "random", "initial_size": 100, "batch_size": 100}
        cfg["stopping"] = {"max_rounds": 40, "label_budget": 600}
        cfg["consensus"] = {"mv3": {"method": "majority_vote", "redundancy": 3},
                            "mv5": {"method": "majority_vote", "redundancy": 5},
                            "ds3": {"method": "auto", "redundancy": 3},
                            "adaptive": ADAPTIVE}[method]
        if method == "adaptive":
            cfg["gold"] = GOLD
    else:
        if method == "pipeline":
            cfg["stopping"] = {"max_rounds": 40, "label_budget": 800}
            cfg["sampler"] = {"name": "margin", "initial_size": 30, "batch_size": 20}
            cfg["consensus"] = ADAPTIVE
            cfg["gold"] = GOLD
            cfg["autolabel"] = {"enabled": True, "target_accuracy": 0.95, "use_in_training": True}
        else:
            # Until the pool is exhausted, so "never reached 98%" means never with every item labeled 3×.
            cfg["stopping"] = {"max_rounds": 60}
            cfg["sampler"] = {"name": "random", "initial_size": 30, "batch_size": 40}
            cfg["consensus"] = {"method": "majority_vote", "redundancy": 3}
    return cfg


def run_project(cfg: dict[str, Any], location: str, *, stop_at: float | None = None) -> Project:
    p = Project.prepare(parse_config(cfg, source="benchmark"), location)
    engine.reference(p)
    return engine.run_in_process(p, stop_at_accuracy=stop_at)


def rejections_without_gold(p: Project) -> int:
    """Rejected assignments whose worker missed no gold item in that batch (must be 0)."""
    bad = 0
    gold = p.gold_set
    anns = p.annotations()
    for r in p.rounds():
        pay = read_json(p.store, keys.round_key(r, keys.PAY), default=None) or {}
        for rej in pay.get("rejections", []):
            batch = f"{p.config.project}-r{r:04d}"
            missed = {a.item_id for a in anns if a.batch_id == batch and a.worker_id == rej["worker_id"]
                      and a.item_id in gold and a.label != gold[a.item_id]}
            if not missed or not set(rej["missed_gold"]) <= missed:
                bad += len(rej["assignment_ids"])
    return bad


def measure(p: Project, dataset: str, crowd: str, method: str, seed: int, seconds: float) -> dict[str, Any]:
    rounds = p.rounds()
    labels = p.human_labels(before_round=rounds[-1] + 1)
    index = p.index_of
    truth = p.pool.y.astype(str)
    label_acc = float(np.mean([lab.label == truth[index[lab.item_id]] for lab in labels])) if labels else None
    n_judgments = len(p.annotations())
    metrics = p.metrics()
    accounts = worker_accounts(p)
    row = {
        "dataset": dataset, "crowd": crowd, "method": method, "seed": seed,
        "judgments": n_judgments,
        "judgments_per_item": round(n_judgments / len(labels), 4) if labels else None,
        "label_accuracy": None if label_acc is None else round(label_acc, 4),
        "model_accuracy": metrics[-1]["accuracy"],
        "cost": p.spent(rounds[-1] + 1),
        "median_wage": accounts["median_wage"],
        "rejections_without_gold": rejections_without_gold(p),
        "n_items": len(labels),
        "n_blocked": accounts["n_blocked"],
        "seconds": round(seconds, 2),
    }
    if method in LOOP_METHODS:
        ref = read_json(p.store, keys.REFERENCE)["accuracy"]
        target = 0.98 * ref
        hit = next((m for m in metrics if m["accuracy"] is not None and m["accuracy"] >= target), None)
        row["judgments_to_98"] = None if hit is None else hit["n_judgments"]
        row["reference_accuracy"] = round(ref, 4)
        auto = [read_json(p.store, keys.round_key(r, keys.AUTOLABEL), default=None) for r in rounds]
        auto = [a for a in auto if a]
        if auto:
            row["machine_labels"] = auto[-1]["n_machine"]
            row["machine_label_accuracy"] = auto[-1]["true_accuracy"]
    return row


def summarize(paths: list[str]) -> str:
    """Markdown tables (means over seeds) of result files, for BENCHMARKS.md."""
    import collections
    import statistics

    out = []
    for path in paths:
        rows = json.loads(Path(path).read_text())
        by: dict[str, list[dict[str, Any]]] = collections.defaultdict(list)
        for row in rows:
            by[row["method"]].append(row)
        first = rows[0]
        seeds = sorted({r["seed"] for r in rows})
        out += [f"**{first['dataset']} / {first['crowd']}** — {len(seeds)} seed(s), means (`{Path(path).name}`)", "",
                "| method | judgments | per item | label acc. | model acc. | cost (USD) | median wage (USD/h) "
                "| rejections w/o gold | judgments to 98% |",
                "|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
        for method, rs in by.items():
            def mean(key: str, digits: int = 3, rs: list = rs) -> str:
                vals = [r[key] for r in rs if r.get(key) is not None]
                return f"{statistics.mean(vals):.{digits}f}" if vals else "–"
            j98 = "–"
            if method in LOOP_METHODS:
                j98 = ", ".join("never" if r.get("judgments_to_98") is None else str(r["judgments_to_98"]) for r in rs)
            out.append(f"| {method} | {mean('judgments', 0)} | {mean('judgments_per_item', 2)} | {mean('label_accuracy')} "
                       f"| {mean('model_accuracy')} | {mean('cost', 2)} | {mean('median_wage', 2)} "
                       f"| {sum(r['rejections_without_gold'] for r in rs)} | {j98} |")
        out.append("")
    return "\n".join(out)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--dataset", default="digits", choices=["digits", "synthetic"])
    ap.add_argument("--crowd", default="mixed", choices=sorted(CROWDS))
    ap.add_argument("--seeds", type=int, default=3, help="seeds 0..N-1")
    ap.add_argument("--methods", default=",".join(METHODS), help=f"comma list of {', '.join(METHODS)}")
    ap.add_argument("--out", default="results.json")
    ap.add_argument("--summarize", nargs="+", metavar="JSON", help="print Markdown tables of result files and exit")
    args = ap.parse_args(argv)
    if args.summarize:
        print(summarize(args.summarize))
        return 0
    methods = [m for m in args.methods.split(",") if m]
    unknown = [m for m in methods if m not in METHODS]
    if unknown:
        ap.error(f"--methods: unknown {unknown}; expected some of {', '.join(METHODS)}")
    rows = []
    with tempfile.TemporaryDirectory(prefix="crowd-volume-") as tmp:
        work = Path(tmp)
        for seed in range(args.seeds):
            for method in methods:
                cfg = make_config(args.dataset, args.crowd, method, seed, work)
                start = time.perf_counter()
                location = str(work / f"{method.replace('+', '-')}-{seed}")
                stop_at = None
                if method in LOOP_METHODS:  # stop once 98% of full-data accuracy is reached
                    ref = engine.reference(Project.prepare(parse_config(cfg, source="benchmark"), location))
                    stop_at = 0.98 * ref["accuracy"]
                p = run_project(cfg, location, stop_at=stop_at)
                row = measure(p, args.dataset, args.crowd, method, seed, time.perf_counter() - start)
                rows.append(row)
                print(json.dumps(row), file=sys.stderr, flush=True)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(rows, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
