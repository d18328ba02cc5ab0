"""The ``Project``: one store, one config, and what the steps of a round read from them.

A project is opened once per process (``Project.prepare`` for a run, ``Project.shared`` for
readers such as Prefect tasks), and the pool behind it is loaded once per process (a small
cache keyed by the pool section), however many objects ask for it. Everything a step needs
to know about earlier rounds is read from the store, never from memory, so a rerun after a
crash sees exactly what the crashed process saw.
"""

from __future__ import annotations

import hashlib
import pickle
import time
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

import numpy as np
from pydantic import ValidationError

from crowdloop import keys, registry
from crowdloop.config import (
    MOVABLE_FIELDS,
    RESUMABLE_FIELDS,
    RESUMABLE_SECTIONS,
    LoopConfig,
    format_validation_error,
    pool_fields_unread_by,
)
from crowdloop.credentials import Credentials
from crowdloop.engine.pools import (
    appended_ids,
    checked_pool_record,
    features_store,
    grows_by_files,
    load_pool,
    load_split,
    write_pool_listing,
)
from crowdloop.errors import ConfigError, CrowdloopError, PoolError, RecordExistsError, StoreError
from crowdloop.pay import FeeFor, fee_function, top_up_share
from crowdloop.records import AggregatedLabel, Annotation, to_jsonl
from crowdloop.storage import PrefixedStore, Store, open_store, read_json, write_json
from crowdloop.vendor import IMAGES_BY_URL, NEEDS_GROUND_TRUTH, VendorContext, capabilities_of

# Random streams: one per purpose so adding draws in one step never shifts another.
STREAM_SELECT = 1
STREAM_COLD_START = 2
STREAM_GOLD_SET = 3
STREAM_GOLD = 4
STREAM_MIX = 5
STREAM_CV = 6
STREAM_AUDIT = 7
STREAM_STOP_SET = 8

# What a project's records were made by (project.json's "format"); a resumed project keeps its own.
# 2: items that show the same thing fall on one side of the test split (``models/datasets.py``,
#    ``split_pool``), and the audit reserve leaves out items that show what a seed-labeled or
#    gold item shows (``Project.audit_reserve``).
PROJECT_FORMAT = 2

_PREPARED: dict[str, Project] = {}  # store URL -> the project prepared for a run in this process


class MissingRecordError(StoreError):
    """A step found the record of the step before it missing: the round's order was broken."""


def _remove_if_empty(location: str) -> None:
    """Remove a local project folder that a refused ``prepare`` created and left empty."""
    if "://" in location and not location.startswith("file://"):
        return
    folder = Path(location.removeprefix("file://")).expanduser()
    with suppress(OSError):  # not empty, or already gone: keep what is there
        folder.rmdir()


def write_once(store: Store, key: str, obj: Any) -> None:
    """Create-only JSON write that tolerates an identical replay (a crash after the write)."""
    with suppress(RecordExistsError):
        write_json(store, key, obj, create_only=True)


def write_once_bytes(store: Store, key: str, data: bytes) -> None:
    """Create-only write of raw bytes; a replay after a crash finds the first version and keeps it."""
    with suppress(RecordExistsError):
        store.write_bytes(key, data, create_only=True)


def write_once_digest(store: Store, key: str, data: bytes) -> str:
    """Create-only write of raw bytes; the sha256 of what the store holds under ``key`` (this
    write's bytes, or a first version a replay found), for the record that vouches for it."""
    try:
        store.write_bytes(key, data, create_only=True)
    except RecordExistsError:
        data = store.read_bytes(key)
    return hashlib.sha256(data).hexdigest()


