"""The crash harness: run ``crowdloop run`` in a subprocess, SIGKILL it, rerun, compare.

One *scenario* is a (vendor, store) pair: simulated / manifest / mturk on the local directory
store or S3 (moto's server). For each kill point the harness starts a fresh project, runs the
loop under ``tests.faults`` until the point kills it, reruns it to completion and
checks against an uninterrupted run with the same seed:

* no item dispatched twice on the vendor (the vendor's own record of tasks / HITs / manifests),
* no annotation lost or duplicated (the label log against the vendor's assignments),
* money accounted equals the vendor's ledger (approved rewards and bonuses),
* the same final labels and per-round metrics.

The vendor's side outlives the loop process: the simulated crowd and the manifest drop-box
keep their state in the store; MTurk is ``FakeMTurkServer`` in this process; a seeded
answering thread plays the manifest vendor's workers.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager, nullcontext, suppress
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import numpy as np
import yaml

from crowdloop import keys
from crowdloop.config import LoopConfig
from crowdloop.engine import Project
from crowdloop.errors import RecordExistsError
from crowdloop.export import export_labels_manifest
from crowdloop.storage import PrefixedStore, open_store
from tests.faults import BACKOFF_ENV, KILL_ENV, LOCK_TTL_ENV, PERMANENT_ENV, TRACE_ENV, TRANSIENT_ENV, unit_hash

REPO = Path(__file__).resolve().parents[1]
VENDORS = ("simulated", "manifest", "mturk")
STORES = ("local", "s3")
LOCK_TTL_S = 2.0
ANSWER_ACCURACY = 0.8
MANIFEST_WORKERS = tuple(f"mw{k:02d}" for k in range(12))
MTURK_WORKERS = tuple(f"AWORKER{k:03d}" for k in range(12))


def harness_config(vendor: str, *, max_rounds: int = 2, mturk_url: str | None = None,
                   quality: bool = False) -> dict[str, Any]:
    """A small, fast project: digits, logistic regression, margin sampling, 3 judgments per item.

    ``quality``: adaptive redundancy instead (1 judgment per new item, re-asked of other workers
    up to 3 while Dawid-Skene is unsure), gold questions that can block a worker, and ring
    blocking: the paths where a re-ask, a block or a gold answer could be lost or paid twice."""
    params: dict[str, Any] = {
        "simulated": {"n_workers": 12, "accuracy": [0.7, 0.95], "spammer_fraction": 0.1},
        "manifest": {},
        "mturk": {"endpoint_url": mturk_url or "http://127.0.0.1:9", "max_requests_per_second": 100, "max_attempts": 10},
    }[vendor]
    return {
        "project": "crash",
        "seed": 11,
        "pool": {"source": "sklearn", "name": "digits", "test_size": 0.3},
        "model": {"estimator": "sklearn.linear_model.LogisticRegression", "params": {"C": 0.1, "max_iter": 300}},
        "sampler": {"name": "margin", "batch_size": 12, "initial_size": 16},
        "vendor": {"name": vendor, "params": params},
        "consensus": {"method": "majority_vote", "redundancy": 3},
        # every optional step runs, so every kill point the engine declares is reached
        "autolabel": {"enabled": True},
        "evaluation": {"method": "active", "max_items": 24, "batch_size": 8},
        "collect": {"poll_interval_s": 0.2},
        # below every vendor's measured task time, so each round also pays a top-up bonus
        "pay": {"pilot_seconds_per_task": 4.0},
        "stopping": {"max_rounds": max_rounds},
    } | ({
        "consensus": {"method": "dawid_skene", "redundancy": 3, "min_judgments": 1, "max_judgments": 3,
                      "confidence_threshold": 0.9, "block_rings": True},
        "gold": {"share": 0.15, "n_items": 12, "min_answers": 2, "min_accuracy": 0.6},
    } if quality else {})


class Truth:
    """Ground truth of the pool and a seeded, noisy answer per (item, replica)."""

    def __init__(self, config: dict[str, Any]) -> None:
        p = Project(store=None, config=LoopConfig.model_validate(config))  # type: ignore[arg-type]
        self.labels = dict(zip(p.pool.ids.astype(str).tolist(), p.pool.y.astype(str).tolist(), strict=True))
        self.classes = list(p.classes)
        self.seed = config["seed"]

    def answer(self, item_id: str, replica: int | str) -> str:
        """The answer of the ``replica``-th judgment of an item, or of the worker so named."""
        true = self.labels[item_id]
        if unit_hash(self.seed, "answer", item_id, replica) < ANSWER_ACCURACY:
            return true
        others = [c for c in self.classes if c != true]
        return others[int(unit_hash(self.seed, "wrong", item_id, replica) * len(others))]


class AnswererError(AssertionError):
    """The thread playing the vendor's workers failed: the run it served proves nothing."""


