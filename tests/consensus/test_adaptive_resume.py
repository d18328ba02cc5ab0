"""Adaptive redundancy, gold and auto-labeling keep the engine's guarantees: a run interrupted
between steps and resumed ends with exactly the records of an uninterrupted run."""

from __future__ import annotations

from crowdloop import engine
from crowdloop.config import parse_config
from crowdloop.engine import Project
from tests.conftest import small_config
from tests.crowd_helpers import intents, run_engine

ALL = {"consensus.method": "auto", "consensus.confidence_threshold": 0.9, "consensus.min_judgments": 1,
       "consensus.max_judgments": 3, "consensus.model_weight": 1.0, "gold.share": 0.2, "gold.n_items": 30,
       "gold.min_answers": 2, "autolabel.enabled": True, "autolabel.min_validation": 30, "stopping.max_rounds": 3}


def _records(p: Project) -> dict[str, bytes]:
    keys = [k for k in p.store.list("rounds/") if not k.endswith(("model.pkl", "train.json", "selection.json"))]
    return {k: p.store.read_bytes(k) for k in keys}


def test_interrupted_and_resumed_run_equals_uninterrupted(tmp_path):
    whole = run_engine(small_config(**ALL), str(tmp_path / "whole"))
    cfg = parse_config(small_config(**ALL))
    # Interrupted: round 0 done, round 1 stops after dispatch (before collect), in a process that "dies".
    p = Project.prepare(cfg, str(tmp_path / "cut"))
    for step in (engine.train, engine.evaluate):
        step(p, 0)
    engine.stop_reason(p, 0, engine.evaluate(p, 0))
    engine.select(p, 0), engine.autolabel(p, 0), engine.dispatch(p, 0)
    engine.collect(p, 0, sleep=lambda s: None), engine.aggregate(p, 0), engine.pay(p, 0)
    engine.train(p, 1), engine.evaluate(p, 1), engine.select(p, 1), engine.autolabel(p, 1), engine.dispatch(p, 1)
    resumed = run_engine(small_config(**ALL), str(tmp_path / "cut"))  # a fresh process: new Project, new caches
    assert intents(resumed) == intents(whole)
    a, b = _records(whole), _records(resumed)
    assert a.keys() == b.keys()
    for key in a:
        if key.endswith(("pay.json", "labels.jsonl", "aggregate.json", "autolabel.json", "machine_labels.jsonl")):
            assert a[key] == b[key], key
    assert resumed.vendor.ledger()["assignments"] == whole.vendor.ledger()["assignments"]
