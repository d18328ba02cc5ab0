"""The random baseline samples at random, on the same crowd, and the demo's loop beats it.

README: the demo runs "with a random-sampling baseline for the learning curve" and reports
"random sampling, same crowd" next to crowdloop's margin sampling at equal labels. Checked
here on the demo's own config (``configs/digits.yaml``) over seeds 0-2, each run as the flow runs
it: the main rounds, then the twin of ``Project.baseline()`` under ``baseline/``.

- Same crowd: the twin's vendor, consensus, pay, pool, model and seed are the project's, its
  simulated workers are the same people (ids, accuracies, spammers), and it buys the same
  judgments at each number of labels.
- At random: under the twin's own model of each round, the ranks of its picks among the
  candidates by margin are uniform (mean rank and a Kolmogorov-Smirnov test), and few of them
  are among the items margin sampling would have picked. Measured on seeds 0-5: mean rank
  0.49-0.52, KS p 0.27-0.96, 3-5 % of picks among margin's; margin sampling itself: 0.019, p 0, 100 %.
- Beaten: over the second half of the labels (240-480), crowdloop's test accuracy is above the
  twin's at equal labels by 0.041 on average over seeds 0-2 (per seed 0.047, 0.062, 0.014;
  seeds 3-5: 0.035, 0.038, 0.026). A baseline that samples like crowdloop scores exactly 0.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
from scipy import stats

from crowdloop import engine, keys
from crowdloop.config import load_config
from crowdloop.engine import Project
from crowdloop.engine.selection import excluded
from crowdloop.storage import write_json
from tests.conftest import CONFIGS

SEEDS = (0, 1, 2)


def _run_with_baseline(location: str, seed: int) -> tuple[Project, Project]:
    config = load_config(CONFIGS / "digits.yaml").model_copy(update={"seed": seed})
    assert config.baseline.random and config.sampler.name == "margin"
    main = engine.run_in_process(Project.prepare(config, location))
    twin = main.baseline()  # as flows/loop.py: after the main rounds, its twin under baseline/
    write_json(twin.store, keys.PROJECT, {"config": twin.config.model_dump(mode="json"), "format": 1})
    return main, engine.run_in_process(Project.open(twin.store.url))


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> dict[int, tuple[Project, Project]]:
    return {seed: _run_with_baseline(str(tmp_path_factory.mktemp(f"demo{seed}") / "p"), seed) for seed in SEEDS}


def _curve(p: Project) -> list[tuple[int, float | None, int]]:
    return [(m["n_labeled"], m["accuracy"], m["n_judgments"]) for m in p.metrics()]


def test_the_baseline_buys_labels_from_the_same_crowd(runs: dict[int, tuple[Project, Project]]) -> None:
    main, twin = runs[0]
    mine, its = main.config.model_dump(), twin.config.model_dump()
    for section in ("seed", "pool", "model", "vendor", "consensus", "pay", "gold", "evaluation", "autolabel"):
        assert its[section] == mine[section], section
    crowd, twin_crowd = main.vendor, twin.vendor
    assert twin_crowd.worker_ids == crowd.worker_ids
    np.testing.assert_array_equal(twin_crowd.worker_accuracy, crowd.worker_accuracy)
    np.testing.assert_array_equal(twin_crowd.is_spammer, crowd.is_spammer)
    assert {a.worker_id for a in twin.annotations()} <= set(crowd.worker_ids)
    assert twin.store.url != main.store.url and twin.annotations()
    # the same labels and judgments at every round (480 labels, 1440 judgments, as README's table)
    assert [(n, j) for n, _, j in _curve(twin)] == [(n, j) for n, _, j in _curve(main)]
    assert _curve(main)[-1][0] == 480 and _curve(main)[-1][2] == 1440


def _margin_ranks(p: Project) -> tuple[np.ndarray, float]:
    """Each pick's rank among its round's candidates by the round model's margin (0: most
    uncertain, 1: most certain), and the share of picks margin sampling would have made."""
    ranks: list[float] = []
    shared = total = 0
    for r in p.rounds():
        selection = p.record(r, keys.SELECTION, default=None)
        if r == 0 or selection is None:  # round 0 is a cold start, without a model
            continue
        candidates = np.flatnonzero(~excluded(p, r))
        proba = np.sort(p.load_model(r).predict_proba(p.pool.X[candidates]), axis=1)
        margin = proba[:, -1] - proba[:, -2]
        position = {item: k for k, item in enumerate(p.pool.ids[candidates])}
        picked = np.array([position[item] for item in selection["item_ids"]])
        ranks.extend(stats.rankdata(margin)[picked] / len(margin))
        shared += len(set(picked.tolist()) & set(np.argsort(margin, kind="stable")[: len(picked)].tolist()))
        total += len(picked)
    return np.array(ranks), shared / total


@pytest.mark.parametrize("seed", SEEDS)
def test_the_baseline_picks_uniformly_not_by_margin(runs: dict[int, tuple[Project, Project]], seed: int) -> None:
    main, twin = runs[seed]
    ranks, among_margins = _margin_ranks(twin)
    assert len(ranks) == 440
    assert 0.42 <= ranks.mean() <= 0.58  # ±6 standard errors around 0.5; margin sampling: 0.019
    assert stats.kstest(ranks, "uniform").pvalue >= 0.01  # measured 0.27-0.96; margin sampling: 0
    assert among_margins <= 0.15  # measured 0.03-0.05 (random: 40 of ~1000); margin sampling: 1.0
    # the same measure tells margin sampling apart (the check can fail)
    main_ranks, main_among = _margin_ranks(main)
    assert main_ranks.mean() < 0.1 and main_among == 1.0


def test_crowdloop_beats_random_at_equal_labels(runs: dict[int, tuple[Project, Project]]) -> None:
    gaps: list[float] = []
    for seed in SEEDS:
        main, twin = runs[seed]
        ours, random_ = _curve(main), _curve(twin)
        assert [n for n, _, _ in ours] == [n for n, _, _ in random_]
        second_half: list[Any] = [(a, b) for (n, a, _), (_, b, _) in zip(ours, random_, strict=True) if n >= 240]
        assert len(second_half) == 7
        gaps.append(float(np.mean([a - b for a, b in second_half])))
    # measured: 0.047, 0.062, 0.014 (mean 0.041); the same sampler in both would give 0.0
    assert np.mean(gaps) >= 0.02, gaps


def test_the_baseline_follows_a_project_resumed_with_raised_limits(tmp_path) -> None:
    """A project run to 2 rounds, then resumed with max_rounds 4: the twin's learning curve goes on
    to the same labels (it stopped at the first run's labels, and its stored budget was kept)."""
    from crowdloop.config import parse_config
    from crowdloop.engine import project as project_module
    from crowdloop.engine import start_baseline
    from tests.conftest import small_config

    location = str(tmp_path / "p")

    def run(max_rounds: int) -> tuple[Project, Project]:
        project_module._PREPARED.clear()  # a new `crowdloop run`
        config = parse_config(small_config(**{"stopping.max_rounds": max_rounds, "baseline.random": True}))
        main = Project.prepare(config, location)
        engine.run_rounds(main)
        twin = Project.open(start_baseline(main))  # as flows/loop.py
        engine.run_rounds(twin)
        return main, Project.open(twin.store.url)

    main, twin = run(2)
    assert [m["n_labeled"] for m in twin.metrics()] == [m["n_labeled"] for m in main.metrics()]
    first = [m["n_labeled"] for m in main.metrics()]
    main, twin = run(4)
    labeled = [m["n_labeled"] for m in main.metrics()]
    assert len(labeled) > len(first) and [m["n_labeled"] for m in twin.metrics()] == labeled
    assert twin.config.stopping.label_budget == labeled[-1]
    assert len(twin.store.list(keys.CONFIG_HISTORY)) == 1  # the first run's twin record, kept
