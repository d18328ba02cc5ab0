"""Query strategies. A sampler is a pure function

    sampler(model, X, *, batch_size, rng, **params) -> np.ndarray[int]

returning exactly ``batch_size`` unique row indices into ``X`` (the unlabeled, never
dispatched candidates), deterministic for the same ``rng`` state. Samplers never fit or
mutate the model. A batch larger than ``X`` is an error, not a silent cut.
"""

from crowdloop.samplers.batch import (
    badge_sampling,
    best_sampling,
    cluster_margin_sampling,
    coreset_sampling,
    kmeans_uncertain_sampling,
    mixed_sampling,
    prefiltered_sampling,
    qbc_sampling,
    ranked_batch_sampling,
    typiclust_sampling,
)
from crowdloop.samplers.scoring import RowSource, score_top_k, stream_top_k
from crowdloop.samplers.uncertainty import (
    entropy_sampling,
    least_confident_sampling,
    margin_sampling,
    random_sampling,
)

__all__ = [
    "RowSource",
    "badge_sampling",
    "best_sampling",
    "cluster_margin_sampling",
    "coreset_sampling",
    "entropy_sampling",
    "kmeans_uncertain_sampling",
    "least_confident_sampling",
    "margin_sampling",
    "mixed_sampling",
    "prefiltered_sampling",
    "qbc_sampling",
    "random_sampling",
    "ranked_batch_sampling",
    "score_top_k",
    "stream_top_k",
    "typiclust_sampling",
]
