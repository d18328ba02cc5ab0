"""The ``Project``: one store, one config, and what the steps of a round read from them.

A project is opened once per process (``Project.prepare`` for a run, ``Project.shared`` for
readers such as Prefect tasks), and the pool behind it is loaded once per process (a small
cache keyed by the pool section), however many objects ask for it. Everything a step needs
to know about earlier rounds is read from the store, never from memory, so a rerun after a
crash sees exactly what the crashed process saw.
"""

from __future__ import annotations

import functools
import os
import pickle
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from functools import cached_property
from typing import Any
from urllib.parse import urlencode

import numpy as np

from crowdloop import keys, registry
from crowdloop.config import RESUMABLE_SECTIONS, LoopConfig, PoolConfig
from crowdloop.credentials import Credentials
from crowdloop.errors import ConfigError, CrowdloopError, RecordExistsError, RegistryError, StoreError
from crowdloop.records import AggregatedLabel, Annotation
from crowdloop.storage import PrefixedStore, Store, open_store, read_json, write_json
from crowdloop.vendor import VendorContext

# Random streams: one per purpose so adding draws in one step never shifts another.
STREAM_SELECT = 1
STREAM_COLD_START = 2
STREAM_GOLD_SET = 3
STREAM_GOLD = 4
STREAM_MIX = 5
STREAM_CV = 6

_PREPARED: dict[str, "Project"] = {}  # store URL -> the project prepared for a run in this process


class MissingRecordError(StoreError):
    """A step found the record of the step before it missing: the round's order was broken."""


def write_once(store: Store, key: str, obj: Any) -> None:
    """Create-only JSON write that tolerates an identical replay (a crash after the write)."""
    try:
        write_json(store, key, obj, create_only=True)
    except RecordExistsError:
        pass


def write_once_bytes(store: Store, key: str, data: bytes) -> None:
    """Create-only write of raw bytes; a replay after a crash finds the first version and keeps it."""
    try:
        store.write_bytes(key, data, create_only=True)
    except RecordExistsError:
        pass


def default_location(config: LoopConfig, project_dir: str | None = None) -> str:
    """Where a project lives: ``--project-dir``, else ``storage.url``, else ``projects/<name>``.

    An S3 ``endpoint_url`` and the name of the secret block with the AWS keys
    (``credentials.aws``) travel in the URL's query so other processes can reopen the store.
    """
    url = project_dir or config.storage.url
    if url and url.startswith("s3://"):
        extra = {}
        if not project_dir and config.storage.endpoint_url and "endpoint_url=" not in url:
            extra["endpoint_url"] = config.storage.endpoint_url
        if config.credentials.aws and "credentials=" not in url:
            extra["credentials"] = config.credentials.aws
        if extra:
            url += ("&" if "?" in url else "?") + urlencode(extra)
    return url or f"projects/{config.project}"


def _load_split(pool_json: str, seed: int):
    """The pool and its test split, loaded once per process: a project, its baseline twin and
    every task share it. A local pool file that changed on disk (size or mtime) is loaded again."""
    path = PoolConfig.model_validate_json(pool_json).path
    stamp = None
    if path and "://" not in path:
        try:
            st = os.stat(path)
            stamp = (st.st_size, st.st_mtime_ns)
        except OSError:
            stamp = None  # the loader names the missing file
    return _load_split_cached(pool_json, seed, stamp)


@functools.lru_cache(maxsize=4)
def _load_split_cached(pool_json: str, seed: int, stamp: tuple[int, int] | None):
    from crowdloop.models.datasets import split_pool

    cfg = PoolConfig.model_validate_json(pool_json)
    return split_pool(registry.pools.load(cfg.source)(cfg), cfg.test_size, seed)


