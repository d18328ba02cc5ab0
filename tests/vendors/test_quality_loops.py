"""Issue 17's acceptance: three rounds with one spammer on MTurk (botocore-validated fake), the
local app (real HTTP, several annotators), the manifest drop-box and Label Studio (real server).

The spammer is blocked after the gold evidence, receives no further task, and is paid for the
work before; every re-ask is answered by somebody who had not answered the item; the money in
the status JSON equals the vendor's own accounting (MTurk: also MTurk's bill, computed from the
fake's approved assignments and bonuses by MTurk's published rule, $0.03 rewards).
"""

from __future__ import annotations

from pathlib import Path

import pytest

from crowdloop import keys
from crowdloop.engine import Project
from crowdloop.report import status
from tests.vendors import label_studio_server as lss
from tests.vendors import quality_loop as q


def assert_quality_controls_held(out: dict) -> None:
    assert out["rounds"] == q.ROUNDS
    assert out["blocked_before_round"] is not None and "known-answer questions correctly" in out["block_reason"]
    assert out["spammer_judgments_before_block"] > 0 and out["spammer_judgments_after_block"] == 0
    assert out["spammer_paid_judgments"] == out["spammer_judgments_before_block"] and out["spammer_paid"] > 0
    assert out["reask_answers"] == out["reask_tasks"] > 0
    assert out["reasks_by_a_repeat_worker"] == 0 and out["same_worker_twice_on_an_item"] == 0
    ledger = out["vendor_ledger"]
    assert round(ledger["paid"] + ledger["bonuses"], 2) == out["paid_to_workers"]


