"""Fixtures shared by the model tests: Debian's Fashion-MNIST, idx files written here, the
chance baseline accuracies are compared against."""

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
def fashion_dir() -> Path:
    """Debian's dataset-fashion-mnist (``bash scripts/test.sh`` installs it). Missing, the test
    fails with the install command: a stand-in data set would test something else (on generated
    images the loop tests once measured 0.29 accuracy where the real ones give 0.6)."""
    if not (FASHION_MNIST_DIR / "train-images-idx3-ubyte.gz").is_file():
        pytest.fail(f"needs Debian's Fashion-MNIST in {FASHION_MNIST_DIR}: apt-get install -y dataset-fashion-mnist "
                    "(or run bash scripts/test.sh, which installs it)", pytrace=False)
    return FASHION_MNIST_DIR


def majority_share(labels: np.ndarray) -> float:
    """Accuracy of always answering the most frequent class of ``labels``: the same-split chance
    baseline a trained model must beat by a wide margin."""
    _, counts = np.unique(np.asarray(labels).astype(str), return_counts=True)
    return float(counts.max() / counts.sum())
