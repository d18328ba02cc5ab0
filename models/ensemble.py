"""A deep ensemble as one scikit-learn classifier: members that differ only in their seed.

Averaging a few independently initialised networks is the cheapest reliable gain for a small
labeled set (Lakshminarayanan et al. 2017), and their averaged probabilities rank uncertain
items better than one network's (Beluch et al. 2018, "The power of ensembles for active
learning"). On the Fashion-MNIST benchmark (BENCHMARKS.md, "Deep models") three small CNNs with
margin sampling reached 85 % test accuracy with 800 human labels, against 1,200 for the best
single-CNN strategy and 2,000 for random (median of 5 seeds). The cost is ``n_members`` times the training and scoring time.

``SeedEnsemble`` keeps the contract the engine and the samplers rely on: ``fit``,
``predict_proba`` (the members' mean, columns in ``classes_`` order), ``predict``, ``score``,
``get_params``/``set_params``/``clone``, pickling; ``embed`` (members' embeddings side by side)
and ``predict_proba_mc`` (the members' MC-dropout passes pooled) when the members have them; and
``warm_start``: a second ``fit`` continues every member from its own weights, which is what the
engine does between rounds for a model with ``warm_start=True``.

Configured like any model::

    model:
      estimator: crowdloop.models.ensemble.SeedEnsemble
      params:
        estimator: crowdloop.models.torch.TorchClassifier
        params: {arch: cnn, width: 16, epochs: 40, warm_epochs: 20, patience: null}
        n_members: 3
        warm_start: true
        random_state: 0
      scale: false
"""

from __future__ import annotations

from numbers import Integral
from typing import Any

import numpy as np
from sklearn.base import BaseEstimator, ClassifierMixin, clone, is_classifier
from sklearn.utils.metaestimators import available_if
from sklearn.utils.validation import check_is_fitted

from crowdloop.errors import ConfigError, RegistryError
from crowdloop.registry import import_object


def _fail(name: str, value: Any, expected: str) -> ConfigError:
    return ConfigError(f"SeedEnsemble: {name}={value!r}: expected {expected}")


def _members_have(method: str):  # type: ignore[no-untyped-def]
    """``available_if`` check: the ensemble offers ``method`` only when its members do."""

    def check(self: SeedEnsemble) -> bool:
        members = getattr(self, "members_", None)
        probe = members[0] if members else self._template()
        return hasattr(probe, method)

    return check