class ManifestAnswerer:
    """The manifest vendor's workers: answer every new input manifest with one result file.

    The thread's failures are the test's: a transient one (the store briefly unreachable) is
    retried at the next tick as a vendor's worker would; any other is kept and raised when the
    block ends, so a broken answerer fails the test instead of leaving the loop to wait.
    """

    def __init__(self, location: str, truth: Truth, *, interval_s: float = 0.1) -> None:
        self.location, self.truth, self.interval_s = location, truth, interval_s
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="manifest-answerer", daemon=True)
        self.errors: list[str] = []

    def __enter__(self) -> ManifestAnswerer:
        self._thread.start()
        return self

    def __exit__(self, exc_type: Any, *exc: Any) -> None:
        self._stop.set()
        self._thread.join()
        if self.errors and exc_type is None:
            raise AnswererError(f"the manifest answerer failed {len(self.errors)} time(s): {self.errors[:3]}")

    def _loop(self) -> None:
        from crowdloop.errors import is_transient

        exchange = None
        while not self._stop.wait(self.interval_s):
            try:
                if exchange is None:
                    exchange = PrefixedStore(open_store(self.location), "vendor/manifest")
                self.answer_all(exchange)
            except Exception as exc:  # noqa: BLE001 - kept and raised in __exit__ (transient ones retried)
                if not is_transient(exc):
                    self.errors.append(f"{type(exc).__name__}: {exc}")

    def answer_all(self, exchange: Any) -> None:
        base = datetime(2026, 1, 1, tzinfo=UTC)
        for key in exchange.list("requests/"):
            if not key.endswith(".manifest.jsonl"):
                continue  # requests/<batch>.closed.json (the batch's deadline passed), .blocked.json
            batch = key[len("requests/"):].split(".manifest.jsonl")[0]
            out = f"results/{batch}.jsonl"
            if exchange.exists(out):
                continue
            lines = []
            for raw in exchange.read_bytes(key).splitlines():
                task = json.loads(raw)
                item = task["item-id"]
                # A re-ask names who answered before: others answer it, as later replicas.
                excluded = set(task.get("exclude-workers", []))
                workers = sorted((w for w in MANIFEST_WORKERS if w not in excluded),
                                 key=lambda w, item=item: unit_hash("worker", item, w))
                for k in range(task["replicas"]):
                    r = len(excluded) + k
                    seconds = 4 + 10 * unit_hash(self.truth.seed, "seconds", item, r)
                    done = base + timedelta(seconds=1000 * unit_hash("when", item, r))
                    lines.append(json.dumps({"item-id": item, "worker-id": workers[k], "label": self.truth.answer(item, r),
                                             "submitted-at": done.isoformat(), "duration-s": round(seconds, 3)}))
            with suppress(RecordExistsError):
                exchange.write_bytes(out, ("\n".join(lines) + "\n").encode(), create_only=True)


