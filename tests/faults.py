"""Fault injection inside a loop process, for the crash and faulty-service tests.

Run the loop through this launcher instead of ``crowdloop`` (from the repository root)::

    python -m tests.faults run CONFIG --project-dir DIR

It behaves exactly like ``crowdloop run`` and, driven by environment variables, adds:

``CROWDLOOP_FAULT_AT``
    comma-separated kill points; the process SIGKILLs itself (like an OOM kill) on reaching one:
    any point the engine declares (``crowdloop.engine.declared_points()``: ``<step>:done@<round>``
    after each step of ``ROUND_STEPS`` and ``reference``, and the points inside steps such as
    ``dispatch:before_submit@1``), or ``call:<n>``: just before the n-th store write or delete,
    or just after the n-th vendor API call's response arrived (MTurk), or ``write:<key prefix>@<r>``:
    just before the first store write of a key starting with that prefix while the run is in
    round ``r`` (the round of the last point passed), e.g. ``write:rounds/0001/pay.json@1`` (the
    vendor was paid, the record not yet written) or ``write:vendor/simulated/bonuses/@1``.
``CROWDLOOP_FAULT_TRACE``
    a file to which every point reached and every counted call is appended, one per line, so
    a harness learns the points of an uninterrupted run (and how many calls it made).
``CROWDLOOP_TRANSIENT_FAULTS``
    ``p=0.2,seed=3``: each store and vendor call fails transiently with probability p:
    throttling, 5xx, a timeout before the request left, a timeout after the service acted
    (the client never sees the answer), and partial list pages. S3 and MTurk faults are
    injected at botocore's ``before-send`` so botocore's real retry path runs; simulated and
    manifest vendor calls raise ``InjectedTransientError`` (retried by the flow's I/O tasks,
    whose retry delays the launcher shortens to keep tests fast).
``CROWDLOOP_FAULT_RAISE``
    comma-separated ``<Class>.<method>@<round>=<kind>`` for the simulated crowd and the manifest
    vendor (``SimulatedCrowd.bonus@1=transient_after``): ``transient`` raises a transient error
    (a ``ConnectionError``) before the call acts, ``transient_after`` after it acted, both once;
    ``bug`` raises ``ValueError`` (a bug, never retried) on every call in that round. The flow's
    retry rule is left exactly as it ships (real delays), and every call of a named method is
    traced (``vendor-call <Class>.<method>@<round>``), so a test counts the attempts.
``CROWDLOOP_TEST_CLOCK_OFFSET_S``
    the dispatch and collect steps see the wall clock this many seconds later (a process
    started that much later, as far as ``collect.timeout_s`` is concerned).
``CROWDLOOP_PERMANENT_FAULT``
    ``<service>:<n>`` with service ``s3`` or ``mturk``: from that service's n-th call on,
    every request is refused as with revoked credentials.
``CROWDLOOP_TEST_S3_LOCK_TTL_S``
    lease of the S3 project lock (default 30 s), so a rerun after a kill need not wait long.
``CROWDLOOP_TEST_BACKOFF_SCALE``
    multiplies botocore's retry back-off (e.g. 0.05), so tests with many injected faults stay
    fast; the retry decisions and attempt counts are botocore's own.

Decisions are a hash of (seed, call signature, how often that signature was seen), never a
shared random stream, so background threads (the S3 lock's renewals) cannot shift them.
Nothing here ships in the package: a normal run has no kill switch at all. The only hook it
needs is ``crowdloop.engine.hooks.point``, which this launcher replaces.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import os
import signal
import sys
import threading
from typing import Any

KILL_ENV = "CROWDLOOP_FAULT_AT"
TRACE_ENV = "CROWDLOOP_FAULT_TRACE"
TRANSIENT_ENV = "CROWDLOOP_TRANSIENT_FAULTS"
PERMANENT_ENV = "CROWDLOOP_PERMANENT_FAULT"
LOCK_TTL_ENV = "CROWDLOOP_TEST_S3_LOCK_TTL_S"
BACKOFF_ENV = "CROWDLOOP_TEST_BACKOFF_SCALE"
RAISE_ENV = "CROWDLOOP_FAULT_RAISE"
CLOCK_OFFSET_ENV = "CROWDLOOP_TEST_CLOCK_OFFSET_S"
RAISE_KINDS = ("transient", "transient_after", "bug")

TRANSIENT_KINDS = ("throttle", "5xx", "timeout_before", "timeout_after")


class InjectedTransientError(ConnectionError):
    """A transient vendor failure (throttled, 5xx, timeout); not a CrowdloopError, so it is retried."""


class InjectedBug(ValueError):
    """A bug in a step (what a wrong index or a bad parse raises): must fail the run at once."""


def parse_raises(spec: str) -> dict[tuple[str, int], str]:
    """``"SimulatedCrowd.bonus@1=transient_after"`` -> {("SimulatedCrowd.bonus", 1): "transient_after"}."""
    out: dict[tuple[str, int], str] = {}
    for part in (p.strip() for p in spec.split(",") if p.strip()):
        target, _, kind = part.partition("=")
        method, _, round_ = target.partition("@")
        if kind not in RAISE_KINDS or "." not in method or not round_.isdigit():
            raise ValueError(f"{RAISE_ENV}={spec!r}: expected '<Class>.<method>@<round>=<kind>' with kind one of "
                             f"{', '.join(RAISE_KINDS)}")
        out[(method, int(round_))] = kind
    return out


def parse_transient(spec: str) -> tuple[float, int]:
    """``"p=0.2,seed=3"`` -> (0.2, 3), with a one-line error for anything else."""
    values: dict[str, str] = {}
    for part in spec.split(","):
        name, sep, value = part.strip().partition("=")
        if not sep or name not in ("p", "seed"):
            raise ValueError(f"{TRANSIENT_ENV}={spec!r}: expected 'p=<probability>,seed=<int>'")
        values[name] = value
    p, seed = float(values.get("p", "0.2")), int(values.get("seed", "0"))
    if not 0 <= p < 1:
        raise ValueError(f"{TRANSIENT_ENV}: p={p}: expected 0 <= p < 1")
    return p, seed


def unit_hash(*parts: object) -> float:
    """A uniform number in [0, 1) from the parts: reproducible across processes and threads."""
    digest = hashlib.sha256("|".join(map(str, parts)).encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2**64


class _Injector:
    """Process-wide state of the injected faults (one per loop process)."""

    def __init__(self, env: dict[str, str]) -> None:
        self.kill = {s.strip() for s in env.get(KILL_ENV, "").split(",") if s.strip()}
        self.kill_call = {int(s[5:]) for s in self.kill if s.startswith("call:")}
        self.kill_write: set[tuple[str, int]] = set()
        for spec in (s[6:] for s in self.kill if s.startswith("write:")):
            prefix, _, round_ = spec.rpartition("@")
            if not prefix or not round_.isdigit():
                raise ValueError(f"{KILL_ENV}: write:{spec!r}: expected 'write:<key prefix>@<round>'")
            self.kill_write.add((prefix, int(round_)))
        self.raises = parse_raises(env.get(RAISE_ENV, ""))
        self.raised: set[tuple[str, int]] = set()
        self.clock_offset_s = float(env.get(CLOCK_OFFSET_ENV) or 0.0)
        self.round = 0  # the round of the last point passed: where ``write:`` kills and raises apply
        self.trace_path = env.get(TRACE_ENV) or None
        self.transient = parse_transient(env[TRANSIENT_ENV]) if env.get(TRANSIENT_ENV) else None
        self.permanent: tuple[str, int] | None = None
        if env.get(PERMANENT_ENV):
            service, _, n = env[PERMANENT_ENV].partition(":")
            self.permanent = (service, int(n or 1))
        self.calls = 0
        self.service_calls: dict[str, int] = {}
        self.seen: dict[str, int] = {}
        self.injected: dict[str, int] = {}
        self._lock = threading.Lock()

    # -- kills and trace ----------------------------------------------------------------
    def trace(self, line: str) -> None:
        if self.trace_path:
            with open(self.trace_path, "a", encoding="utf-8") as fh:
                fh.write(line + "\n")

    def point(self, name: str, round_: int) -> None:
        tag = f"{name}@{round_}"
        self.round = round_
        self.trace(f"point {tag}")
        if tag in self.kill:
            self.die()

    def call(self, what: str) -> None:
        with self._lock:
            self.calls += 1
            n = self.calls
        self.trace(f"call {n} {what}")
        if n in self.kill_call:
            self.die()
        if what.startswith("write ") and any(what[6:].startswith(prefix) and self.round == r
                                             for prefix, r in self.kill_write):
            self.trace(f"killed before {what}@{self.round}")
            self.die()

    @staticmethod
    def die() -> None:
        sys.stdout.flush()
        sys.stderr.flush()
        os.kill(os.getpid(), signal.SIGKILL)

    # -- transient faults ---------------------------------------------------------------
    def decide(self, signature: str, kinds: tuple[str, ...] = TRANSIENT_KINDS) -> str | None:
        """The fault kind for this call (None: no fault); deterministic per signature and repeat."""
        if self.transient is None:
            return None
        p, seed = self.transient
        with self._lock:
            k = self.seen[signature] = self.seen.get(signature, 0) + 1
        u = unit_hash(seed, signature, k)
        if u >= p:
            return None
        kind = kinds[int(unit_hash(seed, "kind", signature, k) * len(kinds))]
        with self._lock:
            self.injected[kind] = self.injected.get(kind, 0) + 1
        self.trace(f"fault {kind} {signature}")
        return kind

    def refused(self, service: str) -> bool:
        if self.permanent is None or self.permanent[0] != service:
            return False
        with self._lock:
            n = self.service_calls[service] = self.service_calls.get(service, 0) + 1
        return n >= self.permanent[1]


_state: _Injector | None = None


def install(env: dict[str, str] | None = None) -> _Injector:
    """Patch this process for the faults the environment asks for (idempotent)."""
    global _state
    if _state is not None:
        return _state
    inj = _state = _Injector(dict(os.environ if env is None else env))
    _patch_points(inj)
    _patch_stores(inj)
    _patch_boto(inj)
    _patch_vendors(inj)
    _patch_raises(inj)
    _patch_clock(inj)
    _patch_flow_retries(inj)
    return inj


def _patch_points(inj: _Injector) -> None:
    """Every named point of the engine (step boundaries and the points inside steps) goes
    through ``hooks.point``; replacing it reaches all of them, wherever the step lives."""
    from crowdloop.engine import hooks

    hooks.point = inj.point


def _patch_stores(inj: _Injector) -> None:
    """Count store writes and deletes (kill before the n-th); reads change nothing."""
    from crowdloop.storage.local import LocalStore

    classes: list[type] = [LocalStore]
    try:
        from crowdloop.storage.s3 import S3Store

        classes.append(S3Store)
        ttl = os.environ.get(LOCK_TTL_ENV)
        if ttl:
            defaults = dict(S3Store.__init__.__kwdefaults__)
            defaults["lock_ttl_s"] = float(ttl)
            S3Store.__init__.__kwdefaults__ = defaults
    except ModuleNotFoundError:  # boto3 not installed: only the local store
        pass
    for cls in classes:
        write, delete = cls.write_bytes, cls.delete

        def write_bytes(self, key, data, *, create_only=False, _write=write):
            inj.call(f"write {key}")
            return _write(self, key, data, create_only=create_only)

        def delete_(self, key, _delete=delete):
            inj.call(f"delete {key}")
            return _delete(self, key)

        cls.write_bytes, cls.delete = write_bytes, delete_


def _patch_boto(inj: _Injector) -> None:
    """Transient and permanent faults for every boto3 client (S3 store, MTurk vendor)."""
    try:
        import boto3.session
    except ModuleNotFoundError:
        return
    scale = os.environ.get(BACKOFF_ENV)
    if scale:
        from botocore.retries import standard

        delay = standard.ExponentialBackoff.delay_amount

        def scaled(self, context, _delay=delay, _scale=float(scale)):
            return _delay(self, context) * _scale

        standard.ExponentialBackoff.delay_amount = scaled
    original = boto3.session.Session.client

    @functools.wraps(original)
    def client(self, *args: Any, **kwargs: Any):
        c = original(self, *args, **kwargs)
        service = c.meta.service_model.service_name
        if service in ("s3", "mturk"):
            _instrument(inj, c, service)
        return c

    boto3.session.Session.client = client


def _instrument(inj: _Injector, client: Any, service: str) -> None:
    from botocore.awsrequest import AWSResponse
    from botocore.exceptions import ConnectTimeoutError, ReadTimeoutError

    class _Raw:
        def __init__(self, body: bytes) -> None:
            self._body = body

        def stream(self, **_: Any):
            yield self._body

    def error(request: Any, status: int, code: str, message: str) -> AWSResponse:
        if service == "s3":
            body = f"<?xml version='1.0'?><Error><Code>{code}</Code><Message>{message}</Message></Error>".encode()
            headers = {"Content-Type": "application/xml"}
        else:
            body = f'{{"__type": "{code}", "Message": "{message}"}}'.encode()
            headers = {"Content-Type": "application/x-amz-json-1.1"}
        return AWSResponse(request.url, status, headers, _Raw(body))

    def signature(request: Any) -> str:
        target = request.headers.get("X-Amz-Target", b"")
        target = target.decode() if isinstance(target, bytes) else target
        if service == "mturk":
            return f"mturk {target.rsplit('.', 1)[-1]} {hashlib.sha256(request.body or b'').hexdigest()[:16]}"
        # path-style URL http://host:port/bucket/key?query: keep the key and query only, so the
        # decisions do not depend on the port or bucket name of one test server
        path, _, query = request.url.partition("?")
        key = path.split("/", 4)[4] if path.count("/") >= 4 else ""
        return f"s3 {request.method} {key} {query}"

    def before_send(request: Any, **_: Any) -> AWSResponse | None:
        if inj.refused(service):
            if service == "s3":
                return error(request, 403, "InvalidAccessKeyId",
                             "The AWS Access Key Id you provided does not exist in our records.")
            return error(request, 400, "UnrecognizedClientException", "The security token included in the request is invalid.")
        sig = signature(request)
        if "/.crowdloop/locks/" in sig:
            return None  # the lock's lease renewals run on a thread; keep their timing out of it
        kind = inj.decide(sig)
        if kind is None:
            return None
        if kind == "throttle":
            if service == "s3":
                return error(request, 503, "SlowDown", "Please reduce your request rate.")
            return error(request, 400, "ThrottlingException", "Rate exceeded")
        if kind == "5xx":
            return error(request, 500, "InternalError" if service == "s3" else "ServiceUnavailableException",
                         "We encountered an internal error. Please try again.")
        if kind == "timeout_before":
            raise ConnectTimeoutError(endpoint_url=request.url)
        _send_for_real(request)  # the service acts; the answer is lost on the way back
        raise ReadTimeoutError(endpoint_url=request.url)

    def partial_page(params: dict[str, Any], model: Any = None, **_: Any) -> None:
        name = model.name if model is not None else ""
        sig = f"{service} page {name} {sorted((k, str(v)) for k, v in params.items())}"
        if inj.decide(sig, ("partial_page",)) is not None:
            params["MaxKeys" if service == "s3" else "MaxResults"] = 1

    def after_call(model: Any = None, **_: Any) -> None:
        if service == "mturk":  # vendor calls count for call:<n> kills once their answer arrived
            inj.call(f"mturk {model.name if model is not None else '?'}")

    events = client.meta.events
    events.register(f"before-send.{service}", before_send)
    if service == "s3":
        events.register("provide-client-params.s3.ListObjectsV2", partial_page)
    else:
        events.register("provide-client-params.mturk.ListAssignmentsForHIT", partial_page)
        events.register("provide-client-params.mturk.ListHITs", partial_page)
    events.register(f"after-call.{service}", after_call)


def _send_for_real(request: Any) -> None:
    """Send a prepared botocore request and drop the answer (a timeout after the service acted)."""
    import urllib3

    body = request.body
    data = body.read() if hasattr(body, "read") else body
    if hasattr(body, "read"):
        request.reset_stream()
    headers = {k: (v.decode() if isinstance(v, bytes) else v) for k, v in request.headers.items()}
    http = urllib3.PoolManager()
    with contextlib.suppress(urllib3.exceptions.HTTPError):  # it may or may not have arrived: what a timeout leaves open
        http.request(request.method, request.url, body=data, headers=headers, retries=False, timeout=30)


def _patch_vendors(inj: _Injector) -> None:
    """Simulated and manifest vendor calls fail transiently before or after they act."""
    if inj.transient is None:
        return
    from crowdloop.vendors.manifest import ManifestVendor
    from crowdloop.vendors.simulated import SimulatedCrowd

    for cls in (SimulatedCrowd, ManifestVendor):
        for method in ("submit", "poll", "acknowledge", "bonus"):
            fn = getattr(cls, method, None)
            if fn is None:
                continue

            def call(self, *args: Any, _fn=fn, _name=f"{cls.__name__}.{method}", **kwargs: Any) -> Any:
                kind = inj.decide(f"vendor {_name} {_describe(args, kwargs)}")
                if kind in ("throttle", "5xx", "timeout_before"):
                    raise InjectedTransientError(f"{_name}: injected {kind}")
                out = _fn(self, *args, **kwargs)
                if kind == "timeout_after":
                    raise InjectedTransientError(f"{_name}: injected timeout after the call acted")
                return out

            setattr(cls, method, functools.wraps(fn)(call))


def _describe(args: tuple, kwargs: dict) -> str:
    """A stable description of a vendor call's arguments (batch ids, assignment ids)."""
    parts = [str(kwargs.get("batch_id", "")), str(kwargs.get("token", ""))]
    for a in args:
        if isinstance(a, (list, tuple)):
            ids = (str(getattr(x, "assignment_id", None) or getattr(x, "item_id", None) or x) for x in a)
            parts.append(",".join(sorted(ids))[:200])
    return hashlib.sha256("|".join(parts).encode()).hexdigest()[:16]


