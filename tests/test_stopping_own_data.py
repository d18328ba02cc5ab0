"""Stopping without ground truth: stabilizing predictions and the estimated accuracy's lower bound."""

from __future__ import annotations

import pytest
from typer.testing import CliRunner

from crowdloop import engine, keys
from crowdloop.cli import app
from crowdloop.config import parse_config
from crowdloop.engine import Project
from crowdloop.errors import ConfigError
from crowdloop.storage import read_json
from tests.crowd_helpers import blind_config, write_blind_digits


@pytest.fixture(scope="module")
def blind_digits(tmp_path_factory) -> dict:
    return write_blind_digits(tmp_path_factory.mktemp("blind"))


def test_stops_when_consecutive_models_agree_on_the_stop_set(blind_digits, tmp_path):
    rule = {"agreement": 0.95, "rounds": 2, "stop_set": 400}
    cfg = blind_config(blind_digits, stopping={"max_rounds": 30, "stabilizing_predictions": rule})
    p = engine.run_in_process(Project.prepare(parse_config(cfg), str(tmp_path / "p")))
    stop = read_json(p.store, keys.STOP)
    kappas = [m.get("stability_kappa") for m in p.metrics()]
    r = stop["round"]
    assert r < 29 and stop["reason"].startswith("stabilizing_predictions: Cohen's kappa between consecutive models")
    assert f"{kappas[r - 1]:.4f}, {kappas[r]:.4f} >= 0.95 for 2 rounds on a 400-item stop set" in stop["reason"]
    # it fired at the first round where the rule held, not later and not earlier
    held = [q for q in range(1, r + 1) if all(k is not None and k >= 0.95 for k in kappas[q - 1:q + 1])]
    assert held == [r]
    assert len(p.stop_set_rows) == 400 and p.record(r, keys.METRICS)["stop_set_size"] == 400


def test_averaged_rule_stops_a_real_blind_loop_at_the_first_round_whose_window_mean_holds(blind_digits, tmp_path):
    rule = {"agreement": 0.97, "rounds": 3, "stop_set": 400, "average": True}
    cfg = blind_config(blind_digits, stopping={"max_rounds": 30, "stabilizing_predictions": rule})
    p = engine.run_in_process(Project.prepare(parse_config(cfg), str(tmp_path / "p")))
    stop = read_json(p.store, keys.STOP)
    kappas = [m.get("stability_kappa") for m in p.metrics()]
    r = stop["round"]
    window = kappas[r - 2:r + 1]
    mean = sum(window) / 3
    assert r < 29 and stop["reason"] == (
        f"stabilizing_predictions (average): mean Cohen's kappa between consecutive models {mean:.4f} >= 0.97 over 3 "
        f"rounds ({', '.join(f'{k:.4f}' for k in window)}) on a 400-item stop set")
    # the first round whose window of three recorded kappas averages 0.97, not later and not earlier
    held = [q for q in range(2, r + 1) if None not in kappas[q - 2:q + 1] and sum(kappas[q - 2:q + 1]) / 3 >= 0.97 - 1e-9]
    assert held == [r]
    # on this curve the mean is what stopped it: a kappa in the window is below 0.97, so the every-round rule goes on
    assert min(window) < 0.97


@pytest.mark.parametrize(("rule", "expected"), [
    ({"average": True, "rounds": 1},
     r"^loop.yaml: stopping.stabilizing_predictions: average=true with rounds=1: the mean of one kappa is that kappa; "
     r"expected rounds >= 2 \(or average: false\)$"),
    ({"average": "maybe"}, r"^loop.yaml: stopping.stabilizing_predictions.average: Input should be a valid boolean"),
])
def test_averaged_rule_refuses_a_window_of_one_and_a_non_boolean_in_one_line(blind_digits, rule, expected):
    cfg = blind_config(blind_digits, stopping={"stabilizing_predictions": rule})
    with pytest.raises(ConfigError, match=expected) as info:
        parse_config(cfg, source="loop.yaml")
    assert "\n" not in str(info.value)
    # the smallest window that averages anything is accepted
    fine = blind_config(blind_digits, stopping={"stabilizing_predictions": {"average": True, "rounds": 2}})
    assert parse_config(fine).stopping.stabilizing_predictions.rounds == 2


def test_target_accuracy_without_ground_truth_works_on_the_lower_bound(blind_digits, tmp_path):
    cfg = blind_config(blind_digits, evaluation={"method": "random", "max_items": 200, "batch_size": 50},
                       stopping={"max_rounds": 30, "target_accuracy": 0.8})
    p = engine.run_in_process(Project.prepare(parse_config(cfg), str(tmp_path / "p")))
    stop = read_json(p.store, keys.STOP)
    m = p.record(stop["round"], keys.METRICS)
    assert m["accuracy"] is None and m["ci_low"] >= 0.8
    assert stop["reason"].startswith(f"target_accuracy=0.8 reached by the estimate's lower bound: {m['ci_low']:.4f}")
    earlier = [p.record(r, keys.METRICS)["ci_low"] for r in range(stop["round"])]
    assert all(low is None or low < 0.8 for low in earlier)  # an estimate above 0.8 alone did not stop it
    # without a test split, `crowdloop status` shows the estimate and its interval, not a column of dashes
    shown = CliRunner().invoke(app, ["status", "-p", p.store.url], terminal_width=200)
    assert shown.exit_code == 0 and "estimated (95 % CI)" in shown.output
    assert f"{m['estimated_accuracy']:.3f} [{m['ci_low']:.3f}, {m['ci_high']:.3f}]" in shown.output


def test_target_accuracy_needs_ground_truth_or_an_audit(blind_digits, tmp_path):
    cfg = blind_config(blind_digits, stopping={"target_accuracy": 0.9})
    with pytest.raises(ConfigError, match=r"stopping.target_accuracy: the pool has no ground truth.*evaluation.method"):
        Project.prepare(parse_config(cfg), str(tmp_path / "p"))
    assert not (tmp_path / "p").exists()
