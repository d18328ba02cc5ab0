"""Everything about a config that can be checked before anything is spent.

``crowdloop check CONFIG`` and the engine (before round 0 dispatches anything) run the same
``check_config``. It stops at the first problem with a one-line ``CrowdloopError`` naming the
file, the field, the value and what was expected, so that a typo never surfaces as a traceback
after a batch was sent and paid. It contacts no annotation vendor and writes nothing to the
project or its store; it reads the pool (a pool loader may fill its own download cache, as a
run would) and, for an S3 store, asks the bucket whether it exists.

The order is cheapest first: plug-in names and parameters, the model, the pool's own settings,
the store, then the pool's rows and what depends on them (row counts, ground truth, the
vendor's plan).
"""

from __future__ import annotations

import dataclasses
import inspect
import os
import typing
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from crowdloop import registry
from crowdloop.config import LoopConfig, ModelConfig
from crowdloop.errors import ConfigError, CrowdloopError, PoolError, RegistryError, StoreError
from crowdloop.media import check_reachable
from crowdloop.storage import local_path, store_scheme
from crowdloop.vendor import (
    EXCLUDES_WORKERS_PER_ITEM,
    IMAGES_BY_URL,
    NEEDS_GROUND_TRUTH,
    VendorPlan,
    check_capabilities,
    check_vendor_params,
)

PROJECT_KEY = "project.json"  # the record that makes a folder a crowdloop project
# What the loop itself passes to every sampler call; a config cannot set these.
SAMPLER_ARGUMENTS = ("model", "X", "batch_size", "rng", "X_labeled", "y_labeled")


@dataclass(frozen=True)
class CheckReport:
    """What a passing check found: the pool's size after the test split and the store's state."""

    source: str | None
    pool: Any  # the loaded pool (crowdloop.models.datasets.Pool, before the test split): reuse it
    n_items: int
    n_selectable: int  # items left for labeling after the test split
    n_test: int
    classes: tuple[str, ...]
    location: str | None  # the project store checked (None: not checked)
    store_state: str | None  # "new", "empty" or "project" (resumable)
    ask_once: bool = False  # pool.duplicates: ask_once (the summary counts the copies it will not ask)

    def summary(self) -> str:
        store = {"new": "will be created", "empty": "empty", "project": "an existing project (resume)"}
        where = f"; store {self.location}: {store.get(self.store_state or '', 'not checked')}" if self.location else ""
        copies = ""
        if self.ask_once:  # worked out here, for `crowdloop check` only: a run does not need the count
            from crowdloop.models.datasets import copies_of

            found = copies_of(self.pool)
            if found:
                copy, original = min(found.items())
                copies = f"; {len(found)} item(s) show what an earlier one shows (e.g. {copy!r} = {original!r}): asked once"
        return (f"pool of {self.n_items} items ({self.n_selectable} to label, {self.n_test} held out for testing), "
                f"{len(self.classes)} classes{_encoding_summary(self.pool)}{copies}{where}")


def _encoding_summary(pool: Any) -> str:
    """What the model gets from a table's words and gaps (``crowdloop.models.tabular``), so a user
    sees a column of 900 categories or a column half empty before the first round."""
    shown = getattr(pool, "shown", None)
    if shown is None:
        return ""
    columns = list(pool.shown_columns)
    one_hot = {c: sum(name.startswith(f"{c}=") for name in pool.feature_names) for c in columns}
    categories = {c: n for c, n in one_hot.items() if n}
    gaps = {c: int(sum(v is None for v in shown[:, j].tolist())) for j, c in enumerate(columns)}
    gaps = {c: n for c, n in gaps.items() if n}
    parts = [f"{len(pool.feature_names)} model features from {len(columns)} columns"]
    if categories:
        parts.append("one-hot: " + ", ".join(f"{c} ({n})" for c, n in categories.items()))
    if gaps:
        parts.append("empty cells imputed: " + ", ".join(f"{c} ({n})" for c, n in gaps.items()))
    return "; " + "; ".join(parts)


def check_config(config: LoopConfig, *, source: str | None = None, location: str | None = None,
                 pool: Any = None) -> CheckReport:
    """Check ``config`` without spending; raise a one-line error on the first problem.

    ``location`` is the project store (a directory or URL, as ``default_location`` gives it);
    None skips the store. ``pool`` is an already-loaded pool (as the ``pool.source`` loader
    returns it, before the test split) so the engine does not load it twice; None loads it.
    The report carries the pool either way.
    """
    try:
        return _check(config, source, location, pool)
    except CrowdloopError as exc:
        if source is None:
            raise
        raise type(exc)(f"{source}: {exc}") from exc  # chained: ``is_transient`` still sees the cause


