"""The round engine: each step of a round as a function of (project, round) over the store.

A round is train → evaluate → (stop?) → select → dispatch → collect → aggregate → pay.
Every step first looks in the store for its own result and returns it if present, so a
rerun after a crash skips finished steps and redoes only the interrupted one. Side effects
on vendors are bracketed: the intent is written before the call, the result after, and the
vendor call itself is idempotent per batch id. Selection for round r depends only on
(seed, r, store contents), so a redone selection picks the same items.

Prefect flows (``crowdloop.flows``) call these functions as tasks; nothing here imports
Prefect, so the engine is testable and usable without it.
"""

from __future__ import annotations

import inspect

import io
import json
import os
import pickle
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from functools import cached_property
from typing import Any

import numpy as np
import pandas as pd

from crowdloop import registry
from crowdloop.config import RESUMABLE_SECTIONS, LoopConfig
from crowdloop.errors import ConfigError, CrowdloopError, RecordExistsError, RegistryError, StoreError, VendorDataError
from crowdloop.faults import fault_point
from crowdloop.pay import expected_seconds, reward_for, settle_batch
from crowdloop.records import AggregatedLabel, Annotation, Task, content_hash, to_jsonl
from crowdloop.storage import PrefixedStore, Store, open_store, read_json, write_json
from crowdloop.vendor import VendorContext

PROJECT_KEY = "project.json"
REFERENCE_KEY = "reference.json"
STOP_KEY = "stop.json"
SEGMENTS = "labels/segments/"

# Random streams: one per purpose so adding draws in one step never shifts another.
_STREAM_SELECT = 1
_STREAM_COLD_START = 2


def round_key(round_: int, name: str) -> str:
    return f"rounds/{round_:04d}/{name}"


def default_location(config: LoopConfig, project_dir: str | None = None) -> str:
    """Where a project lives: ``--project-dir``, else ``storage.url``, else ``projects/<name>``."""
    return project_dir or config.storage.url or f"projects/{config.project}"


def _write_once(store: Store, key: str, obj: Any) -> None:
    """Create-only JSON write that tolerates an identical replay (a crash after the write)."""
    try:
        write_json(store, key, obj, create_only=True)
    except RecordExistsError:
        pass


