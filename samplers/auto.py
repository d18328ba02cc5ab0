"""A selection policy that measures itself: each round, strategies ("arms") share the batch in
proportion to how well their own picks have trained the model, judged on a random audit.

Why: no query strategy wins everywhere. Uncertainty and diversity rules save most labels on
clean data; on noisy or imbalanced pools uncertainty chases label noise and can trail random
sampling for most of the budget. Active Learning by Learning (Hsu & Lin, AAAI 2015) turns the
choice into a bandit over strategies rewarded by an importance-weighted accuracy estimate on
the queried items. Here, per batch:

* ``random_share`` of the batch (at least one item) is always drawn uniformly at random. These
  items (and a random initial set) are the **audit**: an unbiased sample of the pool with
  labels, the only items on which accuracy estimates are not bent by the strategies' choices
  — the role ALBL's importance weights play, where uniform picks carry all the weight.
* Evidence per arm (:func:`arm_evidence`): half of the audit is a common random base; a clone
  of the model is fitted on the base plus the same number ``m`` of items **that arm** picked
  and scored on audit items none of the models trained on (the same items for every arm: a
  paired comparison). Equal ``m`` makes arms comparable — each arm's value on top of a random
  base at the same size, the counterfactual a bandit otherwise waits many rounds for.
* Allocation: arms that have fewer than ``min_items`` picks get slots first (exploration);
  then the rest of the batch goes by probabilities ``p ∝ exp((acc_a − acc_best) / (temperature·se))``
  with ``se`` the audit's standard error, each at least ``floor``: a clear winner takes
  nearly everything, a tie splits. Random is an arm like the others (beyond its audit share),
  so where uncertainty chases noise the batch drifts to random.

The policy state is a small JSON record (:attr:`Decision.record`) derived from (rng state,
the labeled set and which arm picked each labeled item), so a rerun of a round decides alike
and a user can see why a round's batch was split the way it was.

History API: the caller passes ``labeled_arm`` — for each labeled row (``X_labeled``,
``y_labeled``), the arm that picked it (``"random"`` for uniform picks, including a random cold
start; ``None`` or ``""`` for anything else). The engine derives it from earlier rounds'
``selection.json`` (their ``picked_by``).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from crowdloop._validation import check_batch_size
from crowdloop.errors import SamplerError
from crowdloop.rows import is_sparse, n_rows, take
from crowdloop.samplers.batch import _accepted
from crowdloop.samplers.scoring import check_rng

DEFAULT_ARMS = ("random", "margin", "kmeans_margin", "typiclust")
# The cold-start arm stays cheap on large pools: TypiClust's k-means is capped at 100 clusters.
DEFAULT_ARM_PARAMS: dict[str, dict[str, Any]] = {"typiclust": {"max_clusters": 100}}


@dataclass
class Decision:
    """A round's picks, which arm picked each, and the evidence that split the batch."""

    indices: np.ndarray  # positions into the candidates X, in pick order
    picked_by: dict[str, list[int]]  # arm → positions into X
    record: dict[str, Any] = field(default_factory=dict)  # JSON-able: evidence, probabilities, slots


def _arm_fn(name: str) -> Any:
    from crowdloop import registry

    return registry.samplers.load(name)


def _accuracy(model: Any, X: np.ndarray, y: np.ndarray) -> float:
    return float(np.mean(np.asarray(model.predict(X)).astype(str) == y.astype(str))) if len(y) else float("nan")


def _fit(template: Any, X: np.ndarray, y: np.ndarray) -> Any | None:
    from sklearn.base import clone

    if len(set(y.tolist())) < 2:
        return None
    return clone(template).fit(X, y)


