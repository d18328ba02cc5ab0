"""Torch/torchvision image classifiers with the scikit-learn contract (``crowdloop[torch]``).

``TorchClassifier`` wraps a small CNN, torchvision's ``resnet18`` (adapted to the input's
channels and size, trained from scratch or from a local state-dict file) or an MLP, so the
engine and every sampler use it like any scikit-learn classifier: ``fit``, ``predict``,
``predict_proba`` (columns in ``classes_`` order), ``get_params``/``set_params``, ``clone``.
On top of that it offers what deep active learning needs:

* ``embed(X)``: the penultimate layer (the input of the final linear layer), which the
  diversity samplers (core-set, BADGE, k-means margin, ...) use as their feature space; BADGE's
  gradient embedding ``(p - onehot) ⊗ [h, 1]`` is exactly the last layer's gradient with it;
* ``predict_proba_mc(X, n_samples, random_state)``: MC-dropout passes for BALD/BatchBALD. The
  only dropout sits in front of the final layer, so the network body runs once and only the
  head is sampled (``n_samples`` passes cost about one);
* ``warm_start=True``: a second ``fit`` continues from the current weights (the engine hands a
  warm-starting model the previous round's fitted model);
* optional early stopping on a stratified validation split, deterministic seeding from
  ``random_state``, ``num_threads`` CPU threads (default 1: on a shared machine more threads
  are often slower), ``device`` ``cpu``/``cuda``/``auto``, mixed precision on GPU only.

Inputs are rows of flattened channel-first pixels (what the image pools produce), or arrays
shaped (n, C, H, W) / (n, H, W).
"""

from __future__ import annotations

import contextlib
import copy
import io
import math
import pickle
import time
from collections.abc import Iterator
from numbers import Integral, Real
from pathlib import Path
from typing import Any

import numpy as np
import torch
from sklearn.base import BaseEstimator, ClassifierMixin
from sklearn.utils.validation import check_is_fitted
from torch import nn
from torch.nn import functional as F

from crowdloop.errors import ConfigError

ARCHS = ("cnn", "resnet18", "mlp")
DEVICES = ("auto", "cpu", "cuda")


def _fail(name: str, value: Any, expected: str) -> ConfigError:
    return ConfigError(f"TorchClassifier: {name}={value!r}: expected {expected}")


class _SeededDropout(nn.Module):
    """Dropout that draws its masks from an explicit ``torch.Generator`` (never the global RNG)."""

    def __init__(self, p: float) -> None:
        super().__init__()
        self.p = float(p)
        self.generator: torch.Generator | None = None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training or self.p == 0.0:
            return x
        keep = torch.empty_like(x).bernoulli_(1.0 - self.p, generator=self.generator)
        return x * keep / (1.0 - self.p)


class _Net(nn.Module):
    """body (-> penultimate features h) + dropout + linear head; ``forward`` gives logits."""

    def __init__(self, body: nn.Module, dim: int, n_classes: int, dropout: float) -> None:
        super().__init__()
        self.body = body
        self.drop = _SeededDropout(dropout)
        self.head = nn.Linear(dim, n_classes)
        self.dim = dim

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.drop(self.body(x)))


