"""Build the configured scikit-learn classifier. Flows fit ``clone`` of it, never the original."""

from __future__ import annotations

from sklearn.base import ClassifierMixin, is_classifier
from sklearn.pipeline import Pipeline, make_pipeline
from sklearn.preprocessing import StandardScaler

from crowdloop.config import ModelConfig
from crowdloop.errors import ConfigError, RegistryError
from crowdloop.registry import import_object


def build_model(cfg: ModelConfig) -> ClassifierMixin | Pipeline:
    """Instantiate ``cfg.estimator`` with ``cfg.params`` (and a scaler in front if asked; wrapped in
    ``TextClassifier`` for text features)."""
    try:
        cls = import_object(cfg.estimator, what="model.estimator")
    except RegistryError as exc:
        raise ConfigError(str(exc)) from None
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
