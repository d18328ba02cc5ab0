"""Adaptive redundancy: which items need one more judgment, and worker checks on gold.

Pure functions over arrays and the ``task, worker, label`` table, so the engine, tests and
benchmarks share one policy. Items start with a minimum number of judgments; an item gets
one more (from a worker who has not answered it) while its confidence is below a threshold
and it has fewer than the maximum. The confidence may combine the crowd's posterior with
the model's out-of-fold probability (CROWDLAB's idea: the model is a further, independent
annotator) so that an answer the model agrees with needs no second opinion.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
import pandas as pd

_EPS = 1e-6


def combine_with_model(crowd_confidence: np.ndarray, model_proba_of_label: np.ndarray, *, n_classes: int,
                       weight: float) -> np.ndarray:
    """Confidence in the crowd's label after combining crowd posterior and model probability.

    Product of experts: ``P(k) ∝ crowd(k) · model(k)^weight``. Only the crowd's confidence in
    its own label is stored, so the rest of the crowd posterior is spread evenly over the other
    classes; the model's probabilities of the other classes enter through their sum.
    ``weight`` = 0 returns the crowd confidence unchanged.
    """
    c = np.clip(np.asarray(crowd_confidence, dtype=np.float64), _EPS, 1 - _EPS)
    if weight == 0:
        return np.asarray(crowd_confidence, dtype=np.float64)
    m = np.clip(np.asarray(model_proba_of_label, dtype=np.float64), _EPS, 1.0)
    rest = np.clip(1.0 - m, _EPS, None)
    # Each other class: crowd (1-c)/(K-1), model (1-m)/(K-1) (even spread); summed over K-1 classes.
    k1 = max(n_classes - 1, 1)
    others = (1 - c) * (rest / k1) ** weight
    mine = c * m**weight
    return mine / (mine + others)


def needs_more(confidence: np.ndarray, n_judgments: np.ndarray, *, threshold: float, max_judgments: int) -> np.ndarray:
    """Mask of items that get one more judgment this round."""
    return (np.asarray(confidence) < threshold) & (np.asarray(n_judgments) < max_judgments)


def answered_by(table: pd.DataFrame, items: Sequence[str]) -> dict[str, list[str]]:
    """Workers who already answered each item (never ask them again for it), sorted."""
    wanted = set(items)
    sub = table[table["task"].isin(wanted)]
    out: dict[str, list[str]] = {i: [] for i in items}
    for item, workers in sub.groupby("task")["worker"]:
        out[item] = sorted(set(workers))
    return out


def gold_stats(table: pd.DataFrame, gold: Mapping[str, str]) -> pd.DataFrame:
    """Per worker: gold answers, correct ones, accuracy and the gold items they missed."""
    sub = table[table["task"].isin(gold.keys())]
    if sub.empty:
        return pd.DataFrame(columns=["n_gold", "n_correct", "accuracy", "missed"]).rename_axis("worker")
    truth = sub["task"].map(gold)
    correct = sub["label"].to_numpy() == truth.to_numpy()
    frame = pd.DataFrame({"worker": sub["worker"].to_numpy(), "task": sub["task"].to_numpy(), "correct": correct})
    grouped = frame.groupby("worker")
    out = pd.DataFrame({"n_gold": grouped.size(), "n_correct": grouped["correct"].sum().astype(int)})
    out["accuracy"] = out["n_correct"] / out["n_gold"]
    out["missed"] = frame[~frame["correct"]].groupby("worker")["task"].apply(lambda s: sorted(s)).reindex(out.index)
    out["missed"] = out["missed"].apply(lambda v: v if isinstance(v, list) else [])
    return out


GOLD_EVIDENCE_LEVEL = 0.05
"""Largest chance that a worker whose true gold accuracy is exactly at a bar is judged below it at one check."""


def evidently_below(n_correct: np.ndarray | int, n_gold: np.ndarray | int, bar: float, *,
                    level: float = GOLD_EVIDENCE_LEVEL) -> np.ndarray:
    """Whether ``n_correct`` right of ``n_gold`` gold answers is evidence that a worker's accuracy is below ``bar``.

    A one-sided exact binomial test of "accuracy >= bar": below when ``P(X <= n_correct)`` for
    ``X ~ Binomial(n_gold, bar)`` is under ``level``. Why not the observed share: on a handful
    of answers an honest worker often looks bad by chance (a 0.85-accurate worker gets at most
    1 of 4 right 1.2% of the time, at most 2 of 6 right 0.6%), and blocking or rejecting costs
    that worker their work. The test bounds that chance by ``level`` for a worker exactly at the
    bar and far below it for workers well above; a spammer (0.1 on 10 classes) against a bar of
    0.4 is caught after 6 gold answers all wrong or 10 with one right.
    """
    from scipy.stats import binom

    if level >= 1:  # the observed share (a config's explicit choice of speed over evidence)
        return np.asarray(np.asarray(n_correct) < bar * np.asarray(n_gold))
    return np.asarray(binom.cdf(n_correct, n_gold, bar) < level)


def workers_to_block(stats: pd.DataFrame, *, min_answers: int, min_accuracy: float,
                     level: float = GOLD_EVIDENCE_LEVEL) -> list[str]:
    """Workers with at least ``min_answers`` gold answers that are evidence of accuracy below the bar
    (``evidently_below``: the observed share alone blocks honest workers by chance)."""
    if stats.empty:
        return []
    below = evidently_below(stats["n_correct"].to_numpy(), stats["n_gold"].to_numpy(), min_accuracy, level=level)
    bad = stats[(stats["n_gold"] >= min_answers).to_numpy() & below]
    return sorted(map(str, bad.index))


def low_agreement_workers(table: pd.DataFrame, probas: pd.DataFrame, *, min_judgments: int,
                          min_agreement: float) -> dict[str, float]:
    """Workers whose answers agree with the aggregated truth less than ``min_agreement``.

    Only items with at least two judgments count: on an item a worker answered alone the
    posterior is largely that worker's own answer, which would make a spammer look reliable.
    Agreement is the posterior probability of the worker's answer, averaged over those items;
    workers with fewer than ``min_judgments`` such answers are not judged yet. Returns
    worker → agreement for the workers to stop sending tasks to (they are still paid).
    """
    if table.empty or probas.empty:
        return {}
    counts = table["task"].map(table["task"].value_counts())
    multi = table[counts.to_numpy() >= 2]
    if multi.empty:
        return {}
    rows = probas.index.get_indexer(multi["task"])
    cols = probas.columns.get_indexer(multi["label"])
    ok = (rows >= 0) & (cols >= 0)
    agree = np.zeros(len(multi))
    agree[ok] = probas.to_numpy()[rows[ok], cols[ok]]
    frame = pd.DataFrame({"worker": multi["worker"].to_numpy(), "agree": agree})
    stats = frame.groupby("worker")["agree"].agg(["size", "mean"])
    bad = stats[(stats["size"] >= min_judgments) & (stats["mean"] < min_agreement)]
    return {str(w): round(float(v), 4) for w, v in bad["mean"].items()}
