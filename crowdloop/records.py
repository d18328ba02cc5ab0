"""Record types written to the project store (``docs/architecture.md`` shows where each lives).

Records are pydantic models so that anything a vendor returns is validated before it is
stored, and so that the JSON on disk is the documented format.
"""

from __future__ import annotations

import hashlib
import json
from datetime import UTC, datetime
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field


class _Record(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Task(_Record):
    """One item sent to a vendor for ``replicas`` independent judgments."""

    item_id: str
    round: int = Field(ge=0)
    batch_id: str
    replicas: int = Field(ge=1)
    reward: float = Field(ge=0, allow_inf_nan=False, description="per judgment, in the pay currency")
    is_gold: bool = False
    payload: dict[str, Any] = Field(default_factory=dict, description="what the worker sees (text, image ref, row)")
    exclude_workers: tuple[str, ...] = Field(
        (), description="workers who must not get this task (they already answered this item)"
    )


class Annotation(_Record):
    """One worker's answer to one task (an assignment, in MTurk's words)."""

    item_id: str
    worker_id: str
    label: str
    vendor: str
    assignment_id: str
    batch_id: str
    round: int = Field(ge=0)
    submitted_at: datetime
    # Finite only: JSON has no inf/NaN, so such a record would be written as null and then
    # break every later read of the label log.
    duration_s: float = Field(ge=0, allow_inf_nan=False)
    reward: float = Field(ge=0, allow_inf_nan=False)
    is_gold: bool = False

    @property
    def key(self) -> tuple[str, str]:
        """De-duplication key of the label log."""
        return (self.vendor, self.assignment_id)


class AggregatedLabel(_Record):
    item_id: str
    label: str
    confidence: float = Field(ge=0, le=1)
    n_annotations: int = Field(ge=0)
    method: str
    # imported: pool.seed_labels, never bought; reviewed: a reviewer's correction (crowdloop/corrections.py)
    source: Literal["human", "machine", "gold", "imported", "reviewed"] = "human"
    round: int = Field(ge=0)


class AuditLabel(_Record):
    """An audit item's aggregated label with the consensus posterior over every class: the
    accuracy estimate counts a prediction right with the posterior's probability of its class."""

    item_id: str
    label: str
    proba: dict[str, float]
    n_annotations: int = Field(ge=0)
    round: int = Field(ge=0)
    # reviewed: a reviewer's correction, certain; copied: shows what an audit item asked shows (its label, unasked)
    source: Literal["human", "reviewed", "copied"] = "human"


def utcnow() -> datetime:
    return datetime.now(UTC)


def dumps(obj: Any) -> bytes:
    """Canonical JSON bytes (sorted keys) so content hashes are stable."""
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), default=str).encode()


def to_jsonl(records: list[BaseModel]) -> bytes:
    return b"".join(r.model_dump_json().encode() + b"\n" for r in records)


def content_hash(data: bytes, length: int = 16) -> str:
    return hashlib.sha256(data).hexdigest()[:length]
