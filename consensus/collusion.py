"""Rings of colluders: workers whose mutual agreement is far above what the crowd model predicts.

Pure functions over the ``task, worker, label`` table. Blocking on agreement with the
consensus cannot expose a ring: its members agree with each other, so on items where they
are the majority they *are* the consensus. What gives them away is that they agree with
each other far more often than their answers to everyone else predict. For each pair of
workers, every item both answered contributes the probability that they give the same answer
under the fitted Dawid-Skene model — their own confusion matrices and the item's posterior
from everyone *else's* answers — and the pair's agreements are compared with the sum of those
probabilities. Workers who merely share a confusion (both mix up 3 and 5) are predicted by
their confusion matrices and are not flagged; workers who share their *wrong* answers item by
item are. Flagged pairs join into rings (connected components). A ring is then counted as one
voice (:func:`one_voice`) and its members can be blocked with a reason that names the
evidence (:func:`ring_reason`).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

_EPS = 1e-12


@dataclass(frozen=True)
class Ring:
    """A group of workers who agree with each other far beyond what the model predicts."""

    workers: tuple[str, ...]
    n_shared: int  # answers on items that two members both answered (pairs counted once each)
    n_agreed: int  # of those, how many agreed
    expected: float  # agreements the model predicts for the same pairs and items

    @property
    def name(self) -> str:
        return "ring:" + "+".join(self.workers)

    def as_record(self) -> dict[str, object]:
        return {"workers": list(self.workers), "n_shared": self.n_shared, "n_agreed": self.n_agreed,
                "expected": round(self.expected, 2)}


def pair_agreement(table: pd.DataFrame, model: object | None = None) -> pd.DataFrame:
    """Per pair of workers who answered common items: shared items, agreements, and the
    agreements the Dawid-Skene model predicts, with its variance.

    ``model`` is a fitted Dawid-Skene aggregator with ``errors_`` (worker × true × observed)
    and ``probas_``; by default :class:`~crowdloop.consensus.aggregators.AutoDawidSkene` is
    fitted here (without ring detection). For an item, the prediction uses the posterior from every answer except the
    pair's own (dividing their likelihood out of the posterior), so a ring that carries an
    item's consensus does not predict itself. Time O(Σ_items judgments² · K²).
    """
    from crowdloop.consensus.aggregators import AutoDawidSkene

    cols = ["worker_a", "worker_b", "n_shared", "n_agreed", "expected", "variance"]
    if table.empty:
        return pd.DataFrame(columns=cols)
    if model is None:
        model = AutoDawidSkene(rings=False).fit(table)
    conf = np.asarray(model.errors_)  # [worker, true, observed], workers in model.skills_ order
    workers = pd.Index(model.skills_.index)
    classes = pd.Index(model.probas_.columns)
    post = model.probas_.reindex(table["task"].unique()).to_numpy()
    task_index = pd.Index(table["task"].unique())
    t = task_index.get_indexer(table["task"])
    w = workers.get_indexer(table["worker"])
    lab = classes.get_indexer(table["label"])
    order = np.argsort(t, kind="stable")
    t, w, lab = t[order], w[order], lab[order]
    starts = np.flatnonzero(np.r_[True, t[1:] != t[:-1]])
    sizes = np.diff(np.r_[starts, len(t)])
    # every pair of judgments on the same lab, as index pairs (i < j) into the sorted arrays
    first, second = [], []
    for size in np.unique(sizes[sizes >= 2]):
        base = starts[sizes == size]
        a, b = np.triu_indices(int(size), k=1)
        first.append((base[:, None] + a[None, :]).ravel())
        second.append((base[:, None] + b[None, :]).ravel())
    if not first:
        return pd.DataFrame(columns=cols)
    i, j = np.concatenate(first), np.concatenate(second)
    i, j = i[w[i] != w[j]], j[w[i] != w[j]]
    # posterior of the item without the pair's two answers
    q = post[t[i]] / np.clip(conf[w[i], :, lab[i]] * conf[w[j], :, lab[j]], _EPS, None)
    q /= np.clip(q.sum(axis=1, keepdims=True), _EPS, None)
    same = np.einsum("nkl,nkl->nk", conf[w[i]], conf[w[j]])  # P(both answer l | true k), summed over l
    p = np.clip(np.einsum("nk,nk->n", q, same), 0.0, 1.0)
    lo, hi = np.minimum(w[i], w[j]), np.maximum(w[i], w[j])
    frame = pd.DataFrame({"a": lo, "b": hi, "agree": (lab[i] == lab[j]).astype(np.int64), "p": p, "v": p * (1 - p)})
    g = frame.groupby(["a", "b"], sort=True)
    out = pd.DataFrame({"n_shared": g.size(), "n_agreed": g["agree"].sum(), "expected": g["p"].sum(),
                        "variance": g["v"].sum()}).reset_index()
    out.insert(0, "worker_a", workers[out.pop("a").to_numpy()].astype(str))
    out.insert(1, "worker_b", workers[out.pop("b").to_numpy()].astype(str))
    return out[cols]


def find_rings(table: pd.DataFrame, *, model: object | None = None, min_excess: float = 0.3, min_z: float = 3.0,
               min_agreement: float = 0.9, honest_agreement: float = 0.8, alpha: float = 1e-3) -> list[Ring]:
    """Rings: groups of workers who answer alike far beyond what the model predicts.

    Pairs whose agreements exceed the model's prediction by ``min_excess`` of their shared
    items and by ``min_z`` standard deviations are linked; each connected group is kept as a
    ring only if, pooled over all its members' shared items, they agreed on at least
    ``min_agreement`` of them *and* more often than workers agreeing at ``honest_agreement``
    could by chance (binomial tail below ``alpha``). Ordered by size, then name.

    The second test keeps honest workers safe when a ring is large enough to *be* the
    consensus: the model then believes the ring, and honest workers, who agree with each other
    on the truth, look excessively agreeing too — but only at the rate their accuracies allow
    (two workers of accuracy 0.85 agree on about 0.72 of items), never near-always, as copied
    or coordinated answers do.
    """
    from scipy.stats import binom

    pairs = pair_agreement(table, model)
    if pairs.empty:
        return []
    excess = (pairs["n_agreed"] - pairs["expected"]) / pairs["n_shared"]
    z = (pairs["n_agreed"] - pairs["expected"]) / np.sqrt(pairs["variance"] + 0.25)  # +¼: continuity, never ÷0
    flagged = pairs[(excess >= min_excess) & (z >= min_z)]
    if flagged.empty:
        return []
    parent: dict[str, str] = {}

    def root(x: str) -> str:
        while parent.setdefault(x, x) != x:
            parent[x] = parent[parent[x]]
            x = parent[x]
        return x

    for a, b in zip(flagged["worker_a"], flagged["worker_b"], strict=True):
        ra, rb = root(a), root(b)
        if ra != rb:
            parent[max(ra, rb)] = min(ra, rb)
    groups: dict[str, list[str]] = {}
    for x in list(parent):
        groups.setdefault(root(x), []).append(x)
    rings = []
    for members in groups.values():
        members = sorted(members)
        while len(members) >= 2:
            inside = pairs[pairs["worker_a"].isin(members) & pairs["worker_b"].isin(members)]
            n, agreed = int(inside["n_shared"].sum()), int(inside["n_agreed"].sum())
            if n and agreed >= min_agreement * n and binom.sf(agreed - 1, n, honest_agreement) < alpha:
                rings.append(Ring(workers=tuple(members), n_shared=n, n_agreed=agreed,
                                  expected=float(inside["expected"].sum())))
                break
            # not a ring as a whole: peel off the member who agrees least with the others, try again
            rate = {w: (inside.loc[(inside["worker_a"] == w) | (inside["worker_b"] == w), "n_agreed"].sum() + 0.5)
                       / (inside.loc[(inside["worker_a"] == w) | (inside["worker_b"] == w), "n_shared"].sum() + 1.0)
                    for w in members}
            members.remove(min(members, key=lambda w: (rate[w], w)))
    return sorted(rings, key=lambda r: (-len(r.workers), r.workers))


def one_voice(table: pd.DataFrame, rings: list[Ring]) -> pd.DataFrame:
    """The table with each ring's members answering as one worker (``Ring.name``): on an item
    several members answered, the ring keeps one answer (the most common among them, ties to
    the first in label order), so a ring can never outvote honest workers by numbers."""
    if not rings:
        return table
    member_of = {w: ring.name for ring in rings for w in ring.workers}
    out = table.copy()
    out["worker"] = out["worker"].map(lambda w: member_of.get(w, w))
    is_ring = out["worker"].isin(set(member_of.values()))
    ring_rows = out[is_ring]
    counts = ring_rows.groupby(["task", "worker", "label"], sort=True).size().rename("n").reset_index()
    top = counts.sort_values(["task", "worker", "n", "label"], ascending=[True, True, False, True], kind="stable")
    kept = top.drop_duplicates(["task", "worker"])[["task", "worker", "label"]]
    return pd.concat([out[~is_ring][["task", "worker", "label"]], kept], ignore_index=True)


def ring_reason(ring: Ring) -> str:
    """What a blocked ring member is told: the evidence, not an accusation."""
    others = len(ring.workers) - 1
    return (f"Your answers matched those of {others} other worker{'s' if others != 1 else ''} on {ring.n_agreed} of "
            f"{ring.n_shared} shared items, where the other workers' answers predicted about {ring.expected:.0f} matches; "
            "answers copied or coordinated between accounts cannot be used. You were paid for all approved work.")
