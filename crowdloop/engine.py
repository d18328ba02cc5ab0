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
from urllib.parse import urlencode

import numpy as np
import pandas as pd

from crowdloop import registry
from crowdloop.config import RESUMABLE_SECTIONS, LoopConfig
from crowdloop.errors import ConfigError, CrowdloopError, RecordExistsError, RegistryError, StoreError, VendorDataError
from crowdloop.faults import fault_point
from crowdloop.pay import expected_seconds, fees_for, reward_for, settle_batch, vendor_fee
from crowdloop.records import AggregatedLabel, Annotation, Task, content_hash, to_jsonl, utcnow
from crowdloop.storage import PrefixedStore, Store, open_store, read_json, write_json
from crowdloop.vendor import VendorContext

PROJECT_KEY = "project.json"
REFERENCE_KEY = "reference.json"
STOP_KEY = "stop.json"
SEGMENTS = "labels/segments/"

# Random streams: one per purpose so adding draws in one step never shifts another.
_STREAM_SELECT = 1
_STREAM_COLD_START = 2
_STREAM_GOLD_SET = 3
_STREAM_GOLD = 4
_STREAM_MIX = 5
_STREAM_CV = 6


def round_key(round_: int, name: str) -> str:
    return f"rounds/{round_:04d}/{name}"


def default_location(config: LoopConfig, project_dir: str | None = None) -> str:
    """Where a project lives: ``--project-dir``, else ``storage.url``, else ``projects/<name>``.

    An S3 ``endpoint_url`` travels in the URL's query so other processes can reopen the store.
    """
    if project_dir:
        return project_dir
    url = config.storage.url
    if url and config.storage.endpoint_url and "endpoint_url=" not in url:
        url += ("&" if "?" in url else "?") + urlencode({"endpoint_url": config.storage.endpoint_url})
    return url or f"projects/{config.project}"


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
    _cache: dict[Any, Any] = field(default_factory=dict, repr=False)  # per-round derived values (pure of the store)

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
        record = {"config": config.model_dump(mode="json"), "format": 1}
        if existing is None:
            _write_once(store, PROJECT_KEY, record)
        elif existing["config"] != record["config"]:
            # Only resumable sections (stopping, collect, baseline) can differ here: keep the
            # old version for the record and make the new limits the project's own.
            write_json(store, f"config-history/{_utc_stamp()}.json", existing)
            write_json(store, PROJECT_KEY, record)
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
        if self.config.gold.enabled and not self.pool.has_ground_truth:
            raise ConfigError("gold.share: gold questions need a pool with ground truth (pool.label_column) to draw the gold set from")
        if self.config.gold.enabled and self.config.gold.n_items > len(self.pool) - self.initial_size:
            raise ConfigError(
                f"gold.n_items={self.config.gold.n_items} leaves fewer than sampler.initial_size items of the "
                f"{len(self.pool)}-item pool for labeling"
            )

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
            from crowdloop.models.datasets import item_payload as payload_of

            return payload_of(pool, index[item_id])

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

    @cached_property
    def gold_set(self) -> dict[str, str]:
        """Gold items (item id → known answer): drawn once from the pool by seed, never selected."""
        gold = self.config.gold
        if not gold.enabled:
            return {}
        rng = np.random.default_rng([self.config.seed, _STREAM_GOLD_SET])
        picked = np.sort(rng.choice(len(self.pool), size=min(gold.n_items, len(self.pool)), replace=False))
        return {str(self.pool.ids[i]): str(self.pool.y[i]) for i in picked}

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
                items.update(t["item_id"] for t in intent["tasks"] if not t.get("is_gold"))
        return items

    def human_labels(self, before_round: int) -> list[AggregatedLabel]:
        """The latest aggregated labels written before ``before_round``."""
        return self._latest_labels("labels.jsonl", before_round)

    def machine_labels(self, before_round: int) -> list[AggregatedLabel]:
        """The latest machine labels (auto-labeling) written before ``before_round``."""
        return self._latest_labels("machine_labels.jsonl", before_round)

    def round_labels(self, r: int, name: str) -> list[AggregatedLabel] | None:
        """The label records round ``r`` wrote to ``name`` (e.g. ``spread_labels.jsonl``); None if none."""
        key = round_key(r, name)
        if not self.store.exists(key):
            return None
        return [AggregatedLabel.model_validate_json(l) for l in self.store.read_bytes(key).splitlines() if l.strip()]

    def _latest_labels(self, name: str, before_round: int) -> list[AggregatedLabel]:
        for r in range(before_round - 1, -1, -1):
            found = self.round_labels(r, name)
            if found is not None:
                return found
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


