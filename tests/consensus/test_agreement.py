"""Annotators' agreement: Krippendorff's alpha, the class pairs people split between, the first ask.

The alpha is checked against the published worked example and against crowd-kit's (NLTK's)
implementation on random tables; the report is checked on a loop run with a simulated crowd
whose pair confusers mix up known class pairs.
"""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from crowdkit.metrics.data import alpha_krippendorff

from crowdloop import engine
from crowdloop.config import parse_config
from crowdloop.consensus.agreement import agreement_by_round, first_asked, krippendorff_alpha
from crowdloop.engine import Project
from crowdloop.report import status
from tests.conftest import crowdloop_cmd, small_config


def _table(rows: dict[str, str]) -> pd.DataFrame:
    """Judgments from a reliability matrix: one string of values per annotator, '.' where missing."""
    return pd.DataFrame([{"task": f"u{j}", "worker": w, "label": v} for w, s in rows.items()
                         for j, v in enumerate(s.split()) if v != "."])


def test_the_published_worked_example() -> None:
    # Krippendorff (2011), "Computing Krippendorff's Alpha-Reliability", nominal data, 4 coders, 12 units:
    # alpha = 0.743 (unit 12 has one value and drops out).
    table = _table({"A": "1 2 3 3 2 1 4 1 2 . . .", "B": "1 2 3 3 2 2 4 1 2 5 . 3",
                    "C": ". 3 3 3 2 3 4 2 2 5 1 .", "D": "1 2 3 3 2 4 4 1 2 5 1 ."})
    a = krippendorff_alpha(table)
    assert a is not None and round(a.alpha, 3) == 0.743
    assert (a.n_items, a.n_judgments) == (11, 40)
    assert a.observed == pytest.approx(0.8)  # 32 of the 40 values' pairings agree


@pytest.mark.parametrize("seed", range(6))
def test_alpha_equals_crowd_kits_on_random_tables(seed: int) -> None:
    rng = np.random.default_rng(seed)
    n_classes = int(rng.integers(2, 7))
    rows = []
    for item in range(int(rng.integers(20, 120))):
        truth = rng.integers(n_classes)
        workers = rng.choice(15, size=int(rng.integers(1, 6)), replace=False)  # 1 to 5 judgments, some unpairable
        for w in workers:
            label = truth if rng.random() < 0.7 else rng.integers(n_classes)
            rows.append({"task": f"i{item}", "worker": f"w{w}", "label": f"c{label}"})
    table = pd.DataFrame(rows)
    a = krippendorff_alpha(table)
    assert a is not None
    assert a.alpha == pytest.approx(alpha_krippendorff(table), abs=1e-9)
    assert a.alpha == pytest.approx(1 - (1 - a.observed) / (1 - a.expected))


def test_what_agreement_cannot_say() -> None:
    one_each = pd.DataFrame({"task": ["a", "b"], "worker": ["w1", "w2"], "label": ["x", "y"]})
    assert krippendorff_alpha(one_each) is None  # nobody's answer can be compared with another's
    assert krippendorff_alpha(one_each.iloc[:0]) is None
    same = pd.DataFrame({"task": ["a", "a", "b", "b"], "worker": ["w1", "w2"] * 2, "label": ["x"] * 4})
    a = krippendorff_alpha(same)
    assert a.alpha is None and a.observed == 1.0 and a.splits == []  # no variation to agree on
    perfect = pd.DataFrame({"task": ["a", "a", "b", "b"], "worker": ["w1", "w2"] * 2, "label": ["x", "x", "y", "y"]})
    assert krippendorff_alpha(perfect).alpha == 1.0
    with pytest.raises(ValueError, match=r"missing column\(s\) \['label'\]"):
        krippendorff_alpha(one_each.drop(columns="label"))


def test_the_pair_people_confuse_leads_the_splits() -> None:
    rng = np.random.default_rng(3)
    classes = ["cat", "dog", "fox", "owl", "elk"]
    rows = []
    for item in range(300):
        truth = classes[item % 5]
        for w in range(3):
            label = truth
            if truth in ("cat", "dog") and rng.random() < 0.3:  # the pair the guidelines leave unclear
                label = "dog" if truth == "cat" else "cat"
            elif rng.random() < 0.05:
                label = classes[rng.integers(5)]
            rows.append({"task": f"i{item}", "worker": f"w{w}", "label": label})
    a = krippendorff_alpha(pd.DataFrame(rows))
    top = a.splits[0]
    assert top.classes == ("cat", "dog") and top.share > 0.5 and top.notable
    assert top.expected_share == pytest.approx(0.1, abs=0.01)  # five classes used about equally: a tenth each by chance
    assert not any(s.notable for s in a.splits[1:])  # the 5 % random slips spread over every pair
    assert sum(s.share for s in a.splits) <= 1.0 + 1e-9 and len(a.splits) == 5
    confused_items = pd.DataFrame(rows).groupby("task")["label"].agg(lambda s: {"cat", "dog"} <= set(s)).sum()
    assert top.n_items == confused_items
    assert a.class_agreement["cat"] < a.class_agreement["owl"]


