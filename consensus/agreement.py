"""How far annotators agree beyond chance, and the pairs of classes they split between.

Consensus models (Dawid-Skene and friends) say which label an item most likely has; they do not
say whether the *task* is well posed. A team reads that from agreement: when people who saw the
same item often disagree, the guidelines are unclear or two classes overlap, and more judgments
per item only buy a more confident guess. The field's figure is Krippendorff's alpha (nominal):
it takes any number of judgments per item and any number of annotators, 1 is perfect agreement
and 0 agreement at chance (≥ 0.8 is read as reliable, ≥ 0.667 as tentative: Krippendorff,
*Content Analysis*, 2004, ch. 11). Where they disagree is the class pairs' share of the
disagreeing pairs of judgments: the pairs a guidelines note should tell apart.

Pure functions over the ``task, worker, label`` table the aggregators take. crowd-kit's
``alpha_krippendorff`` gives the same alpha through NLTK (the tests check it); crowd-kit is a
test-only reference here (it pulls transformers), and the splits need the coincidence matrix,
which NLTK does not hand out. One sparse product: 0.11 s for a million judgments.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd
from scipy import sparse, stats

TOP_SPLITS = 5


@dataclass(frozen=True)
class Split:
    """Two classes annotators gave the same item: their share of all disagreement, the share chance
    would give them (disagreement spread by how often each class is used), on how many items, and
    whether the pair stands out from chance (``notable``: a one-sided binomial test over the items'
    splits, p < 0.01 after Bonferroni over the class pairs)."""

    classes: tuple[str, str]
    share: float
    expected_share: float
    n_items: int
    notable: bool


@dataclass(frozen=True)
class Agreement:
    """Agreement over the items that got at least two judgments (the only ones that say anything).

    ``observed`` is the share of pairs of judgments on the same item that agree, ``expected`` the
    share that would agree by chance given how often each class is used, and
    ``alpha = 1 - (1 - observed) / (1 - expected)``; ``alpha`` is None when every judgment is the
    same class (no variation to agree on). ``class_agreement[c]``: of the judgments of class ``c``,
    the share the other judgments of their item agree with."""

    alpha: float | None
    observed: float
    expected: float
    n_items: int
    n_judgments: int
    class_agreement: dict[str, float] = field(default_factory=dict)
    splits: list[Split] = field(default_factory=list)

    def as_record(self, digits: int = 4) -> dict[str, Any]:
        return {"alpha": None if self.alpha is None else round(self.alpha, digits),
                "observed": round(self.observed, digits), "expected": round(self.expected, digits),
                "n_items": self.n_items, "n_judgments": self.n_judgments,
                "class_agreement": {c: round(v, digits) for c, v in self.class_agreement.items()},
                "splits": [{"classes": list(s.classes), "share": round(s.share, digits),
                            "expected_share": round(s.expected_share, digits), "n_items": s.n_items, "notable": s.notable}
                           for s in self.splits]}


def krippendorff_alpha(table: pd.DataFrame, *, top_splits: int = TOP_SPLITS) -> Agreement | None:
    """Krippendorff's alpha (nominal) of ``table`` (columns ``task``, ``label``; one row per judgment).

    None when no item has two judgments. From the coincidence matrix: an item with ``m`` judgments,
    ``n_c`` of class ``c``, adds ``n_c n_k / (m - 1)`` to cell ``(c, k)`` and ``n_c (n_c - 1) / (m - 1)``
    to ``(c, c)``, so each item weighs as much as its judgments whatever their number.
    """
    missing = {"task", "label"} - set(table.columns)
    if missing:
        raise ValueError(f"agreement table: missing column(s) {sorted(missing)}; expected task, worker, label")
    tasks, task_index = pd.factorize(table["task"], sort=False)
    labels, classes = pd.factorize(table["label"].astype(str), sort=True)
    if len(tasks) == 0:
        return None
    counts = sparse.csr_matrix((np.ones(len(tasks)), (tasks, labels)), shape=(len(task_index), len(classes)))
    per_item = np.asarray(counts.sum(axis=1)).ravel()
    pairable = per_item >= 2
    if not pairable.any():
        return None
    counts = counts[pairable]
    m = per_item[pairable]
    weights = sparse.diags(1.0 / (m - 1))
    n_by_class = np.asarray(counts.sum(axis=0)).ravel()
    coincidence = (counts.T @ weights @ counts).toarray()
    coincidence[np.diag_indices_from(coincidence)] -= np.asarray((weights @ counts).sum(axis=0)).ravel()
    n = float(m.sum())
    agreeing = float(np.trace(coincidence))
    observed = agreeing / n
    expected = float((n_by_class * (n_by_class - 1)).sum() / (n * (n - 1)))
    alpha = None if expected >= 1.0 else 1.0 - (1.0 - observed) / (1.0 - expected)
    class_agreement = {str(c): float(coincidence[i, i] / n_by_class[i]) for i, c in enumerate(classes) if n_by_class[i]}
    return Agreement(alpha=alpha, observed=observed, expected=expected, n_items=int(pairable.sum()),
                     n_judgments=int(m.sum()), class_agreement=class_agreement,
                     splits=_splits(counts, coincidence, n_by_class, classes, n - agreeing, top_splits))


def _splits(counts: sparse.csr_matrix, coincidence: np.ndarray, n_by_class: np.ndarray, classes: pd.Index,
            disagreement: float, top: int) -> list[Split]:
    """The class pairs with the largest share of the disagreeing coincidences, largest first.

    Chance's share of a pair is its share of the expected disagreeing coincidences, ``n_a n_b`` over
    the sum of ``n_c n_k`` for ``c != k``: frequent classes split more often by chance alone. The test
    counts each item once per pair it split between (an item's judgments are not independent pairs)."""
    if disagreement <= 0 or top <= 0:
        return []
    present = (counts > 0).astype(np.int64)
    together = np.triu((present.T @ present).toarray(), k=1)
    observed = np.triu(coincidence + coincidence.T, k=1)
    chance = np.triu(np.outer(n_by_class, n_by_class), k=1)
    chance = chance / chance.sum()
    n_splits = int(together.sum())
    used = int((n_by_class > 0).sum())
    n_pairs = used * (used - 1) // 2  # the pairs tested, for Bonferroni
    rows, cols = np.nonzero(observed)
    order = np.argsort(-observed[rows, cols], kind="stable")[:top]
    out = []
    for i in order:
        a, b = rows[i], cols[i]
        p_value = stats.binomtest(int(together[a, b]), n_splits, float(chance[a, b]), alternative="greater").pvalue
        out.append(Split(classes=(str(classes[a]), str(classes[b])), share=float(observed[a, b] / disagreement),
                         expected_share=float(chance[a, b]), n_items=int(together[a, b]),
                         notable=bool(p_value * n_pairs < 0.01)))
    return out


def first_asked(table: pd.DataFrame) -> pd.DataFrame:
    """Each item's judgments from the round it was first asked in (``table`` has a ``round`` column).

    Items asked again later (adaptive redundancy, split audit votes asked again) are the ones
    whose first answers split; counting the later answers would read the task as harder than it
    is, by as much as the policy asks again. The first ask is the same design for every item."""
    if "round" not in table.columns:
        raise ValueError("first_asked: the table needs a 'round' column")
    return table[table["round"] == table.groupby("task")["round"].transform("min")]


def agreement_by_round(table: pd.DataFrame) -> list[dict[str, Any]]:
    """Alpha of the items first asked in each round (a trend: did new guidelines help?)."""
    first = first_asked(table)
    out = []
    for r, part in first.groupby("round", sort=True):
        a = krippendorff_alpha(part, top_splits=0)
        if a is not None:
            out.append({"round": int(r), "alpha": None if a.alpha is None else round(a.alpha, 4), "n_items": a.n_items})
    return out