def test_mturk(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"):
        monkeypatch.setenv(name, "testing")
    out = q.run_mturk(tmp_path)
    assert_quality_controls_held(out)
    assert out["spammer_assignments_after_block"] == 0 and out["worker_blocks"] == {"ASPAMMER": out["block_reason"]}
    assert out["spammer_assignments_by_status"] == {"Approved": out["spammer_judgments_before_block"]}
    assert out["extensions"] == out["reask_tasks"]  # each re-ask: more assignments on the item's own HIT
    # the ledger to the cent: status JSON = the vendor's accounting = MTurk's bill ($0.01 minimum fee at $0.03)
    assert out["status_cost"] == out["vendor_ledger"]["total"] == out["mturk_bill"]["total"]
    # no top-ups here (9 s as estimated): every $0.03 assignment costs the $0.01 minimum fee, not 20% = $0.006
    assert out["mturk_bill"]["bonuses"] == 0 and out["mturk_bill"]["fees"] == round(0.01 * out["judgments"], 2)


def test_local_app_over_http(tmp_path: Path) -> None:
    out = q.run_local(tmp_path)
    assert_quality_controls_held(out)
    assert out["spammer_items_shown_after_block"] == 0 and out["app_errors"] == []
    assert out["blocked_page"].startswith("You will not receive new items from this project.")
    assert out["block_reason"] in out["blocked_page"]


def test_manifest_drop_box(tmp_path: Path) -> None:
    out = q.run_manifest(tmp_path)
    assert_quality_controls_held(out)
    assert out["spammer_lines_rejected"] > 0 and out["block_reason"] in out["reject_reason"]


@pytest.mark.slow
def test_label_studio_real_server(tmp_path: Path, label_studio: lss.Server, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LABEL_STUDIO_URL", label_studio.url)  # restored after the test
    monkeypatch.setenv("LABEL_STUDIO_API_KEY", label_studio.token)
    out = q.run_label_studio(tmp_path, label_studio.url, label_studio.token)
    assert_quality_controls_held(out)
    assert out["spammer_refused_by_the_stream_in_rounds"] == list(range(out["blocked_before_round"], q.ROUNDS))


@pytest.mark.parametrize("vendor", ["mturk", "local", "manifest", pytest.param("label_studio", marks=pytest.mark.slow)])
def test_the_audit_with_reasks_through_each_vendor(vendor: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                   request: pytest.FixtureRequest) -> None:
    """Issue 15's audit bought through each vendor's own channel beside the quality controls: every
    audit item gets its 3 judgments from 3 different workers, a split one 2 more from others, it
    never trains the model, the status JSON reports its estimate and cost, and the money still
    equals the vendor's accounting."""
    for name in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"):
        monkeypatch.setenv(name, "testing")
    if vendor == "label_studio":
        server: lss.Server = request.getfixturevalue("label_studio")  # the session's real server
        monkeypatch.setenv("LABEL_STUDIO_URL", server.url)
        monkeypatch.setenv("LABEL_STUDIO_API_KEY", server.token)
        out = q.run_label_studio(tmp_path, server.url, server.token, q.AUDIT, n_honest=6)
    else:
        out = q.RUNNERS[vendor](tmp_path, q.AUDIT, n_honest=6)
    assert out["rounds"] == q.ROUNDS and out["audit_items"] == out["audit_items_labeled"] == 20
    assert out["audit_items_trained_on"] == 0 and out["audit_items_with_a_repeat_worker"] == 0
    assert out["audit_items_with_other_counts"] == 0  # 3 judgments, 5 after a re-ask: nothing lost, nothing extra
    assert out["audit_reasked"] > 0  # the spammer's vote splits items before (or without) the block
    assert out["audit_labels_wrong"] == 0  # a honest majority on each, the re-ask settles the split ones
    assert out["last_n_eval_labels"] == 20 and out["last_audit_judgments"] == 3 * 20 + 2 * out["audit_reasked"]
    assert out["last_ci_low"] <= out["last_estimated_accuracy"] <= out["last_ci_high"]
    assert 0 < out["last_audit_cost"] < out["status_cost"]
    assert out["reasks_by_a_repeat_worker"] == 0 and out["same_worker_twice_on_an_item"] == 0
    ledger = out["vendor_ledger"]
    assert round(ledger["paid"] + ledger["bonuses"], 2) == out["paid_to_workers"]


@pytest.mark.parametrize("vendor", ["mturk", "local", "manifest", pytest.param("label_studio", marks=pytest.mark.slow)])
def test_own_data_features_through_each_vendor(vendor: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                               request: pytest.FixtureRequest) -> None:
    """Seed labels, gold from a file, the active audit, auto-labeling and the self-choosing sampler,
    through each vendor's own channel: seed items are never asked, gold items go out only as
    gold, audit items never train the model, the spammer is blocked, and the books agree."""
    for name in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"):
        monkeypatch.setenv(name, "testing")
    extra = q.own_data(tmp_path)
    captured: dict[str, Project] = {}
    real_report = q.report

    def report_and_keep(p: Project, *args, **kwargs) -> dict:
        captured["p"] = p  # the runner's project, for the checks on its records below
        return real_report(p, *args, **kwargs)

    monkeypatch.setattr(q, "report", report_and_keep)
    if vendor == "label_studio":
        server: lss.Server = request.getfixturevalue("label_studio")
        monkeypatch.setenv("LABEL_STUDIO_URL", server.url)
        monkeypatch.setenv("LABEL_STUDIO_API_KEY", server.token)
        out = q.run_label_studio(tmp_path, server.url, server.token, extra, n_honest=6)
    else:
        out = q.RUNNERS[vendor](tmp_path, extra, n_honest=6)
    p = captured["p"]
    asked = {t["item_id"]: t["is_gold"] for r in p.rounds() if p.has(r, keys.DISPATCH)
             for t in p.record(r, keys.DISPATCH)["tasks"]}
    seeds = {line.split(",")[0] for line in (tmp_path / "seeds.csv").read_text().splitlines()[1:]}
    gold = {line.split(",")[0] for line in (tmp_path / "gold.csv").read_text().splitlines()[1:]}
    assert out["rounds"] == q.ROUNDS and asked and not seeds & set(asked)
    assert {i for i, is_gold in asked.items() if is_gold} <= gold and all(asked[i] for i in gold & set(asked))
    assert out["audit_items"] == out["audit_items_labeled"] > 0 and out["audit_items_trained_on"] == 0
    assert out["audit_items_with_other_counts"] == 0 and out["audit_items_with_a_repeat_worker"] == 0
    assert out["last_ci_low"] <= out["last_estimated_accuracy"] <= out["last_ci_high"]
    assert status(p)["totals"]["n_imported"] == 40
    # with seven workers the spammer meets two gold items within three rounds where the order of work
    # is fixed (MTurk's fake hands out slots in turn, the Label Studio harness loops over annotators);
    # on the local app (threads) and the drop-box (lines spread over workers) it may not
    if vendor in ("mturk", "label_studio"):
        assert out["blocked_before_round"] is not None
    assert out["spammer_judgments_after_block"] == 0
    assert out["reasks_by_a_repeat_worker"] == 0 and out["same_worker_twice_on_an_item"] == 0
    ledger = out["vendor_ledger"]
    assert round(ledger["paid"] + ledger["bonuses"], 2) == out["paid_to_workers"]