def test_errors_at_random_name_no_pair_and_chance_follows_class_frequencies() -> None:
    rng = np.random.default_rng(5)
    classes = np.array(["a", "b", "c", "d"])
    truth = rng.choice(4, size=400, p=[0.55, 0.25, 0.1, 0.1])
    rows = [{"task": f"i{i}", "worker": f"w{w}", "label": classes[t if rng.random() < 0.6 else rng.integers(4)]}
            for i, t in enumerate(truth) for w in range(3)]
    a = krippendorff_alpha(pd.DataFrame(rows))
    assert len(a.splits) == 5 and not any(s.notable for s in a.splits)
    shares = {s.classes: s.expected_share for s in a.splits}
    assert max(shares, key=shares.get) == ("a", "b")  # the two most used classes split most often by chance


def test_only_the_first_ask_counts() -> None:
    # item b's first two answers split, so round 2 asked a third person: that answer says how the split
    # was resolved, not how often people agree, and is left out
    table = pd.DataFrame({"task": ["a", "a", "b", "b", "b", "c", "c"], "worker": ["w1", "w2", "w1", "w2", "w3", "w1", "w3"],
                          "label": ["x", "x", "x", "y", "x", "y", "y"], "round": [0, 0, 0, 0, 2, 1, 1]})
    first = first_asked(table)
    assert sorted(zip(first["task"], first["worker"], strict=True)) == [
        ("a", "w1"), ("a", "w2"), ("b", "w1"), ("b", "w2"), ("c", "w1"), ("c", "w3")]
    assert [r["round"] for r in agreement_by_round(table)] == [0, 1]
    assert agreement_by_round(table)[0]["n_items"] == 2
    with pytest.raises(ValueError, match="'round' column"):
        first_asked(table.drop(columns="round"))


def test_a_run_reports_agreement_and_names_the_crowds_confused_pair(tmp_path: Path) -> None:
    """A simulated crowd whose pair confusers mix up one pair of digits: ``status`` names that pair."""
    location = str(tmp_path / "p")
    crowd = {"n_workers": 12, "accuracy": [0.9, 0.95], "spammer_fraction": 0.0, "pair_confuser_fraction": 0.5,
             "confused_pairs": 1, "pair_confusion": 0.9}
    p = Project.prepare(parse_config(small_config(**{"vendor.params": crowd, "stopping.max_rounds": 3})), location)
    engine.run_rounds(p)
    pair = p.vendor.pair_of
    classes = [str(c) for c in p.pool.classes]
    confused = sorted(classes[i] for i in pair)
    agreement = status(Project.open(location))["annotator_agreement"]
    assert agreement["basis"] == "first ask" and agreement["n_items"] > 0
    assert sorted(agreement["splits"][0]["classes"]) == confused
    assert [r["round"] for r in agreement["rounds"]] == list(range(len(agreement["rounds"])))
    out = subprocess.run([*crowdloop_cmd(), "status", "-p", location], capture_output=True, text=True, timeout=120,
                         check=True).stdout
    flat = " ".join(out.split())  # rich wraps long lines
    assert f"annotators' agreement: α {agreement['alpha']:.2f}" in flat
    assert f"they split most between {agreement['splits'][0]['classes'][0]} and {agreement['splits'][0]['classes'][1]}" in flat
    a, b = agreement["splits"][0]["classes"]
    assert f"review them: crowdloop disputed -p {location} --between {a},{b}" in flat
    listed = json.loads(subprocess.run([*crowdloop_cmd(), "disputed", "-p", location, "--between", f"{a},{b}", "--json"],
                                       capture_output=True, text=True, timeout=120, check=True).stdout)
    assert listed and all({a, b} <= {row["label"], *row["votes"], row.get("model_label", row["label"])} for row in listed)


def test_one_judgment_per_item_reports_no_agreement(tmp_path: Path) -> None:
    location = str(tmp_path / "p")
    config = small_config(**{"consensus.method": "majority_vote", "consensus.redundancy": 1, "stopping.max_rounds": 1})
    engine.run_rounds(Project.prepare(parse_config(config), location))
    assert status(Project.open(location))["annotator_agreement"] is None
    out = subprocess.run([*crowdloop_cmd(), "status", "-p", location], capture_output=True, text=True, timeout=120,
                         check=True).stdout
    assert "agreement" not in out


def test_the_report_says_how_far_the_blocked_workers_pulled_agreement_down(tmp_path: Path) -> None:
    """A third of the crowd answers at random and gold blocks some of them: alpha without them is the
    agreement of the people who stay (is it the workers, or the task?)."""
    from crowdloop.engine.quality import last_aggregate
    from tests.consensus.test_gold_questions import GOLD
    from tests.crowd_helpers import run_engine

    location = str(tmp_path / "p")
    run_engine(small_config(**GOLD), location)
    p = Project.open(location)
    agreement = status(p)["annotator_agreement"]
    rest = agreement["without_blocked"]
    blocked = set(last_aggregate(p, p.rounds()[-1] + 1)["blocked_workers"])
    assert rest["n_blocked"] == len(blocked) >= 1
    assert rest["alpha"] > agreement["alpha"] + 0.05  # random answers were most of the disagreement
    anns = p.annotations()
    first = first_asked(pd.DataFrame({"task": [a.item_id for a in anns], "worker": [a.worker_id for a in anns],
                                      "label": [a.label for a in anns], "round": [a.round for a in anns]}))
    assert rest["alpha"] == round(krippendorff_alpha(first[~first["worker"].isin(blocked)]).alpha, 4)
    out = subprocess.run([*crowdloop_cmd(), "status", "-p", location], capture_output=True, text=True, timeout=120,
                         check=True).stdout
    assert f"without the {len(blocked)} blocked worker(s)" in " ".join(out.split())
