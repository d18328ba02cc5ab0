"""Every key of a project store, and the batch id, spelled once.

A project store is a flat key space (``storage/__init__.py``). Per-round records live under
``rounds/NNNN/``; each step of a round writes the records named here (``docs/architecture.md``
draws which step writes which). Code elsewhere names a record by these constants, never by a
string literal, so a renamed record cannot leave a reader behind.
"""

from __future__ import annotations

import re

# -- project-level records -------------------------------------------------------------------
PROJECT = "project.json"  # the config the project was started with (create-only, then resumable sections)
CONFIG_HISTORY = "config-history/"  # earlier versions of project.json, one per change of a resumable section
REFERENCE = "reference.json"  # accuracy of the model trained on the whole pool with true labels
SEED_LABELS = "seed_labels.jsonl"  # labels imported from pool.seed_labels (create-only, before round 0)
GOLD_SET = "gold_set.jsonl"  # gold answers read from gold.path (create-only, before round 0)
STOP = "stop.json"  # why the loop stopped (deleted when a resume raises a limit)
SEGMENTS = "labels/segments/"  # the append-only label log: one content-addressed segment per collect batch
BASELINE = "baseline"  # prefix of the random-sampling twin project
VENDOR = "vendor"  # prefix of each vendor's own state: vendor/<name>/...
MEDIA = "media/"  # image files uploaded for vendors that show images by URL: media/<sha256><.ext>, content-addressed
POOL_LISTINGS = "pool-listings/"  # a folder pool's files per digest: pool-listings/<sha256>.json, to tell files added
APPROVALS = "approvals/"  # approved money budgets of a real-money vendor, one create-only record each

# -- human-readable outputs, rewritten at the end of every run ---------------------------------
OUT_METRICS = "metrics.json"
OUT_METRICS_CSV = "metrics.csv"
OUT_LEARNING_CURVE = "learning_curve.png"
OUT_LABELS = "labels.jsonl"
OUT_ANNOTATIONS = "annotations.jsonl"

# -- per-round records, in the order a round writes them ---------------------------------------
TRAIN = "train.json"  # what round r trained on
MODEL = "model.pkl"  # round r's fitted model
SPREAD_LABELS = "spread_labels.jsonl"  # label-spreading machine labels round r trained on
METRICS = "metrics.json"  # round r's model: labels, judgments, money so far, test and estimated accuracy
SELECTION = "selection.json"  # the batch round r picked (new items, re-asks, gold)
AUDIT = "audit.json"  # the audit draws round r adds (evaluation.method), with their proposal probabilities
SHARDS = "shards/"  # per-shard top-k of a sharded selection
AUTOLABEL = "autolabel.json"  # auto-labeling threshold and count
MACHINE_LABELS = "machine_labels.jsonl"  # auto-labels of round r's model
DISPATCH = "dispatch.json"  # the intent: tasks, reward, blocked workers (written before the vendor call)
REFS = "refs.json"  # the vendor's references for the batch (written after the vendor call)
COLLECTED = "collected.json"  # collection finished: how many answers, which items fell short
LABELS = "labels.jsonl"  # aggregated human labels after round r (training items; audit items apart)
AUDIT_LABELS = "audit_labels.jsonl"  # aggregated labels of the audit items after round r, with posteriors
AGGREGATE = "aggregate.json"  # aggregation summary: worker skill, gold, blocked workers
PAY = "pay.json"  # money of round r: rewards, bonuses, fees, rejections

_ROUND_DIR = re.compile(r"^rounds/(\d{4,})/")
_SEGMENT = re.compile("^" + re.escape(SEGMENTS) + r"(\d{4,})-[^/]+\.jsonl$")


def round_key(round_: int, name: str) -> str:
    """``rounds/0003/<name>``: a record of round ``round_``."""
    return f"rounds/{round_:04d}/{name}"


def shard_key(round_: int, shard: int, n_shards: int) -> str:
    """One shard's top candidates of round ``round_``'s sharded selection."""
    return round_key(round_, f"{SHARDS}{shard:04d}-of-{n_shards:04d}.json")


def segment_key(round_: int, digest: str) -> str:
    """A label-log segment collected in round ``round_``, named by the hash of its content."""
    return f"{SEGMENTS}{round_:04d}-{digest}.jsonl"


def round_of_segment(key: str) -> int | None:
    """The round a label-log segment was collected in (None for any other key)."""
    m = _SEGMENT.match(key)
    return int(m.group(1)) if m else None


def round_of(key: str) -> int | None:
    """The round a ``rounds/NNNN/...`` key belongs to (None for any other key)."""
    m = _ROUND_DIR.match(key)
    return int(m.group(1)) if m else None


def batch_id(project: str, round_: int) -> str:
    """The vendor batch of round ``round_``: also the idempotency key of its dispatch."""
    return f"{project}-r{round_:04d}"


def is_batch_of(project: str, name: str) -> bool:
    """Whether ``name`` is a ``batch_id`` of ``project`` (``x-rerun-r0000`` is not one of ``x``'s)."""
    return re.fullmatch(rf"{re.escape(project)}-r\d{{4,}}", name) is not None


def vendor_prefix(name: str) -> str:
    """Where vendor ``name`` keeps its own state inside the project store."""
    return f"{VENDOR}/{name}"


def pool_listing_key(sha256: str) -> str:
    """The listing of a folder pool's files whose digest is ``sha256`` (content-addressed)."""
    return f"{POOL_LISTINGS}{sha256}.json"