def _check(config: LoopConfig, source: str | None, location: str | None, pool: Any) -> CheckReport:
    sampler = _plugin("sampler.name", registry.samplers, config.sampler.name)
    check_sampler_params(config.sampler.name, sampler, config.sampler.params)
    aggregator_cls = _plugin("consensus.method", registry.aggregators, config.consensus.method)
    vendor_cls = _plugin("vendor.name", registry.vendors, config.vendor.name)
    plan = vendor_plan(config)
    check_vendor_params(vendor_cls, config.vendor.params, plan)  # again below, once the classes are known
    capabilities = check_capabilities(vendor_cls, config)  # blocking, re-asks ... the vendor cannot do
    check_model(config.model)
    check_sampler_fits_model(config.sampler.name, sampler, config.model)
    _check_pool_settings(config)
    state = check_store(location) if location is not None else None
    if pool is None:
        loader = _plugin("pool.source", registry.pools, config.pool.source)
        pool = loader(config.pool)
    else:
        _name("pool.source", registry.pools, config.pool.source)
    _check_features(config, pool)
    from crowdloop.models.text import check_text_setup  # raw text needs a featurizer; a local model must exist

    check_text_setup(pool, config.model)
    _check_ground_truth(config, pool, capabilities)
    if IMAGES_BY_URL in capabilities and location is not None:
        check_reachable(config.pool, location, getattr(pool, "content_kind", None), config.vendor.name)
    n_selectable, n_test = _check_sizes(config, pool)
    classes = tuple(pool.classes)
    aggregator_cls(classes=list(classes))
    unknown = [name for name in config.guidelines.classes if name not in classes]
    if unknown:
        raise ConfigError(f"guidelines.classes: {unknown[0]!r} is not a class; expected notes for classes of "
                          f"{list(classes)[:20]}")
    plan = vendor_plan(config, capabilities)  # the audit's re-asks too, now that the vendor's capabilities are known
    check_vendor_params(vendor_cls, config.vendor.params, dataclasses.replace(plan, classes=classes))
    return CheckReport(source=source, pool=pool, n_items=len(pool), n_selectable=n_selectable, n_test=n_test,
                       classes=classes, location=location, store_state=state,
                       ask_once=config.pool.duplicates == "ask_once")


# -- plug-ins ---------------------------------------------------------------------------------
def _name(field: str, reg: registry.Registry, name: str) -> None:
    try:
        reg.check_name(name)
    except RegistryError as exc:
        raise ConfigError(f"{field}: {exc}") from None


def _plugin(field: str, reg: registry.Registry, name: str) -> Any:
    try:
        return reg.load(name)
    except RegistryError as exc:
        raise ConfigError(f"{field}: {exc}") from None


def check_sampler_params(name: str, sampler: Any, params: dict[str, Any]) -> None:
    """``sampler.params`` against the sampler function's keywords and their type hints.

    The loop calls ``sampler(model, X, batch_size=..., rng=..., chunk_size=..., **params)``; a
    typo here used to surface as a ``TypeError`` after round 0 was dispatched and paid.
    """
    try:
        signature = inspect.signature(sampler)
    except (TypeError, ValueError):
        return  # a builtin or C callable: nothing to compare against
    accepted = {n: p for n, p in signature.parameters.items()
                if p.kind in (p.KEYWORD_ONLY, p.POSITIONAL_OR_KEYWORD) and n not in SAMPLER_ARGUMENTS}
    takes_any = any(p.kind is p.VAR_KEYWORD for p in signature.parameters.values())
    if name != "random" and "chunk_size" not in accepted and not takes_any:
        raise ConfigError(f"sampler.name: sampler {name!r} takes no chunk_size keyword, which the loop passes to "
                          "every sampler but 'random'; expected a parameter chunk_size: int = 8192 (or **kwargs)")
    for key, value in params.items():
        if key in SAMPLER_ARGUMENTS:
            raise ConfigError(f"sampler.params.{key}: set by the loop for every call; expected none of "
                              f"{', '.join(SAMPLER_ARGUMENTS)} in sampler.params")
        if key not in accepted:
            if takes_any:
                continue
            raise ConfigError(f"sampler.params.{key}: unknown parameter of sampler {name!r} (got {value!r}); "
                              f"expected one of: {', '.join(sorted(accepted)) or 'none (it takes no parameters)'}")
        _check_type(f"sampler.params.{key}", value, _hint(sampler, key), f"sampler {name!r}")