@dataclass
class Scenario:
    """One vendor on one store, with the services it needs and its uninterrupted outcome."""

    vendor: str
    store: str
    workdir: Path
    prefect_api_url: str
    s3_endpoint: str | None = None
    s3_bucket: str | None = None
    max_rounds: int = 2
    mode: str = "cli"  # "cli": `crowdloop run` in a subprocess; "fork": the engine's steps in a forked child
    backoff_scale: float | None = None  # shorten botocore's retry back-off (tests with many injected faults)
    quality: bool = False  # adaptive redundancy, gold and ring blocking (harness_config)
    clean: dict[str, Any] | None = None
    clean_next: dict[str, Any] | None = None  # the uninterrupted run with one more round
    boundaries: list[str] = field(default_factory=list)
    n_calls: int = 0
    _truth: Truth | None = None

    @property
    def truth(self) -> Truth:
        if self._truth is None:
            self._truth = Truth(harness_config(self.vendor, max_rounds=self.max_rounds, quality=self.quality))
        return self._truth

    def location(self, name: str) -> str:
        if self.store == "local":
            return str(self.workdir / name / "project")
        return f"s3://{self.s3_bucket}/{self.vendor}/{name}?endpoint_url={self.s3_endpoint}"

    def env(self, **extra: str) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith("CROWDLOOP_")}
        env.update(PREFECT_API_URL=self.prefect_api_url, PYTHONUNBUFFERED="1", AWS_ACCESS_KEY_ID="testing",
                   AWS_SECRET_ACCESS_KEY="testing", AWS_DEFAULT_REGION="us-east-1", PREFECT_LOGGING_LEVEL="WARNING")
        env[LOCK_TTL_ENV] = str(LOCK_TTL_S)
        if self.backoff_scale is not None:
            env[BACKOFF_ENV] = str(self.backoff_scale)
        env.update(extra)
        return env

    @contextmanager
    def services(self) -> Iterator[Any]:
        """The vendor's side for one project: a fake MTurk server, a manifest answerer, or nothing."""
        if self.vendor == "mturk":
            from tests.vendors.mturk_server import FakeMTurkServer

            # with the quality controls on, distinct workers take the slots, so a re-ask (more
            # assignments on the item's HIT) goes to somebody else and a block keeps a worker out
            crowd = list(MTURK_WORKERS) if self.quality else None
            with FakeMTurkServer(answer=self.truth.answer, crowd=crowd) as server:
                yield server
        else:
            yield None

    def run(self, name: str, location: str, server: Any, env: dict[str, str], timeout: float = 300,
            answerer: bool = True, max_rounds: int | None = None) -> subprocess.CompletedProcess:
        """``crowdloop run`` (under the fault launcher) on ``location``."""
        rounds = self.max_rounds if max_rounds is None else max_rounds
        cfg = harness_config(self.vendor, max_rounds=rounds, mturk_url=server.url if server else None,
                             quality=self.quality)
        path = self.workdir / name / "config.yaml"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(yaml.safe_dump(cfg))
        cmd = [sys.executable, "-m", "tests.faults", "run", str(path), "--project-dir", location]
        answering = ManifestAnswerer(location, self.truth) if self.vendor == "manifest" and answerer else nullcontext()
        with answering:
            if self.mode == "fork":
                return fork_run(cfg, location, env, timeout)
            return subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=timeout, cwd=REPO)

    # -- the uninterrupted run ------------------------------------------------------------
    def prepare(self) -> None:
        """Run once without faults: the expected outcome, the step boundaries and the call count."""
        trace = self.workdir / "clean" / "trace.txt"
        trace.parent.mkdir(parents=True, exist_ok=True)
        location = self.location("clean")
        with self.services() as server:
            done = self.run("clean", location, server, self.env(**{TRACE_ENV: str(trace)}))
            if done.returncode != 0:
                raise RuntimeError(f"{self.vendor}/{self.store}: uninterrupted run failed:\n{done.stderr[-3000:]}")
            self.clean = outcome(location, server)
        seen: list[str] = []
        for line in trace.read_text().splitlines():
            kind, _, rest = line.partition(" ")
            if kind == "point" and rest not in seen:
                seen.append(rest)
            elif kind == "call":
                self.n_calls = max(self.n_calls, int(rest.split(" ", 1)[0]))
        self.boundaries = seen

    def random_points(self, n: int, seed: int) -> list[str]:
        """``n`` distinct ``call:<k>`` points over the uninterrupted run's calls, seeded."""
        rng = np.random.default_rng([seed, VENDORS.index(self.vendor), STORES.index(self.store)])
        picks = rng.choice(np.arange(1, self.n_calls + 1), size=min(n, self.n_calls), replace=False)
        return [f"call:{int(k)}" for k in sorted(picks)]

    # -- one kill -------------------------------------------------------------------------
    def kill_and_resume(self, point: str) -> dict[str, Any]:
        """Kill at ``point``, rerun to completion, compare with the uninterrupted run."""
        assert self.clean is not None, "prepare() first"
        name = f"kill-{point.replace(':', '_').replace('@', '_r')}"
        location = self.location(name)
        started = time.monotonic()
        with self.services() as server:
            killed = self.run(name, location, server, self.env(**{KILL_ENV: point}))
            result: dict[str, Any] = {"vendor": self.vendor, "store": self.store, "point": point,
                                      "killed": killed.returncode == -9, "kill_rc": killed.returncode}
            if killed.returncode not in (-9, 0):
                result.update(mismatches=[f"killed run failed with {killed.returncode}: {_tail(killed.stderr)}"])
                return result
            if self.store == "s3" and killed.returncode == -9:
                time.sleep(LOCK_TTL_S + 0.3)  # the dead run's lease on the project lock expires
            resumed = self.run(name, location, server, self.env())
            result["rerun_rc"] = resumed.returncode
            if resumed.returncode != 0:
                result.update(mismatches=[f"rerun failed with {resumed.returncode}: {_tail(resumed.stderr)}"])
                return result
            got = outcome(location, server)
        result["mismatches"] = compare(got, self.clean)
        result["seconds"] = round(time.monotonic() - started, 2)
        return result

    def kill_chain(self, points: list[str], name: str) -> dict[str, Any]:
        """Kill at each of ``points`` in turn on one project (each rerun resumes and dies at the
        next point), then finish it and compare with the uninterrupted run.

        One run per kill instead of two: the points must come in the order a run reaches them
        (a resumed run passes the boundaries of the steps it skips again, so a point once passed
        cannot be killed at a second time). Every kill is checked to have happened at its point
        (exit by SIGKILL, the point last in the run's trace).
        """
        assert self.clean is not None, "prepare() first"
        location = self.location(name)
        started = time.monotonic()
        result: dict[str, Any] = {"vendor": self.vendor, "store": self.store, "points": points, "kills": []}
        with self.services() as server:
            for k, point in enumerate(points):
                trace = self.workdir / name / f"trace-{k}.txt"
                trace.parent.mkdir(parents=True, exist_ok=True)
                killed = self.run(name, location, server, self.env(**{KILL_ENV: point, TRACE_ENV: str(trace)}))
                last = trace.read_text().splitlines()[-1] if trace.exists() else ""
                at_point = last == f"point {point}" or (point.startswith("write:") and last.startswith("killed before "))
                result["kills"].append({"point": point, "rc": killed.returncode, "last_traced": last})
                if killed.returncode != -9 or not at_point:
                    return {**result, "mismatches": [f"the run meant to die at {point} ended with {killed.returncode}, "
                                                     f"last traced {last!r}: {_tail(killed.stderr)}"]}
                if self.store == "s3":
                    time.sleep(LOCK_TTL_S + 0.3)  # the dead run's lease on the project lock expires
            finished = self.run(name, location, server, self.env())
            result["rerun_rc"] = finished.returncode
            if finished.returncode != 0:
                return {**result, "mismatches": [f"the last rerun failed with {finished.returncode}: "
                                                 f"{_tail(finished.stderr)}"]}
            got = outcome(location, server)
        result["mismatches"] = compare(got, self.clean) + compare_records(location, self.location("clean"))
        result["seconds"] = round(time.monotonic() - started, 2)
        return result

    # -- a record deleted between runs ------------------------------------------------------
    def prepare_deletions(self) -> list[tuple[str, str]]:
        """One more uninterrupted run, with one more round (what a resume that raises the limit
        must equal), and every kind of record the first run left: ``(kind, key)`` pairs, e.g.
        ``("dispatch.json@0", "rounds/0000/dispatch.json")``, one segment of the label log per round."""
        location = self.location("clean-next")
        with self.services() as server:
            done = self.run("clean-next", location, server, self.env(), max_rounds=self.max_rounds + 1)
            if done.returncode != 0:
                raise RuntimeError(f"{self.vendor}/{self.store}: uninterrupted run with one more round failed:\n"
                                   f"{done.stderr[-3000:]}")
            self.clean_next = outcome(location, server)
        kinds: dict[str, str] = {}
        for key in open_store(self.location("clean"), create=False).list(""):
            r = keys.round_of(key)
            if key.startswith(f"{keys.VENDOR}/"):
                continue  # the vendor's own state stands for the vendor's side, not the project's records
            if r is not None:
                kind = f"{key.split('/', 2)[2].split('/')[0]}@{r}"
            elif keys.round_of_segment(key) is not None:
                kind = f"segment@{keys.round_of_segment(key)}"
            else:
                kind = key.split("/")[0]
            kinds.setdefault(kind, key)
        return sorted(kinds.items())

    def delete_and_resume(self, kind: str, key: str) -> dict[str, Any]:
        """Run to the end, delete ``key``, rerun with one more round: it must either resume exactly
        (equal to the uninterrupted longer run) or stop in one line naming the record, having sent
        and paid nothing (the vendor's side unchanged)."""
        assert self.clean_next is not None, "prepare_deletions() first"
        name = f"delete-{kind.replace('@', '-r').replace('.', '_')}"
        location = self.location(name)
        started = time.monotonic()
        result: dict[str, Any] = {"vendor": self.vendor, "store": self.store, "kind": kind, "key": key}
        with self.services() as server:
            first = self.run(name, location, server, self.env())
            if first.returncode != 0:
                return {**result, "verdict": "mismatch", "mismatches": [f"first run failed: {_tail(first.stderr)}"]}
            store = open_store(location, create=False)
            listing = store.list("")
            if kind.startswith("segment@"):  # segments are named by their content: this run's own
                r = int(kind.split("@")[1])
                key = result["key"] = next(k for k in listing if keys.round_of_segment(k) == r)
            saved = store.read_bytes(key)
            before = vendor_side(location, server)
            store.delete(key)
            rerun = self.run(name, location, server, self.env(), max_rounds=self.max_rounds + 1)
            result.update(rerun_rc=rerun.returncode, seconds=round(time.monotonic() - started, 2))
            if rerun.returncode == 0:
                mismatches = compare(outcome(location, server), self.clean_next)
                return {**result, "verdict": "resumed exactly" if not mismatches else "mismatch", "mismatches": mismatches}
            message = rerun.stderr.strip()
            store.write_bytes(key, saved)  # put it back: the refused rerun must have written nothing at all
            after = vendor_side(location, server)
            mismatches = []
            if store.list("") != listing:
                mismatches.append(f"the refused rerun wrote {sorted(set(store.list('')) - set(listing))[:5]}")
            if rerun.returncode != 2 or "\n" in message or not message.startswith("error: "):
                mismatches.append(f"rerun failed with {rerun.returncode}, not one line: {_tail(rerun.stderr)}")
            elif key.rsplit("/", 1)[-1] not in message:
                mismatches.append(f"the one line does not name {key}: {message}")
            if after != before:
                mismatches.append(f"the refused rerun changed the vendor's side: {before} -> {after}")
        return {**result, "message": message[:400], "mismatches": mismatches,
                "verdict": "stopped with one line" if not mismatches else "mismatch"}

    def faulty_run(self, *, transient: str | None = None, permanent: str | None = None,
                   name: str = "faulty") -> tuple[subprocess.CompletedProcess, subprocess.CompletedProcess | None, dict | None]:
        """A run with transient or permanent faults; after a permanent one, a clean rerun.

        Returns (faulty run, rerun or None, outcome after the last run or None).
        """
        location = self.location(name)
        extra = {TRANSIENT_ENV: transient} if transient else {PERMANENT_ENV: permanent} if permanent else {}
        trace = self.workdir / name / "trace.txt"
        trace.parent.mkdir(parents=True, exist_ok=True)
        extra[TRACE_ENV] = str(trace)
        with self.services() as server:
            first = self.run(name, location, server, self.env(**extra))
            rerun = None
            if first.returncode == 2:
                if self.store == "s3":
                    time.sleep(LOCK_TTL_S + 0.3)  # a lock lease the refused release left behind
                rerun = self.run(name, location, server, self.env())
            last = rerun or first
            got = outcome(location, server) if last.returncode == 0 else None
        return first, rerun, got