class SeedEnsemble(ClassifierMixin, BaseEstimator):
    """``n_members`` copies of ``estimator`` whose seeds are ``random_state + k``; soft vote.

    estimator: an import path (``"crowdloop.models.torch.TorchClassifier"``) or an unfitted
        classifier with ``predict_proba``.
    params: constructor parameters for an ``estimator`` given by import path.
    n_members: how many members (1 is a plain model; 3–5 is the usual deep ensemble).
    warm_start: refits continue each member from its current weights (members must support
        ``warm_start`` themselves, as ``TorchClassifier`` does); otherwise every fit starts anew.
    random_state: member ``k`` gets ``random_state + k``; ``None`` draws fresh seeds per fit.
    """

    def __init__(
        self,
        estimator: Any = "crowdloop.models.torch.TorchClassifier",
        params: dict[str, Any] | None = None,
        n_members: int = 3,
        warm_start: bool = False,
        random_state: int | None = None,
    ) -> None:
        self.estimator = estimator
        self.params = params
        self.n_members = n_members
        self.warm_start = warm_start
        self.random_state = random_state

    # -- building members -----------------------------------------------------------------
    def _check_params(self) -> None:
        n = self.n_members
        if isinstance(n, bool) or not isinstance(n, Integral) or n < 1:
            raise _fail("n_members", n, "a positive integer")
        if not isinstance(self.warm_start, bool):
            raise _fail("warm_start", self.warm_start, "true or false")
        rs = self.random_state
        if rs is not None and (isinstance(rs, bool) or not isinstance(rs, Integral) or rs < 0):
            raise _fail("random_state", rs, "a non-negative integer or None")
        if self.params is not None and not isinstance(self.params, dict):
            raise _fail("params", self.params, "a mapping of the estimator's constructor parameters")
        if self.params and not isinstance(self.estimator, str):
            raise _fail("params", self.params, "no params when estimator is an object (set them on it)")

    def _template(self) -> Any:
        """One unfitted member (seed not yet set)."""
        if isinstance(self.estimator, str):
            try:
                cls = import_object(self.estimator, what="SeedEnsemble.estimator")
            except RegistryError as exc:
                raise ConfigError(str(exc)) from None
            try:
                member = cls(**(self.params or {}))
            except TypeError as exc:
                raise ConfigError(f"SeedEnsemble: params: {self.estimator} rejected {sorted(self.params or {})}: {exc}") from None
        else:
            member = clone(self.estimator)
        if not is_classifier(member) or not hasattr(member, "predict_proba"):
            raise _fail("estimator", self.estimator,
                        "a classifier with predict_proba, e.g. 'crowdloop.models.torch.TorchClassifier'")
        return member

    def _member(self, k: int, seed: int | None) -> Any:
        member = self._template()
        names = member.get_params(deep=False)
        if "random_state" in names:
            member.set_params(random_state=None if seed is None else seed + k)
        if "warm_start" in names:
            member.set_params(warm_start=self.warm_start)
        return member

    # -- the classifier contract ------------------------------------------------------------
    def fit(self, X: Any, y: Any) -> SeedEnsemble:
        """Fit every member on the same data (continuing them when ``warm_start``)."""
        self._check_params()
        n = int(self.n_members)
        members = getattr(self, "members_", None)
        if not (self.warm_start and members is not None and len(members) == n):
            seed = self.random_state if self.random_state is None else int(self.random_state)
            members = [self._member(k, seed) for k in range(n)]
        for member in members:
            member.fit(X, y)
        classes = members[0].classes_
        for member in members[1:]:
            if not np.array_equal(member.classes_, classes):  # a member that dropped a class would misalign the vote
                raise ConfigError(f"SeedEnsemble: members learned different classes ({classes} vs {member.classes_})")
        self.members_ = members
        self.classes_ = classes
        self.n_features_in_ = getattr(members[0], "n_features_in_", np.asarray(X).shape[1])
        return self

    def predict_proba(self, X: Any) -> np.ndarray:
        """The members' mean class probabilities."""
        check_is_fitted(self, "members_")
        proba = self.members_[0].predict_proba(X)
        for member in self.members_[1:]:
            proba = proba + member.predict_proba(X)
        return proba / len(self.members_)

    def predict(self, X: Any) -> np.ndarray:
        return self.classes_[self.predict_proba(X).argmax(axis=1)]

    @available_if(_members_have("embed"))
    def embed(self, X: Any) -> np.ndarray:
        """The members' embeddings side by side, shape (n, Σ dims): distances then sum over members."""
        check_is_fitted(self, "members_")
        return np.concatenate([m.embed(X) for m in self.members_], axis=1)

    @available_if(_members_have("predict_proba_mc"))
    def predict_proba_mc(self, X: Any, n_samples: int | None = None, random_state: Any = None) -> np.ndarray:
        """Stochastic passes pooled over members, shape (n, n_samples, n_classes): the passes are
        split as evenly as possible across members, so disagreement between members counts."""
        check_is_fitted(self, "members_")
        first = self.members_[0]
        T = getattr(first, "mc_samples", 20) if n_samples is None else n_samples
        if isinstance(T, bool) or not isinstance(T, Integral) or T < 1:
            raise _fail("n_samples", n_samples, "a positive integer")
        if random_state is None or isinstance(random_state, Integral):
            rng = np.random.default_rng(random_state)
        elif isinstance(random_state, np.random.Generator):
            rng = random_state
        else:
            raise _fail("random_state", random_state, "an integer, a numpy.random.Generator or None")
        k = len(self.members_)
        shares = [int(T) // k + (1 if j < int(T) % k else 0) for j in range(k)]
        parts = [m.predict_proba_mc(X, n_samples=s, random_state=rng) for m, s in zip(self.members_, shares, strict=True) if s]
        return np.concatenate(parts, axis=1)

    def __sklearn_is_fitted__(self) -> bool:
        return hasattr(self, "members_")

    def __sklearn_tags__(self):  # type: ignore[no-untyped-def]
        tags = super().__sklearn_tags__()
        tags.non_deterministic = self.random_state is None
        return tags
