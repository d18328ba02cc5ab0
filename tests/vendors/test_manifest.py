"""The manifest drop-box vendor: Ground Truth input manifests out, result files in."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from crowdloop import engine, keys
from crowdloop.config import parse_config
from crowdloop.records import Task
from crowdloop.storage import read_json
from crowdloop.storage.local import LocalStore
from crowdloop.testing import check_vendor, make_context
from crowdloop.vendors.manifest import ManifestVendor
from tests.conftest import small_config

T0 = datetime(2026, 5, 1, 10, 0, tzinfo=UTC)


def answer(item: str, worker: str, label: str, seconds: float = 9.0, **extra) -> dict:
    line = {"item-id": item, "worker-id": worker, "label": label,
            "started-at": T0.isoformat().replace("+00:00", "Z"),
            "submitted-at": (T0 + timedelta(seconds=seconds)).isoformat()}
    line.update(extra)
    return line


def drop(store, name: str, lines: list) -> None:
    """Play the outside vendor: drop one result file (dicts become JSON lines, bytes stay raw)."""
    data = b"".join((line if isinstance(line, bytes) else json.dumps(line).encode()) + b"\n" for line in lines)
    store.write_bytes(f"results/{name}", data, create_only=True)


def vendor_at(tmp_path: Path, **params) -> ManifestVendor:
    ctx = make_context(LocalStore(tmp_path / "project"), name="manifest")
    return ManifestVendor(params, ctx)


WORKERS = ["w0", "w1", "w2", "w3"]


def careless_vendor_tool(v, tasks, batch_id):
    """An outside tool that reads the manifest, but also lets every blocked or excluded worker
    answer once: crowdloop must reject those lines (with the reason) and take only the others."""
    lines = []
    for raw in v.exchange.read_bytes(f"requests/{batch_id}.manifest.jsonl").splitlines():
        task = json.loads(raw)
        barred = set(task.get("blocked-workers", [])) | set(task.get("exclude-workers", []))
        lines += [answer(task["item-id"], w, "dog", **{"batch-id": batch_id}) for w in sorted(barred)]
        allowed = [w for w in WORKERS if w not in barred][:task["replicas"]]
        lines += [answer(task["item-id"], w, "dog", **{"batch-id": batch_id}) for w in allowed]
    drop(v.exchange, f"answers-{batch_id}.jsonl", lines)


def test_manifest_vendor_honours_the_contract(tmp_path):
    report = check_vendor(ManifestVendor, context=make_context(LocalStore(tmp_path), name="manifest"),
                          respond=careless_vendor_tool, n_items=3, replicas=2, workers=WORKERS)
    assert report.n_annotations == 6 + 3 + 6  # the first batch, the re-asks, the batch after the block
    assert not report.skipped
    assert any(c.startswith("blocks_workers") for c in report.checks)
    assert any(c.startswith("excludes_workers_per_item") for c in report.checks)


def test_blocked_and_excluded_workers_go_to_the_rejects_file_with_the_reason(tmp_path):
    v = vendor_at(tmp_path)
    refs0 = v.submit([Task(item_id="i0", round=0, batch_id="b0", replicas=2, reward=0.03)], batch_id="b0")
    drop(v.exchange, "r0.jsonl", [answer("i0", "w0", "dog"), answer("i0", "spam", "cat")])
    first = v.poll(refs0)
    v.block_workers(["spam"], reason="You answered 0 of 5 known-answer questions correctly (0%).")
    v.acknowledge(first, accept=True)  # the spammer is paid for the work before the block
    tasks = [Task(item_id="i0", round=1, batch_id="b1", replicas=1, reward=0.03, exclude_workers=("spam", "w0")),
             Task(item_id="i1", round=1, batch_id="b1", replicas=1, reward=0.03)]
    refs1 = v.submit(tasks, batch_id="b1")
    lines = [json.loads(x) for x in v.exchange.read_bytes("requests/b1.manifest.jsonl").splitlines()]
    assert lines[0]["exclude-workers"] == ["spam", "w0"] and all(x["blocked-workers"] == ["spam"] for x in lines)
    blocked = json.loads(v.exchange.read_bytes("requests/b1.blocked.json"))["blocked-workers"]
    assert blocked == {"spam": "You answered 0 of 5 known-answer questions correctly (0%)."}
    drop(v.exchange, "r1.jsonl", [answer("i0", "w0", "cat", **{"batch-id": "b1"}), answer("i1", "spam", "cat"),
                                  answer("i0", "w1", "dog", **{"batch-id": "b1"}), answer("i1", "w2", "dog")])
    got = v.poll(refs1)
    assert sorted((a.item_id, a.worker_id, a.batch_id) for a in got) == [("i0", "w1", "b1"), ("i1", "w2", "b1")]
    rejects = [json.loads(x) for x in v.exchange.read_bytes("rejects/r1.jsonl.rejects.jsonl").splitlines()]
    assert [r["line"] for r in rejects] == [1, 2]
    assert "answered item 'i0' before" in rejects[0]["reason"]
    assert "worker 'spam' was blocked before batch 'b1'" in rejects[1]["reason"] and "0 of 5" in rejects[1]["reason"]
    assert v.ledger()["paid"] == 0.06  # both first-batch answers, the spammer's included


def test_submit_writes_a_ground_truth_manifest_once(tmp_path):
    v = vendor_at(tmp_path)
    tasks = [Task(item_id=f"i{n}", round=0, batch_id="b0", replicas=3, reward=0.03) for n in range(3)]
    refs = v.submit(tasks, batch_id="b0")
    key = refs[0]["manifest"]
    first = v.exchange.read_bytes(key)
    lines = [json.loads(line) for line in first.splitlines()]
    assert [rec["item-id"] for rec in lines] == ["i0", "i1", "i2"]
    assert all(rec["source"] == f"contract item {rec['item-id']}" and rec["class-list"] == ["cat", "dog", "bird"]
               and rec["replicas"] == 3 and "source-ref" not in rec for rec in lines)
    # a retry, even with a different task list, sends nothing new
    assert v.submit(tasks[:1], batch_id="b0") == refs
    assert v.exchange.read_bytes(key) == first


def test_the_guidelines_travel_with_each_batch_for_the_vendors_workers(tmp_path):
    import dataclasses

    v = vendor_at(tmp_path)
    v = ManifestVendor({}, dataclasses.replace(v.context, guidelines="Birds fly.\nCats do not.",
                                               class_notes={"bird": "feathers", "cat": "whiskers"}))
    v.submit([Task(item_id="i0", round=0, batch_id="b0", replicas=1, reward=0.03)], batch_id="b0")
    guide = json.loads(v.exchange.read_bytes("requests/b0.guidelines.json"))
    assert guide == {"batch-id": "b0", "guidelines": "Birds fly.\nCats do not.",
                     "class-notes": {"cat": "whiskers", "bird": "feathers"}}  # in the class list's order
    bare = vendor_at(tmp_path / "bare")
    bare.submit([Task(item_id="i0", round=0, batch_id="b0", replicas=1, reward=0.03)], batch_id="b0")
    assert not bare.exchange.exists("requests/b0.guidelines.json")  # none configured: no file


def test_image_items_are_sent_by_reference(tmp_path):
    ctx = make_context(LocalStore(tmp_path), name="manifest")
    ctx = type(ctx)(**{**ctx.__dict__, "item_payload": lambda i: {"kind": "image", "path": f"/data/{i}.png"}})
    v = ManifestVendor({}, ctx)
    refs = v.submit([Task(item_id="x1", round=0, batch_id="b0", replicas=1, reward=0.01)], batch_id="b0")
    line = json.loads(v.exchange.read_bytes(refs[0]["manifest"]))
    assert line["source-ref"] == "/data/x1.png" and "source" not in line


def test_bad_result_lines_are_rejected_with_reasons_and_good_ones_kept(tmp_path, caplog):
    v = vendor_at(tmp_path)
    tasks = [Task(item_id=f"i{n}", round=0, batch_id="b0", replicas=2, reward=0.02) for n in range(3)]
    refs = v.submit(tasks, batch_id="b0")
    drop(v.exchange, "first.jsonl", [answer("i0", "w1", "cat")])
    assert [a.worker_id for a in v.poll(refs)] == ["w1"]
    drop(v.exchange, "second.jsonl", [
        answer("i1", "w1", "dog"),                      # good
        answer("nope", "w1", "dog"),                    # unknown item
        answer("i2", "w1", "horse"),                    # label outside the classes
        answer("i0", "w1", "cat"),                      # duplicate of first.jsonl
        answer("i1", "w1", "cat"),                      # duplicate within this file
        b'{"item-id": "i2", "worker-id": ',             # malformed JSON
        b"[1, 2]",                                      # not an object
        {"item-id": "i2", "label": "cat"},              # missing fields
        answer("i2", "w2", "cat", **{"submitted-at": "yesterday"}),
        answer("i2", "w3", "cat", seconds=-5),          # submitted before started
        b"\xff\xfe not utf-8",
        answer("i2", "w4", "bird", **{"batch-id": "other"}),
        answer("i2", "w5", "bird"),                     # good
    ])
    new = v.poll(refs)
    assert sorted((a.item_id, a.worker_id, a.label) for a in new) == [("i1", "w1", "dog"), ("i2", "w5", "bird")]
    assert all(a.duration_s == 9.0 and a.reward == 0.02 and a.batch_id == "b0" for a in new)
    rejects = [json.loads(line) for line in v.exchange.read_bytes("rejects/second.jsonl.rejects.jsonl").splitlines()]
    reasons = {r["line"]: r["reason"] for r in rejects}
    assert sorted(reasons) == [2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12]
    assert "unknown item-id 'nope'" in reasons[2]
    assert "label 'horse' is not one of the classes" in reasons[3]
    assert reasons[4].startswith("duplicate") and reasons[5].startswith("duplicate")
    assert "not valid JSON" in reasons[6] and "expected a JSON object" in reasons[7]
    assert "missing field 'worker-id'" in reasons[8] and "not an ISO 8601 timestamp" in reasons[9]
    assert "task time" in reasons[10] and reasons[11] == "not UTF-8 text" and "batch-id 'other'" in reasons[12]
    # one warning per file (a flow run shows it in its logs: crowdloop.flows.logs)
    [warning] = [r for r in caplog.records if r.name == "crowdloop.vendors.manifest"]
    assert warning.levelname == "WARNING" and warning.getMessage().startswith("manifest: 11 line(s) of ")
    assert v.poll(refs) == []


def test_a_result_file_is_never_read_twice_even_after_a_restart(tmp_path):
    v = vendor_at(tmp_path)
    tasks = [Task(item_id="i0", round=0, batch_id="b0", replicas=2, reward=0.02)]
    refs = v.submit(tasks, batch_id="b0")
    drop(v.exchange, "a.jsonl", [answer("i0", "w1", "cat"), answer("zz", "w1", "cat")])
    assert len(v.poll(refs)) == 1
    restarted = ManifestVendor({}, v.context)
    reads: list[str] = []
    original = restarted.exchange.read_bytes
    restarted.exchange = type("Spy", (), {})()
    for name in ("list", "exists", "write_bytes"):
        setattr(restarted.exchange, name, getattr(v.exchange, name))
    restarted.exchange.read_bytes = lambda key: reads.append(key) or original(key)
    again = restarted.poll(refs)  # a new process may return old answers (the loop de-duplicates) ...
    assert [a.worker_id for a in again] == ["w1"]
    assert not [k for k in reads if k.startswith("results/")]  # ... but never re-reads the file
    assert len(v.exchange.read_bytes("rejects/a.jsonl.rejects.jsonl").splitlines()) == 1


def test_a_crash_between_answers_and_marker_replays_to_the_same_records(tmp_path):
    v = vendor_at(tmp_path)
    refs = v.submit([Task(item_id="i0", round=0, batch_id="b0", replicas=2, reward=0.02)], batch_id="b0")
    drop(v.exchange, "a.jsonl", [answer("i0", "w1", "cat"), answer("i0", "w2", "dog")])
    v.ingest()
    marker = list(v.state.list("processed/"))
    assert len(marker) == 1
    v.state.delete(marker[0])  # as if killed after writing the answers but before the marker
    restarted = ManifestVendor({}, v.context)
    got = restarted.poll(refs)
    assert sorted(a.worker_id for a in got) == ["w1", "w2"]  # not rejected as duplicates of themselves
    assert not v.exchange.list("rejects/")
    assert len(v.state.list("answers/b0/")) == 1


def test_params_are_validated_with_one_line_errors(tmp_path):
    from crowdloop.errors import ConfigError

    with pytest.raises(ConfigError, match=r"vendor.params.results_prefix"):
        vendor_at(tmp_path, results_prefix="../x")
    with pytest.raises(ConfigError, match=r"vendor.params.bogus: unknown field"):
        vendor_at(tmp_path, bogus=1)
    # every file under results_prefix is read as answers: a rejects file there was rejected and
    # reported again on each poll, one more file each time
    with pytest.raises(ConfigError, match=r"vendor.params: rejects_prefix='results/rejects/' and "
                                          r"results_prefix='results/' overlap; expected three separate folders"):
        vendor_at(tmp_path, rejects_prefix="results/rejects")
    with pytest.raises(ConfigError, match=r"requests_prefix='drop/' and results_prefix='drop/' overlap"):
        vendor_at(tmp_path, requests_prefix="drop", results_prefix="drop/")


def drop_box_project(tmp_path: Path, **settings) -> tuple[engine.Project, LocalStore, dict[str, str]]:
    """An iris project whose manifest vendor shares a directory with the outside vendor (played by
    the test through the returned store); the pool's true labels, for the test's answers."""
    shared = tmp_path / "dropbox"
    cfg = parse_config(small_config(**{"vendor": {"name": "manifest", "params": {"url": str(shared)}},
                                       "pool.name": "iris", "consensus.method": "majority_vote", **settings}))
    p = engine.Project.prepare(cfg, str(tmp_path / "project"))
    return p, LocalStore(shared), dict(zip(p.pool.ids.tolist(), p.pool.y.tolist(), strict=True))


def test_the_loop_runs_rounds_through_a_shared_drop_box(tmp_path):
    """dispatch → the outside vendor answers from files → collect → aggregate → pay."""
    p, outside, truth = drop_box_project(tmp_path, **{"sampler.initial_size": 6, "sampler.batch_size": 6,
                                                      "consensus.redundancy": 2, "collect.timeout_s": 5,
                                                      "collect.poll_interval_s": 0.01})
    for r in range(2):
        engine.run_round(p, r, until="dispatch")
        refs = engine.dispatch(p, r)["refs"]
        manifest = [json.loads(line) for line in outside.read_bytes(refs[0]["manifest"]).splitlines()]
        assert len(manifest) == 6 and all(json.loads(rec["source"]) for rec in manifest)
        lines = [answer(rec["item-id"], f"w{k}", truth[rec["item-id"]]) for rec in manifest for k in range(2)]
        drop(outside, f"round-{r}.jsonl", [*lines, answer("ghost", "w1", "setosa")])
        collected = engine.collect(p, r)
        assert collected["complete"] and collected["n_annotations"] == 12
        engine.aggregate(p, r)
        labels = {lab.item_id: lab.label for lab in p.human_labels(r + 1)}
        assert all(labels[i] == truth[i] for i in labels) and len(labels) == 6 * (r + 1)
        assert engine.pay(p, r)["n_approved"] == 12
    assert len(outside.list("acks/")) == 2 and len(outside.list("rejects/")) == 2
    assert read_json(p.store, keys.round_key(1, keys.COLLECTED))["complete"]


def test_a_second_store_on_the_same_drop_box_is_refused_before_it_takes_the_first_ones_answers(tmp_path):
    """Batch ids are ``<project>-rNNNN``. Before, a store deleted to start over (or a second store of
    the same project) found round 0's manifest in the shared drop box, kept it in place of its own
    and ingested the answers dropped for the first store as its own."""
    from crowdloop.errors import VendorError

    p, outside, truth = drop_box_project(tmp_path, **{"sampler.initial_size": 6, "consensus.redundancy": 1})
    engine.run_round(p, 0, until="dispatch")
    manifest = engine.dispatch(p, 0)["refs"][0]["manifest"]
    sent = outside.read_bytes(manifest)
    drop(outside, "round-0.jsonl", [answer(json.loads(line)["item-id"], "w1", truth[json.loads(line)["item-id"]])
                                    for line in sent.splitlines()])
    again = engine.Project.prepare(p.config, str(tmp_path / "again"))  # a new store, the same drop box
    with pytest.raises(VendorError, match=r"already holds requests/tiny-r0000\.manifest\.jsonl, which this project "
                                          r"store did not send") as refused:
        engine.run_round(again, 0)
    assert len(str(refused.value).splitlines()) == 1 and "vendor.params.url" in str(refused.value)
    assert outside.read_bytes(manifest) == sent and again.annotations() == []


def test_the_drop_box_can_be_an_s3_bucket(tmp_path, s3_endpoint, s3_bucket):
    """Exchange files on S3 (a local S3 server), vendor state in the project store."""
    from crowdloop.storage import open_store

    url = f"s3://{s3_bucket}/dropbox?endpoint_url={s3_endpoint}"
    ctx = make_context(LocalStore(tmp_path), name="manifest")

    def respond(v, tasks, batch_id):
        drop(open_store(url), "answers.jsonl",
             [answer(t.item_id, f"w{r}", "bird") for t in tasks for r in range(t.replicas)] + [b"garbage"])

    report = check_vendor(ManifestVendor, params={"url": url}, context=ctx, respond=respond, n_items=3, replicas=2)
    bucket = open_store(url)
    assert report.n_annotations == 6
    # the manifest, and the mark that the batch closed when it was paid (later answers are refused)
    assert bucket.list("requests/") == ["requests/contract-r0000.closed.json", "requests/contract-r0000.manifest.jsonl"]
    assert json.loads(bucket.read_bytes("rejects/answers.jsonl.rejects.jsonl"))["reason"].startswith("not valid JSON")
    assert ctx.store.list("processed/") and not LocalStore(tmp_path).list("vendor/manifest/requests/")


_json_values = st.recursive(st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=12),
                            lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8), inner, max_size=3),
                            max_leaves=6)
_line = st.one_of(
    st.binary(max_size=60).filter(lambda b: b"\n" not in b and b"\r" not in b),
    st.builds(lambda d: json.dumps(d).encode(), _json_values),
    st.builds(lambda item, worker, label, secs: json.dumps(answer(item, worker, label, secs)).encode(),
              st.sampled_from(["i0", "i1", "nope", ""]), st.text(max_size=6), st.sampled_from(["cat", "dog", "x"]),
              st.floats(min_value=-10, max_value=1e6)),
)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(lines=st.lists(_line, max_size=12))
def test_any_result_file_is_split_into_answers_and_rejects_without_crashing(tmp_path_factory, lines):
    import uuid

    v = vendor_at(tmp_path_factory.mktemp(uuid.uuid4().hex[:8]))
    refs = v.submit([Task(item_id=i, round=0, batch_id="b0", replicas=3, reward=0.02) for i in ("i0", "i1")],
                    batch_id="b0")
    v.exchange.write_bytes("results/hostile.jsonl", b"\n".join(lines) + b"\n")
    got = v.poll(refs)
    rejects = v.exchange.list("rejects/")
    n_rejected = len(v.exchange.read_bytes(rejects[0]).splitlines()) if rejects else 0
    assert len(got) + n_rejected == sum(1 for line in lines if line.strip())
    assert all(a.label in ("cat", "dog", "bird") and a.item_id in ("i0", "i1") for a in got)
    assert len({(a.item_id, a.worker_id) for a in got}) == len(got)
    # what the vendor stored is exactly what it returned, as valid records (the label log's format)
    from crowdloop.records import Annotation

    stored = [Annotation.model_validate_json(line) for key in v.state.list("answers/")
              for line in v.state.read_bytes(key).splitlines() if line.strip()]
    assert sorted(a.assignment_id for a in stored) == sorted(a.assignment_id for a in got)
    assert all(json.loads(line)["reason"] for key in rejects for line in v.exchange.read_bytes(key).splitlines())


def test_an_output_manifest_dropped_after_the_round_closed_is_refused_line_by_line(tmp_path):
    """On main a result file dropped after the loop's last poll of its batch was ingested as good
    answers of a batch nobody polled again: no label, no decision, no word in rejects/ or the log."""
    import time

    p, outside, truth = drop_box_project(tmp_path, **{"sampler.initial_size": 4, "sampler.batch_size": 4,
                                                      "consensus.redundancy": 1, "collect.timeout_s": 1.5,
                                                      "collect.poll_interval_s": 0.05})
    engine.run_round(p, 0, until="dispatch")
    refs = engine.dispatch(p, 0)["refs"]
    manifest = [json.loads(line) for line in outside.read_bytes(refs[0]["manifest"]).splitlines()]
    in_time, late = [rec["item-id"] for rec in manifest[:2]], [rec["item-id"] for rec in manifest[2:]]
    drop(outside, "in-time.jsonl", [answer(i, "w0", truth[i]) for i in in_time])
    dispatched_at = read_json(p.store, keys.round_key(0, keys.REFS))["dispatched_at"]
    time.sleep(max(0.0, dispatched_at + 1.5 - time.time()) + 0.2)
    collected = engine.collect(p, 0)  # the poll after the deadline ingests, then closes the batch
    assert collected["n_annotations"] == 2 and not collected["complete"]
    assert json.loads(outside.read_bytes(f"requests/{refs[0]['batch_id']}.closed.json"))["reason"] == "deadline"
    engine.aggregate(p, 0)
    engine.pay(p, 0)
    drop(outside, "late.jsonl", [answer(i, "w1", truth[i], **{"batch-id": refs[0]["batch_id"]}) for i in late])
    engine.run_round(p, 1, until="dispatch")
    engine.dispatch(p, 1)
    engine.collect(p, 1, wait=False)  # a later poll ingests the late file
    rejects = [json.loads(line) for line in outside.read_bytes("rejects/late.jsonl.rejects.jsonl").splitlines()]
    assert len(rejects) == 2 and all("is closed" in r["reason"] and "does not pay it" in r["reason"] for r in rejects)
    assert not any(a.item_id in late and a.worker_id == "w1" for a in p.annotations())
    paid = {aid for k in outside.list("acks/") for aid in read_json(outside, k)["assignment_ids"]}
    assert len(paid) == 2  # only what the loop collected was decided
    due = {rec["deadline"] for rec in manifest}  # the outside vendor was told when answers were due
    assert len(due) == 1 and datetime.fromisoformat(due.pop().replace("Z", "+00:00")).timestamp() <= dispatched_at + 1.5


def test_a_worker_id_from_the_drop_box_cannot_restyle_or_clear_the_operators_terminal(tmp_path):
    """Worker ids are whatever the outside vendor writes. ``crowdloop workers`` printed them as rich
    markup (a ``[link=...]`` became a hyperlink) and passed escape sequences to the terminal."""
    import io

    from rich.console import Console
    from typer.testing import CliRunner

    from crowdloop.cli import app as cli_app
    from crowdloop.cli import common

    p, outside, truth = drop_box_project(tmp_path, **{"sampler.initial_size": 4, "consensus.redundancy": 1,
                                                      "collect.timeout_s": 5, "collect.poll_interval_s": 0.01})
    engine.run_round(p, 0, until="dispatch")
    refs = engine.dispatch(p, 0)["refs"]
    items = [json.loads(line)["item-id"] for line in outside.read_bytes(refs[0]["manifest"]).splitlines()]
    hostile = "[link=http://evil.example]w[/link]\x1b[2J\x1b]8;;http://evil.example\x07"
    drop(outside, "r0.jsonl", [answer(items[0], hostile, truth[items[0]]),
                               *(answer(i, "w1", truth[i]) for i in items[1:])])
    engine.collect(p, 0)
    engine.aggregate(p, 0)
    engine.pay(p, 0)
    terminal = io.StringIO()
    common.console = Console(file=terminal, force_terminal=True, width=200)
    try:
        from crowdloop.cli import inspection

        inspection.console = common.console
        result = CliRunner().invoke(cli_app, ["workers", "-p", p.store.url])
    finally:
        common.console = inspection.console = Console()
    assert result.exit_code == 0, result.output
    shown = terminal.getvalue()
    assert "[link=http://evil.example]w[/link]\\x1b[2J\\x1b]8;;http://evil.example\\x07" in shown
    assert "\x1b]8;" not in shown and "\x1b[2J" not in shown  # styles only: no hyperlink, no clear-screen
