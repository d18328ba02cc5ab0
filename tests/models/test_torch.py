"""TorchClassifier: the scikit-learn contract, weights files, embeddings, MC dropout, warm start.

Small data (scikit-learn's 8×8 digits), few epochs, one torch thread.
"""

from __future__ import annotations

import pickle

import numpy as np
import pytest
import torch  # crowdloop[torch] is part of the test extra: these tests never skip
from sklearn.base import clone
from sklearn.datasets import load_digits

from crowdloop.errors import ConfigError
from crowdloop.models.torch import TorchClassifier

torch.set_num_threads(1)


@pytest.fixture(scope="module")
def digits() -> tuple[np.ndarray, np.ndarray]:
    X, y = load_digits(return_X_y=True)
    return X[:300].astype(np.float32), np.array([f"d{v}" for v in y[:300]], dtype=object)


def small(**kw) -> TorchClassifier:
    params = {"epochs": 4, "width": 8, "random_state": 0, "batch_size": 32}
    params.update(kw)
    return TorchClassifier(**params)


def test_sklearn_contract_clone_params_and_fitted_state(digits):
    X, y = digits
    model = small(dropout=0.3)
    twin = clone(model)
    assert twin is not model and twin.get_params() == model.get_params()
    assert model.set_params(lr=0.01) is model and model.get_params()["lr"] == 0.01
    from sklearn.exceptions import NotFittedError

    with pytest.raises(NotFittedError):
        model.predict_proba(X[:3])
    model.fit(X, y)
    proba = model.predict_proba(X[:50])
    assert proba.shape == (50, 10) and np.allclose(proba.sum(axis=1), 1.0)
    assert list(model.classes_) == sorted(set(y.tolist()))
    assert (model.predict(X[:50]) == model.classes_[proba.argmax(axis=1)]).all()
    assert model.score(X, y) > 0.5  # learns something in 4 epochs on 300 digits
    assert "net_" not in clone(model).__dict__  # clone is unfitted


def test_same_seed_same_model_other_seed_other_model(digits):
    X, y = digits
    a = small().fit(X, y).predict_proba(X[:40])
    b = small().fit(X, y).predict_proba(X[:40])
    c = small(random_state=1).fit(X, y).predict_proba(X[:40])
    assert np.array_equal(a, b)
    assert not np.allclose(a, c)


def test_fit_leaves_the_global_rng_and_thread_count_alone(digits):
    X, y = digits
    torch.manual_seed(123)
    expected = torch.rand(3)
    torch.manual_seed(123)
    small(num_threads=2).fit(X, y)
    assert torch.equal(torch.rand(3), expected)  # weight init ran in a forked, restored RNG
    assert torch.get_num_threads() == 1


@pytest.mark.parametrize("params, fragment", [
    ({"epochs": -1}, "epochs=-1: expected an integer >= 0"),
    ({"lr": 0}, "lr=0: expected a number in (0.0, 10.0]"),
    ({"dropout": 1.0}, "dropout=1.0: expected a number in [0.0, 1.0)"),
    ({"arch": "vgg"}, "arch='vgg': expected one of cnn, resnet18, mlp"),
    ({"device": "tpu"}, "device='tpu': expected one of auto, cpu, cuda"),
    ({"input_shape": [1, 9, 9]}, "input_shape=[1, 9, 9]: expected channels·height·width equal to the 64 features"),
    ({"weights_path": "/nonexistent/w.pt"}, "weights_path='/nonexistent/w.pt': expected an existing local state-dict file"),
    ({"warm_start": "yes"}, "warm_start='yes': expected true or false"),
])
def test_bad_parameters_fail_in_one_line_naming_the_parameter(digits, params, fragment):
    X, y = digits
    with pytest.raises(ConfigError) as info:
        small(**params).fit(X, y)
    message = str(info.value)
    assert "\n" not in message and message.startswith("TorchClassifier: ") and fragment in message


