"""Which pool items a sampler may pick (issue 21: these kill the mutants of ``engine.selection.excluded``
and of the ``Project`` sets it is built from). A real project with gold questions, an accuracy
audit and seed labels runs two rounds; every set is then checked against its definition."""

from __future__ import annotations

import pytest

from crowdloop import keys
from crowdloop.config import parse_config
from crowdloop.engine import Project
from crowdloop.engine.selection import excluded
from crowdloop.storage import read_json
from tests.crowd_helpers import blind_config, write_blind_digits

N_SEEDS = 25


@pytest.fixture(scope="module")
def project(tmp_path_factory) -> Project:
    from crowdloop import engine

    root = tmp_path_factory.mktemp("eligible")
    import pandas as pd

    data = write_blind_digits(root, n_seeds=N_SEEDS)
    table = pd.read_csv(data["seeded"], dtype={"old_label": str})
    table["label"] = pd.read_csv(data["answers"], dtype=str)["label"]  # ground truth, so gold can be drawn from it
    table.to_csv(root / "pool_labeled.csv", index=False)
    cfg = blind_config(data, **{"pool.path": str(root / "pool_labeled.csv"), "pool.label_column": "label",
                                "pool.seed_labels": {"column": "old_label"}, "gold.share": 0.2, "gold.n_items": 15,
                                "evaluation": {"method": "random", "max_items": 40, "batch_size": 20},
                                "stopping.max_rounds": 2})
    return engine.run_in_process(Project.prepare(parse_config(cfg), str(root / "p")))


def dispatched_in(p: Project, r: int) -> tuple[set[str], set[str]]:
    """Round ``r``'s dispatched items: (not gold, gold), straight from its intent record."""
    tasks = read_json(p.store, keys.round_key(r, keys.DISPATCH))["tasks"]
    return {t["item_id"] for t in tasks if not t.get("is_gold")}, {t["item_id"] for t in tasks if t.get("is_gold")}


def test_the_sets_are_disjoint_and_their_sizes_follow_the_config(project):
    p = project
    seeds = {label.item_id for label in p.seed_labels}
    assert 0 < len(seeds) <= N_SEEDS and len(p.gold_set) == 15  # seeds in the held-out test split are not pool items
    assert len(p.audit_reserve) == 40  # the random audit's max_items (less than half the free pool)
    assert len(set(p.audit_reserve)) == 40
    assert not set(p.audit_reserve) & (seeds | set(p.gold_set))
    assert p.reserved_items() == seeds | set(p.gold_set) | set(p.audit_reserve)


def test_dispatched_items_are_the_non_gold_tasks_of_earlier_rounds_without_audit_items(project):
    p = project
    new0, gold0 = dispatched_in(p, 0)
    new1, _ = dispatched_in(p, 1)
    audit = set(p.audit_reserve)
    assert gold0 and new0
    assert p.dispatched_items(before_round=0) == set()
    assert p.dispatched_items(before_round=1) == new0 - audit
    assert p.dispatched_items(before_round=2) == (new0 | new1) - audit
    assert p.dispatched_items() == p.dispatched_items(before_round=99) == (new0 | new1) - audit
    assert not p.dispatched_items() & set(p.gold_set)


def test_excluded_masks_exactly_the_dispatched_and_reserved_rows(project):
    p = project
    for r in (0, 1, 2):
        mask = excluded(p, r)
        assert mask.dtype == bool and mask.shape == (len(p.pool),)
        expected = p.dispatched_items(before_round=r) | p.reserved_items()
        assert set(p.pool.ids[mask].tolist()) == expected
    assert excluded(p, 1).sum() < excluded(p, 2).sum()


def test_excluded_ignores_ids_that_are_not_in_the_pool(project):
    p = Project(project.store, project.config)
    p.__dict__["audit_reserve"] = (*project.audit_reserve, "not-a-pool-id")
    mask = excluded(p, 0)
    assert mask.sum() == len(project.reserved_items())


def test_spent_sums_the_pay_records_of_earlier_rounds(project):
    p = project
    totals = [read_json(p.store, keys.round_key(r, keys.PAY))["total"] for r in (0, 1)]
    assert p.spent(0) == 0.0
    assert p.spent(1) == totals[0]
    assert p.spent(2) == round(totals[0] + totals[1], 2)
    assert p.spent(5) == p.spent(2)  # rounds without a pay record add nothing


def test_the_gold_set_is_drawn_by_seed_with_the_pool_s_answers(tmp_path):
    from tests.conftest import small_config

    cfg = parse_config(small_config(**{"gold.share": 0.2, "gold.n_items": 12}))
    p = Project.prepare(cfg, str(tmp_path / "a"))
    again = Project.prepare(cfg, str(tmp_path / "b"))
    assert len(p.gold_set) == 12 and p.gold_set == again.gold_set
    rows = p.rows_of(list(p.gold_set))
    assert [p.gold_set[i] for i in p.gold_set] == [str(v) for v in p.pool.y[rows]]
    assert list(p.gold_set) == sorted(p.gold_set, key=lambda i: p.index_of[i])  # pool order
    other = Project.prepare(parse_config(small_config(**{"gold.share": 0.2, "gold.n_items": 12, "seed": 8})),
                            str(tmp_path / "c"))
    assert other.gold_set != p.gold_set
    assert Project.prepare(parse_config(small_config()), str(tmp_path / "d")).gold_set == {}


def test_the_audit_reserve_is_half_the_free_pool_at_most_and_three_times_max_items_when_active(tmp_path):
    from tests.conftest import small_config

    def reserve(**evaluation):
        cfg = parse_config(small_config(**{"evaluation": evaluation, "gold.share": 0.2, "gold.n_items": 10}))
        return Project.prepare(cfg, str(tmp_path / f"p{len(list(tmp_path.iterdir()))}"))

    p = reserve(method="random", max_items=30)
    assert len(p.audit_reserve) == 30 and not set(p.audit_reserve) & set(p.gold_set)
    free = len(p.pool) - len(p.gold_set)
    assert len(reserve(method="active", max_items=30).audit_reserve) == 90
    assert len(reserve(method="random", max_items=5000).audit_reserve) == free // 2
    assert len(reserve(method="random", max_items=30, reserve=50).audit_reserve) == 50
    assert reserve(method="none").audit_reserve == ()
    assert reserve(method="random", max_items=30).audit_reserve == p.audit_reserve  # same seed, same reserve
