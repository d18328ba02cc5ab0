"""The crowd-quality policy of a round: gold questions, re-asks, and rejections.

Pure functions over plain data (item ids, confidences, the label log's rows), so the engine,
tests and benchmarks apply one policy; the engine only gathers the data from the store
(``crowdloop/engine/quality.py``). What each rule protects:

* gold questions measure workers without telling them which items are gold, so they are a
  share of the batch in expectation (small batches too) and go to workers who have not
  answered them yet;
* a re-ask buys one more judgment only where the consensus is unsure, from somebody else;
* a rejection costs a worker their pay, so it needs gold evidence in the very batch and a
  reason that names the missed items and their known answers.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import pandas as pd

from crowdloop.consensus.adaptive import GOLD_EVIDENCE_LEVEL, combine_with_model, evidently_below, needs_more
from crowdloop.records import Annotation


def plan_gold(gold_items: Sequence[str], answered: Mapping[str, Sequence[str]], *, n_tasks: int, share: float,
              rng: np.random.Generator) -> list[dict[str, Any]]:
    """Gold tasks for a batch of ``n_tasks`` other tasks: ``share`` of the whole batch in expectation.

    The least-answered gold items go first (random among equals), so gold spreads over the
    workers and wears out as slowly as it can; each task names the workers
    who answered that item already (``exclude_workers``).
    """
    expected = share * n_tasks / (1 - share)
    n_gold = min(len(gold_items), int(expected) + int(rng.random() < expected - int(expected)))
    items = sorted(gold_items)
    order = np.lexsort((rng.random(len(items)), [len(answered.get(i, ())) for i in items]))
    picked = sorted(items[i] for i in order[:n_gold])
    return [{"item_id": i, "exclude_workers": list(answered.get(i, []))} for i in picked]


def reask_items(item_ids: Sequence[str], confidence: np.ndarray, n_judgments: np.ndarray, *, threshold: float,
                max_judgments: int, n_classes: int, model_weight: float = 0.0,
                model_proba_of_label: np.ndarray | None = None) -> list[str]:
    """Items whose (crowd, optionally model-combined) confidence is below ``threshold`` and
    that have fewer than ``max_judgments`` judgments: each gets one more, from someone else."""
    conf = np.asarray(confidence, dtype=np.float64)
    if model_weight > 0 and model_proba_of_label is not None:
        conf = combine_with_model(conf, model_proba_of_label, n_classes=n_classes, weight=model_weight)
    mask = needs_more(conf, n_judgments, threshold=threshold, max_judgments=max_judgments)
    return [i for i, more in zip(item_ids, mask, strict=True) if more]


def gold_rejections(batch: Sequence[Annotation], overall: pd.DataFrame, gold: Mapping[str, str], *,
                    reject_below: float, min_answers: int, level: float = GOLD_EVIDENCE_LEVEL) -> list[dict[str, Any]]:
    """Workers whose work in ``batch`` is rejected: never without missed gold in the batch.

    ``overall`` is ``gold_stats`` over every gold answer so far. A worker is rejected only with
    at least ``min_answers`` gold answers that are evidence of accuracy below ``reject_below``
    (``evidently_below``: a one-sided binomial test, so bad luck on a few gold items does not cost
    an honest worker their pay) and at least one gold item missed in this very batch; the reason
    names those items and the right answers.
    """
    out = []
    for worker in sorted({a.worker_id for a in batch}):
        if worker not in overall.index:
            continue
        row = overall.loc[worker]
        missed = [a for a in batch if a.worker_id == worker and a.item_id in gold and a.label != gold[a.item_id]]
        evidence = bool(evidently_below(int(row["n_correct"]), int(row["n_gold"]), reject_below, level=level))
        if row["n_gold"] < min_answers or not evidence or not missed:
            continue
        named = "; ".join(f"item {a.item_id}: you answered {a.label!r}, the known answer is {gold[a.item_id]!r}" for a in missed)
        reason = (f"Rejected because known-answer (gold) questions in this batch were answered wrongly: {named}. "
                  f"Your accuracy on known-answer questions is {row['accuracy']:.0%} over {int(row['n_gold'])}, "
                  f"below the required {reject_below:.0%}.")
        out.append({"worker_id": worker, "assignment_ids": sorted(a.assignment_id for a in batch if a.worker_id == worker),
                    "missed_gold": sorted(a.item_id for a in missed), "reason": reason})
    return out


def gold_block_reason(min_accuracy: float, *, n_gold: int | None = None, n_correct: int | None = None) -> str:
    """What a worker blocked on gold evidence is told: the evidence, the bar, and that earlier work is paid."""
    evidence = ""
    if n_gold:
        evidence = (f"You answered {n_correct or 0} of {n_gold} known-answer questions correctly "
                    f"({(n_correct or 0) / n_gold:.0%}). ")
    return (f"{evidence}Your accuracy on known-answer questions was below {min_accuracy:.0%}, so you will get no "
            "further tasks from this project; you were paid for all approved work.")


def agreement_block_reason(min_agreement: float, *, agreement: float | None = None) -> str:
    """What a worker blocked for low agreement with the consensus is told."""
    evidence = "" if agreement is None else f" (yours: {agreement:.0%})"
    return (f"Your answers agreed with the other workers' consensus on fewer than {min_agreement:.0%} "
            f"of the items several people labeled{evidence}, so you will get no further tasks from this project; "
            "you were paid for all approved work.")
