"""Records that should exist but do not (issue 19, points 3 and 4).

A run starts only in an empty folder or an existing crowdloop project. A record deleted between
runs is noticed — through the promises the records make (``RECORD_NEEDS``, ``LOG_COUNTS`` and
the step order in ``crowdloop/engine/rounds.py``) — and the resume stops with one line naming
it, instead of sending and paying items again or going on with fewer answers.
`crowdloop verify DIR` checks a whole project that way.
"""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest
import yaml

from crowdloop import engine, keys
from crowdloop.config import parse_config
from crowdloop.engine import MissingRecordError, Project
from crowdloop.engine import project as project_module
from crowdloop.errors import StoreError
from tests.conftest import crowdloop_cmd, small_config

REPO = Path(__file__).resolve().parents[1]


def _env() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if not k.startswith("CROWDLOOP_")}


def _new_process() -> None:
    project_module._PREPARED.clear()


def _finished(tmp_path: Path, **overrides) -> tuple[Project, dict]:
    """A project whose first round finished (max_rounds=1: round 1 trains, evaluates and stops)."""
    config = small_config(**{"stopping.max_rounds": 1, "collect.timeout_s": 5, **overrides})
    p = Project.prepare(parse_config(config), str(tmp_path / "p"))
    engine.run_in_process(p)
    assert p.has(0, keys.PAY) and p.has(1, keys.METRICS)
    _new_process()
    return p, config


def _batches(p: Project) -> int:
    return len(p.store.list("vendor/simulated/batches/"))


def _delete(p: Project, key: str) -> None:
    (Path(p.store.url) / key).unlink()


# -- point 3: a run starts only in an empty folder or an existing project -------------------------
def test_a_folder_with_other_files_is_refused_and_left_untouched(tmp_path: Path) -> None:
    folder = tmp_path / "my-results"
    folder.mkdir()
    (folder / "metrics.json").write_text('{"mine": true}\n')
    (folder / ".notes").write_text("hidden files count too\n")
    config = tmp_path / "config.yaml"
    config.write_text(yaml.safe_dump(small_config()))
    done = subprocess.run([*crowdloop_cmd(), "run", str(config), "--project-dir", str(folder)], capture_output=True,
                          text=True, env=_env(), cwd=REPO, timeout=120)
    assert done.returncode == 2 and done.stderr.count("\n") == 1, done.stderr
    assert "holds other files ('.notes', 'metrics.json')" in done.stderr and "expected an empty folder" in done.stderr
    assert sorted(os.listdir(folder)) == [".notes", "metrics.json"]  # nothing written, nothing replaced
    assert (folder / "metrics.json").read_text() == '{"mine": true}\n'


def test_an_empty_folder_and_an_existing_project_are_fine(tmp_path: Path) -> None:
    (tmp_path / "empty").mkdir()
    p = Project.prepare(parse_config(small_config()), str(tmp_path / "empty"))
    engine.run_round(p, 0, until="train")
    _new_process()
    assert Project.prepare(parse_config(small_config()), str(tmp_path / "empty")).has(0, keys.TRAIN)


def test_an_s3_prefix_with_other_objects_is_refused(s3_endpoint: str, s3_bucket: str) -> None:
    import boto3

    boto3.client("s3", endpoint_url=s3_endpoint).put_object(Bucket=s3_bucket, Key="shared/report.csv", Body=b"x")
    with pytest.raises(StoreError, match=r"holds records but no project.json"):
        Project.prepare(parse_config(small_config()), f"s3://{s3_bucket}/shared?endpoint_url={s3_endpoint}")


# -- point 4: records that should exist but do not ------------------------------------------------
def test_a_missing_dispatch_record_stops_the_resume_before_anything_is_sent(tmp_path: Path) -> None:
    p, config = _finished(tmp_path)
    sent = _batches(p)
    _delete(p, keys.round_key(0, keys.DISPATCH))
    raised = {**config, "stopping": {"max_rounds": 2}}  # the user asks for one more round
    with pytest.raises(MissingRecordError) as info:
        resumed = Project.prepare(parse_config(raised), p.store.url)
        engine.run_in_process(resumed)  # on a store that does not notice, this re-sends round 0's items
    message = str(info.value)
    assert "\n" not in message and "rounds/0000/dispatch.json is missing" in message, message
    assert _batches(p) == sent  # nothing sent, nothing paid


