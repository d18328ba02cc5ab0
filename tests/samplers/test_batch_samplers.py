"""Batch-aware samplers checked against their references (modAL) and their defining properties."""

from __future__ import annotations

import numpy as np
import pytest
from modAL.batch import uncertainty_batch_sampling
from modAL.disagreement import vote_entropy as modal_vote_entropy
from sklearn.datasets import load_digits, make_blobs
from sklearn.linear_model import LogisticRegression

from crowdloop import registry
from crowdloop.errors import SamplerError
from crowdloop.samplers import batch


@pytest.fixture(scope="module")
def digits():
    X, y = load_digits(return_X_y=True)
    X = X / 16.0
    rng = np.random.default_rng(0)
    order = rng.permutation(len(X))
    lab, pool = order[:60], order[60:700]
    model = LogisticRegression(max_iter=300).fit(X[lab], y[lab])
    return model, X[lab], y[lab], X[pool]


class ModalLearnerShim:
    """The parts of modAL's ActiveLearner that ``uncertainty_batch_sampling`` reads."""

    on_transformed = False

    def __init__(self, model, X_training):
        self.model, self.X_training = model, X_training

    def predict_proba(self, X, **kw):
        return self.model.predict_proba(X, **kw)


@pytest.mark.parametrize("k", [1, 7, 25])
def test_ranked_batch_matches_modal(digits, k):
    model, X_lab, _, X_pool = digits
    ours = batch.ranked_batch_sampling(model, X_pool, batch_size=k, rng=np.random.default_rng(1), X_labeled=X_lab)
    theirs, _ = uncertainty_batch_sampling(ModalLearnerShim(model, X_lab), X_pool, n_instances=k)
    np.testing.assert_array_equal(ours, np.asarray(theirs))


def test_ranked_batch_cold_start_starts_at_the_pool_medoid(digits):
    model, _, _, X_pool = digits
    from sklearn.metrics import pairwise_distances

    ours = batch.ranked_batch_sampling(model, X_pool, batch_size=5, rng=np.random.default_rng(0))
    medoid = np.argmin((pairwise_distances(X_pool) ** 2).mean(axis=0))
    assert ours[0] == medoid and len(set(ours.tolist())) == 5


def test_vote_entropy_equals_modal_and_qbc_picks_disagreement(digits):
    model, X_lab, y_lab, X_pool = digits
    committee = batch.BaggingCommittee(model, X_lab, y_lab, n_members=5, rng=np.random.default_rng(3))
    ours = batch.vote_entropy(committee, X_pool)
    np.testing.assert_allclose(ours, modal_vote_entropy(committee, X_pool))
    picked = batch.qbc_sampling(model, X_pool, batch_size=10, rng=np.random.default_rng(3), X_labeled=X_lab,
                                y_labeled=y_lab, disagreement="consensus_entropy")
    from modAL.disagreement import consensus_entropy

    again = batch.BaggingCommittee(model, X_lab, y_lab, n_members=5, rng=np.random.default_rng(3))
    scores = consensus_entropy(again, X_pool)
    assert scores[picked].min() >= np.sort(scores)[-10] - 1e-12
    with pytest.raises(SamplerError, match="X_labeled"):
        batch.qbc_sampling(model, X_pool, batch_size=3, rng=np.random.default_rng(0))


def test_badge_embedding_identity_matches_explicit_gradients(digits):
    model, _, _, X_pool = digits
    X = X_pool[:50]
    P = model.predict_proba(X)
    A = P.copy()
    A[np.arange(len(X)), P.argmax(1)] -= 1
    H = np.hstack([X, np.ones((len(X), 1))])
    G = np.einsum("ic,id->icd", A, H).reshape(len(X), -1)  # the gradient embedding, built explicitly
    # BADGE's first pick is the largest gradient norm; then D² sampling: a duplicate of a centre is never drawn
    picked = batch.badge_sampling(model, X, batch_size=5, rng=np.random.default_rng(0))
    assert picked[0] == np.argmax((G**2).sum(1))
    Xd = np.vstack([X, X[picked[0]][None, :]])
    for seed in range(5):
        again = batch.badge_sampling(model, Xd, batch_size=5, rng=np.random.default_rng(seed))
        assert not ({int(picked[0]), len(X)} <= set(again.tolist()))


def test_coreset_and_typiclust_cover_clusters():
    X, y = make_blobs(n_samples=[200, 60, 30, 10], centers=[[0, 0], [20, 0], [0, 20], [20, 20]], random_state=0)
    for name in ("coreset", "typiclust"):
        picked = registry.samplers.load(name)(None, X, batch_size=4, rng=np.random.default_rng(0))
        assert sorted(y[picked].tolist()) == [0, 1, 2, 3], name
    # with the labeled set covering three blobs, one pick reaches the fourth
    X_lab = np.array([[0.0, 0.0], [20.0, 0.0], [0.0, 20.0]])
    for name in ("coreset", "typiclust"):
        picked = registry.samplers.load(name)(None, X, batch_size=1, rng=np.random.default_rng(0), X_labeled=X_lab)
        assert y[picked[0]] == 3, name


def test_typiclust_picks_dense_points_not_outliers():
    rng = np.random.default_rng(0)
    X = np.vstack([rng.normal(size=(300, 2)), [[6.0, 6.0]]])
    picked = batch.typiclust_sampling(None, X, batch_size=1, rng=np.random.default_rng(0), n_neighbors=10)
    assert np.linalg.norm(X[picked[0]]) < 1.0