@dataclass
class Project:
    """A project: its store, its config and lazily built components."""

    store: Store
    config: LoopConfig
    _models: dict[int, Any] = field(default_factory=dict, repr=False)
    _log_cache: tuple[tuple[str, ...], list[Annotation]] | None = field(default=None, repr=False)
    cache: dict[Any, Any] = field(default_factory=dict, repr=False)  # per-round values derived from finished records

    # -- opening ----------------------------------------------------------------------
    @classmethod
    def prepare(cls, config: LoopConfig, location: str) -> "Project":
        """Open or create the project at ``location`` for a run and check everything it needs.

        Fails fast (before any Prefect start-up or vendor call) on unknown plug-in names, bad
        pool columns, a batch larger than the pool, or a config that differs from the one
        the project was started with in more than stopping/collect settings. Within one
        process a second call for the same store and config returns the same object.
        """
        fresh = _is_missing_dir(location)
        store = open_store(location)
        known = _PREPARED.get(store.url)
        if known is not None and known.config == config and store.exists(keys.PROJECT):
            return known
        existing = read_json(store, keys.PROJECT, default=None)
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
            write_once(store, keys.PROJECT, record)
        elif existing["config"] != record["config"]:
            # Only resumable sections (stopping, collect, baseline, scale) can differ here: keep
            # the old version for the record and make the new limits the project's own.
            write_json(store, f"{keys.CONFIG_HISTORY}{_utc_stamp()}.json", existing)
            write_json(store, keys.PROJECT, record)
        _PREPARED[project.store.url] = project
        return project

    @classmethod
    def open(cls, location: str | Store) -> "Project":
        """Open an existing project (the config comes from the store); a fresh object."""
        store = location if not isinstance(location, str) else open_store(location, create=False)
        data = read_json(store, keys.PROJECT, default=None)
        if data is None:
            raise StoreError(f"{store.url}: not a crowdloop project (no {keys.PROJECT})")
        return cls(store, LoopConfig.model_validate(data["config"]))

    def register(self) -> "Project":
        """Make this object the one ``Project.shared`` returns for its store in this process."""
        _PREPARED[self.store.url] = self
        return self

    @classmethod
    def shared(cls, url: str) -> "Project":
        """The project this process prepared for ``url`` (Prefect tasks of a run), else opened once."""
        if url not in _PREPARED:
            _PREPARED[url] = cls.open(url)
        return _PREPARED[url]

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
        self.credentials.check()  # a named secret block that is missing fails here, before any call
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
        return _load_split(self.config.pool.model_dump_json(), self.config.seed)

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
    def index_of(self) -> dict[str, int]:
        """Pool row of each item id."""
        return {item: i for i, item in enumerate(self.pool.ids.tolist())}

    def rows_of(self, item_ids: list[str]) -> np.ndarray:
        """Pool rows of ``item_ids``, in their order."""
        index = self.index_of
        return np.array([index[i] for i in item_ids], dtype=np.int64)

    @cached_property
    def model_template(self):
        from crowdloop.models.sklearn import build_model

        return build_model(self.config.model)

    @cached_property
    def vendor(self):
        cls = registry.vendors.load(self.config.vendor.name)
        pool = self.pool
        index = self.index_of

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
            store=PrefixedStore(self.store, keys.vendor_prefix(self.config.vendor.name)),
            item_payload=item_payload,
            ground_truth=ground_truth if self.config.vendor.name == "simulated" else None,
            credentials=self.credentials,
        )
        return cls(dict(self.config.vendor.params), context)

    @cached_property
    def credentials(self) -> Credentials:
        return Credentials.from_config(self.config)

    def forget_vendor(self) -> None:
        """Drop the vendor object, so the next use builds a fresh one from the store (after a failed poll)."""
        self.__dict__.pop("vendor", None)

    def aggregator(self):
        cls = registry.aggregators.load(self.config.consensus.method)
        return cls(classes=list(self.classes))

    @cached_property
    def gold_set(self) -> dict[str, str]:
        """Gold items (item id → known answer): drawn once from the pool by seed, never selected."""
        gold = self.config.gold
        if not gold.enabled:
            return {}
        rng = np.random.default_rng([self.config.seed, STREAM_GOLD_SET])
        picked = np.sort(rng.choice(len(self.pool), size=min(gold.n_items, len(self.pool)), replace=False))
        return {str(self.pool.ids[i]): str(self.pool.y[i]) for i in picked}

    @property
    def initial_size(self) -> int:
        return self.config.sampler.initial_size or self.config.sampler.batch_size

    def rng(self, round_: int, stream: int) -> np.random.Generator:
        return np.random.default_rng([self.config.seed, round_, stream])

    def batch_id(self, round_: int) -> str:
        return keys.batch_id(self.config.project, round_)

    # -- reading the store ------------------------------------------------------------
    def record(self, round_: int, name: str, default: Any = ...) -> Any:
        """Round ``round_``'s JSON record ``name`` (``default`` when missing, if given)."""
        return read_json(self.store, keys.round_key(round_, name), default=default)

    def require(self, round_: int, name: str, *, step: str) -> dict[str, Any]:
        """The record ``step`` builds on; a clear error if an earlier step never wrote it."""
        found = self.record(round_, name, default=None)
        if found is None:
            raise MissingRecordError(
                f"{self.store.url}: round {round_}: step {step!r} needs {keys.round_key(round_, name)}, which is missing; "
                "the steps of a round run in order (crowdloop run resumes them)")
        return found

    def has(self, round_: int, name: str) -> bool:
        return self.store.exists(keys.round_key(round_, name))

    def rounds(self) -> list[int]:
        """Rounds that have at least one record, ascending."""
        found = {keys.round_of(k) for k in self.store.list("rounds/")}
        return sorted(r for r in found if r is not None)

    def annotations(self) -> list[Annotation]:
        """The label log: every segment, de-duplicated by (vendor, assignment_id)."""
        segment_keys = tuple(self.store.list(keys.SEGMENTS))
        if self._log_cache and self._log_cache[0] == segment_keys:
            return self._log_cache[1]
        seen: set[tuple[str, str]] = set()
        out: list[Annotation] = []
        for key in segment_keys:
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
        self._log_cache = (segment_keys, out)
        return out

    def dispatched_items(self, before_round: int | None = None) -> set[str]:
        items: set[str] = set()
        for r in self.rounds():
            if before_round is not None and r >= before_round:
                break
            intent = self.record(r, keys.DISPATCH, default=None)
            if intent:
                items.update(t["item_id"] for t in intent["tasks"] if not t.get("is_gold"))
        return items

    def human_labels(self, before_round: int) -> list[AggregatedLabel]:
        """The latest aggregated labels written before ``before_round``."""
        return self._latest_labels(keys.LABELS, before_round)

    def machine_labels(self, before_round: int) -> list[AggregatedLabel]:
        """The latest machine labels (auto-labeling) written before ``before_round``."""
        return self._latest_labels(keys.MACHINE_LABELS, before_round)

    def round_labels(self, r: int, name: str) -> list[AggregatedLabel] | None:
        """The label records round ``r`` wrote to ``name`` (e.g. ``spread_labels.jsonl``); None if none."""
        key = keys.round_key(r, name)
        if not self.store.exists(key):
            return None
        return [AggregatedLabel.model_validate_json(line) for line in self.store.read_bytes(key).splitlines() if line.strip()]

    def _latest_labels(self, name: str, before_round: int) -> list[AggregatedLabel]:
        for r in range(before_round - 1, -1, -1):
            found = self.round_labels(r, name)
            if found is not None:
                return found
        return []

    def spent(self, before_round: int) -> float:
        total = 0.0
        for r in range(before_round):
            pay = self.record(r, keys.PAY, default=None)
            if pay:
                total += pay["total"]
        return round(total, 2)

    def load_model(self, round_: int):
        if round_ not in self._models:
            key = keys.round_key(round_, keys.MODEL)
            self._models[round_] = pickle.loads(self.store.read_bytes(key)) if self.store.exists(key) else None
        return self._models[round_]

    def forget_model(self, round_: int) -> None:
        self._models.pop(round_, None)

    def metrics(self) -> list[dict[str, Any]]:
        rows = []
        for r in self.rounds():
            m = self.record(r, keys.METRICS, default=None)
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
        return Project(PrefixedStore(self.store, keys.BASELINE), twin)


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
                        "was started with; only stopping/collect/baseline/scale/credentials may change on resume (use a new --project-dir)"
                    )
        raise ConfigError(
            f"{section}: {b.get(section)!r} differs from {a[section]!r} that project {url} was started with; "
            "use a new --project-dir"
        )