def _patch_raises(inj: _Injector) -> None:
    """The vendor methods ``CROWDLOOP_FAULT_RAISE`` names raise there (the flow's retries untouched)."""
    if not inj.raises:
        return
    from crowdloop.vendors.manifest import ManifestVendor
    from crowdloop.vendors.simulated import SimulatedCrowd

    classes = {cls.__name__: cls for cls in (SimulatedCrowd, ManifestVendor)}
    for name in sorted({method for method, _ in inj.raises}):
        owner, _, method = name.partition(".")
        if owner not in classes or not callable(getattr(classes[owner], method, None)):
            raise ValueError(f"{RAISE_ENV}: {name}: expected a method of {', '.join(sorted(classes))}")
        fn = getattr(classes[owner], method)

        def call(self, *args: Any, _fn=fn, _name=name, **kwargs: Any) -> Any:
            where = (_name, inj.round)
            kind = inj.raises.get(where)
            inj.trace(f"vendor-call {_name}@{inj.round}")
            if kind == "bug":
                inj.trace(f"raise bug {_name}@{inj.round}")
                raise InjectedBug(f"{_name}: injected bug in round {inj.round}")
            once = kind is not None and where not in inj.raised
            if once and kind == "transient":
                inj.raised.add(where)
                inj.trace(f"raise transient {_name}@{inj.round}")
                raise InjectedTransientError(f"{_name}: injected transient failure before the call acted")
            out = _fn(self, *args, **kwargs)
            if once and kind == "transient_after":
                inj.raised.add(where)
                inj.trace(f"raise transient_after {_name}@{inj.round}")
                raise InjectedTransientError(f"{_name}: injected timeout after the call acted")
            return out

        setattr(classes[owner], method, functools.wraps(fn)(call))


