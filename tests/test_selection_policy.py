"""The self-measuring sampler through the engine: every round's split and its evidence are
recorded in selection.json, fed back as history, and shown in the status JSON and round table."""

from __future__ import annotations

import json

import pytest

from crowdloop import keys, report
from crowdloop.engine.selection import arm_history
from tests.conftest import small_config
from tests.crowd_helpers import run_engine


@pytest.fixture(scope="module")
def project(tmp_path_factory):
    cfg = small_config(**{"sampler.name": "auto", "sampler.batch_size": 20, "sampler.initial_size": 40,
                          "sampler.params": {"arms": ["random", "margin", "kmeans_margin"], "min_items": 5},
                          "stopping.max_rounds": 5})
    return run_engine(cfg, str(tmp_path_factory.mktemp("auto") / "p"))


def test_each_round_records_who_picked_what_and_why(project):
    sels = [project.record(r, keys.SELECTION) for r in range(4)]
    assert sels[0]["strategy"] == "cold_start:random" and "policy" not in sels[0]
    for sel in sels[1:]:
        assert sel["strategy"] == "auto"
        picked = sorted(i for ids in sel["picked_by"].values() for i in ids)
        assert picked == sorted(sel["item_ids"])
        policy = sel["policy"]
        assert policy["policy"] == "auto" and sum(policy["slots"].values()) == 20
        assert policy["slots"] == {a: len(ids) for a, ids in sel["picked_by"].items()}
        json.dumps(policy)
    # the history a round sees is what earlier rounds recorded: the random cold start is the first audit
    assert sels[1]["policy"]["picks_so_far"]["random"] == 40
    before = {a: sels[1]["policy"]["picks_so_far"][a] + len(sels[1]["picked_by"][a]) for a in sels[1]["picked_by"]}
    assert sels[2]["policy"]["picks_so_far"] == before
    assert sels[3]["policy"]["audit_accuracy"]  # by round 3 every arm has enough picks to be judged


def test_arm_history_reads_the_records(project):
    sel = project.record(2, keys.SELECTION)
    arm, ids = next((a, ids) for a, ids in sel["picked_by"].items() if ids)
    first = project.record(0, keys.SELECTION)["item_ids"][:2]
    assert arm_history(project, 3, [ids[0], *first, "never-picked"]) == [arm, "random", "random", None]
    assert arm_history(project, 2, [ids[0]]) == [None]  # round 2's picks are not history before round 2


def test_status_and_round_table_show_the_split_and_its_evidence(project):
    state = report.status(project)
    rows = state["selection_policy"]
    assert [r["round"] for r in rows] == [1, 2, 3, 4]
    assert all(r["picked"] == r["slots"] for r in rows)
    table = report.round_table(project)
    assert table[0]["strategy"] == "cold_start:random" and table[0]["arms"] is None
    assert "random" in table[3]["arms"] and table[3]["arm_evidence"].startswith("audit of ")
    assert {tuple(sorted(r)) for r in table[:-1]} == {tuple(sorted(table[0]))}  # one set of columns


def test_fixed_samplers_keep_their_records(tmp_path):
    p = run_engine(small_config(**{"stopping.max_rounds": 2}), str(tmp_path / "p"))
    assert "policy" not in p.record(1, keys.SELECTION)
    assert report.status(p)["selection_policy"] is None
    assert "arms" not in report.round_table(p)[0]
