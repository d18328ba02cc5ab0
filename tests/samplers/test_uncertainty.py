"""Uncertainty samplers: the sampler contract, chunked scoring, and agreement with modAL."""

from __future__ import annotations

import numpy as np
import pytest
from modAL.uncertainty import entropy_sampling as modal_entropy
from modAL.uncertainty import margin_sampling as modal_margin
from modAL.uncertainty import uncertainty_sampling as modal_uncertainty
from sklearn.datasets import make_classification
from sklearn.linear_model import LogisticRegression

from crowdloop import registry
from crowdloop.errors import SamplerError
from crowdloop.samplers import entropy_sampling, least_confident_sampling, margin_sampling, random_sampling

SAMPLERS = [random_sampling, least_confident_sampling, margin_sampling, entropy_sampling]


@pytest.fixture(scope="module")
def fitted() -> tuple[LogisticRegression, np.ndarray]:
    X, y = make_classification(n_samples=1200, n_features=8, n_informative=6, n_classes=4, random_state=0)
    model = LogisticRegression(max_iter=500).fit(X[:200], y[:200])
    return model, X[200:]


@pytest.mark.parametrize("sampler", SAMPLERS, ids=lambda f: f.__name__)
def test_contract_exact_unique_deterministic(sampler, fitted) -> None:
    model, X = fitted
    a = sampler(model, X, batch_size=25, rng=np.random.default_rng(3))
    b = sampler(model, X, batch_size=25, rng=np.random.default_rng(3))
    assert a.dtype.kind == "i" and len(a) == 25 and len(np.unique(a)) == 25
    assert a.min() >= 0 and a.max() < len(X)
    np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize("sampler", SAMPLERS, ids=lambda f: f.__name__)
def test_batch_larger_than_pool_is_an_error(sampler, fitted) -> None:
    model, X = fitted
    with pytest.raises(SamplerError, match=r"batch_size=11 is larger than the pool of 10"):
        sampler(model, X[:10], batch_size=11, rng=np.random.default_rng(0))
    with pytest.raises(SamplerError, match=r"batch_size=0"):
        sampler(model, X, batch_size=0, rng=np.random.default_rng(0))


@pytest.mark.parametrize("sampler", SAMPLERS, ids=lambda f: f.__name__)
def test_rng_must_be_a_generator(sampler, fitted) -> None:
    model, X = fitted
    with pytest.raises(SamplerError, match=r"numpy\.random\.Generator"):
        sampler(model, X, batch_size=5, rng=42)


@pytest.mark.parametrize(
    "ours, theirs",
    [(least_confident_sampling, modal_uncertainty), (margin_sampling, modal_margin), (entropy_sampling, modal_entropy)],
)
def test_same_picks_as_modal_on_untied_scores(ours, theirs, fitted) -> None:
    model, X = fitted
    picked = ours(model, X, batch_size=30, rng=np.random.default_rng(0))
    expected = theirs(model, X, n_instances=30)
    expected = expected[0] if isinstance(expected, tuple) else expected  # modAL returns (indices, scores)
    np.testing.assert_array_equal(np.sort(picked), np.sort(np.asarray(expected, dtype=np.int64)))


@pytest.mark.parametrize("chunk_size", [1, 7, 64, 5000])
def test_chunked_scoring_does_not_change_picks(chunk_size: int, fitted) -> None:
    model, X = fitted
    whole = margin_sampling(model, X, batch_size=40, rng=np.random.default_rng(5), chunk_size=len(X))
    chunked = margin_sampling(model, X, batch_size=40, rng=np.random.default_rng(5), chunk_size=chunk_size)
    np.testing.assert_array_equal(whole, chunked)


class _Constant:
    """A model with identical probabilities everywhere: every score ties."""

    def predict_proba(self, X):
        return np.full((len(X), 3), 1 / 3)


def test_ties_are_broken_by_the_rng_not_by_row_order() -> None:
    X = np.zeros((500, 2))
    picks = {tuple(margin_sampling(_Constant(), X, batch_size=10, rng=np.random.default_rng(s))) for s in range(5)}
    assert len(picks) == 5
    first = margin_sampling(_Constant(), X, batch_size=10, rng=np.random.default_rng(0))
    assert set(first.tolist()) != set(range(10))


def test_memory_mapped_pool(tmp_path, fitted) -> None:
    model, X = fitted
    path = tmp_path / "pool.npy"
    np.save(path, X)
    mapped = np.load(path, mmap_mode="r")
    a = entropy_sampling(model, mapped, batch_size=12, rng=np.random.default_rng(1), chunk_size=100)
    b = entropy_sampling(model, X, batch_size=12, rng=np.random.default_rng(1), chunk_size=100)
    np.testing.assert_array_equal(a, b)


def test_builtins_are_registered_by_entry_point(fitted) -> None:
    """Each name, loaded through its entry point, picks what its definition says, recomputed here
    from the model's probabilities (ties are not an issue on these continuous scores)."""
    model, X = fitted
    proba = model.predict_proba(X)
    top2 = np.sort(proba, axis=1)[:, -2:]
    most_uncertain_first = {
        "least_confident": np.argsort(top2[:, 1]),
        "margin": np.argsort(top2[:, 1] - top2[:, 0]),
        "entropy": np.argsort(-(proba * np.log(np.clip(proba, 1e-12, None))).sum(axis=1))[::-1],
    }
    for name, order in most_uncertain_first.items():
        picked = registry.samplers.load(name)(model, X, batch_size=25, rng=np.random.default_rng(0))
        assert set(picked.tolist()) == set(order[:25].tolist()), name
    uniform = registry.samplers.load("random")
    picked = uniform(model, X, batch_size=25, rng=np.random.default_rng(0))
    np.testing.assert_array_equal(uniform(None, X, batch_size=25, rng=np.random.default_rng(0)), picked)  # no model needed
    counts = np.bincount(np.concatenate([uniform(None, X, batch_size=500, rng=np.random.default_rng(s)) for s in range(40)]),
                         minlength=len(X))
    assert counts.min() >= 10 and counts.max() <= 40  # each row ~ 20 times in 40 draws of half the pool (binomial sd 3.2)