class _ShiftedClock:
    """The ``time`` module as a process started ``offset_s`` later sees it (``time()`` only)."""

    def __init__(self, offset_s: float) -> None:
        import time

        self._time, self.offset_s = time, offset_s

    def time(self) -> float:
        return self._time.time() + self.offset_s

    def __getattr__(self, name: str) -> Any:
        return getattr(self._time, name)


def _patch_clock(inj: _Injector) -> None:
    """Dispatch and collect read the clock through their module's ``time``: shift both."""
    if not inj.clock_offset_s:
        return
    from crowdloop.engine import collection, dispatching

    for module in (collection, dispatching):
        if getattr(module, "time", None) is not sys.modules["time"]:
            raise RuntimeError(f"{CLOCK_OFFSET_ENV}: {module.__name__} no longer reads the clock as time.time()")
        module.time = _ShiftedClock(inj.clock_offset_s)


def _patch_flow_retries(inj: _Injector) -> None:
    """Keep the flow's retry path but with short delays, so transient-fault tests stay fast."""
    if inj.transient is None:
        return
    from crowdloop.engine import ROUND_STEPS
    from crowdloop.flows import loop

    for step in ROUND_STEPS:
        if step.outside:
            loop.STEP_TASKS[step.name] = loop.STEP_TASKS[step.name].with_options(retries=8, retry_delay_seconds=0.2)


def main(argv: list[str] | None = None) -> None:
    """``python -m tests.faults <crowdloop args>``: the CLI with faults installed."""
    install()
    from crowdloop.cli import app

    app(args=list(sys.argv[1:] if argv is None else argv), prog_name="crowdloop")


if __name__ == "__main__":
    main()