@dataclass
class Project:
    """A project: its store, its config and lazily built components."""

    store: Store
    config: LoopConfig
    _models: dict[int, Any] = field(default_factory=dict, repr=False)
    _log_cache: tuple[tuple[str, ...], list[Annotation]] | None = field(default=None, repr=False)

    # -- opening ----------------------------------------------------------------------
    @classmethod
    def prepare(cls, config: LoopConfig, location: str) -> "Project":
        """Open or create the project at ``location`` and check everything a run will need.

        Fails fast (before any Prefect start-up or vendor call) on unknown plug-in names, bad
        pool columns, a batch larger than the pool, or a config that differs from the one
        the project was started with in more than stopping/collect settings.
        """
        fresh = _is_missing_dir(location)
        store = open_store(location)
        existing = read_json(store, PROJECT_KEY, default=None)
        try:
            if existing is not None:
                _check_same_config(LoopConfig.model_validate(existing["config"]), config, store.url)
            project = cls(store, config)
            project.check()
        except CrowdloopError:
            if fresh:  # leave no empty project directory behind a rejected config
                _remove_empty_dir(location)
            raise
        if existing is None:
            _write_once(store, PROJECT_KEY, {"config": config.model_dump(mode="json"), "format": 1})
        return project

    @classmethod
    def open(cls, location: str | Store) -> "Project":
        """Open an existing project (the config comes from the store)."""
        store = location if not isinstance(location, str) else open_store(location, create=False)
        data = read_json(store, PROJECT_KEY, default=None)
        if data is None:
            raise StoreError(f"{store.url}: not a crowdloop project (no {PROJECT_KEY})")
        return cls(store, LoopConfig.model_validate(data["config"]))

    def check(self) -> None:
        """Resolve every component once so a bad name or value fails before the run starts."""
        for field_path, reg, name in (("sampler.name", registry.samplers, self.config.sampler.name),
                                      ("consensus.method", registry.aggregators, self.config.consensus.method),
                                      ("vendor.name", registry.vendors, self.config.vendor.name)):
            try:
                reg.load(name)
            except RegistryError as exc:
                raise ConfigError(f"{field_path}: {exc}") from None
        _ = self.model_template
        if len(self.pool) < 1:
            raise ConfigError("pool: no items left for labeling after the test split")
        sizes = [("sampler.batch_size", self.config.sampler.batch_size)]
        if self.config.sampler.initial_size is not None:
            sizes.append(("sampler.initial_size", self.config.sampler.initial_size))
        for name, size in sizes:
            if size > len(self.pool):
                raise ConfigError(
                    f"{name}={size} is larger than the pool of {len(self.pool)} items "
                    f"(after holding out {self.config.pool.test_size:.0%} for testing)"
                )
        _ = self.vendor
        self.aggregator()

    @contextmanager
    def running(self) -> Iterator[None]:
        """Hold the project lock for a run: a second run on the same store fails fast."""
        with self.store.lock("project"):
            yield

    # -- components -------------------------------------------------------------------
    @cached_property
    def _split(self):
        from crowdloop.models.datasets import split_pool

        loader = registry.pools.load(self.config.pool.source)
        return split_pool(loader(self.config.pool), self.config.pool.test_size, self.config.seed)

    @property
    def pool(self):
        return self._split[0]

    @property
    def test(self):
        return self._split[1]

    @cached_property
    def classes(self) -> tuple[str, ...]:
        return self.pool.classes

    @cached_property
    def _index_of(self) -> dict[str, int]:
        return {item: i for i, item in enumerate(self.pool.ids.tolist())}

    @cached_property
    def model_template(self):
        from crowdloop.models.sklearn import build_model

        return build_model(self.config.model)

    @cached_property
    def vendor(self):
        cls = registry.vendors.load(self.config.vendor.name)
        pool = self.pool
        index = self._index_of

        def ground_truth(item_ids):
            if pool.y is None:
                return [None] * len(item_ids)
            return [pool.y[index[i]] if i in index else None for i in item_ids]

        def item_payload(item_id: str) -> dict[str, Any]:
            row = pool.X[index[item_id]]
            return {"kind": "tabular", "columns": list(pool.feature_names), "values": row.tolist()}

        context = VendorContext(
            project=self.config.project,
            name=self.config.vendor.name,
            seed=self.config.seed,
            classes=self.classes,
            store=PrefixedStore(self.store, f"vendor/{self.config.vendor.name}"),
            item_payload=item_payload,
            ground_truth=ground_truth if self.config.vendor.name == "simulated" else None,
        )
        return cls(dict(self.config.vendor.params), context)

    def aggregator(self):
        cls = registry.aggregators.load(self.config.consensus.method)
        return cls(classes=list(self.classes))

    @property
    def initial_size(self) -> int:
        return self.config.sampler.initial_size or self.config.sampler.batch_size

    def rng(self, round_: int, stream: int) -> np.random.Generator:
        return np.random.default_rng([self.config.seed, round_, stream])

    # -- reading the store ------------------------------------------------------------
    def rounds(self) -> list[int]:
        """Rounds that have at least one record, ascending."""
        found = {int(k.split("/")[1]) for k in self.store.list("rounds/") if k.count("/") >= 2}
        return sorted(found)

    def annotations(self) -> list[Annotation]:
        """The label log: every segment, de-duplicated by (vendor, assignment_id)."""
        keys = tuple(self.store.list(SEGMENTS))
        if self._log_cache and self._log_cache[0] == keys:
            return self._log_cache[1]
        seen: set[tuple[str, str]] = set()
        out: list[Annotation] = []
        for key in keys:
            for line in self.store.read_bytes(key).splitlines():
                if not line.strip():
                    continue
                ann = Annotation.model_validate_json(line)
                if ann.key not in seen:
                    seen.add(ann.key)
                    out.append(ann)
        # Canonical order: how answers were split into segments (e.g. by a crash mid-collect)
        # must not change aggregation or training, so resumed runs equal uninterrupted ones.
        out.sort(key=lambda a: (a.round, a.batch_id, a.item_id, a.assignment_id))
        self._log_cache = (keys, out)
        return out

    def dispatched_items(self, before_round: int | None = None) -> set[str]:
        items: set[str] = set()
        for r in self.rounds():
            if before_round is not None and r >= before_round:
                break
            intent = read_json(self.store, round_key(r, "dispatch.json"), default=None)
            if intent:
                items.update(t["item_id"] for t in intent["tasks"])
        return items

    def human_labels(self, before_round: int) -> list[AggregatedLabel]:
        """The latest aggregated labels written before ``before_round``."""
        for r in range(before_round - 1, -1, -1):
            key = round_key(r, "labels.jsonl")
            if self.store.exists(key):
                return [AggregatedLabel.model_validate_json(l) for l in self.store.read_bytes(key).splitlines() if l.strip()]
        return []

    def spent(self, before_round: int) -> float:
        total = 0.0
        for r in range(before_round):
            pay = read_json(self.store, round_key(r, "pay.json"), default=None)
            if pay:
                total += pay["total"]
        return round(total, 2)

    def load_model(self, round_: int):
        if round_ not in self._models:
            key = round_key(round_, "model.pkl")
            self._models[round_] = pickle.loads(self.store.read_bytes(key)) if self.store.exists(key) else None
        return self._models[round_]

    def metrics(self) -> list[dict[str, Any]]:
        rows = []
        for r in self.rounds():
            m = read_json(self.store, round_key(r, "metrics.json"), default=None)
            if m is not None:
                rows.append(m)
        return rows

    def baseline(self) -> "Project":
        """The random-sampling twin of this project, stored under ``baseline/``."""
        cfg = self.config
        final = self.metrics()[-1]["n_labeled"] if self.metrics() else None
        stopping = cfg.stopping.model_copy(update={"target_accuracy": None, "max_rounds": None,
                                                   "label_budget": final or cfg.stopping.label_budget})
        sampler = cfg.sampler.model_copy(update={"name": "random", "params": {}, "cold_start": "random"})
        twin = cfg.model_copy(update={"sampler": sampler, "stopping": stopping,
                                      "baseline": cfg.baseline.model_copy(update={"random": False})})
        return Project(PrefixedStore(self.store, "baseline"), twin)


