"""The simulated crowd behaves like a remote vendor: idempotent, new-only polls, deterministic."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from crowdloop.errors import ConfigError, VendorError
from crowdloop.records import Task
from crowdloop.storage import PrefixedStore
from crowdloop.storage.local import LocalStore
from crowdloop.vendor import VendorContext
from crowdloop.vendors.simulated import SimulatedCrowd

CLASSES = ("a", "b", "c", "d")


def make(tmp_path: Path, truth: dict[str, str] | None = None, **params) -> SimulatedCrowd:
    truth = truth or {f"i{n}": CLASSES[n % 4] for n in range(400)}
    ctx = VendorContext(project="p", name="simulated", seed=1, classes=CLASSES,
                        store=PrefixedStore(LocalStore(tmp_path), "vendor/simulated"),
                        item_payload=lambda i: {}, ground_truth=lambda ids: [truth.get(i) for i in ids])
    return SimulatedCrowd(params, ctx)


def tasks(n: int, replicas: int = 3, batch: str = "b0") -> list[Task]:
    return [Task(item_id=f"i{k}", round=0, batch_id=batch, replicas=replicas, reward=0.03) for k in range(n)]


def test_submit_is_idempotent_and_poll_returns_only_new(tmp_path: Path) -> None:
    crowd = make(tmp_path)
    refs = crowd.submit(tasks(10), batch_id="b0")
    assert crowd.submit(tasks(10), batch_id="b0") == refs
    first = crowd.poll(refs)
    assert len(first) == 30 and len({a.assignment_id for a in first}) == 30
    assert crowd.poll(refs) == []
    assert crowd.ledger()["tasks"] == 10  # the retry created nothing on the vendor


def test_each_item_gets_distinct_workers(tmp_path: Path) -> None:
    crowd = make(tmp_path, n_workers=5)
    answers = crowd.poll(crowd.submit(tasks(50, replicas=5), batch_id="b0"))
    by_item: dict[str, list[str]] = {}
    for a in answers:
        by_item.setdefault(a.item_id, []).append(a.worker_id)
    assert all(len(set(ws)) == 5 for ws in by_item.values())


def test_deterministic_from_seed_and_batch(tmp_path: Path) -> None:
    one = make(tmp_path / "1").poll(make(tmp_path / "1").submit(tasks(30), batch_id="b0"))
    two = make(tmp_path / "2").poll(make(tmp_path / "2").submit(tasks(30), batch_id="b0"))
    assert [(a.worker_id, a.label, a.duration_s) for a in one] == [(a.worker_id, a.label, a.duration_s) for a in two]


def test_worker_quality_follows_the_configuration(tmp_path: Path) -> None:
    truth = {f"i{n}": CLASSES[n % 4] for n in range(400)}
    perfect = make(tmp_path / "good", truth, accuracy=[1.0, 1.0], spammer_fraction=0.0)
    answers = perfect.poll(perfect.submit(tasks(400, replicas=1), batch_id="b0"))
    assert all(a.label == truth[a.item_id] for a in answers)
    spam = make(tmp_path / "spam", truth, spammer_fraction=1.0)
    answers = spam.poll(spam.submit(tasks(400, replicas=1), batch_id="b0"))
    share = np.mean([a.label == truth[a.item_id] for a in answers])
    assert 0.15 < share < 0.35  # uniform guessing over 4 classes
    confused = make(tmp_path / "conf", truth, accuracy=[0.0, 0.0], spammer_fraction=0.0, confusion=1.0)
    answers = confused.poll(confused.submit(tasks(100, replicas=1), batch_id="b0"))
    assert all(CLASSES.index(a.label) == (CLASSES.index(truth[a.item_id]) + 1) % 4 for a in answers)


def test_acknowledged_answers_are_not_polled_again_and_pay_once(tmp_path: Path) -> None:
    crowd = make(tmp_path)
    refs = crowd.submit(tasks(4), batch_id="b0")
    answers = crowd.poll(refs)
    crowd.acknowledge(answers, accept=True)
    crowd.acknowledge(answers, accept=True)  # a retried payment call pays nothing more
    assert make(tmp_path).poll(refs) == []  # a fresh process sees them as done
    assert crowd.ledger()["paid"] == pytest.approx(0.03 * 12)
    with pytest.raises(VendorError, match="reason"):
        crowd.acknowledge(answers[:1], accept=False)


def test_bonus_is_idempotent_per_token(tmp_path: Path) -> None:
    crowd = make(tmp_path)
    answers = crowd.poll(crowd.submit(tasks(2), batch_id="b0"))
    crowd.bonus(answers, amount=0.01, reason="top-up", token="b0-topup")
    crowd.bonus(answers, amount=0.01, reason="top-up", token="b0-topup")
    assert crowd.ledger()["bonuses"] == pytest.approx(0.06)


def test_bad_parameters_and_impossible_tasks(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"vendor.params.n_workers"):
        make(tmp_path, n_workers=0)
    with pytest.raises(ConfigError, match=r"vendor.params.*unknown field"):
        make(tmp_path, workers=3)
    crowd = make(tmp_path, n_workers=2)
    with pytest.raises(VendorError, match=r"replicas=3 .* exceeds n_workers=2"):
        crowd.submit(tasks(1, replicas=3), batch_id="b1")
    crowd = make(tmp_path, {"i0": None})
    with pytest.raises(VendorError, match="no ground truth"):
        crowd.submit(tasks(1), batch_id="b2")


def test_pair_confusers_mix_up_the_same_class_pairs(tmp_path: Path) -> None:
    truth = {f"i{n}": CLASSES[n % 4] for n in range(400)}
    crowd = make(tmp_path, truth, n_workers=10, accuracy=[1.0, 1.0], spammer_fraction=0.0,
                 pair_confuser_fraction=1.0, confused_pairs=1, pair_confusion=1.0)
    answers = crowd.poll(crowd.submit(tasks(400, replicas=2), batch_id="b0"))
    pair = crowd.pair_of  # one pair of classes, drawn once for the crowd
    assert len(pair) == 2 and all(pair[pair[a]] == a for a in pair)
    for a in answers:
        true = CLASSES.index(truth[a.item_id])
        assert CLASSES.index(a.label) == pair.get(true, true)


def test_a_ring_shares_one_answer_per_item_across_batches(tmp_path: Path) -> None:
    truth = {f"i{n}": CLASSES[n % 4] for n in range(400)}
    crowd = make(tmp_path, truth, n_workers=6, accuracy=[1.0, 1.0], spammer_fraction=0.0,
                 ring_fraction=0.5, ring_accuracy=0.25)
    ring = {crowd.worker_ids[w] for w in np.flatnonzero(crowd.in_ring)}
    assert len(ring) == 3
    answers = crowd.poll(crowd.submit(tasks(400, replicas=6), batch_id="b0"))
    answers += crowd.poll(crowd.submit(tasks(400, replicas=1), batch_id="b1"))
    by_item: dict[str, set[str]] = {}
    for a in answers:
        if a.worker_id in ring:
            by_item.setdefault(a.item_id, set()).add(a.label)
    assert all(len(labels) == 1 for labels in by_item.values())  # one voice, whichever batch asked
    right = np.mean([next(iter(v)) == truth[i] for i, v in by_item.items()])
    assert 0.15 < right < 0.35
    honest = [a for a in answers if a.worker_id not in ring]
    assert all(a.label == truth[a.item_id] for a in honest)


def test_structured_kinds_leave_earlier_crowds_unchanged_and_check_their_sizes(tmp_path: Path) -> None:
    plain = make(tmp_path / "a", confuser_fraction=0.1, colluder_fraction=0.1)
    with_zero = make(tmp_path / "b", confuser_fraction=0.1, colluder_fraction=0.1, ring_fraction=0.0,
                     pair_confuser_fraction=0.0)
    one = plain.poll(plain.submit(tasks(30), batch_id="b0"))
    two = with_zero.poll(with_zero.submit(tasks(30), batch_id="b0"))
    assert [(a.worker_id, a.label) for a in one] == [(a.worker_id, a.label) for a in two]
    with pytest.raises(ConfigError, match=r"ring_fraction = 1\.2: expected at most 1"):
        make(tmp_path / "c", spammer_fraction=0.2, ring_fraction=0.5, pair_confuser_fraction=0.5)