def test_unknown_image_shape_and_mismatched_rows_are_one_line_errors(digits):
    X, y = digits
    with pytest.raises(ConfigError, match=r"input_shape=None: expected \[channels, height, width\] for rows of 37"):
        small().fit(np.zeros((20, 37), dtype=np.float32), np.arange(20) % 2)
    model = small().fit(X, y)
    with pytest.raises(ConfigError, match="X has 63 features per row: expected 64 as in fit"):
        model.predict_proba(X[:5, :63])
    if not torch.cuda.is_available():
        with pytest.raises(ConfigError, match="device='cuda': expected 'cpu' or 'auto'"):
            small(device="cuda").fit(X, y)
        assert small(device="auto")._device().type == "cpu"


def test_embed_is_the_penultimate_layer(digits):
    X, y = digits
    cnn = small().fit(X, y)
    H = cnn.embed(X[:30])
    assert H.shape == (30, 128)
    logits = torch.as_tensor(H, dtype=torch.float32) @ cnn.net_.head.weight.detach().T + cnn.net_.head.bias.detach()
    assert np.allclose(torch.softmax(logits, 1).numpy(), cnn.predict_proba(X[:30]), atol=1e-5)
    res = small(arch="resnet18", epochs=1).fit(X[:120], y[:120])
    assert res.embed(X[:7]).shape == (7, 512) and res.predict_proba(X[:7]).shape == (7, len(res.classes_))
    mlp = small(arch="mlp").fit(X, y)
    assert mlp.embed(X[:5]).shape == (5, 32)


def test_mc_dropout_passes_are_seeded_and_vary(digits):
    X, y = digits
    model = small(dropout=0.5).fit(X, y)
    a = model.predict_proba_mc(X[:20], n_samples=6, random_state=5)
    b = model.predict_proba_mc(X[:20], n_samples=6, random_state=np.random.default_rng(7))
    assert a.shape == (20, 6, 10) and np.allclose(a.sum(axis=2), 1.0)
    assert np.array_equal(a, model.predict_proba_mc(X[:20], n_samples=6, random_state=5))
    assert not np.allclose(a[:, 0], a[:, 1])  # masks differ between passes
    assert not np.allclose(a, b)
    assert np.allclose(small(dropout=0.0).fit(X, y).predict_proba_mc(X[:4], 3, 0).std(axis=1), 0.0)


def test_badge_gradient_embedding_equals_autograd(digits):
    X, y = digits
    model = small().fit(X, y)
    G = model.gradient_embedding(X[:5])
    net = model.net_
    for i in range(5):
        xb = model._to_tensor(X[i : i + 1])
        net.zero_grad()
        logits = net.head(net.body(xb))
        loss = torch.nn.functional.cross_entropy(logits, logits.argmax(dim=1))
        loss.backward()
        expected = torch.cat([net.head.weight.grad, net.head.bias.grad[:, None]], dim=1).reshape(-1)
        assert np.allclose(G[i], expected.numpy(), atol=1e-5)


def test_badge_sampler_uses_the_networks_embedding(digits):
    """samplers.batch.badge factors ⟨g_i, g_j⟩ = ⟨a_i, a_j⟩⟨[h_i,1], [h_j,1]⟩ with h = model.embed:
    its distances equal those between the explicit last-layer gradients."""
    from crowdloop.samplers.batch import badge_sampling, embed

    X, y = digits
    model = small().fit(X, y)
    H = np.hstack([embed(model, X[:40]), np.ones((40, 1))])
    P = model.predict_proba(X[:40])
    A = P.copy()
    A[np.arange(40), P.argmax(axis=1)] -= 1
    G = model.gradient_embedding(X[:40])
    assert np.allclose((A @ A.T) * (H @ H.T), G @ G.T, atol=1e-6)
    picked = badge_sampling(model, X[:40], batch_size=8, rng=np.random.default_rng(0))
    assert len(set(picked.tolist())) == 8
    assert np.array_equal(picked, badge_sampling(model, X[:40], batch_size=8, rng=np.random.default_rng(0)))