def arm_evidence(model: Any, X_labeled: np.ndarray, y_labeled: np.ndarray, labeled_arm: Sequence[str | None],
                 arms: Sequence[str], *, rng: np.random.Generator, min_items: int, repeats: int = 3) -> dict[str, Any]:
    """Audit accuracy of a model trained on a random base plus ``m`` picks of each arm.

    The audit (labeled items the random arm picked) is shuffled and halved: the first half is
    the common base every arm's model trains on; from the second half, ``m`` items play the
    random arm's picks and the rest is the test set, the same for every arm (a paired
    comparison). Each other arm's model trains on the base plus ``m`` of its own picks (a seeded
    sample), so all models have the same size and differ only in who chose the extra items.
    """
    arm_of = np.array([a or "" for a in labeled_arm], dtype=object)
    y = np.asarray(y_labeled).astype(str)
    audit = np.flatnonzero(arm_of == "random")
    others = np.flatnonzero(~np.isin(arm_of, list(arms)))  # e.g. a k-means cold start: in every base
    counts = {a: int((arm_of == a).sum()) for a in arms}
    out: dict[str, Any] = {"n_audit": len(audit), "counts": counts, "m": None, "n_test": 0, "accuracy": {}}
    half = len(audit) - len(audit) // 2
    ready = [a for a in arms if a != "random" and counts[a] >= min_items]
    m = min([counts[a] for a in ready] + [half // 2])
    if not ready or m < min_items:
        return out
    out.update(m=int(m), n_test=int(repeats * (half - m)))
    right = dict.fromkeys(["random", *ready], 0)
    for _ in range(repeats):  # several random splits of the audit: the estimate's noise shrinks
        shuffled = rng.permutation(audit)
        base, random_picks, test = shuffled[half:], shuffled[:m], shuffled[m:half]
        base = np.r_[others, base]
        for a in right:
            extra = random_picks if a == "random" else rng.choice(np.flatnonzero(arm_of == a), size=m, replace=False)
            fitted = _fit(model, X_labeled[np.r_[base, extra]], y[np.r_[base, extra]])
            right[a] += 0 if fitted is None else round(_accuracy(fitted, X_labeled[test], y[test]) * len(test))
    out["accuracy"] = {a: round(v / out["n_test"], 4) for a, v in right.items()}
    return out


def allocate(evidence: Mapping[str, Any], arms: Sequence[str], n_slots: int, *, rng: np.random.Generator,
             min_items: int, temperature: float, floor: float) -> tuple[dict[str, int], dict[str, float]]:
    """Slots per arm for ``n_slots`` items: under-explored arms first, then by the evidence."""
    slots = dict.fromkeys(arms, 0)
    counts = evidence["counts"]
    short = [a for a in arms if a != "random" and counts[a] < min_items]
    left = n_slots
    # exploration: arms without enough picks to be judged share the slots first, the shortest first
    while left and short:
        for a in sorted(short, key=lambda a: (counts[a] + slots[a], arms.index(a))):
            if left and counts[a] + slots[a] < min_items:
                slots[a] += 1
                left -= 1
        short = [a for a in short if counts[a] + slots[a] < min_items]
    acc = {a: v for a, v in evidence["accuracy"].items() if v is not None}
    if acc:
        best = max(acc.values())
        n = max(evidence.get("n_test", 0), 1)
        se = math.sqrt(max(best * (1 - best), 0.05) / n)
        raw = {a: math.exp((acc[a] - best) / (temperature * se)) if a in acc else 0.0 for a in arms}
    else:
        raw = {a: 1.0 for a in arms if a not in short} or dict.fromkeys(arms, 1.0)
    total = sum(raw.values()) or 1.0
    prob = {a: raw.get(a, 0.0) / total for a in arms}
    judged = [a for a in arms if prob[a] > 0]
    prob = {a: (max(prob[a], floor) if a in judged else 0.0) for a in arms}
    total = sum(prob.values()) or 1.0
    prob = {a: prob[a] / total for a in arms}
    if left > 0:
        draws = rng.multinomial(left, [prob[a] for a in arms])
        for a, d in zip(arms, draws, strict=True):
            slots[a] += int(d)
    return slots, {a: round(p, 4) for a, p in prob.items()}


def decide(
    model: Any,
    X: np.ndarray,
    *,
    batch_size: int,
    rng: np.random.Generator,
    X_labeled: np.ndarray | None = None,
    y_labeled: np.ndarray | None = None,
    labeled_arm: Sequence[str | None] | None = None,
    arms: Sequence[str] = DEFAULT_ARMS,
    arm_params: Mapping[str, Mapping[str, Any]] | None = None,
    random_share: float = 0.1,
    min_items: int = 6,
    temperature: float = 1.0,
    floor: float = 0.02,
    chunk_size: int = 8192,
) -> Decision:
    """The auto policy's decision for one batch: picks, which arm made each, and the record."""
    rng = check_rng(rng)
    n = n_rows(X)
    k = check_batch_size(batch_size, n)
    arms = list(dict.fromkeys(arms))
    if "random" not in arms:
        raise SamplerError(f"arms={arms!r}: 'random' must be one of the arms "
                           "(where uncertainty chases noise the policy drifts to it)")
    if not 0.0 <= float(random_share) <= 1.0:
        raise SamplerError(f"random_share={random_share!r}: expected a number in [0, 1]")
    if isinstance(min_items, bool) or not isinstance(min_items, (int, np.integer)) or min_items < 1:
        raise SamplerError(f"min_items={min_items!r}: expected a positive integer")
    if not temperature > 0 or not 0 <= floor < 1.0 / len(arms):
        raise SamplerError(f"temperature={temperature!r}, floor={floor!r}: expected temperature > 0 and 0 <= floor < 1/len(arms)")
    params = {**DEFAULT_ARM_PARAMS, **{a: dict(v) for a, v in (arm_params or {}).items()}}
    fns = {a: _arm_fn(a) for a in arms}
    have_labels = X_labeled is not None and y_labeled is not None and n_rows(X_labeled) > 0
    if labeled_arm is not None and have_labels and len(labeled_arm) != n_rows(X_labeled):
        raise SamplerError(f"labeled_arm has {len(labeled_arm)} entries but X_labeled has {n_rows(X_labeled)} rows: "
                           "expected one per row")
    if model is None or not have_labels:
        evidence: dict[str, Any] = {"n_audit": 0, "counts": dict.fromkeys(arms, 0), "m": None, "n_test": 0, "accuracy": {}}
    else:
        history = list(labeled_arm) if labeled_arm is not None else [None] * n_rows(X_labeled)
        rows = X_labeled if is_sparse(X_labeled) or hasattr(X_labeled, "dense") else np.asarray(X_labeled)  # text stays sparse
        evidence = arm_evidence(model, rows, np.asarray(y_labeled), history, arms,
                                rng=np.random.default_rng(rng.integers(2**63)), min_items=min_items)
    n_audit = min(k, max(1, round(float(random_share) * k))) if random_share > 0 else 0
    slots, prob = allocate(evidence, arms, k - n_audit, rng=rng, min_items=min_items, temperature=temperature,
                           floor=floor)
    slots["random"] += n_audit
    available = np.ones(n, dtype=bool)
    picked_by: dict[str, list[int]] = {a: [] for a in arms}
    order: list[int] = []
    # model-free arms need no model: before the first fit every slot goes to random or cold-start rules
    for a in arms:
        want = slots[a]
        if want == 0:
            continue
        rest = np.flatnonzero(available)
        fn = fns[a]
        kw = _accepted(fn, {"chunk_size": chunk_size, "X_labeled": X_labeled if have_labels else None,
                            **params.get(a, {})})
        if model is None and a not in ("random", "typiclust"):
            fn, kw = fns["random"], {}
        got = np.asarray(fn(model, take(X, rest), batch_size=min(want, len(rest)), rng=rng, **kw), dtype=np.int64)
        chosen = rest[got]
        available[chosen] = False
        picked_by[a] = chosen.tolist()
        order += chosen.tolist()
    record = {
        "policy": "auto",
        "arms": arms,
        "n_audit": evidence["n_audit"],
        "picks_so_far": evidence["counts"],
        "compared_at": evidence["m"],
        "n_test": evidence["n_test"],
        "audit_accuracy": evidence["accuracy"],
        "probabilities": prob,
        "slots": {a: len(picked_by[a]) for a in arms},
    }
    return Decision(np.asarray(order, dtype=np.int64), picked_by, record)


def auto_sampling(
    model: Any,
    X: np.ndarray,
    *,
    batch_size: int,
    rng: np.random.Generator,
    X_labeled: np.ndarray | None = None,
    y_labeled: np.ndarray | None = None,
    labeled_arm: Sequence[str | None] | None = None,
    arms: Sequence[str] = DEFAULT_ARMS,
    arm_params: Mapping[str, Mapping[str, Any]] | None = None,
    random_share: float = 0.1,
    min_items: int = 6,
    temperature: float = 1.0,
    floor: float = 0.02,
    chunk_size: int = 8192,
) -> np.ndarray:
    """The self-measuring policy as a plain sampler (see the module doc); ``auto_sampling.decide``
    returns the same picks with which arm made each and the round's evidence record."""
    return decide(model, X, batch_size=batch_size, rng=rng, X_labeled=X_labeled, y_labeled=y_labeled,
                  labeled_arm=labeled_arm, arms=arms, arm_params=arm_params, random_share=random_share,
                  min_items=min_items, temperature=temperature, floor=floor, chunk_size=chunk_size).indices


auto_sampling.decide = decide  # type: ignore[attr-defined]
