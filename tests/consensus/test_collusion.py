"""Rings of colluders: found from agreement the crowd model cannot explain, counted as one voice."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from crowdloop.consensus import AutoDawidSkene, MajorityVote
from crowdloop.consensus.collusion import find_rings, one_voice, pair_agreement, ring_reason


def crowd(seed: int, *, ring: int = 6, ring_accuracy: float = 0.5, pair_confusers: int = 0, honest: int = 24,
          n_items: int = 600, per_item: int = 5, k: int = 6) -> tuple[pd.DataFrame, pd.Series, set[str]]:
    """Honest workers (0.6–0.9), optional pair confusers (0↔1, 2↔3 70% of the time) and a ring
    whose members all give one answer per item: right with ``ring_accuracy``, else one shared wrong class."""
    rng = np.random.default_rng(seed)
    truth = rng.integers(k, size=n_items)
    ring_answer = np.where(rng.random(n_items) < ring_accuracy, truth, (truth + 1 + rng.integers(k - 1, size=n_items)) % k)
    acc = rng.uniform(0.6, 0.9, honest + pair_confusers)
    pair = {0: 1, 1: 0, 2: 3, 3: 2}
    n_workers = honest + pair_confusers + ring
    rows = []
    for t in range(n_items):
        for w in rng.choice(n_workers, size=per_item, replace=False):
            c = truth[t]
            if w >= honest + pair_confusers:
                label = ring_answer[t]
            elif w >= honest and c in pair and rng.random() < 0.7:
                label = pair[c]
            else:
                label = c if rng.random() < acc[w] else (c + 1 + rng.integers(k - 1)) % k
            rows.append((f"t{t}", f"w{w:02d}", f"c{label}"))
    members = {f"w{w:02d}" for w in range(honest + pair_confusers, n_workers)}
    return (pd.DataFrame(rows, columns=["task", "worker", "label"]),
            pd.Series([f"c{x}" for x in truth], index=[f"t{t}" for t in range(n_items)]), members)


def accuracy(labels: pd.Series, truth: pd.Series) -> float:
    return float((labels.reindex(truth.index) == truth).mean())


@pytest.mark.parametrize("seed", [0, 1])
def test_a_ring_is_found_and_nobody_else(seed):
    data, _, members = crowd(seed)
    rings = find_rings(data)
    assert len(rings) == 1
    assert set(rings[0].workers) == members
    ring = rings[0]
    assert ring.n_agreed == ring.n_shared  # they gave identical answers
    assert ring.expected < 0.6 * ring.n_shared  # which their answers to everyone else do not predict


def test_workers_who_share_a_confusion_are_not_a_ring():
    # pair confusers agree on the same wrong class often, but their confusion matrices predict it
    data, _, _ = crowd(2, ring=0, pair_confusers=10)
    assert find_rings(data) == []
    pairs = pair_agreement(data)
    confusers = pairs[pairs["worker_a"].isin({f"w{w}" for w in range(24, 34)})
                      & pairs["worker_b"].isin({f"w{w}" for w in range(24, 34)})]
    assert (confusers["n_agreed"] > 0).any()


def test_plain_crowds_have_no_rings():
    data, _, _ = crowd(3, ring=0)
    assert find_rings(data) == []


def test_one_voice_keeps_one_answer_per_ring_and_item_and_beats_the_ring_by_numbers():
    # a ring of 10 beside 20 honest workers: by numbers it carries many items
    data, truth, members = crowd(4, ring=10, honest=24, ring_accuracy=0.4)
    rings = find_rings(data)
    assert [set(r.workers) for r in rings] == [members]
    single = one_voice(data, rings)
    ring_rows = single[single["worker"] == rings[0].name]
    assert not ring_rows.duplicated(["task"]).any()
    assert set(single["worker"]) & members == set()
    # items keep every honest answer
    honest = data[~data["worker"].isin(members)]
    assert len(single) == len(honest) + ring_rows["task"].nunique()
    assert accuracy(MajorityVote().fit(single).labels_, truth) > accuracy(MajorityVote().fit(data).labels_, truth) + 0.02
    blind = AutoDawidSkene(rings=False).fit(data)
    auto = AutoDawidSkene().fit(data)  # the default finds the ring and counts it once
    assert [set(r.workers) for r in auto.rings_] == [members]
    assert set(auto.skills_.index) == set(data["worker"])
    assert auto.skills_[sorted(members)].nunique() == 1  # members carry their ring's skill
    assert accuracy(auto.labels_, truth) >= accuracy(blind.labels_, truth)


def test_the_reason_names_the_evidence():
    data, _, _ = crowd(0)
    ring = find_rings(data)[0]
    reason = ring_reason(ring)
    assert f"{ring.n_agreed} of {ring.n_shared} shared items" in reason
    assert f"{len(ring.workers) - 1} other workers" in reason
    assert "paid for all approved work" in reason
    assert ring.as_record()["workers"] == list(ring.workers)


def test_empty_and_single_answer_tables():
    empty = pd.DataFrame(columns=["task", "worker", "label"])
    assert find_rings(empty) == [] and one_voice(empty, []) is empty
    single = pd.DataFrame({"task": ["a", "b"], "worker": ["x", "y"], "label": ["1", "2"]})
    assert pair_agreement(single).empty


@pytest.mark.parametrize("seed", [4, 5])
def test_a_ring_that_is_the_consensus_never_gets_honest_workers_flagged(seed):
    # 10 ring members beside 12 honest workers: the model believes the ring, so honest workers
    # agreeing on the truth look excessive; they must not be called a ring (gold catches this ring)
    data, _, members = crowd(seed, ring=10, honest=12, ring_accuracy=0.3)
    for ring in find_rings(data):
        assert set(ring.workers) <= members
