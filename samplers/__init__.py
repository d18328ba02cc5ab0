"""Query strategies. A sampler is a pure function

    sampler(model, X, *, batch_size, rng, **params) -> np.ndarray[int]

returning exactly ``batch_size`` unique row indices into ``X`` (the unlabeled, never
dispatched candidates), deterministic for the same ``rng`` state. Samplers never fit or
mutate the model. A batch larger than ``X`` is an error, not a silent cut.
"""

from crowdloop.samplers.scoring import score_top_k
from crowdloop.samplers.uncertainty import (
    entropy_sampling,
    least_confident_sampling,
    margin_sampling,
    random_sampling,
)

__all__ = [
    "entropy_sampling",
    "least_confident_sampling",
    "margin_sampling",
    "random_sampling",
    "score_top_k",
]
