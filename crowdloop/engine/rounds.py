"""The order of a round, declared once: ``ROUND_STEPS``, and ``run_round`` that walks it.

Everything that needs the order reads this table: the in-process runner below, the Prefect
flow (``flows/loop.py`` makes one task per step), the CLI's live view (phase names), the crash
harness and the tests (kill points). A step never calls the step before it; it reads that
step's record and fails with a clear error if it is missing, so the table is the only place
the order lives.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from crowdloop import keys
from crowdloop.config import LoopConfig
from crowdloop.engine import hooks
from crowdloop.engine.aggregation import aggregate
from crowdloop.engine.auditing import audit
from crowdloop.engine.autolabeling import autolabel
from crowdloop.engine.budget import check_stop
from crowdloop.engine.collection import collect
from crowdloop.engine.dispatching import dispatch
from crowdloop.engine.evaluation import evaluate, reference
from crowdloop.engine.payment import pay
from crowdloop.engine.project import Project
from crowdloop.engine.selection import score_shard, select, shard_count
from crowdloop.engine.training import train

Output = dict[str, Any]


def _always(config: LoopConfig) -> bool:
    return True


def _never_halts(out: Output) -> str | None:
    return None


@dataclass(frozen=True)
class Step:
    """One step of a round: what it runs, the record that says it is done, how it may end a round."""

    name: str
    run: Callable[[Project, int], Output]
    record: str | None  # the record whose presence means the step is done (None: it always runs)
    phase: str  # what the live view shows once the step is done
    outside: bool = False  # talks to a vendor: the flow retries it on transient errors
    enabled: Callable[[LoopConfig], bool] = _always
    halts: Callable[[Output], str | None] = _never_halts  # why the run stops after this step (None: go on)
    # Optional fan-out before the step: how many parts, and one part (run in parallel by the flow).
    parts: Callable[[Project, int], int] | None = None
    part: Callable[[Project, int, int], Any] | None = None


REFERENCE_STEP = Step("reference", reference, keys.REFERENCE, "reference model trained")

ROUND_STEPS: tuple[Step, ...] = (
    Step("train", train, keys.TRAIN, "trained"),
    Step("evaluate", evaluate, keys.METRICS, "evaluated"),
    Step("stop", check_stop, None, "stop rules checked", halts=lambda out: out["stop_reason"]),
    Step("select", select, keys.SELECTION, "selected", parts=shard_count, part=score_shard),
    Step("audit", audit, keys.AUDIT, "audit drawn", enabled=lambda cfg: cfg.evaluation.enabled),
    Step("autolabel", autolabel, keys.AUTOLABEL, "auto-labeled", enabled=lambda cfg: cfg.autolabel.enabled),
    Step("dispatch", dispatch, keys.REFS, "dispatched, collecting answers", outside=True),
    Step("collect", collect, keys.COLLECTED, "collected", outside=True,
         halts=lambda out: f"waiting for answers in round {out['round']}" if out.get("pending") else None),
    Step("aggregate", aggregate, keys.AGGREGATE, "aggregated"),
    Step("pay", pay, keys.PAY, "paid", outside=True),
)

STEP_NAMES = tuple(s.name for s in ROUND_STEPS)


# -- what each record vouches for -------------------------------------------------------------
# A record deleted between runs must be noticed, not redone (a missing dispatch.json would send
# and pay its items again) nor skipped (a missing label-log segment would drop answers). The
# order above is the first promise: a step's record implies the record of every earlier step of
# its round, and a round before the last one is complete (it has pay.json). The tables below are
# the rest: records a step writes before its own record, and what its record counted or hashed.
# ``engine/verify.py`` checks a project against them when a run resumes and in `crowdloop verify`.

@dataclass(frozen=True)
class Needs:
    """While ``record`` of a round exists, ``needs`` (same round) must exist too — only when the
    record's field ``when`` is set, if given — and, with ``digest``, have the sha256 in that field."""

    record: str
    needs: str
    when: str | None = None
    digest: str | None = None


@dataclass(frozen=True)
class LogCount:
    """``record`` counted ``field`` answers in the label log: those of its round's batch
    (``scope="batch"``) or of every round up to its own (``"through"``); the log must still hold
    them, and every segment the record lists in ``listed`` must exist."""

    record: str
    field: str
    scope: str
    listed: str | None = None


