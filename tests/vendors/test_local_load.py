"""The annotation app under concurrent annotators (bounded): every accepted answer is in the log once.

The full run (50 annotators, 2000 answers, latency figures) is ``benchmarks/annotation_load.py``;
this test runs the same code small, with no timing assertions.
"""

from __future__ import annotations

import importlib.util
import sys

import pytest

from tests.conftest import REPO

pytestmark = pytest.mark.slow


def _load_module():
    spec = importlib.util.spec_from_file_location("annotation_load", REPO / "benchmarks" / "annotation_load.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules.setdefault("annotation_load", module)  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


def test_ten_annotators_two_hundred_answers_none_lost_none_duplicated(tmp_path):
    load = _load_module()
    result = load.run(annotators=10, submissions=200, replicas=2, double_every=5, max_seconds=240, workdir=str(tmp_path))
    assert result["n_errors"] == 0, result["errors"]
    assert result["accepted"] == 200 and result["double_posts"] > 0
    assert result["lost"] == 0 and result["duplicated"] == 0 and result["unexpected"] == 0
    assert result["answer_files"] == result["in_label_log"] == result["collected"] == 200
    assert result["items_over_replicas"] == 0
    assert result["answer_post_ms"]["n"] == 200
