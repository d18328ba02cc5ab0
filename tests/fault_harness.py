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


def harness_config(vendor: str, *, max_rounds: int = 2, mturk_url: str | None = None) -> dict[str, Any]:
    """A small, fast project: digits, logistic regression, margin sampling, 3 judgments per item."""
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
        "collect": {"poll_interval_s": 0.2},
        # below every vendor's measured task time, so each round also pays a top-up bonus
        "pay": {"pilot_seconds_per_task": 4.0},
        "stopping": {"max_rounds": max_rounds},
    }


class Truth:
    """Ground truth of the pool and a seeded, noisy answer per (item, replica)."""

    def __init__(self, config: dict[str, Any]) -> None:
        p = Project(store=None, config=LoopConfig.model_validate(config))  # type: ignore[arg-type]
        self.labels = dict(zip(p.pool.ids.astype(str).tolist(), p.pool.y.astype(str).tolist(), strict=True))
        self.classes = list(p.classes)
        self.seed = config["seed"]

    def answer(self, item_id: str, replica: int) -> str:
        true = self.labels[item_id]
        if unit_hash(self.seed, "answer", item_id, replica) < ANSWER_ACCURACY:
            return true
        others = [c for c in self.classes if c != true]
        return others[int(unit_hash(self.seed, "wrong", item_id, replica) * len(others))]


class ManifestAnswerer:
    """The manifest vendor's workers: answer every new input manifest with one result file."""

    def __init__(self, location: str, truth: Truth, *, interval_s: float = 0.1) -> None:
        self.location, self.truth, self.interval_s = location, truth, interval_s
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="manifest-answerer", daemon=True)
        self.errors: list[str] = []

    def __enter__(self) -> ManifestAnswerer:
        self._thread.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self._stop.set()
        self._thread.join()

    def _loop(self) -> None:
        exchange = None
        while not self._stop.wait(self.interval_s):
            try:
                if exchange is None:
                    exchange = PrefixedStore(open_store(self.location), "vendor/manifest")
                self.answer_all(exchange)
            except Exception as exc:  # noqa: BLE001 - a store not there yet; report at the end
                self.errors.append(f"{type(exc).__name__}: {exc}")

    def answer_all(self, exchange: Any) -> None:
        base = datetime(2026, 1, 1, tzinfo=UTC)
        for key in exchange.list("requests/"):
            batch = key[len("requests/"):].split(".manifest.jsonl")[0]
            out = f"results/{batch}.jsonl"
            if exchange.exists(out):
                continue
            lines = []
            for raw in exchange.read_bytes(key).splitlines():
                task = json.loads(raw)
                item = task["item-id"]
                for r in range(task["replicas"]):
                    worker = f"mw{(int(unit_hash('worker', item) * 12) + 5 * r) % 12:02d}"
                    seconds = 4 + 10 * unit_hash(self.truth.seed, "seconds", item, r)
                    done = base + timedelta(seconds=1000 * unit_hash("when", item, r))
                    lines.append(json.dumps({"item-id": item, "worker-id": worker, "label": self.truth.answer(item, r),
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
    clean: dict[str, Any] | None = None
    boundaries: list[str] = field(default_factory=list)
    n_calls: int = 0
    _truth: Truth | None = None

    @property
    def truth(self) -> Truth:
        if self._truth is None:
            self._truth = Truth(harness_config(self.vendor, max_rounds=self.max_rounds))
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

            with FakeMTurkServer(answer=self.truth.answer) as server:
                yield server
        else:
            yield None

    def run(self, name: str, location: str, server: Any, env: dict[str, str], timeout: float = 300,
            answerer: bool = True) -> subprocess.CompletedProcess:
        """``crowdloop run`` (under the fault launcher) on ``location``."""
        cfg = harness_config(self.vendor, max_rounds=self.max_rounds, mturk_url=server.url if server else None)
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
            lines = [json.loads(item) for k in v.exchange.list("requests/") for item in v.exchange.read_bytes(k).splitlines()]
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