RECORD_NEEDS: tuple[Needs, ...] = (
    Needs(keys.TRAIN, keys.SPREAD_LABELS, when="n_spread", digest="spread_sha256"),
    Needs(keys.TRAIN, keys.MODEL, when="trained", digest="model_sha256"),
    Needs(keys.AUTOLABEL, keys.MACHINE_LABELS, digest="machine_labels_sha256"),
    Needs(keys.REFS, keys.DISPATCH),  # the intent is written before the vendor is called
    Needs(keys.AGGREGATE, keys.LABELS, digest="labels_sha256"),
    # the audit's labels: the next rounds' accuracy estimates and audit draws are computed from them
    Needs(keys.AGGREGATE, keys.AUDIT_LABELS, when="audit_labels_sha256", digest="audit_labels_sha256"),
)

LOG_COUNTS: tuple[LogCount, ...] = (
    LogCount(keys.COLLECTED, "n_annotations", "batch", listed="segments"),
    LogCount(keys.AGGREGATE, "n_judgments", "through"),
)

StepRunner = Callable[[Step, Project, int], Output]
AfterStep = Callable[[Step, int, Output], str | None]


def run_step(step: Step, p: Project, r: int) -> Output:
    """Run one step in this process and pass its ``<name>:done`` point."""
    out = step.run(p, r)
    hooks.point(f"{step.name}:done", r)
    return out


def run_round(p: Project, r: int, *, call: StepRunner = run_step, after: AfterStep | None = None,
              until: str | None = None) -> str | None:
    """Walk ``ROUND_STEPS`` for round ``r``; returns why the run stops here (None: next round).

    ``call`` runs a step (the flow passes one that runs it as a Prefect task); ``after`` sees
    every step's output and may end the run with a reason of its own; ``until`` names the last
    step to run (tests and tools that stop part-way through a round).
    """
    if until is not None and until not in STEP_NAMES:
        raise ValueError(f"until={until!r}: expected one of {', '.join(STEP_NAMES)}")
    for step in ROUND_STEPS:
        if not step.enabled(p.config):
            continue
        out = call(step, p, r)
        extra = after(step, r, out) if after else None  # sees every step, the halting one too
        reason = step.halts(out) or extra
        if reason:
            return reason
        if step.name == until:
            break
    return None


def first_open_round(p: Project) -> int:
    """The round a (re)started run continues with: the last one that has not finished paying."""
    rounds = p.rounds()
    if not rounds:
        return 0
    last = rounds[-1]
    return last + 1 if p.has(last, keys.PAY) else last


def run_rounds(p: Project, *, call: StepRunner = run_step, after: AfterStep | None = None) -> str:
    """The reference model once, then rounds from the first unfinished one until one halts; the reason."""
    call(REFERENCE_STEP, p, 0)
    r = first_open_round(p)
    while True:
        reason = run_round(p, r, call=call, after=after)
        if reason:
            return reason
        r += 1


def run_in_process(p: Project, *, stop_at_accuracy: float | None = None) -> Project:
    """Run rounds in this process, without Prefect, until a stopping rule holds (or the test
    accuracy reaches ``stop_at_accuracy``). For benchmarks and tests; the flow is the orchestrated
    twin over the same table."""

    def at_accuracy(step: Step, r: int, out: Output) -> str | None:
        if step.name == "stop" and stop_at_accuracy is not None:
            accuracy = p.record(r, keys.METRICS)["accuracy"]
            if accuracy is not None and accuracy >= stop_at_accuracy:
                return f"accuracy {accuracy:.4f} reached {stop_at_accuracy}"
        return None

    r = first_open_round(p)
    while not run_round(p, r, after=at_accuracy):
        r += 1
    return p


def declared_points() -> list[str]:
    """Every named point a run passes (without the ``@round``): what the crash harness may kill at."""
    return [f"{REFERENCE_STEP.name}:done", *(f"{s.name}:done" for s in ROUND_STEPS), *hooks.INNER_POINTS]


def phase(p: Project) -> str:
    """Where the project stands, e.g. ``round 3: selected``: the last step of the open round that is done."""
    rounds = p.rounds()
    if not rounds:
        return "starting"
    r = rounds[-1]
    for step in reversed(ROUND_STEPS):
        if step.record is not None and p.has(r, step.record):
            return f"round {r}: {step.phase}"
    return f"round {r}: training"
