"""The S3 project lock under contention: conditional takeover and renewal (issue 19, point 7).

Two processes that both find an expired lease must not both win it, and a holder that stalled
past its lease must neither overwrite its successor's lease nor write another record.
"""

from __future__ import annotations

import multiprocessing
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from crowdloop.errors import ProjectLockedError
from crowdloop.storage.s3 import S3Store

REPO = Path(__file__).resolve().parents[2]
RACES = 60
LOCK_KEY = "race/.crowdloop/locks/project.lock"


def _racer(endpoint: str, bucket: str, start, done, results) -> None:
    """One of two processes: at every start signal, try to take the lock; hold it until both tried."""
    store = S3Store(bucket, "race", endpoint_url=endpoint, lock_ttl_s=30.0)
    for _ in range(RACES):
        start.wait()
        try:
            with store.lock("project"):
                results.put("won")
                done.wait()  # hold the lease until the other racer has tried
        except ProjectLockedError:
            results.put("lost")
            done.wait()


def test_two_processes_racing_for_an_expired_lease_never_both_win(s3_endpoint: str, s3_bucket: str) -> None:
    ctx = multiprocessing.get_context("spawn")
    start, done = ctx.Barrier(3), ctx.Barrier(3)
    results = ctx.SimpleQueue()
    racers = [ctx.Process(target=_racer, args=(s3_endpoint, s3_bucket, start, done, results), daemon=True)
              for _ in range(2)]
    for proc in racers:
        proc.start()
    client = S3Store(s3_bucket, "race", endpoint_url=s3_endpoint).client
    outcomes = []
    try:
        for _ in range(RACES):
            # the lease of a run that died a while ago: both racers see it expired
            client.put_object(Bucket=s3_bucket, Key=LOCK_KEY, Body=f"{time.time() - 5:.3f} pid 1 on gone (dead)".encode())
            start.wait(timeout=60)
            race = sorted(results.get() for _ in range(2))
            outcomes.append(race)
            done.wait(timeout=60)
    finally:
        for proc in racers:
            proc.join(timeout=30)
            if proc.is_alive():
                proc.kill()
    assert len(outcomes) == RACES
    both = sum(race == ["won", "won"] for race in outcomes)
    neither = sum(race == ["lost", "lost"] for race in outcomes)
    assert (both, neither) == (0, 0), f"{both} of {RACES} races had two winners, {neither} none"



_HOLDER = """
import sys
from crowdloop.errors import ProjectLockedError
from crowdloop.storage.s3 import S3Store
store = S3Store(sys.argv[1], "stall", endpoint_url=sys.argv[2], lock_ttl_s=1.0)
with store.lock("project"):
    store.write_bytes("before.json", b"1")
    print("locked", flush=True)
    sys.stdin.readline()
    try:
        store.write_bytes("after.json", b"2")
        print("wrote", flush=True)
    except ProjectLockedError as exc:
        print("refused:", exc, flush=True)
"""