def _tail(text: str, n: int = 1500) -> str:
    return text[-n:].strip()


def outcome(location: str, server: Any = None) -> dict[str, Any]:
    """What a crash must not change, read from the project store and the vendor's side."""
    p = Project.open(location)
    labels = {json.loads(item)["item-id"]: json.loads(item)["label-metadata"]["class-name"]
              for item in export_labels_manifest(p).decode().splitlines()}
    raw_lines = sum(1 for k in p.store.list(keys.SEGMENTS) for item in p.store.read_bytes(k).splitlines() if item.strip())
    log = p.annotations()
    pays = [p.record(r, keys.PAY, default=None) for r in p.rounds()]
    paid = round(sum(x["rewards"] for x in pays if x), 2)
    bonuses = round(sum(x["bonuses"] for x in pays if x), 2)
    vendor = p.config.vendor.name
    if vendor == "mturk":
        ledger = server.ledger()
        dispatched = ledger["item_replicas"]
        n_vendor_answers = len(ledger["assignments"])
        duplicate_tasks = ledger["duplicate_hits"]
    else:
        v = p.vendor
        state = v.store if vendor == "simulated" else v.state
        batches = [json.loads(state.read_bytes(k)) for k in state.list("batches/")]
        tasks = [t for b in batches for t in b["tasks"]]
        dispatched = sorted(t["item_id"] for t in tasks for _ in range(t["replicas"]))
        ledger = v.ledger()
        n_vendor_answers = ledger["assignments"] if vendor == "simulated" else ledger["answers"]
        duplicate_tasks = len(tasks) - len({(t["batch_id"], t["item_id"]) for t in tasks})
        if vendor == "manifest":  # the vendor's view: lines of the input manifests it was sent
            manifests = [k for k in v.exchange.list("requests/") if k.endswith(".manifest.jsonl")]  # not .closed/.blocked.json
            lines = [json.loads(item) for k in manifests for item in v.exchange.read_bytes(k).splitlines()]
            duplicate_tasks += len(lines) - len({(item["batch-id"], item["item-id"]) for item in lines})
            dispatched_files = sorted(item["item-id"] for item in lines for _ in range(item["replicas"]))
            duplicate_tasks += int(dispatched_files != dispatched)
    return {
        "labels": labels,
        "metrics": [dict(m.items()) for m in p.metrics()],
        "dispatched": dispatched,
        "duplicate_tasks": duplicate_tasks,
        "n_log": len(log),
        "log_unique": len({a.key for a in log}) == len(log),
        "raw_log_lines": raw_lines,
        "n_vendor_answers": n_vendor_answers,
        "paid": paid,
        "bonuses": bonuses,
        "vendor_paid": round(float(ledger["paid"]), 2),
        "vendor_bonuses": round(float(ledger["bonuses"]), 2),
    }


