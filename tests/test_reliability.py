"""Crash anywhere, faulty vendors and storage (issue 9), within a CI time budget.

Every step boundary is killed for the simulated vendor on the local store, and a few seeded
random points (the n-th store write or vendor call) for each other vendor/store pair; with
adaptive redundancy, gold and ring blocking on, every boundary of the round that re-asks is
killed for the simulated and the manifest vendor. These
tests run the engine's steps in a forked child (milliseconds to start), killed with SIGKILL;
``benchmarks/crash_harness.py`` runs the full matrix through the real ``crowdloop run`` (and
tests/test_cli_e2e.py kills the CLI itself).
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest

from crowdloop import engine, keys
from crowdloop.config import parse_config
from crowdloop.engine import Project
from tests.conftest import small_config
from tests.fault_harness import STORES, VENDORS, Scenario, compare, moto_s3

pytestmark = pytest.mark.slow

SEED = 20261124
TRANSIENT = f"p=0.2,seed={SEED % 1000}"


@pytest.fixture(scope="module")
def s3() -> Iterator[tuple[str, str]]:
    with moto_s3() as endpoint_bucket:
        yield endpoint_bucket


_scenarios: dict[tuple[str, str], Scenario] = {}


def scenario(vendor: str, store: str, tmp_path_factory, s3, prefect_url: str = "http://127.0.0.1:9") -> Scenario:
    """A prepared (uninterrupted-run-known) scenario, one per vendor/store for the module."""
    key = (vendor, store)
    if key not in _scenarios:
        endpoint, bucket = s3 if store == "s3" else (None, None)
        s = Scenario(vendor, store, tmp_path_factory.mktemp(f"{vendor}-{store}"), prefect_url, endpoint, bucket,
                     max_rounds=1, mode="fork", backoff_scale=0.05)
        s.prepare()
        assert s.clean["n_log"] > 0 and s.clean["paid"] > 0 and len(s.clean["labels"]) > 0
        _scenarios[key] = s
    return _scenarios[key]


def test_a_kill_at_every_step_boundary_resumes_exactly(tmp_path_factory, s3) -> None:
    s = scenario("simulated", "local", tmp_path_factory, s3)
    # The harness learns its kill points from a traced run; they must be exactly the points the
    # engine declares (every step of ROUND_STEPS, the reference, the points inside steps), so a
    # step that moved or a point that lost its hook cannot silently drop out of the crash tests.
    assert {point.split("@")[0] for point in s.boundaries} == set(engine.declared_points())
    round_one = {f"{step.name}:done@1" for step in engine.ROUND_STEPS[:3]}  # max_rounds=1: round 1 stops after the check
    assert set(s.boundaries) == {f"{point}@0" for point in engine.declared_points()} | round_one
    results = [s.kill_and_resume(point) for point in s.boundaries]
    assert all(r["killed"] for r in results), [r["point"] for r in results if not r["killed"]]
    assert [r for r in results if r["mismatches"]] == []


@pytest.mark.parametrize("vendor,store", [(v, s) for v in VENDORS for s in STORES if (v, s) != ("simulated", "local")])
def test_kills_at_random_points_resume_exactly(vendor: str, store: str, tmp_path_factory, s3) -> None:
    s = scenario(vendor, store, tmp_path_factory, s3)
    for point in s.random_points(1, SEED):
        result = s.kill_and_resume(point)
        assert result["killed"] and result["mismatches"] == [], result


@pytest.mark.parametrize("vendor", ["simulated", "manifest", "mturk"])
def test_kills_with_adaptive_redundancy_gold_and_ring_blocking_resume_exactly(vendor: str, tmp_path_factory) -> None:
    """Round 1 re-asks round 0's unsure items of other workers (the manifest's answerer honours
    ``exclude-workers``; on MTurk a re-ask adds assignments to the item's HIT, which the fake's
    crowd gives to a worker who has not had it), mixes in gold and checks rings: a kill at each
    of its step boundaries must neither lose a re-ask nor pay one twice."""
    from collections import Counter

    s = Scenario(vendor, "local", tmp_path_factory.mktemp(f"quality-{vendor}"), "http://127.0.0.1:9", max_rounds=2,
                 mode="fork", backoff_scale=0.05, quality=True)
    s.prepare()
    clean = Project.open(s.location("clean"))
    log = clean.annotations()
    asked = Counter(a.item_id for a in log)
    assert sum(1 for item, n in asked.items() if n == 2 and item not in clean.gold_set) >= 5  # re-asked once
    assert any(a.item_id in clean.gold_set for a in log)
    assert all(len({a.worker_id for a in log if a.item_id == item}) == n for item, n in asked.items())
    if vendor == "mturk":  # the re-asks were more assignments on the items' round-0 HITs, not new HITs
        hits = clean.vendor.store
        extended = [k for k in hits.list("hits/") if k.endswith(".hit.json") and "extends" in json.loads(hits.read_bytes(k))]
        assert len(extended) >= 5, extended
    points = [point for point in s.boundaries if point.endswith("@1")]
    assert any(point.startswith("collect:") for point in points) and len(points) >= 10
    results = [s.kill_and_resume(point) for point in points]
    assert all(r["killed"] for r in results), [r["point"] for r in results if not r["killed"]]
    assert [r for r in results if r["mismatches"]] == []


@pytest.mark.parametrize("vendor,store", [("simulated", "s3"), ("mturk", "local")])
def test_transient_faults_change_nothing(vendor: str, store: str, tmp_path_factory, s3) -> None:
    s = scenario(vendor, store, tmp_path_factory, s3)
    first, rerun, got = s.faulty_run(transient=TRANSIENT, name=f"transient-{vendor}")
    assert first.returncode == 0 and rerun is None, first.stderr
    trace = (s.workdir / f"transient-{vendor}" / "trace.txt").read_text()
    assert trace.count("\nfault ") + trace.startswith("fault ") > 0  # faults were really injected
    assert compare(got, s.clean) == []


@pytest.mark.parametrize("vendor,store,fault,message", [
    ("simulated", "s3", "s3:40", "access denied"),
    ("mturk", "local", "mturk:3", "security token"),
])
def test_a_permanent_fault_is_one_line_and_a_rerun_completes(vendor: str, store: str, fault: str, message: str,
                                                             tmp_path_factory, s3) -> None:
    s = scenario(vendor, store, tmp_path_factory, s3)
    first, rerun, got = s.faulty_run(permanent=fault, name=f"permanent-{vendor}")
    assert first.returncode == 2, first.stderr
    line = first.stderr.strip()
    assert "\n" not in line and line.startswith("error: ") and message in line, line
    assert rerun is not None and rerun.returncode == 0, rerun.stderr
    assert compare(got, s.clean) == []


def test_a_missing_bucket_is_one_line_and_creating_it_lets_the_run_complete(tmp_path_factory, s3) -> None:
    import boto3

    s = scenario("simulated", "s3", tmp_path_factory, s3)
    endpoint, _ = s3
    gone = Scenario("simulated", "s3", s.workdir / "gone", s.prefect_api_url, endpoint, "crowdloop-not-created",
                    max_rounds=1, mode="fork")
    location = gone.location("p")
    first = gone.run("p", location, None, gone.env())
    assert first.returncode == 2 and "bucket 'crowdloop-not-created' not found" in first.stderr, first.stderr
    boto3.client("s3", endpoint_url=endpoint).create_bucket(Bucket="crowdloop-not-created")
    assert gone.run("p", location, None, gone.env()).returncode == 0
    from tests.fault_harness import outcome

    assert compare(outcome(location), s.clean) == []


def test_the_cli_reports_a_permanent_fault_in_one_line_and_resumes(tmp_path_factory, s3, prefect_api_url: str) -> None:
    """Through `crowdloop run` (Prefect flow): revoked MTurk credentials end the run with exactly one
    line on stderr and exit 2; the rerun finishes equal to the engine's uninterrupted run."""
    s = scenario("mturk", "local", tmp_path_factory, s3)
    cli = Scenario("mturk", "local", s.workdir / "cli", prefect_api_url, max_rounds=1, mode="cli")
    cli.clean = s.clean
    first, rerun, got = cli.faulty_run(permanent="mturk:3", name="permanent-cli")
    assert first.returncode == 2 and first.stderr.count("\n") == 1, first.stderr[-2000:]
    assert first.stderr.startswith("error: vendor 'mturk': create_hit failed: UnrecognizedClientException")
    assert rerun is not None and rerun.returncode == 0, rerun.stderr[-2000:]
    assert compare(got, s.clean) == []