def _utc_stamp() -> str:
    return time.strftime("%Y%m%dT%H%M%SZ", time.gmtime()) + f"-{time.time_ns() % 1_000_000_000:09d}"


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
    """Fit a clone of the model (or, with ``warm_start``, the previous round's model) on the
    human labels aggregated before round ``r``."""
    key = round_key(r, "train.json")
    done = read_json(p.store, key, default=None)
    if done is not None:
        return done
    labels = p.human_labels(before_round=r)
    info: dict[str, Any] = {"round": r, "n_labeled": len(labels), "trained": False, "seconds": 0.0}
    if p.config.autolabel.enabled and p.config.autolabel.use_in_training:
        human = {l.item_id for l in labels}
        machine = [l for l in p.machine_labels(before_round=r) if l.item_id not in human]
        info["n_machine"] = len(machine)
        labels = labels + machine
    if p.config.semi_supervised.enabled:
        spread = _spread_labels(p, r, p.human_labels(before_round=r), skip={l.item_id for l in labels})
        info.update(n_spread=len(spread))
        if spread and p.pool.has_ground_truth:  # simulation / evaluation only
            truth = p.pool.y[np.array([p._index_of[l.item_id] for l in spread])].astype(str)
            info["spread_true_accuracy"] = round(float(np.mean(truth == np.array([l.label for l in spread]))), 4)
        labels = labels + spread
    if len({l.label for l in labels}) >= 2:
        labels = sorted(labels, key=lambda l: l.item_id)
        idx = np.array([p._index_of[l.item_id] for l in labels])
        y = np.array([l.label for l in labels], dtype=object)
        start = time.perf_counter()
        model, warm_from = _warm_model(p, r)
        model = model.fit(p.pool.X[idx], y)
        info.update(trained=True, seconds=round(time.perf_counter() - start, 4))
        if warm_from is not None:
            info["warm_from_round"] = warm_from
        try:
            p.store.write_bytes(round_key(r, "model.pkl"), pickle.dumps(model), create_only=True)
        except RecordExistsError:
            pass
        p._models.pop(r, None)
    _write_once(p.store, key, info)
    return info


def _spread_labels(p: Project, r: int, labels: list[AggregatedLabel], skip: set[str]) -> list[AggregatedLabel]:
    """Round ``r``'s label-spreading machine labels, spread from the human ``labels``, for pool
    items not in ``skip`` (items that already have a label: human, or auto-labeled when those
    train too). Written once to ``spread_labels.jsonl``, so a rerun trains on the same set."""
    done = p.round_labels(r, "spread_labels.jsonl")
    if done is not None:
        return done
    from crowdloop.models.semi import spread_labels

    cfg = p.config.semi_supervised
    given = {l.item_id: l.label for l in labels}
    out: list[AggregatedLabel] = []
    if len(set(given.values())) >= 2:
        idx = np.array([p._index_of[i] for i in given], dtype=np.int64)
        found = spread_labels(p.pool.X, idx, np.array(list(given.values()), dtype=object),
                              rng=np.random.default_rng([p.config.seed, r, 0x5EED]), n_neighbors=cfg.n_neighbors,
                              alpha=cfg.alpha, min_confidence=cfg.min_confidence, max_items=cfg.max_items)
        out = [AggregatedLabel(item_id=str(p.pool.ids[i]), label=str(lab), confidence=round(float(c), 6), n_annotations=0,
                               method="label_spreading", source="machine", round=r)
               for i, lab, c in zip(found.index, found.labels, found.confidence) if str(p.pool.ids[i]) not in skip]
    try:
        p.store.write_bytes(round_key(r, "spread_labels.jsonl"), to_jsonl(out), create_only=True)
    except RecordExistsError:  # another process got there first: train on what it wrote
        return _spread_labels(p, r, labels, skip)
    return out


