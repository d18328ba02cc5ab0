"""Rings of colluders (``consensus/collusion.py``) on tiny hand-made tables with exact outcomes
(issue 21: these kill the mutants the simulated-crowd tests in ``test_collusion.py`` let
through: records, one voice with disagreeing members, the pair statistics under a given model,
and each threshold of ``find_rings`` at its boundary)."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest

from crowdloop.consensus.collusion import Ring, find_rings, one_voice, pair_agreement, ring_reason


def table(rows: list[tuple[str, str, str]]) -> pd.DataFrame:
    return pd.DataFrame(rows, columns=["task", "worker", "label"])


# --- the ring's record and what its members are told ----------------------------------------------

def test_a_ring_s_record_round_trips_with_the_expectation_to_the_cent():
    ring = Ring(workers=("a", "b", "c"), n_shared=40, n_agreed=39, expected=12.3456)
    assert ring.name == "ring:a+b+c"
    record = ring.as_record()
    assert record == {"workers": ["a", "b", "c"], "n_shared": 40, "n_agreed": 39, "expected": 12.35}
    assert isinstance(record["workers"], list)
    back = Ring.from_record({"workers": ["a", "b", "c"], "n_shared": "40", "n_agreed": 39.0, "expected": "12.35"})
    assert back == Ring(workers=("a", "b", "c"), n_shared=40, n_agreed=39, expected=12.35)
    assert type(back.n_shared) is int and type(back.n_agreed) is int and type(back.expected) is float


def test_the_reason_counts_the_other_members_in_words():
    two = ring_reason(Ring(workers=("a", "b"), n_shared=20, n_agreed=19, expected=8.4))
    assert two == ("Your answers matched those of 1 other worker on 19 of 20 shared items, where the other workers' "
                   "answers predicted about 8 matches; answers copied or coordinated between accounts cannot be used. "
                   "You were paid for all approved work.")
    three = ring_reason(Ring(workers=("a", "b", "c"), n_shared=60, n_agreed=58, expected=20.6))
    assert three.startswith("Your answers matched those of 2 other workers on 58 of 60 shared items, "
                            "where the other workers' answers predicted about 21 matches;")


# --- one voice ----------------------------------------------------------------------------------

def test_one_voice_keeps_the_ring_s_most_common_answer_ties_to_the_first_label():
    ring = Ring(workers=("r1", "r2", "r3"), n_shared=9, n_agreed=9, expected=1.0)
    data = table([
        ("t2", "r1", "b"), ("t2", "r2", "a"), ("t2", "r3", "b"),  # b twice: b
        ("t1", "r1", "c"), ("t1", "r2", "a"),                     # a tie: the first label, a
        ("t1", "h1", "c"), ("t2", "h1", "a"), ("t2", "h2", "b"),  # honest answers stay as they are
        ("t3", "r2", "z"),                                        # one member alone: their answer
    ])
    out = one_voice(data, [ring])
    assert out.to_dict("records") == [
        {"task": "t1", "worker": "h1", "label": "c"}, {"task": "t2", "worker": "h1", "label": "a"},
        {"task": "t2", "worker": "h2", "label": "b"},
        {"task": "t1", "worker": "ring:r1+r2+r3", "label": "a"},
        {"task": "t2", "worker": "ring:r1+r2+r3", "label": "b"},
        {"task": "t3", "worker": "ring:r1+r2+r3", "label": "z"},
    ]
    assert list(out.index) == list(range(6))
    assert data["worker"].tolist()[:3] == ["r1", "r2", "r3"]  # the input is not changed


def test_one_voice_keeps_two_rings_apart_and_extra_columns_out():
    rings = [Ring(workers=("a1", "a2"), n_shared=5, n_agreed=5, expected=1.0),
             Ring(workers=("b1", "b2"), n_shared=5, n_agreed=5, expected=1.0)]
    data = table([("t", "a1", "x"), ("t", "a2", "x"), ("t", "b1", "y"), ("t", "b2", "y"), ("t", "h", "z")])
    data["extra"] = 1
    out = one_voice(data, rings)
    assert out.to_dict("records") == [{"task": "t", "worker": "h", "label": "z"},
                                      {"task": "t", "worker": "ring:a1+a2", "label": "x"},
                                      {"task": "t", "worker": "ring:b1+b2", "label": "y"}]
    assert one_voice(data, []) is data


# --- pair statistics under a given model --------------------------------------------------------

CONF = {  # worker -> P(observed | true), 2 classes
    "A": [[0.9, 0.1], [0.2, 0.8]],
    "B": [[0.7, 0.3], [0.4, 0.6]],
    "C": [[0.6, 0.4], [0.1, 0.9]],
}


def model(posteriors: dict[str, list[float]]) -> SimpleNamespace:
    """A fitted model as pair_agreement reads it; its tasks in reverse order, plus one the table lacks."""
    workers = list(CONF)
    tasks = {"t9": [0.5, 0.5], **dict(reversed(posteriors.items()))}
    return SimpleNamespace(errors_=np.array([CONF[w] for w in workers]), skills_=pd.Series(0.0, index=workers),
                           probas_=pd.DataFrame(tasks, index=["0", "1"]).T)


def predicted_agreement(post: list[float], a: str, la: int, b: str, lb: int) -> float:
    """The docstring's rule: the item's posterior without the pair's two answers, times the chance
    that both give the same answer under each true class."""
    ca, cb = np.array(CONF[a]), np.array(CONF[b])
    q = np.array(post) / (ca[:, la] * cb[:, lb])
    q /= q.sum()
    return float(q @ (ca * cb).sum(axis=1))


def test_pair_agreement_counts_shared_items_agreements_and_the_model_s_prediction():
    data = table([("t1", "B", "1"), ("t1", "A", "0"), ("t2", "A", "1"), ("t2", "B", "1"), ("t2", "C", "1"),
                  ("t3", "C", "0"), ("t3", "A", "0"), ("t4", "A", "1")])
    posts = {"t1": [0.6, 0.4], "t2": [0.2, 0.8], "t3": [0.7, 0.3], "t4": [0.5, 0.5]}
    out = pair_agreement(data, model(posts))
    assert list(out.columns) == ["worker_a", "worker_b", "n_shared", "n_agreed", "expected", "variance"]
    assert out[["worker_a", "worker_b", "n_shared", "n_agreed"]].to_dict("records") == [
        {"worker_a": "A", "worker_b": "B", "n_shared": 2, "n_agreed": 1},
        {"worker_a": "A", "worker_b": "C", "n_shared": 2, "n_agreed": 2},
        {"worker_a": "B", "worker_b": "C", "n_shared": 1, "n_agreed": 1},
    ]
    ab = [predicted_agreement(posts["t1"], "A", 0, "B", 1), predicted_agreement(posts["t2"], "A", 1, "B", 1)]
    ac = [predicted_agreement(posts["t2"], "A", 1, "C", 1), predicted_agreement(posts["t3"], "A", 0, "C", 0)]
    bc = [predicted_agreement(posts["t2"], "B", 1, "C", 1)]
    assert out["n_shared"].dtype.kind == "i" and out["n_agreed"].dtype.kind == "i"  # counts, not floats
    for row, ps in zip(out.itertuples(), (ab, ac, bc), strict=True):
        assert row.expected == pytest.approx(sum(ps), rel=1e-12)
        assert row.variance == pytest.approx(sum(x * (1 - x) for x in ps), rel=1e-12)


COLS = ["worker_a", "worker_b", "n_shared", "n_agreed", "expected", "variance"]


def test_a_worker_answering_an_item_twice_is_no_pair_with_themselves():
    data = table([("t1", "A", "0"), ("t1", "A", "0"), ("t2", "B", "1")])
    out = pair_agreement(data, model({"t1": [0.5, 0.5], "t2": [0.5, 0.5]}))
    assert out.empty and list(out.columns) == COLS


def test_no_shared_items_and_no_answers_give_empty_tables_with_the_columns():
    lonely = table([("t1", "A", "0"), ("t2", "B", "1")])
    assert list(pair_agreement(lonely, model({"t1": [0.5, 0.5], "t2": [0.5, 0.5]})).columns) == COLS
    empty = pair_agreement(table([]))
    assert empty.empty and list(empty.columns) == COLS


def test_an_answer_a_worker_never_gives_under_a_class_keeps_the_prediction_finite(monkeypatch):
    """A confusion entry of 0 (C never answers 1 when the truth is 0): dividing the pair's likelihood
    out of the posterior must not divide by zero; the truth is then surely 1."""
    monkeypatch.setitem(CONF, "C", [[1.0, 0.0], [0.1, 0.9]])
    # the model's posterior is sure of 1 since C answered 1; without the pair's answers it stays so (0/0 avoided)
    out = pair_agreement(table([("t1", "A", "1"), ("t1", "C", "1")]), model({"t1": [0.0, 1.0]}))
    assert out["expected"].tolist() == pytest.approx([0.2 * 0.1 + 0.8 * 0.9])  # P(same | truth 1)


def test_pair_agreement_fits_the_default_model_when_none_is_given():
    rng = np.random.default_rng(0)
    rows = [(f"t{t}", f"w{w}", str((t + (rng.random() < 0.2)) % 3)) for t in range(30) for w in range(4)]
    out = pair_agreement(table(rows))
    assert len(out) == 6 and (out["n_shared"] == 30).all()
    assert ((out["expected"] > 0) & (out["expected"] < 30)).all()


# --- find_rings: each threshold at its boundary -------------------------------------------------

def pairs(rows: list[tuple[str, str, int, int, float, float]]) -> pd.DataFrame:
    return pd.DataFrame(rows, columns=["worker_a", "worker_b", "n_shared", "n_agreed", "expected", "variance"])


@pytest.fixture
def given_pairs(monkeypatch):
    """find_rings over pair statistics given directly (pair_agreement is tested above)."""
    import crowdloop.consensus.collusion as collusion

    def use(rows):
        frame = pairs(rows)
        monkeypatch.setattr(collusion, "pair_agreement", lambda table, model=None: frame)
        return lambda **kw: find_rings(table([]), **kw)
    return use


def test_a_pair_is_linked_at_exactly_the_excess_and_z_thresholds(given_pairs):
    # 40 shared, 38 agreed, 26 expected: excess 12/40 = 0.3; z = 12 / sqrt(15.75 + 0.25) = 3.0
    run = given_pairs([("a", "b", 40, 38, 26.0, 15.75)])
    assert run(alpha=0.5) == [Ring(workers=("a", "b"), n_shared=40, n_agreed=38, expected=26.0)]
    assert run(alpha=0.5, min_excess=0.31) == [] and run(alpha=0.5, min_z=3.01) == []


def test_a_group_needs_the_agreement_share_and_the_binomial_evidence(given_pairs):
    run = given_pairs([("a", "b", 40, 36, 10.0, 1.0)])  # 36 of 40 = 0.9 agreed
    assert [r.workers for r in run(alpha=0.5)] == [("a", "b")]
    assert run(alpha=0.5, min_agreement=0.91) == []
    # honest workers agreeing at 0.8 get 36 or more of 40 with chance 0.0759
    assert run(alpha=0.08) != [] and run(alpha=0.075) == [] and run() == []  # default alpha 1e-3
    assert run(honest_agreement=0.85, alpha=0.5) != [] and run(honest_agreement=0.95, alpha=0.5) == []


def test_the_least_agreeing_member_is_peeled_off_until_the_rest_is_a_ring(given_pairs):
    # a, b, c agree always; d was linked to c by excess over a weak model but agrees less
    run = given_pairs([
        ("a", "b", 30, 30, 5.0, 1.0), ("a", "c", 30, 30, 5.0, 1.0), ("b", "c", 30, 30, 5.0, 1.0),
        ("c", "d", 30, 24, 5.0, 1.0), ("a", "d", 30, 10, 5.0, 1.0), ("b", "d", 30, 11, 5.0, 1.0),
    ])
    assert run() == [Ring(workers=("a", "b", "c"), n_shared=90, n_agreed=90, expected=15.0)]


def test_rings_are_ordered_by_size_then_name_and_unlinked_workers_stay_out(given_pairs):
    run = given_pairs([
        ("x", "y", 40, 40, 5.0, 1.0),  # 40 of 40: chance 0.8**40 = 1.3e-4 for honest workers
        ("b", "c", 30, 30, 5.0, 1.0), ("a", "c", 30, 30, 5.0, 1.0),  # a-c and b-c join a, b, c through c
        ("a", "b", 30, 30, 25.0, 1.0),  # not linked itself (the model predicts most of it), counted inside
        ("p", "q", 40, 40, 5.0, 1.0),
        ("h1", "h2", 30, 20, 18.0, 5.0),  # agree as the model predicts: no link
    ])
    rings = run()
    assert [r.workers for r in rings] == [("a", "b", "c"), ("p", "q"), ("x", "y")]
    assert rings[0].n_shared == 90 and rings[0].n_agreed == 90 and rings[0].expected == 35.0


def test_a_group_that_peels_down_to_one_worker_is_no_ring(given_pairs):
    run = given_pairs([("a", "b", 30, 25, 5.0, 1.0)])  # linked, but 25/30 < 0.9
    assert run() == []


def test_find_rings_judges_agreement_by_the_model_it_is_given():
    """Two workers who always agree: a model that predicts chance agreement (every answer a coin toss)
    makes it a ring; the default model, fitted on these two alone, finds them simply accurate."""
    rng = np.random.default_rng(3)
    data = table([(f"t{t}", w, str(label)) for t, label in enumerate(rng.integers(2, size=40)) for w in ("A", "B")])
    coin = SimpleNamespace(errors_=np.full((2, 2, 2), 0.5), skills_=pd.Series(0.5, index=["A", "B"]),
                           probas_=pd.DataFrame(0.5, index=[f"t{t}" for t in range(40)], columns=["0", "1"]))
    assert find_rings(data, model=coin) == [Ring(workers=("A", "B"), n_shared=40, n_agreed=40, expected=20.0)]
    assert find_rings(data) == []


def test_the_default_model_is_fitted_without_looking_for_rings():
    """The docstring's default: AutoDawidSkene *without* ring detection (a ring-aware fit would already
    count the ring as one voice, and then predict its members' agreement from that one voice)."""
    from crowdloop.consensus import AutoDawidSkene
    from tests.consensus.test_collusion import crowd

    data, _, members = crowd(0, n_items=300)
    assert [set(r.workers) for r in AutoDawidSkene().fit(data).rings_] == [members]  # a crowd with a ring
    expected = pair_agreement(data, AutoDawidSkene(rings=False).fit(data))
    pd.testing.assert_frame_equal(pair_agreement(data), expected)