def check_project_data(config: LoopConfig, location: str) -> None:
    """``crowdloop check``'s checks that need a project: seed labels and the gold file read
    against the pool (a bad row is one line naming the file and line), ``target_accuracy``
    without a way to measure accuracy, items left after everything set aside; for an existing
    project, what a resume checks (fields that may not change, the pool's digest, moved files, the
    records the run builds on). Without them a config ``check`` called ok failed at ``run``.
    Nothing is written: an existing project is read (it keeps what it imported), a new one is
    checked over an empty scratch store; the pool is split as the run splits it but not
    featurized (the ids are the same)."""
    import tempfile

    def unfeaturized(c: LoopConfig) -> LoopConfig:
        return c.model_copy(update={"model": c.model.model_copy(update={"features": None})})

    try:
        store: Store | None = open_store(location, create=False)
    except StoreError:
        store = None
    existing = None if store is None else read_json(store, keys.PROJECT, default=None)
    if existing is not None:  # what `run` checks before it resumes: the same config, pool and records
        from crowdloop.engine.verify import check_resumable

        stored, config, moved = resumed_config(config, store.url, existing)
        project = Project(store, unfeaturized(config))
        check_resumed_data(project, existing, stored, moved)
        check_resumable(project)
        project.check_own_data()
        return
    raw = unfeaturized(config)
    with tempfile.TemporaryDirectory(prefix="crowdloop-check-") as scratch:
        Project(open_store(scratch), raw).check_own_data()


def resumed_config(config: LoopConfig, url: str, existing: dict[str, Any] | None
                   ) -> tuple[LoopConfig | None, LoopConfig, list[str]]:
    """For a resume (``existing``: the project's record, else None): the stored config, ``config``
    with the project's own readings where the config leaves them unset, and the ``MOVABLE_FIELDS``
    that name another place. A field outside the resumable sections that differs is one line."""
    if existing is None:
        return None, config, []
    stored = stored_config(existing)
    explicit = config.pool.model_fields_set
    for name in ("ids_as_written", "duplicates"):  # unset: the project's own reading
        if name not in explicit:
            config = config.model_copy(update={"pool": config.pool.model_copy(update={name: getattr(stored.pool, name)})})
    if "ids_as_written" in explicit and config.pool.ids_as_written and not stored.pool.ids_as_written:
        raise ConfigError(f"pool.ids_as_written: true, but project {url} reads its csv ids as numbers "
                          "(it was created before ids were read as written, and its records name them so); "
                          "set pool.ids_as_written: false, or leave it out, to resume it")
    return stored, config, _check_same_config(stored, config, url)


