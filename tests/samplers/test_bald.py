"""BALD and BatchBALD: the sampler contract (with a scikit-learn model and with a torch model's
MC-dropout passes), the mutual-information score, and BatchBALD's batch diversity."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from crowdloop import registry
from crowdloop.errors import SamplerError
from crowdloop.samplers.bald import bald_sampling, bald_scores, batchbald_sampling
from crowdloop.samplers.testing import check_sampler

torch.set_num_threads(1)


def _torch_model(n_classes: int, n_features: int, seed: int):
    """A small MLP with MC dropout, fitted on separable blobs (check_sampler's model hook)."""
    from crowdloop.models.torch import TorchClassifier

    rng = np.random.default_rng(seed)
    centres = rng.normal(scale=3.0, size=(n_classes, n_features))
    y = np.arange(60) % n_classes
    X = (centres[y] + rng.normal(size=(60, n_features))).astype(np.float32)
    model = TorchClassifier(arch="mlp", width=4, epochs=5, dropout=0.5, random_state=seed, mc_samples=8).fit(X, y)
    return model, X, y


def test_bald_and_batchbald_are_registered():
    assert registry.samplers.load("bald") is bald_sampling
    assert registry.samplers.load("batchbald") is batchbald_sampling


@pytest.mark.parametrize("sampler", [bald_sampling, batchbald_sampling], ids=["bald", "batchbald"])
def test_contract_with_mc_dropout_model(sampler):
    check_sampler(sampler, params={"n_samples": 6}, error=SamplerError, max_examples=6, max_pool=50,
                  fitted_model=_torch_model)


def test_batchbald_contract_in_the_sampled_regime():
    # few configurations: the joint entropy is estimated from sampled label configurations
    check_sampler(batchbald_sampling, params={"n_samples": 5, "max_configs": 4, "candidates": 30},
                  error=SamplerError, max_examples=6, max_pool=50, fitted_model=_torch_model)


def test_bald_score_is_the_mutual_information():
    agree = np.array([[[0.5, 0.5]] * 4])  # every pass says 50/50: aleatoric only, MI 0
    disagree = np.array([[[1.0, 0.0], [0.0, 1.0], [1.0, 0.0], [0.0, 1.0]]])  # confident, opposite: MI log 2
    scores = bald_scores(np.concatenate([agree, disagree]))
    assert np.allclose(scores, [0.0, np.log(2)], atol=1e-9)
    single = np.array([[[0.9, 0.1]], [[0.5, 0.5]]])  # one pass: predictive entropy
    assert bald_scores(single)[1] > bald_scores(single)[0] > 0


class _Fixed:
    """A model whose MC passes are fixed per row (keyed by the row's first feature)."""

    classes_ = np.array([0, 1])

    def __init__(self, table: dict[int, np.ndarray]) -> None:
        self.table = table

    def predict_proba(self, X):
        return np.stack([self.table[int(x[0])].mean(axis=0) for x in X])

    def predict_proba_mc(self, X, n_samples, random_state):
        return np.stack([self.table[int(x[0])][:n_samples] for x in X])


def test_batchbald_spreads_a_batch_over_distinct_items_where_bald_takes_copies():
    T = 8
    flip = np.array([[1.0, 0.0] if t % 2 else [0.0, 1.0] for t in range(T)])
    other = np.array([[1.0, 0.0] if t < T // 2 else [0.0, 1.0] for t in range(T)])
    table = {0: flip * 0.98 + 0.01, 1: other * 0.9 + 0.05, 2: np.full((T, 2), 0.5)}
    X = np.array([[0.0]] * 5 + [[1.0]] + [[2.0]] * 4)  # five copies of the most informative item
    model = _Fixed(table)
    bald = bald_sampling(model, X, batch_size=2, rng=np.random.default_rng(0), n_samples=T)
    assert set(X[bald, 0]) == {0.0}  # top-k: two copies of the same item
    batch = batchbald_sampling(model, X, batch_size=2, rng=np.random.default_rng(0), n_samples=T, candidates=10)
    assert set(X[batch, 0]) == {0.0, 1.0}  # a copy adds no information: the second pick is the other item


def test_models_without_mc_passes_fall_back_to_entropy():
    from sklearn.linear_model import LogisticRegression

    rng = np.random.default_rng(0)
    X = rng.normal(size=(80, 3))
    y = (X[:, 0] > 0).astype(int)
    model = LogisticRegression().fit(X, y)
    picked = bald_sampling(model, X, batch_size=5, rng=np.random.default_rng(1))
    closest = np.argsort(np.abs(model.predict_proba(X)[:, 1] - 0.5))[:5]
    assert set(picked.tolist()) == set(closest.tolist())
    assert set(batchbald_sampling(model, X, batch_size=5, rng=np.random.default_rng(1)).tolist()) == set(closest.tolist())


@pytest.mark.parametrize("params, fragment", [({"n_samples": 0}, "n_samples=0: expected a positive integer"),
                                              ({"max_configs": -2}, "max_configs=-2: expected a positive integer")])
def test_bad_parameters_are_one_line_errors(params, fragment):
    model, X, _ = _torch_model(3, 4, 0)
    with pytest.raises(SamplerError, match=fragment):
        batchbald_sampling(model, X, batch_size=3, rng=np.random.default_rng(0), **params)