def _is_missing_dir(location: str) -> bool:
    return "://" not in location and not os.path.exists(location)


def _remove_empty_dir(location: str) -> None:
    try:
        os.rmdir(location)
    except OSError:
        pass  # not empty (or already gone): keep whatever is there


def _check_same_config(stored: LoopConfig, given: LoopConfig, url: str) -> None:
    a, b = stored.model_dump(mode="json"), given.model_dump(mode="json")
    for section in a:
        if section in RESUMABLE_SECTIONS or a[section] == b.get(section):
            continue
        if isinstance(a[section], dict):
            for key in a[section]:
                if a[section][key] != b[section].get(key):
                    raise ConfigError(
                        f"{section}.{key}: {b[section].get(key)!r} differs from {a[section][key]!r} that project {url} "
                        "was started with; only stopping/collect/baseline may change on resume (use a new --project-dir)"
                    )
        raise ConfigError(
            f"{section}: {b.get(section)!r} differs from {a[section]!r} that project {url} was started with; "
            "use a new --project-dir"
        )


# ---------------------------------------------------------------------------------------
# Steps
# ---------------------------------------------------------------------------------------
def train(p: Project, r: int) -> dict[str, Any]:
    """Fit a clone of the model on the human labels aggregated before round ``r``."""
    from sklearn.base import clone

    key = round_key(r, "train.json")
    done = read_json(p.store, key, default=None)
    if done is not None:
        return done
    labels = p.human_labels(before_round=r)
    info: dict[str, Any] = {"round": r, "n_labeled": len(labels), "trained": False, "seconds": 0.0}
    if len({l.label for l in labels}) >= 2:
        labels = sorted(labels, key=lambda l: l.item_id)
        idx = np.array([p._index_of[l.item_id] for l in labels])
        y = np.array([l.label for l in labels], dtype=object)
        start = time.perf_counter()
        model = clone(p.model_template).fit(p.pool.X[idx], y)
        info.update(trained=True, seconds=round(time.perf_counter() - start, 4))
        try:
            p.store.write_bytes(round_key(r, "model.pkl"), pickle.dumps(model), create_only=True)
        except RecordExistsError:
            pass
        p._models.pop(r, None)
    _write_once(p.store, key, info)
    return info