def _hint(fn: Any, name: str) -> Any:
    try:
        return typing.get_type_hints(fn).get(name)
    except Exception:  # noqa: BLE001 - an unresolvable annotation of a plug-in: skip the type check
        return None


def _check_type(field: str, value: Any, hint: Any, owner: str) -> None:
    """Strict pydantic validation (``"20"`` is not an int): the value is passed on unconverted."""
    if hint is None or hint is Any:
        return
    from pydantic import ConfigDict, TypeAdapter, ValidationError
    from pydantic.errors import PydanticSchemaGenerationError

    try:
        adapter = TypeAdapter(hint, config=ConfigDict(strict=True))
    except (PydanticSchemaGenerationError, TypeError):
        return  # e.g. np.ndarray: not a config value anyway
    try:
        adapter.validate_python(value)
    except ValidationError as exc:
        problem = exc.errors(include_url=False)[0]["msg"]
        raise ConfigError(f"{field}: {problem} (got {value!r}); {owner} expects {_type_name(hint)}") from None


def _type_name(hint: Any) -> str:
    return hint.__name__ if isinstance(hint, type) else str(hint).replace("typing.", "")


def vendor_plan(config: LoopConfig, capabilities: frozenset[str] = frozenset()) -> VendorPlan:
    """What the loop will ask of the vendor: judgments per item and the replica counts per batch,
    the audit's items included. ``capabilities``: the vendor's; an audit re-ask is counted only
    for a vendor that can keep a task from the workers who answered the item (without it there is none)."""
    c = config.consensus
    common = {"hourly_wage": config.pay.hourly_wage, "currency": config.pay.currency,
              "collect_timeout_s": config.collect.timeout_s, "seconds_per_task": config.pay.pilot_seconds_per_task}
    if not c.adaptive:
        plan = VendorPlan(judgments_per_item=c.redundancy, replicas_per_task=(c.redundancy,), **common)
    else:
        most = "consensus.max_judgments" if c.max_judgments is not None else "consensus.redundancy"
        # An adaptive batch holds new items (first_judgments each) and re-asks (one more judgment).
        plan = VendorPlan(judgments_per_item=c.most_judgments, judgments_field=most,
                          replicas_per_task=tuple(sorted({c.first_judgments, 1})),
                          replicas_field="consensus.min_judgments", **common)
    return _with_audit(plan, config, capabilities)


def _with_audit(plan: VendorPlan, config: LoopConfig, capabilities: frozenset[str]) -> VendorPlan:
    """The plan with the audit's asks: ``audit_redundancy`` judgments per audit item (5 by
    default, more than most projects' consensus asks) and, with ``evaluation.reask_below``, that
    many less one again from other workers. Without this a crowd too small for the audit passed
    ``crowdloop check`` and failed at the first dispatch, or at a re-ask rounds later."""
    ev = config.evaluation
    if not ev.enabled:
        return plan
    from crowdloop.engine.auditing import audit_redundancy

    first = audit_redundancy(config)
    again = max(first - 1, 1) if ev.reask_below > 0 and EXCLUDES_WORKERS_PER_ITEM in capabilities else 0
    replicas = tuple(sorted(set(plan.replicas_per_task) | {first} | ({again} if again else set())))
    if first > max(plan.replicas_per_task, default=0):
        plan = dataclasses.replace(plan, replicas_field="evaluation.redundancy")
    if first + again > plan.judgments_per_item:
        field = "evaluation.redundancy" + (" with its re-ask (evaluation.reask_below)" if again else "")
        plan = dataclasses.replace(plan, judgments_per_item=first + again, judgments_field=field)
    return dataclasses.replace(plan, replicas_per_task=replicas)


