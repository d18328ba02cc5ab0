"""Fixtures shared by the model tests: Fashion-MNIST idx files (Debian's or generated)."""

from __future__ import annotations

import gzip
import struct
from pathlib import Path

import numpy as np
import pytest

from crowdloop.models.images import FASHION_MNIST_DIR


def write_idx(folder: Path, prefix: str, images: np.ndarray, labels: np.ndarray) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    head = struct.pack(">IIII", 0x803, len(images), 28, 28)
    with gzip.open(folder / f"{prefix}-images-idx3-ubyte.gz", "wb") as fh:
        fh.write(head + images.astype(np.uint8).tobytes())
    with gzip.open(folder / f"{prefix}-labels-idx1-ubyte.gz", "wb") as fh:
        fh.write(struct.pack(">II", 0x801, len(labels)) + labels.astype(np.uint8).tobytes())


@pytest.fixture
def fashion_dir(tmp_path) -> Path:
    """Debian's dataset-fashion-mnist when installed; else idx files written here (the same
    format), so the test runs either way."""
    if (FASHION_MNIST_DIR / "train-images-idx3-ubyte.gz").is_file():
        return FASHION_MNIST_DIR
    rng = np.random.default_rng(0)
    labels = np.arange(600) % 10
    images = rng.integers(0, 60, size=(600, 28, 28)) + (labels * 20)[:, None, None]
    folder = tmp_path / "fashion"
    write_idx(folder, "train", images, labels)
    write_idx(folder, "t10k", images[:100], labels[:100])
    return folder