def evaluate(p: Project, r: int) -> dict[str, Any]:
    """Test accuracy of round ``r``'s model, with the labels, judgments and money spent so far."""
    key = round_key(r, "metrics.json")
    done = read_json(p.store, key, default=None)
    if done is not None:
        return done
    trained = train(p, r)
    model = p.load_model(r)
    accuracy = None
    if model is not None and p.test is not None:
        accuracy = float(model.score(p.test.X, p.test.y.astype(str)))
    n_judgments = sum(1 for a in p.annotations() if a.round < r)
    metrics = {
        "round": r,
        "n_labeled": trained["n_labeled"],
        "n_judgments": n_judgments,
        "cost": p.spent(r),
        "accuracy": accuracy,
    }
    _write_once(p.store, key, metrics)
    return metrics


def reference(p: Project) -> dict[str, Any]:
    """Accuracy of the same model trained on the whole pool with true labels (once)."""
    from sklearn.base import clone

    done = read_json(p.store, REFERENCE_KEY, default=None)
    if done is not None:
        return done
    if p.test is None or not p.pool.has_ground_truth:
        info = {"accuracy": None, "reason": "the pool has no ground truth"}
    else:
        model = clone(p.model_template).fit(p.pool.X, p.pool.y.astype(str))
        info = {"accuracy": float(model.score(p.test.X, p.test.y.astype(str))), "n_train": len(p.pool), "n_test": len(p.test)}
    _write_once(p.store, REFERENCE_KEY, info)
    return info


