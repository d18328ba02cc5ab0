"""The round engine: each step of a round as a function of (project, round) over the store.

A round is the table ``ROUND_STEPS`` in ``rounds.py``: train → evaluate → stop? → select →
(audit) → (autolabel) → dispatch → collect → aggregate → pay, one module per step. Every step first
looks in the store for its own record and returns it if present, so a rerun after a crash
skips finished steps and redoes only the interrupted one; a step reads the records of the
steps before it and never calls them. Side effects on vendors are bracketed: the intent is
written before the call, the result after, and the vendor call itself is idempotent per
batch id. Selection for round r depends only on (seed, r, store contents), so a redone
selection picks the same items. ``docs/architecture.md`` draws the whole path.

Nothing here imports Prefect: ``crowdloop.flows`` runs the same table as Prefect tasks.
"""

from crowdloop.engine.aggregation import aggregate
from crowdloop.engine.auditing import audit
from crowdloop.engine.autolabeling import autolabel
from crowdloop.engine.budget import check_stop, expected_task_seconds, next_batch_size, stop_reason
from crowdloop.engine.collection import append_segment, collect
from crowdloop.engine.dispatching import dispatch
from crowdloop.engine.evaluation import evaluate, reference
from crowdloop.engine.payment import pay
from crowdloop.engine.project import MissingRecordError, Project, default_location, start_baseline
from crowdloop.engine.rounds import (
    REFERENCE_STEP,
    ROUND_STEPS,
    STEP_NAMES,
    Step,
    declared_points,
    first_open_round,
    phase,
    run_in_process,
    run_round,
    run_rounds,
    run_step,
)
from crowdloop.engine.selection import score_shard, select, shard_count
from crowdloop.engine.training import train

__all__ = [
    "REFERENCE_STEP", "ROUND_STEPS", "STEP_NAMES", "MissingRecordError", "Project", "Step",
    "aggregate", "append_segment", "audit", "autolabel", "check_stop", "collect", "declared_points", "default_location",
    "dispatch", "evaluate", "expected_task_seconds", "first_open_round", "next_batch_size", "pay", "phase",
    "reference", "run_in_process", "run_round", "run_rounds", "run_step", "score_shard", "select", "shard_count",
    "start_baseline", "stop_reason", "train",
]