def check_resumed_data(project: Project, existing: dict[str, Any] | None, stored: LoopConfig | None,
                       moved: list[str]) -> dict[str, str] | None:
    """The pool is the one the project started with (by its digest), and a seed or gold file named
    elsewhere holds what was imported; returns the pool record to keep. Reads only."""
    config, url = project.config, project.store.url
    if "pool.path" in moved and (existing or {}).get("pool") is None:
        raise PoolError(f"pool.path: {config.pool.path!r} differs from {stored.pool.path!r} that project "
                        f"{url} was started with, and the project has no digest of its pool to check the "
                        "file is the same; put the pool back where it was, or start a new project (--project-dir)")
    pool = checked_pool_record(project, existing)
    for dotted in moved:
        if dotted != "pool.path":
            project.check_moved_label_file("seed" if dotted.startswith("pool.") else "gold", stored)
    return pool


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
        try:
            stored, config, moved = resumed_config(config, store.url, existing)
            project = cls(store, config)
            pool = check_resumed_data(project, existing, stored, moved)
            if pool is not None and existing is not None and pool != existing.get("pool"):
                # a pool grown since: this run's split is drawn over it as project.json is about to record it
                for stale in ("_split", "_appended"):
                    project.__dict__.pop(stale, None)
                project.__dict__["_pool_record"] = dict(pool)
        except (PoolError, ConfigError) as exc:  # named like the other pool errors: after the config file
            raise type(exc)(f"{source}: {exc}" if source else str(exc)) from None
        if existing is not None:  # a resume: every record the run builds on must be there
            from crowdloop.engine.verify import check_resumable

            try:
                check_resumable(project)
            except StoreError as exc:
                raise type(exc)(f"{source}: {exc}" if source else str(exc)) from None
        try:
            project.check_own_data()  # seed labels, gold file, audit reserve: before anything is written
        except CrowdloopError:
            if existing is None:  # leave no empty project folder behind a refused config
                _remove_if_empty(location)
            raise
        record: dict[str, Any] = {"config": config.model_dump(mode="json"),
                                  "format": existing.get("format", 1) if existing is not None else PROJECT_FORMAT}
        if pool is not None:
            record["pool"] = pool
            write_pool_listing(project, pool)  # before project.json names it
        if existing is None:
            write_once(store, keys.PROJECT, record)
        elif existing != record:
            # Only resumable sections (stopping, collect, baseline, scale, credentials) can differ here, or a
            # project from before pool digests gets its digest: keep the old version for the
            # record and make the new limits the project's own.
            write_json(store, f"{keys.CONFIG_HISTORY}{_utc_stamp()}.json", existing)
            write_json(store, keys.PROJECT, record)
        project.import_labels()
        _PREPARED[location] = _PREPARED[project.store.url] = project
        return project

    @classmethod
    def open(cls, location: str | Store) -> Project:
        """Open an existing project (the config comes from the store); a fresh object."""
        store = location if not isinstance(location, str) else open_store(location, create=False)
        data = read_json(store, keys.PROJECT, default=None)
        if data is None:
            raise StoreError(f"{store.url}: not a crowdloop project (no {keys.PROJECT})")
        return cls(store, stored_config(data))

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

    def check_own_data(self) -> None:
        """What a pool without answers needs: a gold set with answers, readable seed and gold
        files (a bad row fails with one line naming the file and line), a way to measure accuracy
        for ``target_accuracy``, and items left to label after everything set aside."""
        gold = self.config.gold
        if gold.path and not gold.enabled:
            raise ConfigError(f"gold.path={gold.path!r}: set gold.share > 0 to mix the gold items into batches")
        for key, what in ((keys.SEED_LABELS, "seed"), (keys.GOLD_SET, "gold")):
            if not self.store.exists(key):  # read once; a resumed project keeps what it imported
                self._read_label_file(what)
        if gold.path and gold.enabled and self.config.pool.seed_labels is not None:
            both = sorted({label.item_id for label in self._imported(keys.SEED_LABELS, "seed")}
                          & {label.item_id for label in self._imported(keys.GOLD_SET, "gold")})
            if both:
                seeds = self.config.pool.seed_labels
                raise ConfigError(f"gold.path: {gold.path}: {len(both)} item(s) are also seed labels in "
                                  f"pool.seed_labels: {seeds.path or seeds.column} (first: {both[0]!r}); a gold item is "
                                  "asked of workers to check them and a seed item is never asked: expected no item in both")
        if self.test is None and self.config.stopping.target_accuracy is not None and not self.config.evaluation.enabled:
            raise ConfigError("stopping.target_accuracy: the pool has no ground truth (pool.label_column) to test on; set "
                              "evaluation.method: random or active to estimate accuracy from human labels")
        free = len(self.pool) - len(self.reserved_items())
        if free < self.initial_size:
            copies = f", and {len(self.copies)} copies of other items (pool.duplicates)" if self.copies else ""
            raise ConfigError(f"the pool has {free} items left for labeling after seed labels, gold and the audit reserve"
                              f"{copies}; expected at least sampler.initial_size={self.initial_size}")

    @contextmanager
    def running(self) -> Iterator[None]:
        """Hold the project lock for a run: a second run on the same store fails fast."""
        with self.store.lock("project"):
            yield

    # -- components -------------------------------------------------------------------
    @cached_property
    def _split(self):
        features = self.config.model.features
        return load_split(self.config.pool.model_dump_json(), self.config.seed, features,
                          features_store(self.store) if features is not None else None, group_copies=self.format >= 2,
                          rows_at_start=self._pool_record.get("rows_at_start"),
                          appended=self._appended)

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
    def vendor_class(self) -> Any:
        return registry.vendors.load(self.config.vendor.name)

    @cached_property
    def capabilities(self) -> frozenset[str]:
        """What the vendor can do with its params (``crowdloop.vendor``): the engine plans by these."""
        return capabilities_of(self.vendor_class, self.config.vendor.params)

    @cached_property
    def fee_for(self) -> FeeFor:
        """The vendor's one fee rule (``crowdloop.pay.fee_function``): ledger, budget and vendor agree."""
        return fee_function(self.config.pay, self.config.vendor.name, self.vendor_class)[0]

    @cached_property
    def prices_judgments(self) -> bool:
        """Whether the vendor prices a judgment by its own rule (``price_for(reward, hourly_wage)``,
        ``crowdloop/vendor.py``; Prolific pays whole minutes) rather than at the task's reward."""
        return callable(getattr(self.vendor_class, "price_for", None))

    def judgment_price(self, reward: float) -> float:
        """What the vendor pays for one judgment offered at ``reward`` (the reward itself without a
        price rule). The budget plans by it and the step ``pay`` tops up against it."""
        return self.vendor_class.price_for(reward, self.config.pay.hourly_wage) if self.prices_judgments else reward

    @cached_property
    def vendor(self):
        cls = self.vendor_class
        caps = self.capabilities
        pool = self.pool
        index = self.index_of

        def ground_truth(item_ids):
            if pool.y is None:
                return [None] * len(item_ids)
            return [pool.y[index[i]] if i in index else None for i in item_ids]

        def item_payload(item_id: str) -> dict[str, Any]:
            from crowdloop.models.datasets import item_payload as payload_of

            return payload_of(pool, index[item_id])

        image_url = None
        if IMAGES_BY_URL in caps:
            from crowdloop.media import ImageURLs

            image_url = ImageURLs(self.config.pool, self.store, item_payload)
        context = VendorContext(
            project=self.config.project,
            name=self.config.vendor.name,
            seed=self.config.seed,
            classes=self.classes,
            store=PrefixedStore(self.store, keys.vendor_prefix(self.config.vendor.name)),
            item_payload=item_payload,
            ground_truth=ground_truth if NEEDS_GROUND_TRUTH in caps else None,
            image_url=image_url,
            collect_timeout_s=self.config.collect.timeout_s,
            credentials=self.credentials,
            hourly_wage=self.config.pay.hourly_wage,
            currency=self.config.pay.currency,
            guidelines=self.config.guidelines.text,
            class_notes=dict(self.config.guidelines.classes),
            max_top_up=top_up_share(self.config.pay),
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
        """Gold items (item id → known answer): read from ``gold.path`` or drawn once from the pool
        by seed; never selected."""
        gold = self.config.gold
        if not gold.enabled:
            return {}
        if gold.path:
            return {label.item_id: label.label for label in self._imported(keys.GOLD_SET, "gold")}
        # never a seed-labeled item: those are never sent to anyone (without seed labels the
        # candidates are the whole pool, and the draw is the one projects always made)
        seeded = {label.item_id for label in self.seed_labels}
        candidates = np.array([i for i, item in enumerate(self.pool.ids.tolist()) if item not in seeded], dtype=np.int64)
        rng = np.random.default_rng([self.config.seed, STREAM_GOLD_SET])
        picked = np.sort(candidates[rng.choice(len(candidates), size=min(gold.n_items, len(candidates)), replace=False)])
        return {str(self.pool.ids[i]): str(self.pool.y[i]) for i in picked}

    # -- labels from files, the audit reserve, the stop set ------------------------------
    @cached_property
    def seed_labels(self) -> list[AggregatedLabel]:
        """Labels imported from ``pool.seed_labels`` (``source: imported``): they train from round 0
        and their items are never dispatched. Read from the file once, then from the store."""
        if self.config.pool.seed_labels is None:
            return []
        return self._imported(keys.SEED_LABELS, "seed")

    def import_labels(self) -> None:
        """Store the seed labels and the gold file's answers (create-only, when a run is
        prepared), so every later round and every other process reads the same ones even if the
        files change."""
        for key, what in ((keys.SEED_LABELS, "seed"), (keys.GOLD_SET, "gold")):
            if not self.store.exists(key) and self._label_file_configured(what):
                write_once_bytes(self.store, key, to_jsonl(self._read_label_file(what)))
        for name in ("seed_labels", "gold_set", "audit_reserve"):
            self.__dict__.pop(name, None)  # from the store from now on

    def _imported(self, key: str, what: str) -> list[AggregatedLabel]:
        """What was imported into ``key``; before the import (checking a config), the file itself."""
        if not self.store.exists(key):
            return self._read_label_file(what)
        return [AggregatedLabel.model_validate_json(line) for line in self.store.read_bytes(key).splitlines() if line.strip()]

    def check_moved_label_file(self, what: str, stored: LoopConfig) -> None:
        """A seed or gold file the config now names elsewhere must hold the labels the project
        imported from its old place (it is not read again: a different file would be ignored
        without a word)."""
        key = keys.SEED_LABELS if what == "seed" else keys.GOLD_SET
        if not self.store.exists(key):
            return  # not imported yet: the run imports from the new place
        field_name = "pool.seed_labels.path" if what == "seed" else "gold.path"
        old = stored.pool.seed_labels.path if what == "seed" else stored.gold.path
        new = self.config.pool.seed_labels.path if what == "seed" else self.config.gold.path
        imported = {(label.item_id, label.label) for label in self._imported(key, what)}
        if {(label.item_id, label.label) for label in self._read_label_file(what)} != imported:
            raise ConfigError(f"{field_name}: {new!r} does not hold the labels project {self.store.url} imported from "
                              f"{old!r} ({len(imported)} labels); a resumed project keeps what it imported, so put the "
                              "old file back or name it, or start a new project (--project-dir) for new labels")

    def _label_file_configured(self, what: str) -> bool:
        if what == "seed":
            return self.config.pool.seed_labels is not None
        return bool(self.config.gold.enabled and self.config.gold.path)

    def _read_label_file(self, what: str) -> list[AggregatedLabel]:
        """The seed labels or gold answers as the config names them, checked against the pool
        (``crowdloop/label_files.py``); a bad row fails with one line naming the file and line.
        Read once per object."""
        if ("label_file", what) not in self.cache:
            self.cache[("label_file", what)] = self._parse_label_file(what)
        return self.cache[("label_file", what)]

    def _parse_label_file(self, what: str) -> list[AggregatedLabel]:
        from crowdloop import label_files

        if what == "seed":
            cfg = self.config.pool.seed_labels
            if cfg is None:
                return []
            rows = (label_files.read_pool_column(self.config.pool) if cfg.column
                    else label_files.read_label_file(cfg, ids_as_written=self.config.pool.ids_as_written))
            source = f"pool.seed_labels: {(cfg.column and self.config.pool.path) or cfg.path}"
            fmt = "column" if cfg.column else label_files.file_format(cfg)
        else:
            cfg = self.config.gold
            if not (cfg.enabled and cfg.path):
                return []
            rows = label_files.read_label_file(cfg, ids_as_written=self.config.pool.ids_as_written)
            source, fmt = f"gold.path: {cfg.path}", label_files.file_format(cfg)
        ids = self.pool.ids.tolist()
        held_out = set() if self.test is None else set(self.test.ids.tolist())
        content = label_files.content_index(ids, None if self.pool.content is None else self.pool.content.tolist())
        found = label_files.resolve(rows, source=source, pool_ids=ids, held_out=held_out, classes=self.classes,
                                    content=content)
        if what == "gold" and found.n_held_out:
            raise ConfigError(f"{source}: {found.n_held_out} gold item(s) are in the held-out test split; gold items "
                              "must be pool items (lower pool.test_size or pick other items)")
        return [AggregatedLabel(item_id=item, label=row.label, confidence=row.confidence, n_annotations=row.n_annotations,
                                method=f"imported:{fmt}", source="imported" if what == "seed" else "gold", round=0)
                for item, row in sorted(found.labels.items())]

    @cached_property
    def format(self) -> int:
        """``PROJECT_FORMAT`` for a new project; a stored project's own (1 if it predates formats)."""
        data = None if self.store is None else read_json(self.store, keys.PROJECT, default=None)  # None: a config's split only
        return PROJECT_FORMAT if data is None else int(data.get("format", 1))

    @cached_property
    def _pool_record(self) -> dict[str, Any]:
        """The pool record of ``project.json`` (the shadowed project's, for the baseline twin):
        its digest and, for a pool that may grow, the rows it started with."""
        if self.store is None:
            return {}
        data = read_json(features_store(self.store), keys.PROJECT, default=None) or {}
        return dict(data.get("pool") or {})

    @cached_property
    def _appended(self) -> tuple[str, ...]:
        """Files added to a folder pool since the project started, in the order their rows follow
        the others (``models/datasets.py``, ``in_start_order``): the growths recorded, then files
        no run has recorded yet (a command that only reads, such as ``status``, between a file
        dropped in and the next run), so every reader sees the first rows as the project started."""
        record = self._pool_record
        recorded = appended_ids(record)
        if self.store is None or not grows_by_files(record):
            return recorded
        listing = read_json(features_store(self.store), keys.pool_listing_key(record["sha256"]), default=None)
        if listing is None:
            return recorded
        known = {name for name, _ in listing["entries"]} | set(recorded)
        return recorded + tuple(sorted(i for i in map(str, load_pool(self.config.pool).ids.tolist()) if i not in known))

    @property
    def items_at_start(self) -> int:
        """Pool items (after the test split) when the project started: the audit reserve and the
        stop set are drawn over them, so rows appended since leave both as they were."""
        return int(self._pool_record.get("pool_items_at_start", len(self.pool)))

    @cached_property
    def audit_reserve(self) -> tuple[str, ...]:
        """Pool items set aside for the accuracy audit (``evaluation``), in a seeded random order
        (the order the ``random`` audit labels them in): never trained on, never selected, so the
        audit is a sample of the pool that no model has seen. Empty without an audit.

        With ``pool.duplicates: ask_once`` a model must not have seen the audit items' content
        under another id either: items showing what a seed-labeled or gold item shows are left
        out of the draw (a seed label trains), and an item showing what a reserve item shows is
        never selected (``reserved_items``). Copies stay in the draw otherwise, so a repeated
        ticket weighs in the estimate as often as it comes."""
        ev = self.config.evaluation
        if not ev.enabled:
            return ()
        taken = {label.item_id for label in self.seed_labels} | set(self.gold_set)
        if self.format >= 2 and self.copies:
            taken |= self._same_content(taken)
        free = [i for i, item in enumerate(self.pool.ids[: self.items_at_start].tolist()) if item not in taken]
        default = ev.max_items if ev.method == "random" else 3 * ev.max_items
        size = min(ev.reserve or min(default, len(free) // 2), len(free))
        order = np.random.default_rng([self.config.seed, STREAM_AUDIT]).permutation(len(free))[:size]
        return tuple(str(self.pool.ids[free[k]]) for k in order)

    @cached_property
    def stop_set_rows(self) -> np.ndarray:
        """Pool rows of the stop set of ``stopping.stabilizing_predictions`` (drawn once by seed; no labels needed)."""
        rule = self.config.stopping.stabilizing_predictions
        size = min(rule.stop_set if rule else 0, self.items_at_start)
        rng = np.random.default_rng([self.config.seed, STREAM_STOP_SET])
        return np.sort(rng.choice(self.items_at_start, size=size, replace=False)).astype(np.int64)

    def reserved_items(self) -> set[str]:
        """Items no sampler may pick: seed-labeled, gold, the audit reserve and what shows the same
        as a reserve item, and copies of an earlier item (``pool.duplicates: ask_once``)."""
        reserve = set(self.audit_reserve)
        return ({label.item_id for label in self.seed_labels} | set(self.gold_set) | reserve
                | set(self.copies) | self._same_content(reserve))

    def _same_content(self, items: set[str]) -> set[str]:
        """Every pool item that shows what one of ``items`` shows (``copies``), ``items`` included."""
        copies = self.copies
        if not copies or not items:
            return set(items)
        originals = {copies.get(item, item) for item in items}
        return set(items) | originals | {copy for copy, original in copies.items() if original in originals}

    @cached_property
    def copies(self) -> dict[str, str]:
        """Pool items that show annotators what an earlier item shows -> that item (``pool.duplicates:
        ask_once``; empty with ``ask_each``). Only the first is ever asked; its label is exported for each."""
        if self.config.pool.duplicates != "ask_once":
            return {}
        from crowdloop.models.datasets import copies_of

        return copies_of(self.pool)

    def known_labels(self, before_round: int) -> list[AggregatedLabel]:
        """The labels a model of round ``before_round`` trains on: imported seed labels and the
        human labels aggregated before it (a human label wins if an item has both)."""
        human = self.human_labels(before_round)
        have = {label.item_id for label in human}
        return [label for label in self.seed_labels if label.item_id not in have] + human

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
        """Items sent for labeling before ``before_round``: no sampler picks them again.

        An item of a closed round (``collected.json`` written) that got no answer at all goes
        back to the pool once: nobody was working, or the deadline was short, and it is still
        the item the model asked for (kept out, it was never labeled, and a team labeling its
        whole pool found it unlabeled at the end). Unanswered a second time it stays out: it may
        be one nobody can or will answer (skipped by everyone), and a sampler would pick it
        round after round."""
        items: set[str] = set()
        unanswered_once: set[str] = set()
        unanswered_twice: set[str] = set()
        answered: set[tuple[str, str]] | None = None
        for r in self.rounds():
            if before_round is not None and r >= before_round:
                break
            intent = self.record(r, keys.DISPATCH, default=None)
            if not intent:
                continue
            sent = [t["item_id"] for t in intent["tasks"] if not t.get("is_gold")]
            collected = self.record(r, keys.COLLECTED, default=None)
            if collected is None or collected.get("complete"):  # still open, or every item answered: all out
                items.update(sent)
                continue
            if answered is None:
                answered = {(a.batch_id, a.item_id) for a in self.annotations()}
            for item in sent:
                if (intent["batch_id"], item) in answered:
                    items.add(item)
                elif item in unanswered_once:
                    unanswered_twice.add(item)
                else:
                    unanswered_once.add(item)
        return (items | unanswered_twice) - set(self.audit_reserve)  # audit items are labeled, never trained on

    def reviewed_items(self) -> set[str]:
        """Items a reviewer's correction labels (``crowdloop/corrections.py``), recorded so far: no
        sampler picks them (a correction recorded before its item was ever asked spares the asking).
        Read when a selection is made; the selection record keeps what it was."""
        from crowdloop import corrections

        return set(corrections.latest(self))

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
        """Money paid for the rounds before ``before_round``: their ``pay.json`` totals, plus what
        the vendor paid later for their work that came back after its batch closed (``late_paid``,
        docs/vendors.md "Work after the deadline"), so the money budget sees every cent."""
        late = self._late_paid()
        total = 0.0
        for r in range(before_round):
            pay = self.record(r, keys.PAY, default=None)
            if pay:
                total += pay["total"]
                if late:
                    total += late.get(self.require(r, keys.DISPATCH, step="spent")["batch_id"], 0.0)
        return round(total, 2)

    def _late_paid(self) -> dict[str, float]:
        """Per batch, money a vendor paid after the batch closed (only vendors that can: Prolific)."""
        if not callable(getattr(self.vendor_class, "late_paid", None)):
            return {}
        return self.vendor.late_paid()

    def load_model(self, round_: int):
        """Round ``round_``'s fitted model (None if it trained none), unpickled only once its bytes
        match the sha256 that round's training record wrote down (``model_bytes``)."""
        if round_ not in self._models:
            data = self.model_bytes(round_)
            self._models[round_] = None if data is None else pickle.loads(data)
        return self._models[round_]

    def model_bytes(self, round_: int) -> bytes | None:
        """The stored model file of round ``round_``, checked against ``train.json``'s ``model_sha256``.

        Unpickling runs code, and anyone who can write to the store (a shared folder, a bucket)
        could plant a model file; the create-only training record says which bytes the loop
        wrote. A file that differs, or that no record names, is refused with one line. Records
        written before the digest existed (no ``model_sha256``) are taken as they are.
        """
        key = keys.round_key(round_, keys.MODEL)
        trained = self.record(round_, keys.TRAIN, default=None)
        if not self.store.exists(key):
            if trained is not None and trained.get("model_sha256"):
                raise MissingRecordError(f"{self.store.url}: {key} is missing, but {keys.round_key(round_, keys.TRAIN)} "
                                         "recorded it (restore it, or start a new project)")
            return None
        if trained is None or not trained.get("trained"):
            raise StoreError(f"{self.store.url}: {key} is not recorded by {keys.round_key(round_, keys.TRAIN)}; "
                             "refusing to unpickle a model file the loop did not write")
        data = self.store.read_bytes(key)
        expected = trained.get("model_sha256")
        if expected is not None and hashlib.sha256(data).hexdigest() != expected:
            raise StoreError(f"{self.store.url}: {key} has sha256 {hashlib.sha256(data).hexdigest()[:16]}…, not the "
                             f"{expected[:16]}… recorded in {keys.round_key(round_, keys.TRAIN)}; refusing to unpickle a "
                             "model file that changed after training (restore it, or start a new project)")
        return data

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
        shadow = Project(PrefixedStore(self.store, keys.BASELINE), twin)
        if not shadow.store.exists(keys.PROJECT):  # not started yet: it will be made in this project's format
            shadow.format = self.format  # (flows/loop.py records it), so both split and reserve alike
        return shadow


def start_baseline(project: Project) -> str:
    """The random twin's records before it runs (its store URL returned): its config, in this
    project's format (so both split and reserve alike), and this project's reference accuracy.

    The twin stops at the labels this project has (``Project.baseline``); when this project went
    on with raised limits, the twin's stopping section follows (the old record kept in
    ``config-history/``), so its learning curve reaches the same labels instead of ending where
    the first run ended."""
    twin = project.baseline()
    record = {"config": twin.config.model_dump(mode="json"), "format": project.format}
    stored = read_json(twin.store, keys.PROJECT, default=None)
    if stored is None:
        write_json(twin.store, keys.PROJECT, record)
    elif stored["config"].get("stopping") != record["config"]["stopping"]:
        write_json(twin.store, f"{keys.CONFIG_HISTORY}{_utc_stamp()}.json", stored)
        write_json(twin.store, keys.PROJECT,
                   {**stored, "config": {**stored["config"], "stopping": record["config"]["stopping"]}})
    if not twin.store.exists(keys.REFERENCE):
        write_json(twin.store, keys.REFERENCE, read_json(project.store, keys.REFERENCE))
    return twin.store.url


def _utc_stamp() -> str:
    return time.strftime("%Y%m%dT%H%M%SZ", time.gmtime()) + f"-{time.time_ns() % 1_000_000_000:09d}"


def stored_config(record: dict[str, Any]) -> LoopConfig:
    """The config of a project record (``project.json``). A csv project stored before
    ``pool.ids_as_written`` existed read digit-only ids as numbers ('007' as '7'): it keeps that
    reading, or every record it wrote would name ids its pool no longer has."""
    data = dict(record["config"])
    pool = dict(data.get("pool") or {})
    if pool.get("source") == "csv" and "ids_as_written" not in pool:
        pool["ids_as_written"] = False
    if "duplicates" not in pool:  # created before duplicates were asked once: it asked for every copy
        pool["duplicates"] = "ask_each"
    data["pool"] = pool
    try:
        return LoopConfig.model_validate(data)
    except ValidationError as exc:  # a rule added since the project was created: say which, in one line
        raise ConfigError(format_validation_error(exc, source=f"{keys.PROJECT} (the project's stored config)")) from None


def _check_same_config(stored: LoopConfig, given: LoopConfig, url: str) -> list[str]:
    """One line naming the first field outside the resumable sections that differs, old and new
    value. Returns the ``MOVABLE_FIELDS`` that differ: the caller checks each file is the same."""
    a, b = stored.model_dump(mode="json"), given.model_dump(mode="json")
    moved = []
    for dotted in MOVABLE_FIELDS:
        *parents, name = dotted.split(".")
        old, new = a, b
        for part in parents:
            old, new = (old or {}).get(part), (new or {}).get(part)
        if isinstance(old, dict) and isinstance(new, dict) and old.get(name) and new.get(name) \
                and old[name] != new[name]:
            moved.append(dotted)
            old.pop(name)
            new.pop(name)
    for dump in (a, b):
        for dotted in RESUMABLE_FIELDS:
            section, name = dotted.split(".")
            dump.get(section, {}).pop(name, None)
        if stored.pool.source == given.pool.source:  # fields the source never reads change nothing
            for name in pool_fields_unread_by(stored.pool.source):
                dump["pool"].pop(name, None)
    for section in a:
        if section in RESUMABLE_SECTIONS:
            continue
        differs = _first_difference(a[section], b.get(section), section)
        if differs is not None:
            field_path, old, new = differs
            raise ConfigError(
                f"{field_path}: {new!r} differs from {old!r} that project {url} was started with; only "
                f"{'/'.join(RESUMABLE_SECTIONS)} (and {', '.join(RESUMABLE_FIELDS)}) may change on resume "
                "(use a new --project-dir)"
            )
    return moved


def _first_difference(old: Any, new: Any, path: str) -> tuple[str, Any, Any] | None:
    """The deepest dotted path where two JSON values differ (``vendor.params.n_workers``), or None."""
    if isinstance(old, dict) and isinstance(new, dict):
        for key in [*old, *(k for k in new if k not in old)]:
            if old.get(key) != new.get(key):
                return _first_difference(old.get(key), new.get(key), f"{path}.{key}")
        return None
    return None if old == new else (path, old, new)