# -- the model --------------------------------------------------------------------------------
def check_model(cfg: ModelConfig) -> None:
    """The estimator's import path, that it is a class, its params, and scikit-learn's constraints.

    Only a class from a trusted module is ever imported (``crowdloop.models.sklearn.estimator_class``):
    a dotted name like ``os.system`` is refused before anything runs. Nothing is fitted.
    """
    from crowdloop.models.sklearn import build_model, estimator_class

    cls = estimator_class(cfg.estimator)  # trusted modules only, checked before the import; a classifier class
    try:
        parameters = inspect.signature(cls).parameters
    except (TypeError, ValueError):
        parameters = {}
    if parameters and not any(p.kind is p.VAR_KEYWORD for p in parameters.values()):
        known = [n for n, p in parameters.items() if p.kind in (p.KEYWORD_ONLY, p.POSITIONAL_OR_KEYWORD)]
        for key, value in cfg.params.items():
            if key not in known:
                raise ConfigError(f"model.params.{key}: unknown parameter of {cfg.estimator} (got {value!r}); "
                                  f"expected one of: {', '.join(sorted(known))}")
    model = build_model(cfg)
    estimator = model.steps[-1][1] if hasattr(model, "steps") else model
    if isinstance(getattr(estimator, "_parameter_constraints", None), dict) and hasattr(estimator, "_validate_params"):
        try:
            estimator._validate_params()  # scikit-learn's declared constraints (a SeedEnsemble's member class too)
        except ConfigError:
            raise
        except (ValueError, TypeError) as exc:  # InvalidParameterError is both
            raise ConfigError(f"model.params: {' '.join(str(exc).split())}") from None


def check_sampler_fits_model(name: str, sampler: Any, cfg: ModelConfig) -> None:
    """What a sampler needs of the model (``model_needs``, e.g. BALD's MC-dropout passes), the model has.

    Without stochastic passes ``bald``/``batchbald`` rank by predictive entropy while every
    record says ``bald``; a torch model inside the scaling ``Pipeline`` (``model.scale: true``)
    hides its passes, and dropout 0 makes them all alike.
    """
    from crowdloop.models.sklearn import build_model

    needs = getattr(sampler, "model_needs", ())
    if not needs:
        return
    model = build_model(cfg)
    final = model.steps[-1][1] if hasattr(model, "steps") else model
    for method in needs:
        if hasattr(model, method) and _dropout_rate(model) != 0:
            continue
        why = (f"{cfg.estimator} with dropout 0" if hasattr(model, method)
               else f"{cfg.estimator} in a scaling Pipeline (model.scale: true)" if hasattr(final, method)
               else cfg.estimator)
        raise ConfigError(
            f"sampler.name: {name!r} needs a model with MC-dropout passes ({method}), and {why} has none, so it "
            f"would rank by predictive entropy while the records say {name!r}; expected a model with dropout "
            "such as crowdloop.models.torch.TorchClassifier (model.scale: false), or sampler 'entropy'")


def _dropout_rate(model: Any) -> float | None:
    """The dropout rate a model (or a ``SeedEnsemble``'s members) was configured with, if it says."""
    try:
        params = model.get_params(deep=False)
    except (AttributeError, TypeError):
        return None
    nested = params.get("params") if isinstance(params.get("params"), dict) else {}
    rate = params.get("dropout", nested.get("dropout"))
    return float(rate) if isinstance(rate, (int, float)) and not isinstance(rate, bool) else None


# -- the store --------------------------------------------------------------------------------
def check_store(location: str) -> str:
    """Is the project store usable: ``"new"`` (creatable), ``"empty"`` or ``"project"``.

    A local folder must be creatable, or empty, or a crowdloop project: a run never mixes its
    records with someone else's files. Other schemes are opened through their store plug-in
    with ``create=False`` (S3: a ``head_bucket``), which writes nothing.
    """
    scheme = store_scheme(location)
    _name("storage.url", registry.stores, scheme)
    if scheme == "file":
        return _check_folder(local_path(location))
    store_cls = _plugin("storage.url", registry.stores, scheme)
    store = store_cls.from_url(location, create=False)
    if store.exists(PROJECT_KEY):
        return "project"
    if store.list(""):
        raise StoreError(f"project store {store.url}: holds records but no {PROJECT_KEY}; expected an empty "
                         "prefix or an existing crowdloop project (use a new --project-dir)")
    return "empty"


def _check_folder(root: Path) -> str:
    where = f"project directory {root}"
    if root.exists():
        if not root.is_dir():
            raise StoreError(f"{where}: not a directory")
        if not os.access(root, os.R_OK | os.W_OK | os.X_OK):
            raise StoreError(f"{where}: not readable and writable by this user")
        if (root / PROJECT_KEY).is_file():
            return "project"
        with os.scandir(root) as entries:
            other = sorted(e.name for e in entries)
        if other:
            raise StoreError(f"{where}: holds other files ({', '.join(map(repr, other[:3]))}"
                             f"{', …' if len(other) > 3 else ''}) but no {PROJECT_KEY}; expected an empty folder "
                             "or an existing crowdloop project (use a new --project-dir)")
        return "empty"
    parent = root.parent
    while not parent.exists() and parent != parent.parent:
        parent = parent.parent
    if not parent.is_dir():
        raise StoreError(f"{where}: cannot be created, {parent} is not a directory")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise StoreError(f"{where}: cannot be created, {parent} is not writable by this user")
    return "new"