def vendor_side(location: str, server: Any = None) -> dict[str, Any]:
    """What the vendor was asked for and paid: item replicas dispatched, answers, money and bonuses
    (the MTurk fake server's ledger, or the simulated/manifest vendor's state in the store)."""
    if server is not None:
        ledger = server.ledger()
        return {"dispatched": ledger["item_replicas"], "answers": len(ledger["assignments"]),
                "paid": round(float(ledger["paid"]), 2), "bonuses": round(float(ledger["bonuses"]), 2)}
    got = outcome(location)
    return {k: got[k] for k in ("dispatched", "n_vendor_answers", "vendor_paid", "vendor_bonuses")}


def compare(got: dict[str, Any], clean: dict[str, Any]) -> list[str]:
    """Every way ``got`` breaks a guarantee or differs from the uninterrupted run (empty: none)."""
    out = []
    if got["duplicate_tasks"]:
        out.append(f"double dispatch: {got['duplicate_tasks']} task(s) created twice on the vendor")
    if got["dispatched"] != clean["dispatched"]:
        out.append(f"dispatched items differ: {len(got['dispatched'])} item replicas vs {len(clean['dispatched'])}")
    if not got["log_unique"]:
        out.append("an annotation is stored twice in the label log")
    if got["n_log"] != got["n_vendor_answers"]:
        out.append(f"annotations lost or duplicated: log has {got['n_log']}, the vendor {got['n_vendor_answers']}")
    if got["n_log"] != clean["n_log"]:
        out.append(f"log has {got['n_log']} annotations, the uninterrupted run {clean['n_log']}")
    if (got["paid"], got["bonuses"]) != (got["vendor_paid"], got["vendor_bonuses"]):
        out.append(f"money: accounted {got['paid']}+{got['bonuses']} bonus, vendor ledger "
                   f"{got['vendor_paid']}+{got['vendor_bonuses']} bonus")
    if (got["paid"], got["bonuses"]) != (clean["paid"], clean["bonuses"]):
        out.append(f"money differs from the uninterrupted run: {got['paid']}+{got['bonuses']} "
                   f"vs {clean['paid']}+{clean['bonuses']}")
    if got["labels"] != clean["labels"]:
        diff = sum(1 for k in set(got["labels"]) | set(clean["labels"]) if got["labels"].get(k) != clean["labels"].get(k))
        out.append(f"final labels differ from the uninterrupted run on {diff} item(s)")
    if got["metrics"] != clean["metrics"]:
        out.append("per-round metrics differ from the uninterrupted run")
    return out


