"""Every registered sampler passes the shared conformance suite (crowdloop.samplers.testing)."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis.errors import Flaky

from crowdloop import registry
from crowdloop.errors import SamplerError
from crowdloop.samplers.testing import check_sampler

# Samplers whose contract the suite exercises with extra parameters as well as defaults.
VARIANTS = {
    "qbc": [{"disagreement": "consensus_entropy", "n_members": 2}, {"disagreement": "kl_max", "n_members": 2}],
    "prefiltered": [{"candidates": 8, "base": "coreset"}, {"candidates": 8, "prefilter": "random", "base": "typiclust"}],
    "mixed": [{"random_fraction": 1.0}, {"random_fraction": 0.5, "base": "badge"}],
    # the suite's labeled set has 40 rows: with a history, the arms' evidence is computed and used
    "auto": [{"labeled_arm": ["random"] * 20 + ["margin"] * 10 + ["kmeans_margin"] * 10, "min_items": 5,
              "arms": ["random", "margin", "kmeans_margin"]}],
}


@pytest.mark.parametrize("name", registry.samplers.names())
def test_registered_sampler_conforms(name: str) -> None:
    sampler = registry.samplers.load(name)
    slow = name == "qbc"  # fits a committee per call
    check_sampler(sampler, error=SamplerError, max_examples=3 if slow else 8, max_pool=60)
    for params in VARIANTS.get(name, []):
        check_sampler(sampler, params=params, error=SamplerError, max_examples=3, max_pool=60)


def test_suite_catches_a_broken_sampler() -> None:
    def truncating(model, X, *, batch_size, rng, **_):  # the silent cut the contract forbids
        return np.arange(min(batch_size, X.shape[0]))

    with pytest.raises(AssertionError, match="did not raise"):
        check_sampler(truncating, max_examples=5)

    def nondeterministic(model, X, *, batch_size, rng, **_):
        return np.random.default_rng().choice(X.shape[0], size=batch_size, replace=False)

    with pytest.raises((AssertionError, Flaky), match="different picks"):
        check_sampler(nondeterministic, max_examples=20)


def test_suite_feeds_sparse_rows() -> None:
    """A sampler that only works on dense arrays (len() of a SciPy matrix raises) fails the suite."""
    def dense_only(model, X, *, batch_size, rng, **_):
        if len(X) < batch_size:
            raise SamplerError("batch too large")
        return rng.choice(len(X), size=batch_size, replace=False)

    with pytest.raises(TypeError, match="sparse array length is ambiguous"):
        check_sampler(dense_only, error=SamplerError, max_examples=3)