def _cnn(channels: int, height: int, width: int, base: int) -> tuple[nn.Module, int]:
    """Two conv-pool stages and a dense layer: ~1 M multiply-adds per 28×28 image."""
    h, w = height // 4, width // 4
    if h < 1 or w < 1:
        raise _fail("input_shape", (channels, height, width), "images of at least 4×4 pixels for arch='cnn'")
    body = nn.Sequential(
        nn.Conv2d(channels, base, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(base, 2 * base, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
        nn.Flatten(), nn.Linear(2 * base * h * w, 128), nn.ReLU(),
    )
    return body, 128


def _resnet18(channels: int, height: int, width: int) -> tuple[nn.Module, int]:
    """torchvision's resnet18 with its stem adapted: a 3×3 stride-1 first conv over ``channels``
    inputs and no max-pool for small images (< 64 px), so 28×28 inputs keep spatial detail."""
    from torchvision.models import resnet18

    net = resnet18(weights=None)
    if min(height, width) < 64:
        net.conv1 = nn.Conv2d(channels, 64, 3, stride=1, padding=1, bias=False)
        net.maxpool = nn.Identity()
    elif channels != 3:
        net.conv1 = nn.Conv2d(channels, 64, 7, stride=2, padding=3, bias=False)
    net.fc = nn.Identity()
    return net, 512


def _mlp(n_features: int, hidden: int) -> tuple[nn.Module, int]:
    return nn.Sequential(nn.Flatten(), nn.Linear(n_features, hidden), nn.ReLU(), nn.Linear(hidden, hidden), nn.ReLU()), hidden


@contextlib.contextmanager
def _threads(n: int) -> Iterator[None]:
    """Run with ``n`` intra-op threads, restoring the caller's setting afterwards."""
    before = torch.get_num_threads()
    if before != n:
        torch.set_num_threads(n)
    try:
        yield
    finally:
        if torch.get_num_threads() != before:
            torch.set_num_threads(before)


class TorchClassifier(ClassifierMixin, BaseEstimator):
    """A torch image classifier with the scikit-learn contract; see the module docstring.

    Parameters (all plain values, so ``clone`` and YAML configs work):
    arch: ``cnn`` (small, fast on CPU), ``resnet18`` (torchvision, stem adapted) or ``mlp``.
    input_shape: (channels, height, width) of a flattened row; default: inferred from a square
        number of features (grayscale) or 3·square (RGB, channel-first).
    width: channels of the CNN's first conv (the second has twice as many); hidden units of the MLP.
    epochs: most passes over the labeled data per ``fit`` (0: only load ``weights_path``).
    warm_epochs: most passes for a warm-started ``fit`` (default ``epochs``).
    batch_size, lr, weight_decay: AdamW mini-batch training.
    dropout: rate of the dropout in front of the final layer (also the MC-dropout rate).
    augment: random ±2 px shifts and horizontal flips of training images.
    validation_fraction, patience: early stopping on the validation loss of a stratified split
        (no split below ``min_validation`` items: then all ``epochs`` run). Off by default
        (``patience=None``: every fit runs ``epochs`` on all labels): on Fashion-MNIST with
        400–2,000 labels, stopping on a 10 % split's loss ended training 2–5 accuracy points
        early (the loss turns up while accuracy still climbs, and the split costs labels).
    warm_start: a second ``fit`` starts from the current weights instead of a fresh network.
    mc_samples: default number of MC-dropout passes of ``predict_proba_mc``.
    weights_path: a local state-dict file (``torch.save(model.state_dict())``) loaded before
        training; tensors whose name and shape match are used (e.g. a torchvision resnet18
        checkpoint: everything but the adapted stem and the head).
    num_threads: CPU threads for torch while this model computes.
    device: ``cpu``, ``cuda`` or ``auto`` (cuda when available).
    amp: mixed precision (float16 autocast) when running on a GPU; ignored on CPU.
    random_state: seed for weights, data order, validation split, dropout and augmentation.
    """

    def __init__(
        self,
        arch: str = "cnn",
        input_shape: tuple[int, int, int] | list[int] | None = None,
        width: int = 32,
        epochs: int = 40,
        warm_epochs: int | None = None,
        batch_size: int = 64,
        lr: float = 1e-3,
        weight_decay: float = 1e-4,
        dropout: float = 0.25,
        augment: bool = False,
        validation_fraction: float = 0.1,
        patience: int | None = None,
        min_validation: int = 20,
        warm_start: bool = False,
        mc_samples: int = 20,
        weights_path: str | None = None,
        num_threads: int = 1,
        device: str = "auto",
        amp: bool = True,
        random_state: int | None = None,
    ) -> None:
        self.arch = arch
        self.input_shape = input_shape
        self.width = width
        self.epochs = epochs
        self.warm_epochs = warm_epochs
        self.batch_size = batch_size
        self.lr = lr
        self.weight_decay = weight_decay
        self.dropout = dropout
        self.augment = augment
        self.validation_fraction = validation_fraction
        self.patience = patience
        self.min_validation = min_validation
        self.warm_start = warm_start
        self.mc_samples = mc_samples
        self.weights_path = weights_path
        self.num_threads = num_threads
        self.device = device
        self.amp = amp
        self.random_state = random_state

    # -- validation ---------------------------------------------------------------------
    def _check_params(self) -> None:
        def integer(name: str, low: int, *, none: bool = False) -> None:
            v = getattr(self, name)
            if v is None and none:
                return
            if isinstance(v, bool) or not isinstance(v, Integral) or v < low:
                raise _fail(name, v, f"an integer >= {low}" + (" or None" if none else ""))

        def real(name: str, low: float, high: float, *, open_low: bool = False, open_high: bool = False) -> None:
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, Real) or not math.isfinite(v):
                raise _fail(name, v, f"a number in {'(' if open_low else '['}{low}, {high}{')' if open_high else ']'}")
            if (v <= low if open_low else v < low) or (v >= high if open_high else v > high):
                raise _fail(name, v, f"a number in {'(' if open_low else '['}{low}, {high}{')' if open_high else ']'}")

        if self.arch not in ARCHS:
            raise _fail("arch", self.arch, f"one of {', '.join(ARCHS)}")
        if self.device not in DEVICES:
            raise _fail("device", self.device, f"one of {', '.join(DEVICES)}")
        integer("width", 1)
        integer("epochs", 0)
        integer("warm_epochs", 0, none=True)
        integer("batch_size", 1)
        integer("patience", 1, none=True)
        integer("min_validation", 2)
        integer("mc_samples", 1)
        integer("num_threads", 1)
        integer("random_state", 0, none=True)
        real("lr", 0.0, 10.0, open_low=True)
        real("weight_decay", 0.0, 1.0)
        real("dropout", 0.0, 1.0, open_high=True)
        real("validation_fraction", 0.0, 0.5, open_high=True)
        for name in ("augment", "warm_start", "amp"):
            if not isinstance(getattr(self, name), bool):
                raise _fail(name, getattr(self, name), "true or false")
        if self.input_shape is not None:
            shape = self.input_shape
            if (not isinstance(shape, (tuple, list)) or len(shape) != 3
                    or any(isinstance(v, bool) or not isinstance(v, Integral) or v < 1 for v in shape)):
                raise _fail("input_shape", shape, "[channels, height, width] of positive integers, or None")
        if self.weights_path is not None and not Path(str(self.weights_path)).is_file():
            raise _fail("weights_path", self.weights_path, "an existing local state-dict file")
        if self.device == "cuda" and not torch.cuda.is_available():
            raise _fail("device", self.device, "'cpu' or 'auto' (torch sees no CUDA device here)")

    def _device(self) -> torch.device:
        if self.device == "auto":
            return torch.device("cuda" if torch.cuda.is_available() else "cpu")
        return torch.device(self.device)

    def _shape_for(self, X: np.ndarray) -> tuple[int, int, int] | None:
        """(C, H, W) of one row, or None for the MLP on flat features."""
        if X.ndim == 4:
            shape = tuple(int(v) for v in X.shape[1:])
        elif X.ndim == 3:
            shape = (1, int(X.shape[1]), int(X.shape[2]))
        elif X.ndim == 2:
            d = int(X.shape[1])
            if self.input_shape is not None:
                shape = tuple(int(v) for v in self.input_shape)
                if int(np.prod(shape)) != d:
                    raise _fail("input_shape", self.input_shape, f"channels·height·width equal to the {d} features of X")
            elif self.arch == "mlp":
                return None
            else:
                side = math.isqrt(d)
                side3 = math.isqrt(d // 3) if d % 3 == 0 else 0
                if side * side == d:
                    shape = (1, side, side)
                elif side3 and 3 * side3 * side3 == d:
                    shape = (3, side3, side3)
                else:
                    raise _fail("input_shape", None,
                                f"[channels, height, width] for rows of {d} features (not a square grayscale or RGB image)")
        else:
            raise ConfigError(f"TorchClassifier: X has shape {X.shape}: expected (n, features), (n, H, W) or (n, C, H, W)")
        return shape

    # -- network ------------------------------------------------------------------------
    def _build(self, n_classes: int, seed: int) -> _Net:
        """A fresh network; weights drawn from ``seed`` with the global RNG forked and restored."""
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            if self.arch == "cnn":
                body, dim = _cnn(*self.shape_, base=int(self.width))
            elif self.arch == "resnet18":
                body, dim = _resnet18(*self.shape_)
            else:
                body, dim = _mlp(self.n_features_in_, int(self.width) * 4)
            net = _Net(body, dim, n_classes, float(self.dropout))
        if self.weights_path is not None:
            self.n_weights_loaded_ = self._load_weights(net)
        return net

    def _load_weights(self, net: _Net) -> int:
        try:
            state = torch.load(str(self.weights_path), map_location="cpu", weights_only=True)
        except (OSError, RuntimeError, ValueError, EOFError, pickle.UnpicklingError) as exc:
            first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
            raise _fail("weights_path", self.weights_path, f"a torch state-dict file ({first[:120]})") from None
        if isinstance(state, dict) and "state_dict" in state and isinstance(state["state_dict"], dict):
            state = state["state_dict"]
        if not isinstance(state, dict):
            raise _fail("weights_path", self.weights_path, "a state dict (a mapping of tensor names to tensors)")
        own = net.state_dict()
        matched = {}
        for key, value in state.items():
            for name in (key, f"body.{key}"):  # our own files, or a bare torchvision network's keys
                if name in own and isinstance(value, torch.Tensor) and own[name].shape == value.shape:
                    matched[name] = value
                    break
        if not matched:
            sample = ", ".join(list(own)[:3])
            raise _fail("weights_path", self.weights_path,
                        f"a state dict with tensors of this {self.arch} network (names like {sample}); none matched")
        net.load_state_dict(matched, strict=False)
        return len(matched)

    def _to_tensor(self, X: np.ndarray) -> torch.Tensor:
        X = np.asarray(X)
        t = torch.as_tensor(np.ascontiguousarray(X, dtype=np.float32))
        if self.shape_ is not None:
            t = t.reshape(len(t), *self.shape_)
        return (t - self.mean_) / self.std_

    def _input(self, X: Any) -> np.ndarray:
        X = np.asarray(X)
        if X.dtype == object or not np.issubdtype(X.dtype, np.number):
            raise ConfigError(f"TorchClassifier: X has dtype {X.dtype}: expected numeric pixels or features")
        if len(X) and hasattr(self, "n_features_in_") and int(np.prod(X.shape[1:])) != self.n_features_in_:
            raise ConfigError(f"TorchClassifier: X has {int(np.prod(X.shape[1:]))} features per row: "
                              f"expected {self.n_features_in_} as in fit")
        return X

    # -- fit ------------------------------------------------------------------------------
    def fit(self, X: Any, y: Any) -> TorchClassifier:
        """Train (from scratch, or from the current weights when ``warm_start`` and fitted)."""
        self._check_params()
        X = np.asarray(X)
        if X.dtype == object or not np.issubdtype(X.dtype, np.number):
            raise ConfigError(f"TorchClassifier: X has dtype {X.dtype}: expected numeric pixels or features")
        y = np.asarray(y)
        if len(X) != len(y):
            raise ConfigError(f"TorchClassifier: X has {len(X)} rows but y has {len(y)}: expected equal")
        classes = np.unique(y)
        if len(classes) < 2:
            raise ConfigError(f"TorchClassifier: y has {len(classes)} class(es): expected at least 2")
        seed = int(self.random_state) if self.random_state is not None else int(np.random.default_rng().integers(2**31))
        rng = np.random.default_rng(seed)
        shape = self._shape_for(X)
        n_features = int(np.prod(X.shape[1:]))
        warm = (self.warm_start and hasattr(self, "net_") and getattr(self, "shape_", None) == shape
                and self.n_features_in_ == n_features and self.net_.head.in_features == self.net_.dim)
        start = time.perf_counter()
        with _threads(int(self.num_threads)):
            if warm:
                self._adapt_head(classes, seed)
            else:
                self.shape_ = shape
                self.n_features_in_ = n_features
                flat = np.asarray(X, dtype=np.float32).reshape(len(X), -1)
                if shape is None:  # per-feature standardisation for flat features
                    mean, std = flat.mean(axis=0), flat.std(axis=0)
                    self.mean_ = torch.as_tensor(mean)
                    self.std_ = torch.as_tensor(np.where(std > 1e-8, std, 1.0).astype(np.float32))
                else:  # per-channel for images
                    per = flat.reshape(len(X), shape[0], -1)
                    mean = per.mean(axis=(0, 2))
                    std = per.std(axis=(0, 2))
                    self.mean_ = torch.as_tensor(mean.reshape(-1, 1, 1).astype(np.float32))
                    self.std_ = torch.as_tensor(np.where(std > 1e-8, std, 1.0).reshape(-1, 1, 1).astype(np.float32))
                self.classes_ = classes
                self.net_ = self._build(len(classes), seed)
            codes = np.searchsorted(self.classes_, y)
            epochs = int(self.epochs if not warm or self.warm_epochs is None else self.warm_epochs)
            self.n_epochs_, self.best_epoch_ = self._train(X, codes, epochs, rng, seed)
        self.fit_seconds_ = time.perf_counter() - start
        self.warm_started_ = bool(warm)
        return self

    def _adapt_head(self, classes: np.ndarray, seed: int) -> None:
        """Warm start with a changed class set: keep the head rows of classes seen before."""
        if np.array_equal(classes, self.classes_):
            return
        old = self.net_.head
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            new = nn.Linear(old.in_features, len(classes))
        for j, c in enumerate(classes):
            i = np.flatnonzero(self.classes_ == c)
            if len(i):
                with torch.no_grad():
                    new.weight[j] = old.weight[int(i[0])].detach().cpu()
                    new.bias[j] = old.bias[int(i[0])].detach().cpu()
        self.net_.head = new
        self.classes_ = classes

    def _split(self, codes: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
        n = len(codes)
        n_val = round(self.validation_fraction * n)
        if self.patience is None or n_val < self.min_validation:
            return np.arange(n), np.empty(0, dtype=np.int64)
        val = []
        for c in np.unique(codes):  # stratified: each class gives its share
            rows = rng.permutation(np.flatnonzero(codes == c))
            take = round(self.validation_fraction * len(rows))
            if len(rows) - take >= 1:
                val.extend(rows[:take].tolist())
        val = np.sort(np.asarray(val, dtype=np.int64))
        train = np.setdiff1d(np.arange(n), val)
        return train, val

    def _augment(self, xb: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
        """Random shifts of up to 2 pixels (zero padded) and horizontal flips."""
        n = xb.shape[0]
        flip = torch.rand(n, generator=gen) < 0.5
        xb = torch.where(flip.view(-1, 1, 1, 1).to(xb.device), xb.flip(3), xb)
        pad = F.pad(xb, (2, 2, 2, 2))
        dx = torch.randint(0, 5, (n,), generator=gen)
        dy = torch.randint(0, 5, (n,), generator=gen)
        h, w = xb.shape[2], xb.shape[3]
        rows = (dy.view(-1, 1) + torch.arange(h)).to(xb.device)
        cols = (dx.view(-1, 1) + torch.arange(w)).to(xb.device)
        idx = torch.arange(n, device=xb.device).view(-1, 1, 1, 1)
        ch = torch.arange(xb.shape[1], device=xb.device).view(1, -1, 1, 1)
        return pad[idx, ch, rows.view(n, 1, h, 1), cols.view(n, 1, 1, w)]

    def _train(self, X: np.ndarray, codes: np.ndarray, epochs: int, rng: np.random.Generator,
               seed: int) -> tuple[int, int]:
        device = self._device()
        net = self.net_.to(device)
        gen = torch.Generator().manual_seed(seed)
        net.drop.generator = gen if device.type == "cpu" else torch.Generator(device=device).manual_seed(seed)
        if epochs == 0:
            net.drop.generator = None
            net.eval()
            return 0, 0
        train, val = self._split(codes, rng)
        Xt = self._to_tensor(X)
        yt = torch.as_tensor(codes, dtype=torch.long)
        opt = torch.optim.AdamW(net.parameters(), lr=float(self.lr), weight_decay=float(self.weight_decay))
        use_amp = bool(self.amp) and device.type == "cuda"
        scaler = torch.amp.GradScaler("cuda", enabled=use_amp)
        best_loss, best_state, best_epoch, bad = math.inf, None, 0, 0
        image = self.shape_ is not None
        epoch = 0
        for epoch in range(1, epochs + 1):
            net.train()
            order = train[rng.permutation(len(train))]
            for s in range(0, len(order), int(self.batch_size)):
                rows = torch.as_tensor(order[s : s + int(self.batch_size)])
                if len(rows) < 2 and len(order) > 1:  # a batch of one breaks nothing but wastes a step
                    continue
                xb = Xt[rows]
                if self.augment and image:
                    xb = self._augment(xb, gen)
                xb, yb = xb.to(device, non_blocking=True), yt[rows].to(device, non_blocking=True)
                opt.zero_grad(set_to_none=True)
                with torch.autocast(device_type=device.type, dtype=torch.float16, enabled=use_amp):
                    loss = F.cross_entropy(net(xb), yb)
                scaler.scale(loss).backward()
                scaler.step(opt)
                scaler.update()
            if len(val):
                vloss = self._loss(Xt[val], yt[val], device)
                if vloss < best_loss - 1e-4:
                    best_loss, best_epoch, bad = vloss, epoch, 0
                    best_state = copy.deepcopy(net.state_dict())
                else:
                    bad += 1
                    if bad >= int(self.patience):
                        break
        if best_state is not None:
            net.load_state_dict(best_state)
        net.drop.generator = None
        net.eval()
        return epoch, best_epoch if len(val) else epoch

    @torch.no_grad()
    def _loss(self, Xv: torch.Tensor, yv: torch.Tensor, device: torch.device) -> float:
        self.net_.eval()
        total = 0.0
        for s in range(0, len(Xv), 1024):
            logits = self.net_(Xv[s : s + 1024].to(device)).float()
            total += float(F.cross_entropy(logits, yv[s : s + 1024].to(device), reduction="sum"))
        return total / max(len(Xv), 1)

    # -- inference ------------------------------------------------------------------------
    @torch.no_grad()
    def _features(self, X: Any, chunk: int = 1024) -> torch.Tensor:
        """Penultimate activations h (float32, on the CPU), computed in chunks."""
        check_is_fitted(self, "net_")
        X = self._input(X)
        device = self._device()
        net = self.net_.to(device).eval()
        use_amp = bool(self.amp) and device.type == "cuda"
        parts = []
        with _threads(int(self.num_threads)):
            for s in range(0, len(X), chunk):
                xb = self._to_tensor(X[s : s + chunk]).to(device)
                with torch.autocast(device_type=device.type, dtype=torch.float16, enabled=use_amp):
                    parts.append(net.body(xb).float().cpu())
        return torch.cat(parts) if parts else torch.empty(0, self.net_.dim)

    @torch.no_grad()
    def _head(self, H: torch.Tensor) -> torch.Tensor:
        head = self.net_.head
        return F.linear(H, head.weight.detach().float().cpu(), head.bias.detach().float().cpu())

    def predict_proba(self, X: Any) -> np.ndarray:
        """Class probabilities, columns in ``classes_`` order."""
        logits = self._head(self._features(X))
        return torch.softmax(logits, dim=1).numpy().astype(np.float64)

    def predict(self, X: Any) -> np.ndarray:
        return self.classes_[self.predict_proba(X).argmax(axis=1)]

    def embed(self, X: Any) -> np.ndarray:
        """Penultimate-layer features (the final linear layer's input), shape (n, dim)."""
        return self._features(X).numpy().astype(np.float64)

    def predict_proba_mc(self, X: Any, n_samples: int | None = None, random_state: Any = None) -> np.ndarray:
        """MC-dropout class probabilities, shape (n, n_samples, n_classes).

        The body runs once; each pass draws a fresh dropout mask (rate ``dropout``) over the
        penultimate features from a generator seeded by ``random_state`` (int or
        ``numpy.random.Generator``), so the same seed gives the same passes.
        """
        T = self.mc_samples if n_samples is None else n_samples
        if isinstance(T, bool) or not isinstance(T, Integral) or T < 1:
            raise _fail("n_samples", n_samples, "a positive integer")
        if isinstance(random_state, np.random.Generator):
            seed = int(random_state.integers(2**63 - 1))
        elif random_state is None:
            seed = int(np.random.default_rng().integers(2**63 - 1))
        elif isinstance(random_state, Integral) and not isinstance(random_state, bool):
            seed = int(random_state)
        else:
            raise _fail("random_state", random_state, "an integer, a numpy.random.Generator or None")
        H = self._features(X)
        p = float(self.dropout)
        gen = torch.Generator().manual_seed(seed)
        out = np.empty((len(H), int(T), len(self.classes_)))
        with torch.no_grad(), _threads(int(self.num_threads)):
            for t in range(int(T)):
                if p > 0:
                    mask = torch.empty_like(H).bernoulli_(1.0 - p, generator=gen) / (1.0 - p)
                    logits = self._head(H * mask)
                else:
                    logits = self._head(H)
                out[:, t, :] = torch.softmax(logits, dim=1).numpy()
        return out

    def gradient_embedding(self, X: Any) -> np.ndarray:
        """BADGE's embedding, built explicitly: the gradient of the cross-entropy at the
        predicted class w.r.t. the final layer's weights and bias, flattened (n, C·(dim+1)).
        Memory O(n·C·dim): for checks and small sets; the BADGE sampler uses the factored form."""
        H = self._features(X)
        P = torch.softmax(self._head(H), dim=1)
        A = P.clone()
        A[torch.arange(len(P)), P.argmax(dim=1)] -= 1.0
        Hb = torch.cat([H, torch.ones(len(H), 1)], dim=1)
        return torch.einsum("nc,nd->ncd", A, Hb).reshape(len(H), -1).numpy().astype(np.float64)

    def save_weights(self, path: str | Path) -> None:
        """Write the network's state dict (loadable through ``weights_path``)."""
        check_is_fitted(self, "net_")
        torch.save({k: v.detach().cpu() for k, v in self.net_.state_dict().items()}, str(path))

    # -- pickling: tensors go through torch.save, always mapped back to the CPU -------------
    def __getstate__(self) -> dict[str, Any]:
        state = dict(self.__dict__)
        net = state.pop("net_", None)
        if net is not None:
            buf = io.BytesIO()
            torch.save({"net": net.to("cpu")}, buf)
            state["_net_bytes"] = buf.getvalue()
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        raw = state.pop("_net_bytes", None)
        self.__dict__.update(state)
        if raw is not None:
            self.net_ = torch.load(io.BytesIO(raw), map_location="cpu", weights_only=False)["net"]
            self.net_.eval()

    def __sklearn_is_fitted__(self) -> bool:
        return hasattr(self, "net_")

    def __sklearn_tags__(self):  # type: ignore[no-untyped-def]
        tags = super().__sklearn_tags__()
        tags.non_deterministic = self.random_state is None
        return tags