# Records whose content must be the same after any crash: what was selected, sent, collected,
# aggregated and paid, round by round; but for how long a step took and how the answers happened
# to be split into label-log segments (a crash mid-collect may split them differently).
_SAME_RECORDS = (keys.SELECTION, keys.DISPATCH, keys.COLLECTED, keys.AGGREGATE, keys.LABELS, keys.PAY)
_VOLATILE_FIELDS = frozenset({"seconds", "segments"})


def _record_content(store: Any, key: str) -> Any:
    if not store.exists(key):
        return None
    data = store.read_bytes(key)
    if not key.endswith(".json"):
        return data
    return {k: v for k, v in json.loads(data).items() if k not in _VOLATILE_FIELDS}


def compare_records(location: str, clean_location: str) -> list[str]:
    """The round records of ``location`` that differ from the uninterrupted run's (empty: none)."""
    got, clean = Project.open(location), Project.open(clean_location)
    out = []
    if got.rounds() != clean.rounds():
        out.append(f"rounds {got.rounds()} vs {clean.rounds()} in the uninterrupted run")
    for r in clean.rounds():
        for name in _SAME_RECORDS:
            key = keys.round_key(r, name)
            if _record_content(got.store, key) != _record_content(clean.store, key):
                out.append(f"{key} differs from the uninterrupted run's")
    return out