def test_a_holder_that_stalled_past_its_lease_stops_and_never_overwrites_its_successor(
        s3_endpoint: str, s3_bucket: str) -> None:
    holder = subprocess.Popen([sys.executable, "-c", _HOLDER, s3_bucket, s3_endpoint], cwd=REPO, text=True,
                              stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        assert holder.stdout.readline().strip() == "locked", holder.stderr.read()
        os.kill(holder.pid, signal.SIGSTOP)  # a stall: swapped out, a long GC pause, a suspended laptop
        time.sleep(1.5)  # past its lease
        successor = S3Store(s3_bucket, "stall", endpoint_url=s3_endpoint, lock_ttl_s=30.0)
        with successor.lock("project"):
            os.kill(holder.pid, signal.SIGCONT)
            time.sleep(1.0)  # the stalled holder's renewal thread wakes up and tries to renew
            lease = successor.client.get_object(Bucket=s3_bucket, Key="stall/.crowdloop/locks/project.lock")["Body"].read()
            holder.stdin.write("go\n")
            holder.stdin.flush()
            answer = holder.stdout.readline().strip()
            assert answer.startswith("refused:") and "lost" in answer, answer + holder.stderr.read()
            assert not successor.exists("after.json")
            still = successor.client.get_object(Bucket=s3_bucket, Key="stall/.crowdloop/locks/project.lock")["Body"].read()
            assert lease == still and b"pid 1 " not in still  # the successor's lease, untouched
            assert str(os.getpid()).encode() in still
        assert holder.wait(timeout=30) == 0, holder.stderr.read()
    finally:
        if holder.poll() is None:
            os.kill(holder.pid, signal.SIGCONT)
            holder.kill()


def _ignore_if_match(store: S3Store) -> None:
    """Make ``store``'s client behave as against a server that ignores ``If-Match`` (the header never leaves)."""
    def strip(params, **_):
        params.pop("IfMatch", None)

    for op in ("PutObject", "DeleteObject"):
        store.client.meta.events.register(f"before-parameter-build.s3.{op}", strip)


def test_if_match_support_is_probed_and_the_fallback_says_it_is_best_effort(s3_endpoint: str, s3_bucket: str,
                                                                            caplog) -> None:
    honest = S3Store(s3_bucket, "probe", endpoint_url=s3_endpoint)
    assert honest._supports_if_match() is True
    ignoring = S3Store(s3_bucket, "fallback", endpoint_url=s3_endpoint, lock_ttl_s=30.0)
    _ignore_if_match(ignoring)
    assert ignoring._supports_if_match() is False
    assert ignoring.list() == [] and honest.list() == []  # probe objects are cleaned up
    ignoring.client.put_object(Bucket=s3_bucket, Key="fallback/.crowdloop/locks/project.lock",
                               Body=f"{time.time() - 5:.3f} pid 1 on gone".encode())
    with caplog.at_level("WARNING", logger="crowdloop.storage.s3"), ignoring.lock("project"):  # taken over, best effort
        ignoring.write_bytes("a.json", b"1")
        with pytest.raises(ProjectLockedError), S3Store(s3_bucket, "fallback", endpoint_url=s3_endpoint).lock("project"):
            pass
    assert "ignores If-Match" in caplog.text and "best effort" in caplog.text
    assert not ignoring._exists("fallback/.crowdloop/locks/project.lock")  # released


def test_a_lease_that_could_not_be_renewed_in_time_stops_writes(s3_endpoint: str, s3_bucket: str) -> None:
    """Renewals failing (network down) for longer than the lease: the holder stops writing on its own."""
    store = S3Store(s3_bucket, "norenew", endpoint_url=s3_endpoint, lock_ttl_s=0.6)
    with store.lock("project"):
        store.write_bytes("a.json", b"1")
        from botocore.exceptions import EndpointConnectionError

        def network_down(lease) -> None:
            raise EndpointConnectionError(endpoint_url=s3_endpoint)

        store._renew = network_down  # type: ignore[method-assign]
        time.sleep(0.8)
        with pytest.raises(ProjectLockedError, match="could not be renewed"):
            store.write_bytes("b.json", b"2")


def test_a_renewal_that_fell_behind_is_caught_up_before_a_write_if_nobody_took_the_lease(s3_endpoint: str,
                                                                                         s3_bucket: str) -> None:
    """A starved renewal thread (a loaded machine) is not a lost lease: the write renews on the
    lease's ETag first, which succeeds only if nobody wrote the lease since; a rival's lease stops it."""
    store = S3Store(s3_bucket, "behind", endpoint_url=s3_endpoint, lock_ttl_s=30.0)
    with store.lock("project"):
        lease = store._leases[0]
        lease.valid_until = 0.0  # as if no renewal got through for longer than the lease
        store.write_bytes("a.json", b"1")  # renewed on the spot: still ours
        assert lease.valid_until > time.monotonic() and lease.lost is None
        store.client.put_object(Bucket=s3_bucket, Key="behind/.crowdloop/locks/project.lock",
                                Body=f"{time.time() + 30:.3f} pid 2 on rival".encode())  # a rival's takeover
        lease.valid_until = 0.0
        with pytest.raises(ProjectLockedError, match="taken over by pid 2 on rival"):
            store.write_bytes("b.json", b"2")
    assert not store.exists("b.json")
    assert b"rival" in store.client.get_object(Bucket=s3_bucket, Key="behind/.crowdloop/locks/project.lock")["Body"].read()