def next_batch_size(p: Project, r: int) -> tuple[int, str | None]:
    """Items to pick in round ``r`` and, when it is 0, the stopping reason."""
    cfg = p.config
    stop = cfg.stopping
    if stop.max_rounds is not None and r >= stop.max_rounds:
        return 0, f"max_rounds={stop.max_rounds} reached"
    n_dispatched = len(p.dispatched_items(before_round=r))
    remaining_pool = len(p.pool) - n_dispatched
    size = min(p.initial_size if r == 0 else cfg.sampler.batch_size, remaining_pool)
    if remaining_pool == 0:
        return 0, "pool exhausted: every item has been dispatched"
    if stop.label_budget is not None:
        left = stop.label_budget - n_dispatched
        if left <= 0:
            return 0, f"label_budget={stop.label_budget} items reached"
        size = min(size, left)
    redundancy = cfg.consensus.redundancy
    if stop.judgment_budget is not None:
        left = stop.judgment_budget - sum(1 for a in p.annotations() if a.round < r)
        if left < redundancy:
            return 0, f"judgment_budget={stop.judgment_budget} reached"
        size = min(size, left // redundancy)
    if stop.money_budget is not None:
        per_item = reward_for(_expected_seconds(p, r), cfg.pay.hourly_wage) * redundancy * (1 + cfg.pay.fee_rate)
        left = stop.money_budget - p.spent(r)
        if left < per_item:
            return 0, f"money_budget={stop.money_budget:g} {cfg.pay.currency} reached"
        size = min(size, int(left // per_item))
    return size, None


def stop_reason(p: Project, r: int, metrics: dict[str, Any]) -> str | None:
    """Why the loop stops after evaluating round ``r`` (None: go on). Recorded in ``stop.json``."""
    target = p.config.stopping.target_accuracy
    reason = None
    if target is not None and metrics.get("accuracy") is not None and metrics["accuracy"] >= target:
        reason = f"target_accuracy={target} reached ({metrics['accuracy']:.4f})"
    else:
        size, reason = next_batch_size(p, r)
    if reason:
        write_json(p.store, STOP_KEY, {"round": r, "reason": reason})
    else:
        p.store.delete(STOP_KEY)  # a resumed run with raised limits goes on
    return reason


def select(p: Project, r: int) -> dict[str, Any]:
    """Pick round ``r``'s batch from items never dispatched before."""
    key = round_key(r, "selection.json")
    done = read_json(p.store, key, default=None)
    if done is not None:
        return done
    size, reason = next_batch_size(p, r)
    if size == 0:
        raise CrowdloopError(f"round {r}: nothing to select ({reason})")
    dispatched = p.dispatched_items(before_round=r)
    candidates = np.array([i for i, item in enumerate(p.pool.ids.tolist()) if item not in dispatched], dtype=np.int64)
    model = p.load_model(r)
    start = time.perf_counter()
    if model is None:
        strategy = f"cold_start:{p.config.sampler.cold_start}"
        rng = p.rng(r, _STREAM_COLD_START)
        if p.config.sampler.cold_start == "kmeans":
            from crowdloop.samplers.uncertainty import kmeans_cold_start

            picked = kmeans_cold_start(p.pool.X[candidates], batch_size=size, rng=rng)
        elif p.config.sampler.cold_start == "typiclust":
            picked = registry.samplers.load("typiclust")(None, p.pool.X[candidates], batch_size=size, rng=rng)
        else:
            picked = registry.samplers.load("random")(None, p.pool.X[candidates], batch_size=size, rng=rng)
    else:
        strategy = p.config.sampler.name
        sampler = registry.samplers.load(strategy)
        params = dict(p.config.sampler.params)
        if strategy != "random":
            params.setdefault("chunk_size", p.config.sampler.chunk_size)
        accepts = inspect.signature(sampler).parameters  # the labeled set only for samplers that ask for it
        if "X_labeled" in accepts or "y_labeled" in accepts:
            labels = sorted(p.human_labels(before_round=r), key=lambda l: l.item_id)
            rows = np.array([p._index_of[l.item_id] for l in labels], dtype=np.int64)
            if "X_labeled" in accepts:
                params.setdefault("X_labeled", p.pool.X[rows])
            if "y_labeled" in accepts:
                params.setdefault("y_labeled", np.array([l.label for l in labels], dtype=object))
        picked = sampler(model, p.pool.X[candidates], batch_size=size, rng=p.rng(r, _STREAM_SELECT), **params)
    picked = np.asarray(picked, dtype=np.int64)
    if len(picked) != size or len(np.unique(picked)) != size or picked.min() < 0 or picked.max() >= len(candidates):
        raise CrowdloopError(f"sampler {strategy!r} broke its contract: expected {size} unique indices into {len(candidates)} candidates")
    selection = {
        "round": r,
        "strategy": strategy,
        "item_ids": p.pool.ids[candidates[picked]].tolist(),
        "seconds": round(time.perf_counter() - start, 4),
    }
    _write_once(p.store, key, selection)
    return read_json(p.store, key)


def _expected_seconds(p: Project, r: int) -> float:
    return expected_seconds(p.config.pay, [a.duration_s for a in p.annotations() if a.round < r])


def batch_id(p: Project, r: int) -> str:
    return f"{p.config.project}-r{r:04d}"


def dispatch(p: Project, r: int) -> dict[str, Any]:
    """Send round ``r``'s batch to the vendor: intent first, then the idempotent call, then refs."""
    refs_key = round_key(r, "refs.json")
    done = read_json(p.store, refs_key, default=None)
    if done is not None:
        return done
    intent_key = round_key(r, "dispatch.json")
    intent = read_json(p.store, intent_key, default=None)
    if intent is None:
        selection = select(p, r)
        seconds = _expected_seconds(p, r)
        reward = reward_for(seconds, p.config.pay.hourly_wage)
        bid = batch_id(p, r)
        tasks = [
            Task(item_id=item, round=r, batch_id=bid, replicas=p.config.consensus.redundancy, reward=reward)
            for item in selection["item_ids"]
        ]
        _write_once(p.store, intent_key, {
            "batch_id": bid, "vendor": p.config.vendor.name, "reward": reward, "estimated_seconds": seconds,
            "tasks": [t.model_dump(mode="json") for t in tasks],
        })
        intent = read_json(p.store, intent_key)
    fault_point("dispatch:before_submit", r)
    tasks = [Task.model_validate(t) for t in intent["tasks"]]
    refs = p.vendor.submit(tasks, batch_id=intent["batch_id"])
    fault_point("dispatch:after_submit", r)
    result = {"batch_id": intent["batch_id"], "refs": refs}
    _write_once(p.store, refs_key, result)
    return result


def _validate_new(p: Project, intent: dict[str, Any], anns: list[Annotation]) -> tuple[list[Annotation], VendorDataError | None]:
    items = {t["item_id"] for t in intent["tasks"]}
    good: list[Annotation] = []
    for a in anns:
        problem = None
        if a.label not in p.classes:
            problem = f"label {a.label!r} for item {a.item_id!r} is not one of the classes {list(p.classes)}"
        elif a.item_id not in items:
            problem = f"item {a.item_id!r} was not dispatched in batch {intent['batch_id']!r}"
        elif a.vendor != intent["vendor"]:
            problem = f"annotation claims vendor {a.vendor!r}, expected {intent['vendor']!r}"
        if problem:
            return good, VendorDataError(f"vendor {intent['vendor']!r} returned a bad answer (assignment {a.assignment_id!r}): {problem}")
        good.append(a)
    return good, None


def append_segment(p: Project, r: int, anns: list[Annotation]) -> int:
    """Append new annotations to the label log as one content-addressed segment."""
    known = {a.key for a in p.annotations()}
    fresh: list[Annotation] = []
    for a in anns:
        if a.key not in known:
            known.add(a.key)
            fresh.append(a)
    if fresh:
        data = to_jsonl(fresh)
        try:
            p.store.write_bytes(f"{SEGMENTS}{r:04d}-{content_hash(data)}.jsonl", data, create_only=True)
        except RecordExistsError:
            pass
    return len(fresh)


def collect(p: Project, r: int, *, sleep: Callable[[float], None] = time.sleep,
            on_progress: Callable[[int, int], None] | None = None) -> dict[str, Any]:
    """Poll the vendor until every task has its judgments or the collect timeout passes."""
    key = round_key(r, "collected.json")
    done = read_json(p.store, key, default=None)
    if done is not None:
        return done
    intent = read_json(p.store, round_key(r, "dispatch.json"))
    refs = dispatch(p, r)["refs"]
    expected = {t["item_id"]: t["replicas"] for t in intent["tasks"]}
    wanted = sum(expected.values())
    deadline = time.monotonic() + p.config.collect.timeout_s
    while True:
        new = p.vendor.poll(refs)
        good, error = _validate_new(p, intent, new)
        append_segment(p, r, good)
        fault_point("collect:after_segment", r)
        if error is not None:
            raise error
        have = sum(1 for a in p.annotations() if a.batch_id == intent["batch_id"])
        if on_progress:
            on_progress(have, wanted)
        if have >= wanted or time.monotonic() >= deadline:
            break
        sleep(p.config.collect.poll_interval_s)
    mine = [a for a in p.annotations() if a.batch_id == intent["batch_id"]]
    per_item = pd.Series([a.item_id for a in mine]).value_counts() if mine else pd.Series(dtype=int)
    missing = sorted(i for i, n in expected.items() if per_item.get(i, 0) < n)
    result = {"round": r, "n_annotations": len(mine), "expected": wanted, "complete": not missing,
              "incomplete_items": missing[:100], "n_incomplete": len(missing)}
    _write_once(p.store, key, result)
    return result


def aggregate(p: Project, r: int) -> dict[str, Any]:
    """Aggregate every human judgment so far into one label per item (a snapshot per round)."""
    key = round_key(r, "labels.jsonl")
    summary_key = round_key(r, "aggregate.json")
    done = read_json(p.store, summary_key, default=None)
    if done is not None and p.store.exists(key):
        return done
    collect(p, r)
    anns = [a for a in p.annotations() if a.round <= r]
    method = p.config.consensus.method
    labels: list[AggregatedLabel] = []
    skills: dict[str, float] = {}
    if anns:
        table = pd.DataFrame({"task": [a.item_id for a in anns], "worker": [a.worker_id for a in anns],
                              "label": [a.label for a in anns]})
        agg = p.aggregator().fit(table)
        counts = table["task"].value_counts()
        labels = [
            AggregatedLabel(item_id=str(item), label=str(label), confidence=round(float(agg.confidence_[item]), 6),
                            n_annotations=int(counts[item]), method=method, source="human", round=r)
            for item, label in agg.labels_.items()
        ]
        skills = {str(w): round(float(s), 4) for w, s in agg.skills_.items()}
    try:
        p.store.write_bytes(key, to_jsonl(labels), create_only=True)
    except RecordExistsError:
        pass
    summary = {"round": r, "n_items": len(labels), "method": method, "worker_skill": skills}
    _write_once(p.store, summary_key, summary)
    return summary


def pay(p: Project, r: int) -> dict[str, Any]:
    """Approve round ``r``'s assignments, top up when work took longer than paid for, account money."""
    key = round_key(r, "pay.json")
    done = read_json(p.store, key, default=None)
    if done is not None:
        return done
    intent = read_json(p.store, round_key(r, "dispatch.json"))
    mine = [a for a in p.annotations() if a.batch_id == intent["batch_id"]]
    settled = settle_batch(p.config.pay, reward=intent["reward"], estimated_seconds=intent["estimated_seconds"],
                           durations=[a.duration_s for a in mine])
    vendor = p.vendor
    vendor.acknowledge(mine, accept=True)
    bonus_paid = 0.0
    if settled.bonus_per_assignment > 0 and hasattr(vendor, "bonus"):
        vendor.bonus(
            mine, amount=settled.bonus_per_assignment, token=f"{intent['batch_id']}-topup",
            reason=(f"Top-up: these tasks took a median {settled.median_seconds:.0f}s, more than the "
                    f"{settled.estimated_seconds:.0f}s we paid for; this brings your pay to the target wage."),
        )
        bonus_paid = settled.bonuses
    fees = round(p.config.pay.fee_rate * (settled.rewards + bonus_paid), 2)
    record = {
        "round": r, "n_approved": len(mine), "n_rejected": 0, "reward": intent["reward"],
        "rewards": settled.rewards, "bonus_per_assignment": settled.bonus_per_assignment if bonus_paid else 0.0,
        "bonuses": bonus_paid, "fees": fees, "total": round(settled.rewards + bonus_paid + fees, 2),
        "median_seconds": round(settled.median_seconds, 3), "estimated_seconds": settled.estimated_seconds,
        "work_seconds": round(sum(a.duration_s for a in mine), 3),
    }
    _write_once(p.store, key, record)
    return record


def first_open_round(p: Project) -> int:
    """The round a (re)started run continues with: the last one that has not finished paying."""
    rounds = p.rounds()
    if not rounds:
        return 0
    last = rounds[-1]
    return last + 1 if p.store.exists(round_key(last, "pay.json")) else last


def export_labels_manifest(p: Project) -> bytes:
    """Aggregated labels as JSON Lines in SageMaker Ground Truth output-manifest form."""
    rounds = p.rounds()
    labels = p.human_labels(before_round=(rounds[-1] + 1) if rounds else 0)
    class_index = {c: i for i, c in enumerate(p.classes)}
    last_answer: dict[str, str] = {}
    for a in p.annotations():
        stamp = a.submitted_at.isoformat()
        if stamp > last_answer.get(a.item_id, ""):
            last_answer[a.item_id] = stamp
    buf = io.StringIO()
    for l in labels:
        buf.write(json.dumps({
            "source": l.item_id,
            "item-id": l.item_id,
            "label": class_index[l.label],
            "label-metadata": {
                "class-name": l.label, "confidence": l.confidence, "human-annotated": "yes" if l.source != "machine" else "no",
                "creation-date": last_answer.get(l.item_id), "type": "groundtruth/text-classification", "job-name": f"crowdloop-{p.config.project}",
                "n-annotations": l.n_annotations, "method": l.method, "source": l.source, "round": l.round,
            },
        }) + "\n")
    return buf.getvalue().encode()
