"""Build the configured scikit-learn classifier. Flows fit ``clone`` of it, never the original.

``model.estimator`` is an import path from the config, and a deployment's config is a flow
parameter: whoever may start a run with parameters chooses it. So a path is resolved only to a
*class* that looks like a scikit-learn classifier (``fit``, ``predict_proba``, ``get_params``),
and only from trusted modules: ``sklearn`` and ``crowdloop`` by default, plus the module
prefixes the owner of the machine lists in ``CROWDLOOP_ESTIMATOR_MODULES`` (an environment
variable of the worker, never part of a config). The module is checked *before* it is
imported, because importing a module already runs its code; ``os.system`` and friends are
refused with one line and nothing runs.
"""

from __future__ import annotations

import os

from sklearn.base import ClassifierMixin, is_classifier
from sklearn.pipeline import Pipeline, make_pipeline
from sklearn.preprocessing import StandardScaler

from crowdloop.config import ModelConfig
from crowdloop.errors import ConfigError, RegistryError
from crowdloop.registry import import_object

TRUSTED_MODULES_ENV = "CROWDLOOP_ESTIMATOR_MODULES"
DEFAULT_TRUSTED_MODULES = ("sklearn", "crowdloop")
CLASSIFIER_METHODS = ("fit", "predict_proba", "get_params")


def trusted_modules() -> tuple[str, ...]:
    """Module prefixes estimators may come from: the defaults and ``$CROWDLOOP_ESTIMATOR_MODULES``
    (comma-separated, e.g. ``xgboost,lightgbm,mylab.models``)."""
    extra = os.environ.get(TRUSTED_MODULES_ENV, "")
    return DEFAULT_TRUSTED_MODULES + tuple(p.strip().strip(".") for p in extra.split(",") if p.strip().strip("."))


def estimator_class(path: str, *, field: str = "model.estimator") -> type:
    """The classifier class at ``path`` (``package.module.Name``), or a one-line ``ConfigError``.

    Refused before any import: a module outside ``trusted_modules()``. Refused after it: a
    name that is not a class, or a class without ``fit``, ``predict_proba`` and ``get_params``.
    """
    module = path.replace(":", ".").rpartition(".")[0]
    trusted = trusted_modules()
    if not module or not any(module == prefix or module.startswith(prefix + ".") for prefix in trusted):
        raise ConfigError(
            f"{field}: {path!r} is not from a trusted module (trusted: {', '.join(trusted)}); expected a "
            "scikit-learn-style classifier class like 'sklearn.linear_model.LogisticRegression' (the machine's "
            f"owner can trust more module prefixes in the environment variable {TRUSTED_MODULES_ENV})")
    try:
        found = import_object(path, what=field)
    except RegistryError as exc:
        raise ConfigError(str(exc)) from None
    missing = [m for m in CLASSIFIER_METHODS if not callable(getattr(found, m, None))]
    if not isinstance(found, type) or missing:
        what = f"a {type(found).__name__}" if not isinstance(found, type) else f"a class without {', '.join(missing)}"
        raise ConfigError(f"{field}: {path!r} is {what}, not a classifier; expected a classifier with predict_proba "
                          f"(a scikit-learn-style class with {', '.join(CLASSIFIER_METHODS)}) like "
                          "'sklearn.linear_model.LogisticRegression'")
    return found


def build_model(cfg: ModelConfig) -> ClassifierMixin | Pipeline:
    """Instantiate ``cfg.estimator`` with ``cfg.params`` (and a scaler in front if asked; wrapped in
    ``TextClassifier`` for text features)."""
    cls = estimator_class(cfg.estimator)
    try:
        estimator = cls(**cfg.params)
    except TypeError as exc:
        raise ConfigError(f"model.params: {cfg.estimator} rejected the parameters {sorted(cfg.params)}: {exc}") from None
    if not is_classifier(estimator) or not hasattr(estimator, "predict_proba"):
        raise ConfigError(
            f"model.estimator: {cfg.estimator!r} is not a classifier with predict_proba; "
            "expected e.g. 'sklearn.linear_model.LogisticRegression'"
        )
    if cfg.features is not None:  # text pools: rows are crowdloop.models.text.TextRows
        from crowdloop.models.text import build_text_model

        return build_text_model(estimator, cfg)
    return make_pipeline(StandardScaler(), estimator) if cfg.scale else estimator
