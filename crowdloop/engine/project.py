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
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field
from functools import cached_property
from typing import Any
from urllib.parse import urlencode

import numpy as np

from crowdloop import keys, registry
from crowdloop.config import RESUMABLE_SECTIONS, FeaturesConfig, LoopConfig, PoolConfig
from crowdloop.credentials import Credentials
from crowdloop.errors import ConfigError, RecordExistsError, StoreError
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

_PREPARED: dict[str, Project] = {}  # store URL -> the project prepared for a run in this process


class MissingRecordError(StoreError):
    """A step found the record of the step before it missing: the round's order was broken."""


def write_once(store: Store, key: str, obj: Any) -> None:
    """Create-only JSON write that tolerates an identical replay (a crash after the write)."""
    with suppress(RecordExistsError):
        write_json(store, key, obj, create_only=True)


def write_once_bytes(store: Store, key: str, data: bytes) -> None:
    """Create-only write of raw bytes; a replay after a crash finds the first version and keeps it."""
    with suppress(RecordExistsError):
        store.write_bytes(key, data, create_only=True)


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


def _stamp(cfg: PoolConfig) -> tuple[int, int] | None:
    """Size and mtime of a local pool file, so a file changed on disk is loaded again."""
    if not cfg.path or "://" in cfg.path:
        return None
    try:
        st = os.stat(cfg.path)
    except OSError:
        return None  # the loader names the missing file
    return (st.st_size, st.st_mtime_ns)


def load_pool(cfg: PoolConfig):
    """The pool as its ``pool.source`` loader returns it (before the test split), once per process."""
    return _load_pool_cached(cfg.model_dump_json(), _stamp(cfg))


@functools.lru_cache(maxsize=4)
def _load_pool_cached(pool_json: str, stamp: tuple[int, int] | None):
    cfg = PoolConfig.model_validate_json(pool_json)
    return registry.pools.load(cfg.source)(cfg)


def _load_split(pool_json: str, seed: int, features: FeaturesConfig | None = None, store: Store | None = None):
    """The pool and its test split, once per process: a project, its baseline twin and every task share it.

    A text pool with ``model.features`` is featurized before the split, once per process, with
    the featurizer the project's (root) store holds (``crowdloop.models.text.features_for``)."""
    cfg = PoolConfig.model_validate_json(pool_json)
    stamp = _stamp(cfg)
    if features is None:
        return _load_split_cached(pool_json, seed, stamp)
    from crowdloop.models.text import featurized_split

    return featurized_split(cfg, seed, stamp, features, store, raw=load_pool(cfg))


def _features_store(store: Store) -> Store:
    """Where a project keeps its text featurizer: its own store, and for the random baseline twin
    (a ``PrefixedStore`` view, or reopened by its URL ``<project>/baseline`` in a flow) the store
    of the project it shadows, so both rank the same features and embeddings are computed once."""
    while isinstance(store, PrefixedStore):
        store = store.parent
    base, sep, query = store.url.partition("?")
    if base.rstrip("/").endswith("/" + keys.BASELINE):
        parent = open_store(base.rstrip("/")[: -len(keys.BASELINE) - 1] + sep + query, create=False)
        if parent.exists(keys.PROJECT):
            return parent
    return store


@functools.lru_cache(maxsize=4)
def _load_split_cached(pool_json: str, seed: int, stamp: tuple[int, int] | None):
    from crowdloop.models.datasets import split_pool

    cfg = PoolConfig.model_validate_json(pool_json)
    return split_pool(_load_pool_cached(pool_json, stamp), cfg.test_size, seed)


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
    def prepare(cls, config: LoopConfig, location: str, *, source: str | None = None) -> Project:
        """Open or create the project at ``location`` for a run and check everything it needs.

        Runs every offline check of ``crowdloop check`` (``crowdloop/checks.py``: plug-ins and
        their parameters, the model, the pool's file, columns, values and sizes, the store) and
        fails fast, before anything is written or spent, with one line (starting with ``source``, the
        config file, when given);
        then refuses a config that differs from the one the project was started with in more
        than the resumable sections. Within one process a second call for the same location and
        config returns the same object (the CLI prepares, then the flow does).
        """
        known = _PREPARED.get(location)
        if known is not None and known.config == config and known.store.exists(keys.PROJECT):
            return known
        from crowdloop.checks import check_config
        check_config(config, source=source, location=location, pool=load_pool(config.pool))
        try:  # a named secret block that is missing fails here, before anything is written or called
            Credentials.from_config(config).check()
        except ConfigError as exc:
            raise ConfigError(f"{source}: {exc}" if source else str(exc)) from None
        store = open_store(location)
        existing = read_json(store, keys.PROJECT, default=None)
        if existing is not None:
            _check_same_config(LoopConfig.model_validate(existing["config"]), config, store.url)
        project = cls(store, config)
        record = {"config": config.model_dump(mode="json"), "format": 1}
        if existing is None:
            write_once(store, keys.PROJECT, record)
        elif existing["config"] != record["config"]:
            # Only resumable sections (stopping, collect, baseline, scale, credentials) can differ here: keep
            # the old version for the record and make the new limits the project's own.
            write_json(store, f"{keys.CONFIG_HISTORY}{_utc_stamp()}.json", existing)
            write_json(store, keys.PROJECT, record)
        _PREPARED[location] = _PREPARED[project.store.url] = project
        return project

    @classmethod
    def open(cls, location: str | Store) -> Project:
        """Open an existing project (the config comes from the store); a fresh object."""
        store = location if not isinstance(location, str) else open_store(location, create=False)
        data = read_json(store, keys.PROJECT, default=None)
        if data is None:
            raise StoreError(f"{store.url}: not a crowdloop project (no {keys.PROJECT})")
        return cls(store, LoopConfig.model_validate(data["config"]))

    def register(self) -> Project:
        """Make this object the one ``Project.shared`` returns for its store in this process."""
        _PREPARED[self.store.url] = self
        return self

    @classmethod
    def shared(cls, url: str) -> Project:
        """The project this process prepared for ``url`` (Prefect tasks of a run), else opened once."""
        if url not in _PREPARED:
            _PREPARED[url] = cls.open(url)
        return _PREPARED[url]

    def check(self) -> None:
        """Every offline check of ``crowdloop check`` on this project's config and pool, then the named secret blocks."""
        from crowdloop.checks import check_config

        check_config(self.config, pool=load_pool(self.config.pool))
        self.credentials.check()  # a named secret block that is missing fails here, before any call

    @contextmanager
    def running(self) -> Iterator[None]:
        """Hold the project lock for a run: a second run on the same store fails fast."""
        with self.store.lock("project"):
            yield

    # -- components -------------------------------------------------------------------
    @cached_property
    def _split(self):
        features = self.config.model.features
        return _load_split(self.config.pool.model_dump_json(), self.config.seed, features,
                           _features_store(self.store) if features is not None else None)

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
            ground_truth=ground_truth if getattr(cls, "needs_ground_truth", False) else None,
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

    def baseline(self) -> Project:
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
                        "was started with; only stopping/collect/baseline/scale/credentials may change on resume "
                        "(use a new --project-dir)"
                    )
        raise ConfigError(
            f"{section}: {b.get(section)!r} differs from {a[section]!r} that project {url} was started with; "
            "use a new --project-dir"
        )