_clean_cli: dict[tuple[str, str, int, str], Scenario] = {}


def clean_cli_scenario(vendor: str, workdir_factory: Any, prefect_api_url: str, *, max_rounds: int = 2) -> Scenario:
    """A ``crowdloop run`` scenario on the local store whose uninterrupted run is done (once per
    test session and Prefect server: several test files compare against the same run)."""
    key = (vendor, "local", max_rounds, prefect_api_url)
    if key not in _clean_cli:
        s = Scenario(vendor, "local", workdir_factory.mktemp(f"cli-{vendor}-{max_rounds}"), prefect_api_url,
                     max_rounds=max_rounds, mode="cli")
        s.prepare()
        _clean_cli[key] = s
    return _clean_cli[key]


@contextmanager
def moto_s3() -> Iterator[tuple[str, str]]:
    """moto's S3 server on 127.0.0.1 (random port) with one bucket: (endpoint, bucket)."""
    import boto3

    from tests.s3_server import local_s3_server

    with local_s3_server() as endpoint:  # this process reads the store too (outcome, answerer)
        bucket = f"crash-{uuid.uuid4().hex[:10]}"
        boto3.client("s3", endpoint_url=endpoint, aws_access_key_id="testing", aws_secret_access_key="testing",
                     region_name="us-east-1").create_bucket(Bucket=bucket)
        yield endpoint, bucket


