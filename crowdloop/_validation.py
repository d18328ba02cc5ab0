"""Small helpers for scikit-learn-style parameter errors: name the parameter, the value and
what was expected, in one line."""

from __future__ import annotations

from typing import Any

from crowdloop.errors import SamplerError


def check_batch_size(batch_size: Any, n_candidates: int, *, error: type[Exception] = SamplerError) -> int:
    """Validate ``batch_size`` against the number of candidates; return it as ``int``."""
    if isinstance(batch_size, bool) or (not isinstance(batch_size, (int,)) and not hasattr(batch_size, "__index__")):
        raise error(f"batch_size={batch_size!r}: expected a positive integer")
    batch_size = int(batch_size)
    if batch_size < 1:
        raise error(f"batch_size={batch_size}: expected a positive integer")
    if batch_size > n_candidates:
        raise error(
            f"batch_size={batch_size} is larger than the pool of {n_candidates} unlabeled candidates; "
            "lower the batch size or add items to the pool"
        )
    return batch_size