def test_prefiltered_keeps_to_top_uncertain_candidates(digits):
    model, X_lab, _, X_pool = digits
    from modAL.uncertainty import _proba_margin

    margins = _proba_margin(model.predict_proba(X_pool))
    picked = batch.prefiltered_sampling(model, X_pool, batch_size=10, rng=np.random.default_rng(0), base="coreset",
                                        candidates=40, X_labeled=X_lab)
    assert margins[picked].max() <= np.sort(margins)[39] + 1e-12
    rand = batch.prefiltered_sampling(model, X_pool, batch_size=10, rng=np.random.default_rng(0), base="badge",
                                      candidates=40, prefilter="random")
    assert len(set(rand.tolist())) == 10


def test_mixed_and_cluster_margin_pick_uncertain_items_spread_out(digits):
    """Each is uncertain like margin sampling and spread unlike its top 20. Measured on this fixture's
    pool drawn with seeds 0-5: mean margin of the picks 0.23-0.40 of the pool's; cluster-margin's
    mean distance from a pick to the nearest other pick 1.17-1.33 times the top-20's; k-means-margin
    (and ``best``, which picks it here) covers the 200 least-margin rows with 0.84-0.92 of the
    top-20's mean distance to the nearest pick (top 20 and 20 random of them: 0.97-1.03)."""
    from scipy.spatial.distance import pdist, squareform
    from sklearn.neighbors import NearestNeighbors

    model, _, _, X_pool = digits
    proba = np.sort(model.predict_proba(X_pool), axis=1)
    margin = proba[:, -1] - proba[:, -2]
    top, candidates = np.argsort(margin)[:20], np.argsort(margin)[:200]

    def nearest_other(rows: np.ndarray) -> float:
        d = squareform(pdist(X_pool[rows]))
        np.fill_diagonal(d, np.inf)
        return float(d.min(axis=1).mean())

    def coverage(rows: np.ndarray) -> float:
        return float(NearestNeighbors(n_neighbors=1).fit(X_pool[rows]).kneighbors(X_pool[candidates])[0].mean())

    for name in ("cluster_margin", "kmeans_margin", "best"):
        picked = registry.samplers.load(name)(model, X_pool, batch_size=20, rng=np.random.default_rng(0))
        assert len(set(picked.tolist())) == 20, name
        assert margin[picked].mean() < 0.5 * margin.mean(), name
        if name == "cluster_margin":
            assert nearest_other(picked) > 1.1 * nearest_other(top)
        else:
            assert coverage(picked) < 0.95 * coverage(top), name


def test_engine_passes_labeled_set_only_to_samplers_that_ask(tmp_path):
    from crowdloop import engine
    from crowdloop.config import LoopConfig
    from tests.conftest import small_config

    seen: dict[str, object] = {}

    def spy(model, X, *, batch_size, rng, X_labeled=None, y_labeled=None, chunk_size=8192):
        seen.update(X_labeled=X_labeled, y_labeled=y_labeled, n=len(X))
        return np.arange(batch_size)

    registry.samplers.register("spy_labeled", spy)
    try:
        cfg = LoopConfig.model_validate(small_config(**{"sampler.name": "spy_labeled", "stopping.max_rounds": 2}))
        p = engine.Project.prepare(cfg, str(tmp_path / "proj"))
        for step in (engine.train, engine.evaluate, engine.select, engine.dispatch, engine.collect, engine.aggregate):
            step(p, 0)
        engine.run_round(p, 1, until="select")
    finally:
        registry.samplers._overrides.pop("spy_labeled", None)
    n_labeled = len(p.human_labels(before_round=1))
    assert n_labeled > 0 and seen["X_labeled"].shape == (n_labeled, p.pool.X.shape[1])
    assert len(seen["y_labeled"]) == n_labeled and seen["n"] == len(p.pool) - n_labeled


def test_engine_typiclust_cold_start_spreads_round_zero(tmp_path):
    from sklearn.neighbors import NearestNeighbors

    from crowdloop import engine, keys
    from crowdloop.config import LoopConfig
    from tests.conftest import small_config

    cfg = LoopConfig.model_validate(small_config(**{"sampler.cold_start": "typiclust", "sampler.initial_size": 20}))
    p = engine.Project.prepare(cfg, str(tmp_path / "proj"))
    engine.run_round(p, 0, until="select")
    first = engine.select(p, 0)
    assert first["strategy"] == "cold_start:typiclust" and len(set(first["item_ids"])) == 20
    # a retried step picks the same items, recomputed: without the stored record, and in a fresh project
    p.store.delete(keys.round_key(0, keys.SELECTION))
    assert engine.select(p, 0)["item_ids"] == first["item_ids"]
    twin = engine.Project.prepare(cfg, str(tmp_path / "twin"))
    engine.run_round(twin, 0, until="select")
    assert engine.select(twin, 0)["item_ids"] == first["item_ids"]
    # Typical items of 20 clusters cover the pool: the mean distance from a pool item to its nearest
    # pick is well below that of 20 random items. Measured over seeds 0-5: typiclust 26.8-27.8,
    # one random draw 29.4-32.4 (ratio 0.83-0.93); the bar is 0.95 of the mean of 10 random draws.
    X = p.pool.X
    rows = np.array([p.index_of[i] for i in first["item_ids"]])

    def radius(picked: np.ndarray) -> float:
        return float(NearestNeighbors(n_neighbors=1).fit(X[picked]).kneighbors(X)[0].mean())

    rng = np.random.default_rng(cfg.seed)
    random_radius = np.mean([radius(rng.choice(len(X), size=20, replace=False)) for _ in range(10)])
    assert radius(rows) < 0.95 * random_radius
