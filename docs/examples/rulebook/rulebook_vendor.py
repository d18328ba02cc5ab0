"""An example vendor plug-in: "annotators" that apply a botanist's rule of thumb to iris rows.

It shows everything a real vendor needs: validated params, state under the vendor's own
store prefix (so it survives restarts), an idempotent ``submit``, a non-blocking ``poll``
that returns each answer once, ``acknowledge`` and an idempotent ``bonus``.
"""

from __future__ import annotations

import contextlib
import hashlib
from collections.abc import Sequence

from pydantic import BaseModel, ConfigDict, Field

from crowdloop.errors import RecordExistsError, VendorError
from crowdloop.records import Annotation, Task, utcnow
from crowdloop.storage import read_json, write_json
from crowdloop.vendor import Ref, VendorContext, parse_params


class RuleBookParams(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    seconds_per_task: float = Field(6.0, gt=0, description="reported task time")


def iris_rule(row: dict[str, float]) -> str:
    """Petal length separates setosa; petal width splits the other two (about 95% right)."""
    if row["petal length (cm)"] < 2.5:
        return "setosa"
    return "versicolor" if row["petal width (cm)"] < 1.75 else "virginica"


class RuleBook:
    name = "rulebook"

    def __init__(self, params: dict, context: VendorContext) -> None:
        self.params = parse_params(RuleBookParams, params, vendor="rulebook")
        self.context = context
        self.name = context.name
        self.store = context.store  # this vendor's own prefix of the project store
        self._returned: set[str] = set()

    def submit(self, tasks: Sequence[Task], *, batch_id: str) -> list[Ref]:
        key = f"batches/{batch_id}.json"
        if not self.store.exists(key):  # idempotent: a retried batch is not created twice
            answers = [self._answer(t, replica) for t in tasks for replica in range(t.replicas)]
            with contextlib.suppress(RecordExistsError):
                write_json(self.store, key, {"answers": [a.model_dump(mode="json") for a in answers]}, create_only=True)
        return [{"batch_id": batch_id}]

    def poll(self, refs: Sequence[Ref]) -> list[Annotation]:
        new = []
        for ref in refs:  # reads the store only: never blocks
            for raw in read_json(self.store, f"batches/{ref['batch_id']}.json")["answers"]:
                if raw["assignment_id"] not in self._returned:
                    self._returned.add(raw["assignment_id"])
                    new.append(Annotation.model_validate(raw))
        return new

    def acknowledge(self, assignments: Sequence[Annotation], *, accept: bool, reason: str | None = None) -> None:
        if not accept and not reason:
            raise VendorError("vendor 'rulebook': a rejection needs a reason the worker can read")
        for a in assignments:
            with contextlib.suppress(RecordExistsError):  # decided before: never pay twice
                write_json(self.store, f"acks/{a.assignment_id}.json", {"accept": accept, "reason": reason,
                                                                        "paid": a.reward if accept else 0.0},
                           create_only=True)

    def bonus(self, assignments: Sequence[Annotation], *, amount: float, reason: str, token: str) -> None:
        key = f"bonuses/{hashlib.sha256(token.encode()).hexdigest()[:24]}.json"
        with contextlib.suppress(RecordExistsError):  # one payment per token
            write_json(self.store, key, {"n": len(assignments), "amount": amount, "reason": reason}, create_only=True)

    def ledger(self) -> dict[str, float]:
        """Optional: lets crowdloop.testing.check_vendor verify that retries change nothing."""
        paid = sum(read_json(self.store, k)["paid"] for k in self.store.list("acks/"))
        bonus = sum(read_json(self.store, k)["n"] * read_json(self.store, k)["amount"] for k in self.store.list("bonuses/"))
        return {"batches": len(self.store.list("batches/")), "paid": round(paid, 2), "bonus": round(bonus, 2)}

    def _answer(self, task: Task, replica: int) -> Annotation:
        payload = self.context.item_payload(task.item_id)  # what a human would see
        label = iris_rule(dict(zip(payload["columns"], payload["values"], strict=True)))
        aid = hashlib.sha256(f"{task.batch_id}|{task.item_id}|{replica}".encode()).hexdigest()[:20]
        return Annotation(item_id=task.item_id, worker_id=f"rule-{replica}", label=label, vendor=self.name,
                          assignment_id=aid, batch_id=task.batch_id, round=task.round, submitted_at=utcnow(),
                          duration_s=self.params.seconds_per_task, reward=task.reward, is_gold=task.is_gold)