def _warm_model(p: Project, r: int) -> tuple[Any, int | None]:
    """The estimator round ``r`` fits: a fresh clone, or, for a model with ``warm_start=True``
    (e.g. ``TorchClassifier``), a copy of the latest earlier round's fitted model, so training
    continues from its weights. The copy comes from the store, so a rerun warm-starts alike."""
    from sklearn.base import clone

    template = p.model_template
    if getattr(template, "warm_start", False) is True:
        for prev in range(r - 1, -1, -1):
            key = round_key(prev, "model.pkl")
            if p.store.exists(key):
                model = pickle.loads(p.store.read_bytes(key))  # a private copy: the cached one stays as stored
                if type(model) is type(template):
                    model.set_params(**template.get_params())
                    return model, prev
                break
    return clone(template), None


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
    remaining_pool = len(p.pool) - len(p.gold_set) - n_dispatched
    size = min(p.initial_size if r == 0 else cfg.sampler.batch_size, remaining_pool)
    # Adaptive redundancy: re-asks of earlier items go on after the item budget is spent.
    reasks = len(reask_plan(p, r)) if cfg.consensus.adaptive and r > 0 else 0
    drain = None
    if remaining_pool == 0:
        drain = "pool exhausted: every item has been dispatched"
    elif stop.label_budget is not None:
        left = stop.label_budget - n_dispatched
        if left <= 0:
            drain = f"label_budget={stop.label_budget} items reached"
        size = min(size, max(left, 0))
    if drain:
        if not reasks:
            return 0, drain
        size = 0
    redundancy = cfg.consensus.first_judgments
    if stop.judgment_budget is not None:
        left = stop.judgment_budget - sum(1 for a in p.annotations() if a.round < r) - reasks
        if left < redundancy and (left < 1 or size > 0 or not reasks):
            return 0, f"judgment_budget={stop.judgment_budget} reached"
        size = min(size, max(left, 0) // redundancy)
    if stop.money_budget is not None:
        fee = vendor_fee(cfg.pay, cfg.vendor.name)
        per_judgment = reward_for(_expected_seconds(p, r), cfg.pay.hourly_wage) * (1 + fee.rate)
        left = stop.money_budget - p.spent(r) - reasks * per_judgment
        if left < per_judgment * redundancy and (size > 0 or not reasks or left < 0):
            return 0, f"money_budget={stop.money_budget:g} {cfg.pay.currency} reached"
        size = min(size, max(int(left // (per_judgment * redundancy)), 0))
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


def _selectable(p: Project, r: int) -> int:
    """Round ``r``'s batch size; selecting when a stopping rule holds is a caller's bug."""
    size, reason = next_batch_size(p, r)
    if size == 0:
        raise CrowdloopError(f"round {r}: nothing to select ({reason})")
    return size


def _excluded(p: Project, r: int) -> np.ndarray:
    """Boolean mask over pool rows a sampler must never pick: dispatched before round ``r`` or gold.

    Built from the (small) excluded set, so it costs O(dispatched), not a pass over a
    million pool ids.
    """
    mask = np.zeros(len(p.pool), dtype=bool)
    index_of = p._index_of
    rows = [index_of[item] for item in p.dispatched_items(before_round=r) | set(p.gold_set) if item in index_of]
    mask[np.asarray(rows, dtype=np.int64)] = True
    return mask


def _candidates(p: Project, r: int) -> np.ndarray:
    """Pool rows never dispatched and not in the gold set: the only items a sampler may pick."""
    return np.flatnonzero(~_excluded(p, r)).astype(np.int64)


def _rows(X: Any, rows: np.ndarray) -> Any:
    """``X[rows]``, but a lazy view for a sharded pool (read only if the sampler reads it)."""
    return X.take_view(rows) if hasattr(X, "take_view") else X[rows]


def _row_range(X: Any, start: int, stop: int) -> Any:
    """Rows ``start:stop`` of a pool's features without copying (a view, or a lazy sharded view)."""
    return X.take_view(np.arange(start, stop)) if hasattr(X, "take_view") else X[start:stop]


def sharded_scoring(p: Project, r: int) -> int:
    """Number of shards round ``r``'s selection is scored in (1: not sharded).

    Only samplers with a ``proba_score`` (decomposable top-k) are sharded, and only once a
    model exists; diversity samplers and cold starts see the whole candidate set.
    """
    shards = p.config.scale.shards
    if shards <= 1 or p.load_model(r) is None:
        return 1
    return shards if getattr(registry.samplers.load(p.config.sampler.name), "proba_score", None) else 1


def score_shard(p: Project, r: int, shard: int) -> dict[str, Any]:
    """Top candidates of one contiguous shard of the pool, with scores and tie-break keys."""
    n_shards = sharded_scoring(p, r)
    key = round_key(r, f"shards/{shard:04d}-of-{n_shards:04d}.json")
    done = read_json(p.store, key, default=None)
    if done is not None:
        return done
    from crowdloop.samplers.scoring import stream_top_k

    size = _selectable(p, r)
    bounds = np.linspace(0, len(p.pool), n_shards + 1).astype(np.int64)  # contiguous row ranges
    start, stop = int(bounds[shard]), int(bounds[shard + 1])
    excluded = _excluded(p, r)[start:stop]
    model = p.load_model(r)
    score = registry.samplers.load(p.config.sampler.name).proba_score
    rng = np.random.default_rng([p.config.seed, r, _STREAM_SELECT, shard])
    result: dict[str, Any] = {"shard": shard, "item_ids": [], "scores": [], "keys": []}
    n_free = int((~excluded).sum())
    if n_free:
        picked = stream_top_k(model, _row_range(p.pool.X, start, stop), score, batch_size=min(size, n_free), rng=rng,
                              chunk_size=p.config.sampler.chunk_size, exclude=excluded)
        rows = start + picked
        result = {"shard": shard, "item_ids": p.pool.ids[rows].tolist(),
                  "scores": [float(v) for v in score(model.predict_proba(p.pool.X[rows]))],
                  "keys": rng.random(len(rows)).tolist()}
    _write_once(p.store, key, result)
    return result


def select(p: Project, r: int) -> dict[str, Any]:
    """Pick round ``r``'s batch from items never dispatched before."""
    key = round_key(r, "selection.json")
    done = read_json(p.store, key, default=None)
    if done is not None:
        return done
    size, reason = next_batch_size(p, r)
    reasks = reask_plan(p, r) if p.config.consensus.adaptive and r > 0 else []
    if size == 0 and not reasks:
        raise CrowdloopError(f"round {r}: nothing to select ({reason})")
    start = time.perf_counter()
    n_shards = sharded_scoring(p, r) if size else 1
    if n_shards > 1:  # merge per-shard top-k (scored in parallel by the flow, or here if missing)
        strategy = p.config.sampler.name
        parts = [score_shard(p, r, s) for s in range(n_shards)]
        rows = [(-sc, k, item) for part in parts for item, sc, k in zip(part["item_ids"], part["scores"], part["keys"])]
        item_ids = [item for _, _, item in sorted(rows)[:size]]
    else:
        strategy, item_ids = _pick(p, r, size)
    selection: dict[str, Any] = {
        "round": r,
        "strategy": strategy,
        "item_ids": item_ids,
        "seconds": round(time.perf_counter() - start, 4),
    }
    if n_shards > 1:
        selection["shards"] = n_shards
    if p.config.consensus.adaptive:
        selection["reask"] = reasks
    if p.config.gold.enabled:
        selection["gold"] = gold_plan(p, r, len(item_ids) + len(reasks))
    _write_once(p.store, key, selection)
    return read_json(p.store, key)


def _pick(p: Project, r: int, size: int) -> tuple[str, list[str]]:
    """``size`` new items by the cold-start rule (no model yet) or the configured sampler."""
    if size == 0:
        return "re-ask only", []
    model = p.load_model(r)
    strategy = p.config.sampler.name
    score = getattr(registry.samplers.load(strategy), "proba_score", None)
    if model is not None and score is not None and not p.config.sampler.params:
        # Uncertainty samplers stream the whole pool with an exclude mask: no copy of the
        # candidate rows, memory bounded by one chunk (a sharded pool is read shard by shard).
        from crowdloop.samplers.scoring import stream_top_k

        picked = stream_top_k(model, p.pool.X, score, batch_size=size, rng=p.rng(r, _STREAM_SELECT),
                              chunk_size=p.config.sampler.chunk_size, exclude=_excluded(p, r))
        return strategy, p.pool.ids[picked].tolist()
    candidates = _candidates(p, r)
    if model is None:
        strategy = f"cold_start:{p.config.sampler.cold_start}"
        rng = p.rng(r, _STREAM_COLD_START)
        if p.config.sampler.cold_start == "kmeans":
            from crowdloop.samplers.uncertainty import kmeans_cold_start

            picked = kmeans_cold_start(_rows(p.pool.X, candidates), batch_size=size, rng=rng)
        elif p.config.sampler.cold_start == "typiclust":
            picked = registry.samplers.load("typiclust")(None, _rows(p.pool.X, candidates), batch_size=size, rng=rng)
        else:
            picked = registry.samplers.load("random")(None, _rows(p.pool.X, candidates), batch_size=size, rng=rng)
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
        picked = sampler(model, _rows(p.pool.X, candidates), batch_size=size, rng=p.rng(r, _STREAM_SELECT), **params)
    picked = np.asarray(picked, dtype=np.int64)
    if len(picked) != size or len(np.unique(picked)) != size or picked.min() < 0 or picked.max() >= len(candidates):
        raise CrowdloopError(f"sampler {strategy!r} broke its contract: expected {size} unique indices into {len(candidates)} candidates")
    return strategy, p.pool.ids[candidates[picked]].tolist()


def _expected_seconds(p: Project, r: int) -> float:
    return expected_seconds(p.config.pay, [a.duration_s for a in p.annotations() if a.round < r])


def batch_id(p: Project, r: int) -> str:
    return f"{p.config.project}-r{r:04d}"


def _with_predictions(p: Project, r: int, tasks: list[Task]) -> list[Task]:
    """Attach round ``r``'s model prediction (label, score) to every task, for vendors that
    pre-annotate (Label Studio) or suggest (the local app, never on gold items). Every task gets
    one, gold included, so its presence never tells a worker which items are gold."""
    model = p.load_model(r)
    if model is None or not tasks:
        return tasks
    proba = model.predict_proba(p.pool.X[[p._index_of[t.item_id] for t in tasks]])
    best = proba.argmax(axis=1)
    return [t.model_copy(update={"payload": {**t.payload, "prediction": {
                "label": str(model.classes_[b]), "score": round(float(row[b]), 4)}}})
            for t, b, row in zip(tasks, best, proba)]


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
        first = p.config.consensus.first_judgments
        tasks = [Task(item_id=item, round=r, batch_id=bid, replicas=first, reward=reward) for item in selection["item_ids"]]
        tasks += [Task(item_id=t["item_id"], round=r, batch_id=bid, replicas=1, reward=reward,
                       exclude_workers=tuple(t["exclude_workers"])) for t in selection.get("reask", [])]
        tasks += [Task(item_id=t["item_id"], round=r, batch_id=bid, replicas=first, reward=reward, is_gold=True,
                       exclude_workers=tuple(t["exclude_workers"])) for t in selection.get("gold", [])]
        intent_record: dict[str, Any] = {"batch_id": bid, "vendor": p.config.vendor.name, "reward": reward,
                                         "estimated_seconds": seconds}
        if len(tasks) > len(selection["item_ids"]):  # gold or re-asks: mix them in unmarked (order never reveals gold)
            order = p.rng(r, _STREAM_MIX).permutation(len(tasks))
            tasks = [tasks[i] for i in order]
        if p.config.gold.enabled:
            intent_record["blocked_workers"] = blocked_workers(p, r)
        if p.config.consensus.block_below_agreement is not None:
            intent_record["blocked_on_agreement"] = blocked_workers(p, r, on="blocked_on_agreement")
        tasks = _with_predictions(p, r, tasks)
        intent_record["tasks"] = [t.model_dump(mode="json") for t in tasks]
        _write_once(p.store, intent_key, intent_record)
        intent = read_json(p.store, intent_key)
    fault_point("dispatch:before_submit", r)
    if intent.get("blocked_workers") and hasattr(p.vendor, "block_workers"):
        p.vendor.block_workers(intent["blocked_workers"], reason=(
            f"Your accuracy on known-answer questions was below {p.config.gold.min_accuracy:.0%}; "
            "you were paid for all approved work."))
    if intent.get("blocked_on_agreement") and hasattr(p.vendor, "block_workers"):
        p.vendor.block_workers(intent["blocked_on_agreement"], reason=(
            f"Your answers agreed with the other workers' consensus on fewer than {p.config.consensus.block_below_agreement:.0%} "
            "of the items several people labeled; you were paid for all approved work."))
    tasks = [Task.model_validate(t) for t in intent["tasks"]]
    refs = p.vendor.submit(tasks, batch_id=intent["batch_id"])
    fault_point("dispatch:after_submit", r)
    result = {"batch_id": intent["batch_id"], "refs": refs, "dispatched_at": time.time()}
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


def collect(p: Project, r: int, *, wait: bool = True, sleep: Callable[[float], None] = time.sleep,
            on_progress: Callable[[int, int], None] | None = None) -> dict[str, Any]:
    """Poll the vendor until every task has its judgments or the collect deadline passes.

    The deadline is ``collect.timeout_s`` after dispatch (recorded in the store), so it holds
    across processes. With ``wait=False`` this polls once and, if answers are still missing,
    returns ``{"pending": True, ...}`` without recording anything final: a scheduled collect
    flow calls it again later instead of keeping a process asleep for hours.
    """
    key = round_key(r, "collected.json")
    done = read_json(p.store, key, default=None)
    if done is not None:
        return done
    intent = read_json(p.store, round_key(r, "dispatch.json"))
    sent = dispatch(p, r)
    refs = sent["refs"]
    expected = {t["item_id"]: t["replicas"] for t in intent["tasks"]}
    wanted = sum(expected.values())
    deadline = sent.get("dispatched_at", time.time()) + p.config.collect.timeout_s
    while True:
        try:
            new = p.vendor.poll(refs)
            good, error = _validate_new(p, intent, new)
            append_segment(p, r, good)
        except Exception:
            # A vendor object returns each answer once; answers it handed out that never reached
            # the log would be lost to a retry in this process. A fresh vendor object polls again
            # from the store and the vendor, and the log de-duplicates.
            p.__dict__.pop("vendor", None)
            raise
        fault_point("collect:after_segment", r)
        if error is not None:
            raise error
        have = sum(1 for a in p.annotations() if a.batch_id == intent["batch_id"])
        if on_progress:
            on_progress(have, wanted)
        if have >= wanted or time.time() >= deadline:
            break
        if not wait:
            return {"round": r, "pending": True, "n_annotations": have, "expected": wanted,
                    "deadline": deadline}
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
    gold = p.gold_set
    extra: dict[str, Any] = {}
    if anns:
        table = _table(anns)
        truths = pd.Series({i: gold[i] for i in table["task"].unique() if i in gold}, dtype=object) if gold else None
        agg = p.aggregator().fit(table, true_labels=truths if truths is not None and len(truths) else None)
        counts = table["task"].value_counts()
        labels = [
            AggregatedLabel(item_id=str(item), label=str(label), confidence=round(float(agg.confidence_[item]), 6),
                            n_annotations=int(counts[item]), method=method, source="human", round=r)
            for item, label in agg.labels_.items() if item not in gold  # gold measures workers; it is not a label
        ]
        skills = {str(w): round(float(s), 4) for w, s in agg.skills_.items()}
        if gold:
            from crowdloop.consensus.adaptive import gold_stats, workers_to_block

            stats = gold_stats(table, gold)
            g = p.config.gold
            extra["gold"] = {str(w): {"n_gold": int(row.n_gold), "n_correct": int(row.n_correct)} for w, row in stats.iterrows()}
            extra["blocked_workers"] = workers_to_block(stats, min_answers=g.min_answers, min_accuracy=g.min_accuracy)
        c = p.config.consensus
        if c.block_below_agreement is not None:
            from crowdloop.consensus.adaptive import low_agreement_workers

            low = low_agreement_workers(table, agg.probas_, min_judgments=c.block_min_judgments,
                                        min_agreement=c.block_below_agreement)
            extra["blocked_on_agreement"] = {w: v for w, v in sorted(low.items()) if w not in extra.get("blocked_workers", [])}
    try:
        p.store.write_bytes(key, to_jsonl(labels), create_only=True)
    except RecordExistsError:
        pass
    summary = {"round": r, "n_items": len(labels), "method": method, "worker_skill": skills, **extra}
    _write_once(p.store, summary_key, summary)
    return summary


def _table(anns: list[Annotation]) -> pd.DataFrame:
    return pd.DataFrame({"task": [a.item_id for a in anns], "worker": [a.worker_id for a in anns],
                         "label": [a.label for a in anns]})


def blocked_workers(p: Project, r: int, *, on: str = "blocked_workers") -> list[str]:
    """Workers blocked as of the last aggregation before round ``r``: on gold evidence
    (``blocked_workers``) or on low agreement with the aggregated truth (``blocked_on_agreement``)."""
    for q in range(r - 1, -1, -1):
        summary = read_json(p.store, round_key(q, "aggregate.json"), default=None)
        if summary is not None:
            return sorted(summary.get(on, []))
    return []


def gold_plan(p: Project, r: int, n_tasks: int) -> list[dict[str, Any]]:
    """Gold tasks for round ``r``: ``share`` of the batch, each kept from workers who answered it."""
    from crowdloop.consensus.adaptive import answered_by

    share = p.config.gold.share
    rng = p.rng(r, _STREAM_GOLD)
    expected = share * n_tasks / (1 - share)  # gold share of the whole batch, in expectation (small batches too)
    n_gold = min(len(p.gold_set), int(expected) + int(rng.random() < expected - int(expected)))
    items = sorted(p.gold_set)
    anns = [a for a in p.annotations() if a.round < r and a.item_id in p.gold_set]
    seen = answered_by(_table(anns), items) if anns else {i: [] for i in items}
    # Least-answered gold first (random among equals), so gold spreads over workers and never runs out of them.
    order = np.lexsort((rng.random(len(items)), [len(seen[i]) for i in items]))
    picked = sorted(items[i] for i in order[:n_gold])
    return [{"item_id": i, "exclude_workers": seen[i]} for i in picked]


def oof_proba(p: Project, r: int) -> tuple[list[str], np.ndarray, list[str]] | None:
    """Out-of-fold class probabilities of the human-labeled items before round ``r``.

    Each item's probability comes from a model that never saw its (noisy) label, as
    CROWDLAB and Ground Truth's calibration need. Deterministic from (seed, r, store).
    Returns (item ids, probabilities, class order), or None with too few labels.
    """
    if ("oof", r) in p._cache:
        return p._cache[("oof", r)]
    from sklearn.base import clone
    from sklearn.model_selection import KFold, StratifiedKFold, cross_val_predict

    labels = sorted(p.human_labels(before_round=r), key=lambda l: l.item_id)
    y = np.array([l.label for l in labels], dtype=object)
    result = None
    classes, counts = np.unique(y, return_counts=True) if len(y) else (np.array([]), np.array([]))
    folds = min(p.config.autolabel.folds, len(y))
    if len(classes) >= 2 and folds >= 2:
        idx = np.array([p._index_of[l.item_id] for l in labels])
        seed = int(p.rng(r, _STREAM_CV).integers(2**31))
        cv = (StratifiedKFold(folds, shuffle=True, random_state=seed) if counts.min() >= folds
              else KFold(folds, shuffle=True, random_state=seed))
        proba = cross_val_predict(clone(p.model_template), p.pool.X[idx], y, cv=cv, method="predict_proba")
        result = ([l.item_id for l in labels], proba, [str(c) for c in classes])
    p._cache[("oof", r)] = result
    return result


def reask_plan(p: Project, r: int) -> list[dict[str, Any]]:
    """Items that get one more judgment in round ``r`` (adaptive redundancy), with who to avoid."""
    if ("reask", r) in p._cache:
        return p._cache[("reask", r)]
    from crowdloop.consensus.adaptive import answered_by, combine_with_model, needs_more

    cfg = p.config.consensus
    labels = sorted(p.human_labels(before_round=r), key=lambda l: l.item_id)
    plan: list[dict[str, Any]] = []
    if labels:
        conf = np.array([l.confidence for l in labels])
        n = np.array([l.n_annotations for l in labels])
        if cfg.model_weight > 0:
            oof = oof_proba(p, r)
            if oof is not None:
                ids, proba, classes = oof
                row = {i: k for k, i in enumerate(ids)}
                col = {c: k for k, c in enumerate(classes)}
                m = np.array([proba[row[l.item_id], col[l.label]] if l.label in col else 0.0 for l in labels])
                conf = combine_with_model(conf, m, n_classes=len(p.classes), weight=cfg.model_weight)
        mask = needs_more(conf, n, threshold=cfg.confidence_threshold, max_judgments=cfg.most_judgments)
        items = [l.item_id for l, more in zip(labels, mask) if more]
        if items:
            seen = answered_by(_table([a for a in p.annotations() if a.round < r]), items)
            plan = [{"item_id": i, "exclude_workers": seen[i]} for i in items]
    p._cache[("reask", r)] = plan
    return plan


def autolabel(p: Project, r: int) -> dict[str, Any]:
    """Machine labels for confident, still unlabeled items (Ground Truth style), round ``r``.

    The threshold is the lowest model confidence at which out-of-fold predictions on the
    human-labeled items agree with their human labels at least ``target_accuracy`` of the
    time; round ``r``'s model then labels every not-yet-dispatched pool item above it. Each
    round recomputes this with the new model; the test split is never touched.
    """
    key = round_key(r, "autolabel.json")
    done = read_json(p.store, key, default=None)
    if done is not None:
        return done
    cfg = p.config.autolabel
    selection = select(p, r)
    info: dict[str, Any] = {"round": r, "threshold": None, "n_validation": 0, "estimated_accuracy": None,
                            "n_machine": 0, "true_accuracy": None}
    model = p.load_model(r)
    oof = oof_proba(p, r)
    machine: list[AggregatedLabel] = []
    if model is not None and oof is not None and len(oof[0]) >= cfg.min_validation:
        ids, proba, classes = oof
        given = {l.item_id: l.label for l in p.human_labels(before_round=r)}
        conf = proba.max(axis=1)
        right = np.array([classes[k] == given[i] for i, k in zip(ids, proba.argmax(axis=1))])
        order = np.argsort(-conf, kind="stable")
        cum = np.cumsum(right[order]) / np.arange(1, len(order) + 1)
        ok = np.flatnonzero((cum >= cfg.target_accuracy) & (np.arange(1, len(order) + 1) >= cfg.min_support))
        info["n_validation"] = len(ids)
        if len(ok):
            cut = ok[-1]
            threshold = float(conf[order[cut]])
            info.update(threshold=round(threshold, 6), estimated_accuracy=round(float(cum[cut]), 4))
            taken = _excluded(p, r + 1)  # dispatched up to this round, or gold; plus this round's picks
            taken[np.asarray([p._index_of[i] for i in selection["item_ids"]], dtype=np.int64)] = True
            cand = np.flatnonzero(~taken).astype(np.int64)
            if len(cand):
                step = p.config.sampler.chunk_size  # bounded memory on large pools
                pr = np.concatenate([model.predict_proba(p.pool.X[cand[i:i + step]]) for i in range(0, len(cand), step)])
                best = pr.argmax(axis=1)
                top = pr[np.arange(len(cand)), best]
                keep = top >= threshold
                model_classes = [str(c) for c in model.classes_]
                name = f"model:{p.config.model.estimator.rsplit('.', 1)[-1]}"
                machine = [AggregatedLabel(item_id=str(p.pool.ids[i]), label=model_classes[b], confidence=round(float(c), 6),
                                           n_annotations=0, method=name, source="machine", round=r)
                           for i, b, c in zip(cand[keep], best[keep], top[keep])]
                info["n_machine"] = len(machine)
                if machine and p.pool.has_ground_truth:  # simulation / evaluation only
                    truth = p.pool.y[cand[keep]].astype(str)
                    info["true_accuracy"] = round(float(np.mean(truth == np.array([m.label for m in machine]))), 4)
    try:
        p.store.write_bytes(round_key(r, "machine_labels.jsonl"), to_jsonl(machine), create_only=True)
    except RecordExistsError:
        pass
    _write_once(p.store, key, info)
    return info


def pay(p: Project, r: int) -> dict[str, Any]:
    """Approve round ``r``'s assignments, top up when work took longer than paid for, account money."""
    key = round_key(r, "pay.json")
    done = read_json(p.store, key, default=None)
    if done is not None:
        return done
    intent = read_json(p.store, round_key(r, "dispatch.json"))
    batch = [a for a in p.annotations() if a.batch_id == intent["batch_id"]]
    rejections = gold_rejections(p, r, batch)
    rejected_ids = {aid for rej in rejections for aid in rej["assignment_ids"]}
    mine = [a for a in batch if a.assignment_id not in rejected_ids]
    settled = settle_batch(p.config.pay, reward=intent["reward"], estimated_seconds=intent["estimated_seconds"],
                           durations=[a.duration_s for a in mine])
    vendor = p.vendor
    vendor.acknowledge(mine, accept=True)
    for rej in rejections:  # only ever with gold evidence, and the reason names the missed gold items
        vendor.acknowledge([a for a in batch if a.assignment_id in set(rej["assignment_ids"])], accept=False,
                           reason=rej["reason"])
    bonus_paid = 0.0
    if settled.bonus_per_assignment > 0 and hasattr(vendor, "bonus"):
        vendor.bonus(
            mine, amount=settled.bonus_per_assignment, token=f"{intent['batch_id']}-topup",
            reason=(f"Top-up: these tasks took a median {settled.median_seconds:.0f}s, more than the "
                    f"{settled.estimated_seconds:.0f}s we paid for; this brings your pay to the target wage."),
        )
        bonus_paid = settled.bonuses
    replicas = {t["item_id"]: t["replicas"] for t in intent["tasks"]}
    fee_rule = vendor_fee(p.config.pay, intent["vendor"])
    fees = fees_for(fee_rule, [(a.reward, replicas.get(a.item_id, 1)) for a in mine], bonus_paid)
    now = utcnow()
    deadline_s = p.config.pay.approval_deadline_h * 3600.0
    record = {
        "round": r, "n_approved": len(mine), "n_rejected": len(rejected_ids), "reward": intent["reward"],
        "rewards": settled.rewards, "bonus_per_assignment": settled.bonus_per_assignment if bonus_paid else 0.0,
        "bonuses": bonus_paid, "fees": fees, "total": round(settled.rewards + bonus_paid + fees, 2),
        "median_seconds": round(settled.median_seconds, 3), "estimated_seconds": settled.estimated_seconds,
        "work_seconds": round(sum(a.duration_s for a in mine), 3),
        "approval_deadline_h": p.config.pay.approval_deadline_h,
        "n_late": sum(1 for a in batch if (now - a.submitted_at).total_seconds() > deadline_s),
        "fee_rule": fee_rule.model_dump(mode="json"),
    }
    if rejections:
        record["rejections"] = rejections
    _write_once(p.store, key, record)
    return record


def gold_rejections(p: Project, r: int, batch: list[Annotation]) -> list[dict[str, Any]]:
    """Workers whose work in this batch is rejected: never without missed gold in the batch.

    Only when ``gold.reject_below`` is set, the worker has at least ``gold.min_answers`` gold
    answers overall, their gold accuracy is below ``reject_below``, and they missed at least one
    gold item in this very batch; the reason names those items and the right answers.
    """
    g = p.config.gold
    if g.reject_below is None or not p.gold_set:
        return []
    from crowdloop.consensus.adaptive import gold_stats

    gold = p.gold_set
    overall = gold_stats(_table([a for a in p.annotations() if a.round <= r]), gold)
    out = []
    for worker in sorted({a.worker_id for a in batch}):
        if worker not in overall.index:
            continue
        row = overall.loc[worker]
        missed = [a for a in batch if a.worker_id == worker and a.item_id in gold and a.label != gold[a.item_id]]
        if row["n_gold"] < g.min_answers or row["accuracy"] >= g.reject_below or not missed:
            continue
        named = "; ".join(f"item {a.item_id}: you answered {a.label!r}, the known answer is {gold[a.item_id]!r}" for a in missed)
        reason = (f"Rejected because known-answer (gold) questions in this batch were answered wrongly: {named}. "
                  f"Your accuracy on known-answer questions is {row['accuracy']:.0%} over {int(row['n_gold'])}, "
                  f"below the required {g.reject_below:.0%}.")
        out.append({"worker_id": worker, "assignment_ids": sorted(a.assignment_id for a in batch if a.worker_id == worker),
                    "missed_gold": sorted(a.item_id for a in missed), "reason": reason})
    return out


def run_in_process(p: Project, *, stop_at_accuracy: float | None = None) -> Project:
    """Run rounds in this process, without Prefect, until a stopping rule holds (or the test
    accuracy reaches ``stop_at_accuracy``). For benchmarks and tests; the flow in
    ``crowdloop.flows.loop`` is the orchestrated twin with the same order of steps."""
    r = first_open_round(p)
    while True:
        train(p, r)
        metrics = evaluate(p, r)
        if stop_reason(p, r, metrics):
            return p
        if stop_at_accuracy is not None and metrics["accuracy"] is not None and metrics["accuracy"] >= stop_at_accuracy:
            return p
        select(p, r)
        if p.config.autolabel.enabled:
            autolabel(p, r)
        dispatch(p, r)
        collect(p, r, sleep=lambda s: None)
        aggregate(p, r)
        pay(p, r)
        r += 1


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
    if p.config.autolabel.enabled:  # machine labels of the latest model, for items no human labeled
        human = {l.item_id for l in labels}
        labels = labels + [l for l in p.machine_labels(before_round=(rounds[-1] + 1) if rounds else 0) if l.item_id not in human]
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