def test_weights_file_round_trip_and_torchvision_resnet_checkpoint(digits, tmp_path):
    X, y = digits
    trained = small().fit(X, y)
    path = tmp_path / "cnn.pt"
    trained.save_weights(path)
    loaded = small(random_state=9, epochs=0, weights_path=str(path)).fit(X, y)
    assert loaded.n_weights_loaded_ == len(trained.net_.state_dict())
    assert np.allclose(loaded.predict_proba(X[:20]), trained.predict_proba(X[:20]), atol=1e-6)
    # a plain torchvision resnet18 state dict: all but the adapted stem (conv1) and the head (fc)
    from torchvision.models import resnet18

    ref = resnet18(weights=None)
    with torch.no_grad():
        ref.layer1[0].conv1.weight.fill_(0.01)
    torch.save(ref.state_dict(), tmp_path / "resnet18.pth")
    res = small(arch="resnet18", epochs=0, weights_path=str(tmp_path / "resnet18.pth")).fit(X[:60], y[:60])
    skipped = {"conv1.weight", "fc.weight", "fc.bias"}
    assert res.n_weights_loaded_ == len(ref.state_dict()) - len(skipped)
    assert torch.allclose(res.net_.body.layer1[0].conv1.weight, torch.full_like(ref.layer1[0].conv1.weight, 0.01))
    (tmp_path / "junk.pt").write_bytes(b"not a torch file")
    with pytest.raises(ConfigError, match=r"^TorchClassifier: weights_path='.*junk.pt': expected a torch state-dict file"):
        small(weights_path=str(tmp_path / "junk.pt")).fit(X, y)
    torch.save({"unrelated.weight": torch.zeros(3)}, tmp_path / "other.pt")
    with pytest.raises(ConfigError, match="none matched"):
        small(weights_path=str(tmp_path / "other.pt")).fit(X, y)


def test_pickle_round_trip_keeps_predictions(digits):
    X, y = digits
    model = small().fit(X, y)
    again = pickle.loads(pickle.dumps(model))
    assert np.array_equal(again.predict_proba(X[:25]), model.predict_proba(X[:25]))
    assert again.get_params() == model.get_params()


def test_warm_start_continues_from_the_current_weights_and_adapts_to_new_classes(digits):
    X, y = digits
    few = np.isin(y, ["d0", "d1", "d2"])
    model = small(warm_start=True, warm_epochs=0).fit(X[few], y[few])
    before = {k: v.detach().clone() for k, v in model.net_.state_dict().items()}
    model.fit(X, y)  # all ten classes now, no training pass: what carried over is exactly what is there
    after = model.net_.state_dict()
    assert model.warm_started_ and len(model.classes_) == 10 and after["head.weight"].shape == (10, 128)
    for name, value in before.items():
        if not name.startswith("head."):
            assert torch.equal(after[name], value), f"{name} did not carry over"
    known = [list(model.classes_).index(c) for c in ("d0", "d1", "d2")]
    assert torch.equal(after["head.weight"][known], before["head.weight"])
    assert torch.equal(after["head.bias"][known], before["head.bias"])
    model.set_params(warm_epochs=1).fit(X, y)  # then trained from there, for warm_epochs passes
    assert model.warm_started_ and model.n_epochs_ == 1
    assert not torch.equal(model.net_.state_dict()["head.weight"][known], before["head.weight"])
    cold = small(warm_start=False, warm_epochs=0).fit(X[few], y[few])
    first = {k: v.detach().clone() for k, v in cold.net_.state_dict().items()}
    cold.fit(X, y)
    assert not cold.warm_started_ and cold.n_epochs_ == 4
    trunk = next(name for name in first if not name.startswith("head.") and name.endswith("weight"))
    assert not torch.equal(cold.net_.state_dict()[trunk], first[trunk])  # a cold refit starts anew


def test_epochs_run_in_full_by_default_and_early_stopping_restores_the_best_epoch(digits):
    X, y = digits
    plain = small(epochs=6).fit(X, y)
    assert plain.patience is None and plain.n_epochs_ == 6 and plain.best_epoch_ == 6  # no split, every epoch
    # a model that overfits at once (high lr, no dropout, 300 labels) stops long before 60 epochs
    stopped = small(epochs=60, patience=2, min_validation=10, lr=0.05, dropout=0.0).fit(X, y)
    assert stopped.n_epochs_ < 60
    assert stopped.best_epoch_ == stopped.n_epochs_ - 2  # two epochs without a better validation loss
    # the restored weights are the best epoch's, not the last: a run that ends there predicts the same
    again = small(epochs=stopped.best_epoch_, patience=2, min_validation=10, lr=0.05, dropout=0.0).fit(X, y)
    assert np.allclose(again.predict_proba(X[:20]), stopped.predict_proba(X[:20]), atol=1e-6)
