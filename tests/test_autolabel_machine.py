"""Auto-labeling: calibrated machine labels, stored apart, optional in training, never on test items."""

from __future__ import annotations

import pytest

from crowdloop import keys
from crowdloop.export import export_labels_manifest
from crowdloop.storage import read_json
from tests.conftest import small_config
from tests.crowd_helpers import run_engine

AUTO = {"autolabel.enabled": True, "autolabel.target_accuracy": 0.9, "autolabel.min_validation": 40,
        "stopping.max_rounds": 4, "vendor.params": {"n_workers": 12, "accuracy": [0.9, 0.98], "spammer_fraction": 0.0}}


@pytest.fixture(scope="module")
def auto_project(tmp_path_factory):
    return run_engine(small_config(**AUTO), str(tmp_path_factory.mktemp("auto") / "p"))


def test_machine_labels_are_calibrated_and_kept_apart(auto_project):
    p = auto_project
    infos = [read_json(p.store, keys.round_key(r, keys.AUTOLABEL), default=None) for r in p.rounds()]
    infos = [i for i in infos if i and i["threshold"] is not None]
    assert infos, "no round calibrated a threshold"
    test_ids = set(p.test.ids.tolist())
    for info in infos:
        r = info["round"]
        assert info["estimated_accuracy"] >= 0.9
        machine = p.machine_labels(before_round=r + 1)
        assert len(machine) == info["n_machine"] > 0
        human = {item.item_id for item in p.human_labels(before_round=r + 1)}
        selected = set(read_json(p.store, keys.round_key(r, keys.SELECTION))["item_ids"])
        for m in machine:
            assert m.source == "machine" and m.n_annotations == 0 and m.confidence >= info["threshold"]
            assert m.item_id not in test_ids and m.item_id not in human and m.item_id not in selected
        assert info["true_accuracy"] >= 0.85
    # recomputed with each new model
    assert len({i["threshold"] for i in infos}) == len(infos) or len(infos) == 1


def test_machine_labels_stay_out_of_training_and_counts_unless_enabled(auto_project, tmp_path):
    p = auto_project
    for m in p.metrics():  # n_labeled keeps meaning human-labeled items
        assert m["n_labeled"] == len(p.human_labels(before_round=m["round"]))
        assert "n_machine" not in read_json(p.store, keys.round_key(m["round"], keys.TRAIN))
    used = run_engine(small_config(**AUTO, **{"autolabel.use_in_training": True}), str(tmp_path / "used"))
    trains = [read_json(used.store, keys.round_key(r, keys.TRAIN)) for r in used.rounds()]
    assert any(t.get("n_machine", 0) > 0 for t in trains)
    assert [m["n_labeled"] for m in used.metrics()] == [m["n_labeled"] for m in p.metrics()]


def test_export_marks_machine_labels_as_not_human_annotated(auto_project):
    import json

    rows = [json.loads(line) for line in export_labels_manifest(auto_project).splitlines()]
    machine = [r for r in rows if r["label-metadata"]["source"] == "machine"]
    human = [r for r in rows if r["label-metadata"]["source"] == "human"]
    assert machine and human
    assert all(r["label-metadata"]["human-annotated"] == "no" for r in machine)
    assert all(r["label-metadata"]["human-annotated"] == "yes" for r in human)
    assert not {r["source"] for r in machine} & {r["source"] for r in human}