def test_a_missing_label_segment_stops_instead_of_dropping_answers(tmp_path: Path) -> None:
    p, config = _finished(tmp_path)
    segment = p.store.list(keys.SEGMENTS)[0]
    _delete(p, segment)
    with pytest.raises(MissingRecordError, match=f"{segment} is missing, but rounds/0000/collected.json read answers"):
        engine.run_in_process(Project.prepare(parse_config({**config, "stopping": {"max_rounds": 2}}), p.store.url))


def test_refs_and_pay_of_the_open_round_without_their_intent_stop(tmp_path: Path) -> None:
    """Killed after paying round 0, before round 1 started: the next run would select round 0's items again."""
    p, config = _finished(tmp_path)
    for name in (keys.TRAIN, keys.MODEL, keys.METRICS):
        _delete(p, keys.round_key(1, name))
    _delete(p, keys.round_key(0, keys.DISPATCH))
    with pytest.raises(MissingRecordError, match=r"rounds/0000/dispatch.json is missing, but rounds/0000/refs.json"):
        Project.prepare(parse_config({**config, "stopping": {"max_rounds": 2}}), p.store.url)


def test_a_leaf_record_deleted_is_redone_exactly(tmp_path: Path) -> None:
    """A record nothing else vouches for (the last step's) is simply redone: same content."""
    p, config = _finished(tmp_path)
    before = p.record(1, keys.METRICS)
    _delete(p, keys.round_key(1, keys.METRICS))
    again = Project.prepare(parse_config(config), p.store.url)
    engine.run_in_process(again)
    assert again.record(1, keys.METRICS) == before


def _verify(location: str) -> subprocess.CompletedProcess:
    return subprocess.run([*crowdloop_cmd(), "verify", location], capture_output=True, text=True, env=_env(),
                          cwd=REPO, timeout=120)


def test_crowdloop_verify_lists_every_problem_one_line_each(tmp_path: Path) -> None:
    p, _ = _finished(tmp_path)
    ok = _verify(p.store.url)
    assert ok.returncode == 0, ok.stdout + ok.stderr
    assert ok.stdout.startswith("ok: ") and "2 rounds" in ok.stdout
    _delete(p, keys.round_key(0, keys.DISPATCH))
    _delete(p, p.store.list(keys.SEGMENTS)[0])
    _delete(p, keys.round_key(1, keys.MODEL))
    labels = Path(p.store.url) / keys.round_key(0, keys.LABELS)
    labels.write_text(labels.read_text().replace('"label":"', '"label":"x', 1))
    bad = _verify(p.store.url)
    assert bad.returncode == 2, bad.stdout + bad.stderr
    lines = bad.stdout.strip().splitlines()
    for fragment in ("rounds/0000/dispatch.json is missing", "labels/segments/", "rounds/0001/model.pkl is missing",
                     "rounds/0000/labels.jsonl has sha256"):
        assert sum(fragment in line for line in lines) >= 1, (fragment, lines)
    assert bad.stderr.startswith("error: ") and bad.stderr.count("\n") == 1, bad.stderr


def test_verify_a_project_that_is_not_one(tmp_path: Path) -> None:
    (tmp_path / "nothing").mkdir()
    done = _verify(str(tmp_path / "nothing"))
    assert done.returncode == 2 and "not a crowdloop project" in done.stderr


def test_problems_are_named_for_the_random_baseline_too(tmp_path: Path) -> None:
    from crowdloop.engine.verify import problems

    p, _ = _finished(tmp_path, **{"baseline.random": True})
    twin = p.baseline()
    engine.run_in_process(twin)
    assert problems(p, deep=True) == []
    _delete(p, f"{keys.BASELINE}/{keys.round_key(0, keys.DISPATCH)}")
    assert [str(x) for x in problems(p)] == [
        "baseline/rounds/0000/dispatch.json is missing, but baseline/rounds/0000/refs.json recorded it"]
