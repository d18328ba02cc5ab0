"""A simulated crowd: noisy workers answering from the pool's ground truth.

Used for demos and benchmarks. It behaves like a remote vendor: its state (tasks created,
answers, payments) lives under its own store prefix, so it survives the loop process being
killed, ``submit`` is idempotent per batch id, and everything is deterministic from the
project seed and the batch id.
"""

from __future__ import annotations

import contextlib
import hashlib
import time
import zlib
from collections.abc import Sequence
from datetime import timedelta

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, model_validator

from crowdloop.errors import ConfigError, RecordExistsError, VendorError
from crowdloop.records import Annotation, Task, utcnow
from crowdloop.storage import read_json, write_json
from crowdloop.vendor import (
    BLOCKS_WORKERS,
    EXCLUDES_WORKERS_PER_ITEM,
    NEEDS_GROUND_TRUTH,
    Ref,
    VendorContext,
    VendorPlan,
    acknowledged,
    blocked_workers,
    parse_params,
    record_block,
    record_decision,
)


class SimulatedCrowdParams(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    n_workers: int = Field(40, ge=1, description="size of the worker population")
    accuracy: tuple[float, float] = Field((0.6, 0.95), description="honest workers' accuracy, uniform in [low, high]")
    spammer_fraction: float = Field(0.1, ge=0, le=1, description="workers answering uniformly at random")
    confusion: float = Field(0.0, ge=0, le=1, description="share of an honest worker's errors that go to one confused class")
    confuser_fraction: float = Field(0.0, ge=0, le=1, description="workers who systematically answer a wrong class (true+1)")
    colluder_fraction: float = Field(0.0, ge=0, le=1, description="colluding spammers who always answer the same class")
    colluder_class: int = Field(0, ge=0, description="index of the class colluders always answer")
    pair_confuser_fraction: float = Field(
        0.0, ge=0, le=1, description="workers who mix up the crowd's confused class pairs (a↔b) with probability pair_confusion")
    confused_pairs: int = Field(2, ge=1, description="class pairs (drawn once per crowd) that pair confusers mix up")
    pair_confusion: float = Field(0.7, ge=0, le=1, description="how often a pair confuser answers the other class of a pair")
    ring_fraction: float = Field(
        0.0, ge=0, le=1, description="a ring of workers who share one answer per item (right with ring_accuracy, "
                                     "else the same wrong class for every member)")
    ring_accuracy: float = Field(0.3, ge=0, le=1, description="how often the ring's shared answer is right")
    median_seconds: float = Field(8.0, gt=0, description="median task duration")
    duration_sigma: float = Field(0.5, ge=0, description="log-normal spread of durations")
    latency_s: float = Field(0.0, ge=0, description="answers trickle in over this many wall-clock seconds")

    @model_validator(mode="after")
    def _check_range(self) -> SimulatedCrowdParams:
        low, high = self.accuracy
        if not 0 <= low <= high <= 1:
            raise ValueError(f"accuracy={list(self.accuracy)}: expected [low, high] with 0 <= low <= high <= 1")
        kinds = (self.spammer_fraction + self.confuser_fraction + self.colluder_fraction
                 + self.pair_confuser_fraction + self.ring_fraction)
        if kinds > 1:
            raise ValueError(
                f"spammer_fraction + confuser_fraction + colluder_fraction + pair_confuser_fraction + ring_fraction = "
                f"{kinds:g}: expected at most 1"
            )
        return self


def _adversaries(p: SimulatedCrowdParams) -> tuple[int, int]:
    """How many confusers and colluders the population holds."""
    return round(p.confuser_fraction * p.n_workers), round(p.colluder_fraction * p.n_workers)


def _check_population(p: SimulatedCrowdParams, classes: Sequence[str]) -> None:
    """The population the params describe can be drawn (checked offline and when building the crowd)."""
    n_conf, n_coll = _adversaries(p)
    honest = p.n_workers - round(p.spammer_fraction * p.n_workers)
    if n_conf + n_coll > honest:
        raise VendorError(f"vendor 'simulated': {n_conf + n_coll} adversarial workers but only {honest} non-spammers")
    n_pair, n_ring = round(p.pair_confuser_fraction * p.n_workers), round(p.ring_fraction * p.n_workers)
    free = honest - n_conf - n_coll
    if n_pair + n_ring > free:
        raise VendorError(f"vendor 'simulated': {n_pair + n_ring} pair confusers and ring members but only "
                          f"{free} honest workers")
    if p.colluder_class >= len(classes):
        raise VendorError(f"vendor 'simulated': colluder_class={p.colluder_class} but there are only {len(classes)} classes")


def _stable_int(text: str) -> int:
    return zlib.crc32(text.encode())


class SimulatedCrowd:
    """Workers with accuracies from a range, a share of spammers and optional class confusion."""

    name = "simulated"
    capabilities = frozenset({BLOCKS_WORKERS, EXCLUDES_WORKERS_PER_ITEM, NEEDS_GROUND_TRUTH})

    def __init__(self, params: dict, context: VendorContext) -> None:
        if context.ground_truth is None:
            raise VendorError("vendor 'simulated' needs a pool with ground truth (pool.label_column)")
        self.params = parse_params(SimulatedCrowdParams, params, vendor=self.name)
        self.context = context
        self.store = context.store
        self._returned: set[str] = set()
        p = self.params
        rng = np.random.default_rng([context.seed, _stable_int("population")])
        self.worker_ids = [f"sim-w{i:03d}" for i in range(p.n_workers)]
        self.workforce = p.n_workers  # every worker who can ever answer (crowdloop/vendor.py)
        self.worker_accuracy = rng.uniform(p.accuracy[0], p.accuracy[1], size=p.n_workers)
        n_spam = round(p.spammer_fraction * p.n_workers)
        self.is_spammer = np.zeros(p.n_workers, dtype=bool)
        self.is_spammer[rng.choice(p.n_workers, size=n_spam, replace=False)] = True
        self.worker_speed = rng.lognormal(0.0, 0.25, size=p.n_workers)
        # Adversarial kinds are drawn after the original population so plain crowds stay unchanged.
        self.is_confuser = np.zeros(p.n_workers, dtype=bool)
        self.is_colluder = np.zeros(p.n_workers, dtype=bool)
        n_conf, n_coll = _adversaries(p)
        _check_population(p, context.classes)
        if n_conf or n_coll:
            honest = np.flatnonzero(~self.is_spammer)
            rng = np.random.default_rng([context.seed, _stable_int("adversaries")])
            kinds = rng.choice(honest, n_conf + n_coll, replace=False)
            self.is_confuser[kinds[:n_conf]] = True
            self.is_colluder[kinds[n_conf:]] = True
        # Structured kinds come last, from their own stream, so every earlier crowd stays unchanged.
        self.is_pair_confuser = np.zeros(p.n_workers, dtype=bool)
        self.in_ring = np.zeros(p.n_workers, dtype=bool)
        self.pair_of: dict[int, int] = {}
        n_pair = round(p.pair_confuser_fraction * p.n_workers)
        n_ring = round(p.ring_fraction * p.n_workers)
        if n_pair or n_ring:
            free = np.flatnonzero(~(self.is_spammer | self.is_confuser | self.is_colluder))
            structured = np.random.default_rng([context.seed, _stable_int("structured")])
            chosen = structured.choice(free, n_pair + n_ring, replace=False)
            self.is_pair_confuser[chosen[:n_pair]] = True
            self.in_ring[chosen[n_pair:]] = True
            K = len(context.classes)
            if n_pair and K >= 2:  # disjoint pairs of classes, drawn once per crowd
                order = structured.permutation(K)
                for a, b in zip(order[0:2 * p.confused_pairs:2], order[1:2 * p.confused_pairs:2],
                                strict=False):  # an odd class left over pairs with nobody
                    self.pair_of[int(a)], self.pair_of[int(b)] = int(b), int(a)

    @classmethod
    def check_params(cls, params: dict, plan: VendorPlan) -> SimulatedCrowdParams:
        """Offline check of ``params`` against the plan: enough workers for each item's judgments."""
        p = parse_params(SimulatedCrowdParams, params, vendor=cls.name)
        if plan.judgments_per_item > p.n_workers:
            raise ConfigError(
                f"{plan.judgments_field}={plan.judgments_per_item} is above vendor.params.n_workers={p.n_workers}: "
                "each judgment of an item comes from a different worker; expected at most n_workers"
            )
        if plan.classes:
            _check_population(p, plan.classes)
        return p

    # -- vendor protocol -------------------------------------------------------------
    def submit(self, tasks: Sequence[Task], *, batch_id: str) -> list[Ref]:
        key = f"batches/{batch_id}.json"
        if self.store.exists(key):  # idempotent: the batch already exists on the "vendor"
            return [{"batch_id": batch_id}]
        answers = self._answer(tasks, batch_id)
        delays = np.random.default_rng([self.context.seed, _stable_int(batch_id), 1]).uniform(
            0.0, self.params.latency_s, size=len(answers))
        now = time.time()
        record = {"batch_id": batch_id, "tasks": [t.model_dump(mode="json") for t in tasks],
                  "assignments": [a.model_dump(mode="json") for a in answers],
                  "available_at": [now + float(d) for d in delays]}
        with contextlib.suppress(RecordExistsError):  # a concurrent retry created it first; the content is deterministic
            write_json(self.store, key, record, create_only=True)
        return [{"batch_id": batch_id}]

    def poll(self, refs: Sequence[Ref]) -> list[Annotation]:
        acked = acknowledged(self.store)
        new: list[Annotation] = []
        for ref in refs:
            batch = read_json(self.store, f"batches/{ref['batch_id']}.json")
            now = time.time()
            for raw, available_at in zip(batch["assignments"], batch["available_at"], strict=True):
                aid = raw["assignment_id"]
                if aid in self._returned or aid in acked or available_at > now:
                    continue
                self._returned.add(aid)
                new.append(Annotation.model_validate(raw))
        return new

    def acknowledge(self, assignments: Sequence[Annotation], *, accept: bool, reason: str | None = None) -> None:
        if not accept and not reason:
            raise VendorError("a rejection needs a reason the worker can read")
        record_decision(self.store, assignments, accept=accept, reason=reason)

    def bonus(self, assignments: Sequence[Annotation], *, amount: float, reason: str, token: str) -> None:
        record = {"assignment_ids": sorted(a.assignment_id for a in assignments), "amount": amount, "reason": reason}
        with contextlib.suppress(RecordExistsError):  # the token makes bonuses idempotent
            write_json(self.store, f"bonuses/{hashlib.sha256(token.encode()).hexdigest()[:24]}.json", record, create_only=True)

    def block_workers(self, worker_ids: Sequence[str], *, reason: str) -> None:
        """Stop giving tasks to these workers (MTurk: CreateWorkerBlock). Idempotent per worker."""
        for worker in sorted(set(worker_ids)):
            record_block(self.store, worker, reason=reason)

    def blocked_workers(self) -> set[str]:
        return set(blocked_workers(self.store))

    # -- helpers ----------------------------------------------------------------------
    def ledger(self) -> dict[str, float | int]:
        """The vendor's own accounting, for reconciliation tests: tasks, assignments, money."""
        tasks = assignments = 0
        for key in self.store.list("batches/"):
            batch = read_json(self.store, key)
            tasks += len(batch["tasks"])
            assignments += len(batch["assignments"])
        paid = sum(read_json(self.store, k)["paid"] for k in self.store.list("acks/"))
        bonuses = sum(read_json(self.store, k)["amount"] * len(read_json(self.store, k)["assignment_ids"])
                      for k in self.store.list("bonuses/"))
        return {"tasks": tasks, "assignments": assignments, "paid": round(paid, 2), "bonuses": round(bonuses, 2)}

    def _ring_answer(self, item_id: str, true_idx: int, K: int) -> int:
        """The ring's one answer for an item: every member gives it, whichever batch asks."""
        shared = np.random.default_rng([self.context.seed, _stable_int("ring"), _stable_int(item_id)])
        if shared.random() < self.params.ring_accuracy:
            return true_idx
        return (true_idx + 1 + int(shared.integers(K - 1))) % K

    def _answer(self, tasks: Sequence[Task], batch_id: str) -> list[Annotation]:
        p = self.params
        classes = self.context.classes
        K = len(classes)
        truth = self.context.ground_truth([t.item_id for t in tasks])
        rng = np.random.default_rng([self.context.seed, _stable_int(batch_id)])
        blocked = self.blocked_workers()
        index = {w: i for i, w in enumerate(self.worker_ids)}
        start = utcnow()
        out: list[Annotation] = []
        for task, true_label in zip(tasks, truth, strict=True):
            if true_label is None:
                raise VendorError(f"vendor 'simulated': item {task.item_id!r} has no ground truth to answer from")
            excluded = blocked.union(task.exclude_workers)
            if not excluded:
                if task.replicas > p.n_workers:
                    raise VendorError(
                        f"vendor 'simulated': replicas={task.replicas} for item {task.item_id!r} exceeds n_workers={p.n_workers}"
                    )
                workers = rng.choice(p.n_workers, size=task.replicas, replace=False)
            else:
                allowed = np.array(sorted(set(range(p.n_workers)) - {index[w] for w in excluded if w in index}), dtype=np.int64)
                available = len(allowed)
                if task.replicas > available:
                    raise VendorError(
                        f"vendor 'simulated': replicas={task.replicas} for item {task.item_id!r} exceeds the {available} "
                        f"workers left after {len(excluded)} blocked or excluded"
                    )
                workers = allowed[rng.choice(available, size=task.replicas, replace=False)]
            true_idx = classes.index(true_label)
            for replica, w in enumerate(workers):
                if self.in_ring[w]:
                    answer = self._ring_answer(task.item_id, true_idx, K)
                elif self.is_pair_confuser[w] and true_idx in self.pair_of:
                    answer = self.pair_of[true_idx] if rng.random() < p.pair_confusion else true_idx
                elif self.is_colluder[w]:
                    answer = p.colluder_class
                elif self.is_confuser[w]:
                    answer = (true_idx + 1) % K if rng.random() < 0.8 else true_idx
                elif self.is_spammer[w]:
                    answer = int(rng.integers(K))
                elif rng.random() < self.worker_accuracy[w]:
                    answer = true_idx
                elif rng.random() < p.confusion:
                    answer = (true_idx + 1) % K
                else:
                    answer = (true_idx + 1 + int(rng.integers(K - 1))) % K
                seconds = float(p.median_seconds * self.worker_speed[w] * rng.lognormal(0.0, p.duration_sigma))
                aid = hashlib.sha256(f"{batch_id}|{task.item_id}|{replica}".encode()).hexdigest()[:20]
                out.append(Annotation(
                    item_id=task.item_id, worker_id=self.worker_ids[w], label=classes[answer], vendor=self.name,
                    assignment_id=aid, batch_id=batch_id, round=task.round,
                    submitted_at=start + timedelta(seconds=seconds), duration_s=round(seconds, 3),
                    reward=task.reward, is_gold=task.is_gold,
                ))
        return out