# -- the pool ---------------------------------------------------------------------------------
def _pool_file(config: LoopConfig) -> str:
    cfg = config.pool
    if cfg.path:
        return cfg.path
    return f"scikit-learn's {cfg.name} set" if cfg.source == "sklearn" else f"the {cfg.source} pool"


def _check_pool_settings(config: LoopConfig) -> None:
    """What the pool section alone can get wrong, before the pool is read."""
    cfg = config.pool
    if cfg.label_column and cfg.feature_columns and cfg.label_column in cfg.feature_columns:
        raise ConfigError(f"pool.feature_columns: lists the label column {cfg.label_column!r} (pool.label_column), "
                          "so the model would learn from the answers; expected only input columns")


def _check_features(config: LoopConfig, pool: Any) -> None:
    """NaN or infinite features break every fit; found here instead of in round 0's training."""
    X = pool.X
    if hasattr(X, "take_view") or not isinstance(X, np.ndarray) or X.dtype.kind != "f":
        return  # lazily read shards (checked when written) or integer features (always finite)
    finite = np.isfinite(X)
    if finite.all():
        return
    bad_rows, bad_cols = np.nonzero(~finite)
    names = list(pool.feature_names) or [f"x{i}" for i in range(X.shape[1] if X.ndim > 1 else 1)]
    columns = sorted({names[c] for c in bad_cols.tolist()}, key=names.index) if X.ndim > 1 else names[:1]
    raise PoolError(f"pool: feature(s) {columns[:5]} of {_pool_file(config)} hold NaN or infinite values "
                    f"(first at item {str(pool.ids[bad_rows[0]])!r}); expected finite numbers")


def _check_ground_truth(config: LoopConfig, pool: Any, capabilities: frozenset[str]) -> None:
    """A vendor that answers from the ground truth, and gold questions, need a label on every item."""
    needs = []
    if NEEDS_GROUND_TRUTH in capabilities:
        needs.append(f"vendor {config.vendor.name!r} answers from it")
    if config.gold.enabled and not config.gold.path:
        needs.append("gold questions (gold.share) are drawn from it (or give their answers in gold.path)")
    if not needs:
        return
    why = " and ".join(needs)
    column = config.pool.label_column
    if pool.y is None:
        raise PoolError(f"pool.label_column: {_pool_file(config)} has no ground truth, but {why}; "
                        "expected pool.label_column naming the column of true labels")
    missing = [i for i, v in enumerate(pool.y.tolist()) if v is None]
    if missing:
        where = f"column {column!r} of {_pool_file(config)}" if column else _pool_file(config)
        raise PoolError(f"pool.label_column: {len(missing)} of {len(pool)} items have no value in {where} "
                        f"(first: item {str(pool.ids[missing[0]])!r}), but {why}; expected a label on every row")


def _check_sizes(config: LoopConfig, pool: Any) -> tuple[int, int]:
    """Row counts against the batch sizes and the gold set, after the seeded test split."""
    from crowdloop.models.datasets import split_indices

    selectable, test = split_indices(pool, config.pool.test_size, config.seed)
    n = len(selectable)
    held_out = f"after holding out {config.pool.test_size:.0%} of {len(pool)} items for testing"
    if n < 1:
        raise ConfigError(f"pool: no items left for labeling {held_out}")
    sampler = config.sampler
    sizes = [("sampler.batch_size", sampler.batch_size)]
    if sampler.initial_size is not None:
        sizes.append(("sampler.initial_size", sampler.initial_size))
    for field, size in sizes:
        if size > n:
            raise ConfigError(f"{field}={size} is larger than the pool of {n} items ({held_out}); expected at most {n}")
    initial = sampler.initial_size or sampler.batch_size
    if config.gold.enabled and not config.gold.path and config.gold.n_items > n - initial:
        raise ConfigError(f"gold.n_items={config.gold.n_items} leaves fewer than sampler.initial_size={initial} items "
                          f"of the {n}-item pool for labeling; expected at most {n - initial}")
    return n, 0 if test is None else len(test)
