"""Aggregation of crowd answers over a ``task, worker, label`` table.

The interface follows crowd-kit: ``fit(data)`` / ``fit_predict(data)`` /
``fit_predict_proba(data)`` with results in ``labels_``, ``probas_``, ``confidence_`` and
``skills_``. The implementations are vectorized NumPy (``bincount`` instead of pandas
group-bys), which is what makes them fast on hundreds of thousands of judgments.
"""

from crowdloop.consensus.aggregators import (
    AutoDawidSkene,
    DawidSkene,
    MajorityVote,
    OneCoinDawidSkene,
    ShrunkDawidSkene,
    WeightedMajorityVote,
)

__all__ = ["AutoDawidSkene", "DawidSkene", "MajorityVote", "OneCoinDawidSkene", "ShrunkDawidSkene",
           "WeightedMajorityVote"]