# -- fork mode: the engine's steps in a forked child ---------------------------------------
# A forked child starts in milliseconds with everything imported, so tests can kill at every
# step boundary within their time budget. It runs the steps in the flow's order (and retries
# the I/O steps as the flow does); the CLI mode runs the real `crowdloop run` with Prefect.
IO_RETRIES = 8


def fork_run(config: dict[str, Any], location: str, env: dict[str, str], timeout: float) -> subprocess.CompletedProcess:
    import multiprocessing

    ctx = multiprocessing.get_context("fork")
    errors = ctx.SimpleQueue()
    proc = ctx.Process(target=_child, args=(config, location, env, errors), daemon=True)
    proc.start()
    proc.join(timeout)
    if proc.is_alive():
        proc.kill()
        proc.join()
        raise subprocess.TimeoutExpired("fork_run", timeout)
    stderr = errors.get() if not errors.empty() else ""
    return subprocess.CompletedProcess(["fork_run"], proc.exitcode, "", stderr)


def _child(config: dict[str, Any], location: str, env: dict[str, str], errors: Any) -> None:
    import traceback

    from crowdloop.engine import run_rounds, run_step
    from crowdloop.errors import CrowdloopError
    from tests import faults

    os.environ.update({k: v for k, v in env.items() if k.startswith(("CROWDLOOP_", "AWS_"))})
    for name in [k for k in os.environ if k.startswith("CROWDLOOP_") and k not in env]:
        del os.environ[name]
    faults._state = None
    faults.install()

    def call(step: Any, p: Project, r: int) -> Any:  # the flow's retry rule for the steps that talk to vendors
        return _io(lambda: run_step(step, p, r)) if step.outside else run_step(step, p, r)

    try:
        p = Project.prepare(LoopConfig.model_validate(config), location)
        with p.running():
            run_rounds(p, call=call)
    except CrowdloopError as exc:
        errors.put("error: " + " ".join(str(exc).split()))
        os._exit(2)
    except BaseException:  # noqa: BLE001 - a bug: hand the traceback to the parent
        errors.put(traceback.format_exc())
        os._exit(1)
    os._exit(0)


def _io(step: Any) -> Any:
    """The flow's retry rule for the steps that talk to vendors: retry transient failures only."""
    from crowdloop.errors import is_transient

    for attempt in range(IO_RETRIES + 1):
        try:
            return step()
        except Exception as exc:
            if attempt == IO_RETRIES or not is_transient(exc):
                raise
            time.sleep(0.05)
