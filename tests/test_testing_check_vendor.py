"""crowdloop.testing.check_vendor passes good vendors and names the promise a bad one breaks."""

from __future__ import annotations

import hashlib
import time

import pytest

from crowdloop.errors import VendorError
from crowdloop.records import Annotation, utcnow
from crowdloop.storage.local import LocalStore
from crowdloop.testing import VendorContractError, check_vendor, make_context
from crowdloop.vendors.simulated import SimulatedCrowd


class GoodVendor:
    """A minimal in-memory vendor whose workers answer at once (its state dies with it)."""

    name = "good"

    def __init__(self, params, context):
        self.context = context
        self.batches: dict[str, list[Annotation]] = {}
        self.returned: set[str] = set()
        self.paid: dict[str, float] = {}
        self.bonuses: dict[str, float] = {}

    def _answers(self, tasks, batch_id):
        return [Annotation(item_id=t.item_id, worker_id=f"w{r}", label=self.context.classes[0], vendor=self.name,
                           assignment_id=hashlib.sha1(f"{batch_id}{t.item_id}{r}".encode()).hexdigest(),
                           batch_id=batch_id, round=t.round, submitted_at=utcnow(), duration_s=3.0, reward=t.reward)
                for t in tasks for r in range(t.replicas)]

    def submit(self, tasks, *, batch_id):
        self.batches.setdefault(batch_id, self._answers(tasks, batch_id))
        return [{"batch_id": batch_id}]

    def poll(self, refs):
        out = [a for r in refs for a in self.batches[r["batch_id"]] if a.assignment_id not in self.returned]
        self.returned.update(a.assignment_id for a in out)
        return out

    def acknowledge(self, assignments, *, accept, reason=None):
        if not accept and not reason:
            raise VendorError("a rejection needs a reason")
        for a in assignments:
            self.paid.setdefault(a.assignment_id, a.reward if accept else 0.0)

    def bonus(self, assignments, *, amount, reason, token):
        self.bonuses.setdefault(token, amount * len(assignments))

    def ledger(self):
        return {"tasks": sum(len(b) for b in self.batches.values()), "paid": sum(self.paid.values()),
                "bonuses": sum(self.bonuses.values())}


@pytest.fixture
def context(tmp_path):
    return make_context(LocalStore(tmp_path), name="good")


def test_a_good_vendor_passes(context):
    report = check_vendor(GoodVendor({}, context), context=context)
    assert report.n_annotations == 8
    assert len(report.checks) == 4 and report.skipped == []


def test_the_simulated_crowd_passes_with_a_restart():
    report = check_vendor(SimulatedCrowd, params={"n_workers": 5}, n_items=5, replicas=3)
    assert report.n_annotations == 15
    assert "also after a restart" in report.checks[0]


class DoubleSubmit(GoodVendor):
    def submit(self, tasks, *, batch_id):
        earlier = self.batches.get(batch_id, [])
        self.batches[batch_id] = earlier + self._answers(tasks, batch_id + str(len(earlier)))
        return [{"batch_id": batch_id}]


class NewRefs(GoodVendor):
    def submit(self, tasks, *, batch_id):
        super().submit(tasks, batch_id=batch_id)
        return [{"batch_id": batch_id, "at": time.monotonic_ns()}]


class Repeats(GoodVendor):
    def poll(self, refs):
        return [a for r in refs for a in self.batches[r["batch_id"]]]


class Blocks(GoodVendor):
    def poll(self, refs):
        time.sleep(0.3)
        return super().poll(refs)


class RejectsSilently(GoodVendor):
    def acknowledge(self, assignments, *, accept, reason=None):
        for a in assignments:
            self.paid.setdefault(a.assignment_id, a.reward if accept else 0.0)


class PaysBonusTwice(GoodVendor):
    def bonus(self, assignments, *, amount, reason, token):
        self.bonuses[f"{token}{len(self.bonuses)}"] = amount * len(assignments)


class BadRefs(GoodVendor):
    def submit(self, tasks, *, batch_id):
        super().submit(tasks, batch_id=batch_id)
        return [{"batch_id": batch_id, "tasks": tasks}]


@pytest.mark.parametrize("cls, match", [
    (DoubleSubmit, r"idempotent submit: a retried submit changed the vendor's ledger"),
    (NewRefs, r"idempotent submit: a retry with the same batch_id returned other refs"),
    (Repeats, r"poll returns only new answers: a poll after all answers arrived returned answers again"),
    (Blocks, r"non-blocking poll: poll took 0\.\d\ds, more than max_poll_s=0.1"),
    (RejectsSilently, r"acknowledge: a rejection without a reason was accepted"),
    (PaysBonusTwice, r"bonus: a repeated bonus token paid again"),
    (BadRefs, r"submit: refs must be JSON-serializable"),
])
def test_each_broken_promise_is_named(context, cls, match):
    with pytest.raises(VendorContractError, match=match):
        check_vendor(cls({}, context), context=context, max_poll_s=0.1, timeout_s=1)


def test_answers_that_never_come_fail_with_counts(context):
    class Silent(GoodVendor):
        def poll(self, refs):
            return []

    with pytest.raises(VendorContractError, match=r"expected 8 answers \(4 items x 2 replicas\) within 0.2s, got 0"):
        check_vendor(Silent({}, context), context=context, timeout_s=0.2)


def test_arguments_are_checked(context):
    with pytest.raises(ValueError, match=r"n_items=0, replicas=2: expected positive integers"):
        check_vendor(GoodVendor({}, context), context=context, n_items=0)