def test_the_peeled_member_is_the_one_with_the_lowest_smoothed_agreement_rate(given_pairs):
    """Rate of a member = (agreements + ½) / (shared + 1) over its pairs inside the group.
    xx: 2 of 3 (rate 0.625), yy: 6 of 11 (0.542), zz: 8 of 12 (0.654): yy goes, and xx+zz, 2 of 2,
    is a ring at this alpha (two honest 0.8 workers agree on 2 of 2 with chance 0.64)."""
    run = given_pairs([("xx", "yy", 1, 0, 0.0, 0.0), ("xx", "zz", 2, 2, 0.0, 0.0), ("yy", "zz", 10, 6, 0.0, 0.0)])
    assert run(alpha=0.7) == [Ring(workers=("xx", "zz"), n_shared=2, n_agreed=2, expected=0.0)]


def test_the_smoothing_weighs_a_few_shared_items_less(given_pairs):
    """xx: 2 of 4 (rate 2.5/5 = 0.5) is peeled before yy: 25 of 42 (25.5/43 = 0.593); yy and zz then agree
    on 25 of 40, no ring. (Less smoothing of xx's few items, or more, would peel yy and leave xx+zz.)"""
    run = given_pairs([("xx", "yy", 2, 0, 0.0, 0.0), ("xx", "zz", 2, 2, 0.0, 0.0), ("yy", "zz", 40, 25, 5.0, 4.0)])
    assert run(alpha=0.7) == []


def test_workers_with_longer_names_join_through_a_shared_partner(given_pairs):
    run = given_pairs([("w10", "w3", 40, 40, 5.0, 1.0), ("w2", "w3", 40, 40, 5.0, 1.0), ("w10", "w2", 40, 40, 30.0, 1.0)])
    assert run() == [Ring(workers=("w10", "w2", "w3"), n_shared=120, n_agreed=120, expected=40.0)]


def test_the_binomial_tail_must_be_strictly_below_alpha(given_pairs):
    from scipy.stats import binom

    run = given_pairs([("a", "b", 40, 36, 10.0, 1.0)])
    tail = float(binom.sf(35, 40, 0.8))
    assert run(alpha=tail) == [] and run(alpha=np.nextafter(tail, 1.0)) != []