def test_an_answer_polled_before_a_failure_is_not_lost_to_the_retry(tmp_path: Path) -> None:
    """Regression: poll() hands each answer out once per vendor object; if the collect step failed
    after polling, a retry in the same process never saw those answers again (lost, unpaid)."""
    p = Project.prepare(parse_config(small_config(**{"collect.timeout_s": 0.5})), str(tmp_path / "p"))
    engine.run_round(p, 0, until="dispatch")
    real_poll = p.vendor.poll

    failed: list[bool] = []

    def poll_then_fail(refs):  # the first time, the answers arrive and then the connection drops
        answers = real_poll(refs)
        if not failed:
            failed.append(True)
            raise ConnectionError("connection reset after the answers were sent")
        return answers

    p.vendor.poll = poll_then_fail
    with pytest.raises(ConnectionError):
        engine.collect(p, 0, sleep=lambda s: None)
    result = engine.collect(p, 0, sleep=lambda s: None)
    assert result["complete"] and result["n_annotations"] == p.vendor.ledger()["assignments"] == 30 * 3


def test_a_record_deleted_between_runs_resumes_exactly_or_stops_in_one_line(tmp_path_factory, s3) -> None:
    """Every kind of record the loop writes, deleted after a finished run, then a run with one more
    round: it resumes equal to the uninterrupted longer run, or stops in one line naming the record
    with nothing sent, paid or written (never a re-sent item, never a judgment lost)."""
    s = scenario("simulated", "local", tmp_path_factory, s3)
    kinds = s.prepare_deletions()
    names = {kind.split("@")[0] for kind, _ in kinds}
    assert {keys.DISPATCH, keys.REFS, keys.PAY, keys.COLLECTED, keys.MODEL, "segment", keys.PROJECT} <= names, names
    results = [s.delete_and_resume(kind, key) for kind, key in kinds]
    assert [r for r in results if r["verdict"] == "mismatch"] == []
    verdict = {r["kind"]: r["verdict"] for r in results}
    # what the issue found: a lost intent re-sent and re-paid items; a lost segment dropped answers
    for kind in ("dispatch.json@0", "segment@0", "pay.json@0", "model.pkl@1"):
        assert verdict[kind] == "stopped with one line", (kind, results)
    assert verdict["reference.json"] == "resumed exactly"


def test_a_failure_of_the_manifest_answering_thread_fails_the_block(tmp_path: Path) -> None:
    """The thread playing the manifest vendor's workers used to collect its exceptions unread: a
    broken answerer left the loop waiting and the test blamed the loop (or passed). Now a
    non-transient failure is raised when its block ends; a transient one is retried."""
    from tests.fault_harness import AnswererError, ManifestAnswerer

    class Broken(ManifestAnswerer):
        calls = 0

        def answer_all(self, exchange) -> None:
            Broken.calls += 1
            if Broken.calls == 1:
                raise ConnectionError("the store was briefly unreachable")  # transient: the next tick retries
            raise KeyError("item-id")  # a bug in the answerer: the test must fail

    import time

    truth = type("T", (), {"seed": 1})()
    give_up = time.monotonic() + 60
    answerer = Broken(str(tmp_path / "p"), truth, interval_s=0.01)
    with pytest.raises(AnswererError, match="KeyError"), answerer:
        while Broken.calls < 3 and time.monotonic() < give_up:
            time.sleep(0.01)
    assert answerer.errors and all(e.startswith("KeyError") for e in answerer.errors)
