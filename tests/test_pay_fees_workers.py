"""Vendor fees, approval deadline, per-worker accounting and the ``crowdloop workers`` command."""

from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner

from crowdloop import keys
from crowdloop.cli import app
from crowdloop.config import PayConfig, VendorFee, load_config
from crowdloop.pay import fees_for, vendor_fee
from crowdloop.storage import read_json
from crowdloop.workers import worker_accounts
from tests.conftest import small_config
from tests.crowd_helpers import run_engine


def test_mturk_fee_is_20_percent_plus_20_at_ten_assignments():
    rule = vendor_fee(PayConfig(), "mturk")
    assert fees_for(rule, [(0.10, 3)] * 10, 0.0) == pytest.approx(0.20)
    assert fees_for(rule, [(0.10, 10)] * 10, 0.0) == pytest.approx(0.40)
    assert fees_for(rule, [], 1.00) == pytest.approx(0.20)  # bonuses carry the base fee


def test_project_fee_rules_override_and_fall_back_to_fee_rate():
    cfg = PayConfig(fee_rate=0.05, vendor_fees={"mturk": VendorFee(rate=0.1)})
    assert vendor_fee(cfg, "mturk").rate == 0.1
    assert vendor_fee(cfg, "simulated").rate == 0.05


@pytest.fixture(scope="module")
def paid_project(tmp_path_factory):
    cfg = small_config(**{"pay.vendor_fees": {"simulated": {"rate": 0.2, "bulk_rate": 0.2, "bulk_min_assignments": 3}},
                          "pay.approval_deadline_h": 48, "stopping.max_rounds": 3})
    return run_engine(cfg, str(tmp_path_factory.mktemp("pay") / "p"))


def test_fees_are_accounted_per_vendor_rule(paid_project):
    p = paid_project
    for r in p.rounds()[:-1]:
        pay = read_json(p.store, keys.round_key(r, keys.PAY))
        # redundancy 3 >= bulk_min_assignments 3: 40% on rewards, 20% on bonuses
        assert pay["fees"] == pytest.approx(round(0.4 * pay["rewards"] + 0.2 * pay["bonuses"], 2), abs=0.011)
        assert pay["total"] == pytest.approx(pay["rewards"] + pay["bonuses"] + pay["fees"], abs=0.011)
        assert pay["approval_deadline_h"] == 48 and pay["n_late"] == 0


def test_worker_accounts_add_up_to_what_was_paid(paid_project):
    p = paid_project
    acc = worker_accounts(p)
    pays = [read_json(p.store, keys.round_key(r, keys.PAY)) for r in p.rounds()[:-1]]
    assert sum(w["judgments"] for w in acc["workers"]) == len(p.annotations())
    assert sum(w["paid"] for w in acc["workers"]) == pytest.approx(sum(x["rewards"] + x["bonuses"] for x in pays), abs=0.05)
    assert acc["median_wage"] >= acc["target_wage"]
    assert acc["n_rejected"] == 0
    for w in acc["workers"]:
        assert w["approved"] == w["judgments"] and w["skill"] is not None
        assert w["hourly_wage"] == pytest.approx(w["paid"] * 3600 / w["work_seconds"], rel=0.02)


def test_workers_cli_prints_json_and_a_table(paid_project):
    runner = CliRunner()
    out = runner.invoke(app, ["workers", paid_project.store.url.removeprefix("file://"), "--json"])
    assert out.exit_code == 0, out.output
    data = json.loads(out.stdout)
    assert data["n_workers"] == len(data["workers"]) > 0 and data["median_wage"] is not None
    table = runner.invoke(app, ["workers", paid_project.store.url.removeprefix("file://")])
    assert table.exit_code == 0 and "median effective wage" in table.stdout


def test_workers_cli_on_a_missing_project_is_one_line(tmp_path):
    out = CliRunner().invoke(app, ["workers", str(tmp_path / "nope")])
    assert out.exit_code == 2 and "error:" in out.output


def test_adaptive_config_file_loads():
    from pathlib import Path

    cfg = load_config(Path(__file__).resolve().parents[1] / "configs" / "digits-adaptive.yaml")
    assert cfg.consensus.adaptive and cfg.gold.enabled and cfg.autolabel.enabled
