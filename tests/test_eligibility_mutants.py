"""Which pool items a sampler may pick (issue 21: these kill the mutants of ``engine.selection.excluded``
and of the ``Project`` sets it is built from, and each decides a mutant in seconds).

A tiny project (120 digits, 84 in the pool) with seed labels, gold questions and a random accuracy
audit runs rounds 0 and 1 and selects round 2; every set is then checked against what the store
and the pool file say, not against another ``Project`` method."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from crowdloop import engine, keys
from crowdloop.config import parse_config
from crowdloop.engine import Project, selection
from crowdloop.engine.selection import excluded
from crowdloop.errors import CrowdloopError
from crowdloop.storage import read_json
from tests.conftest import small_config

N_ITEMS, N_SEEDS, N_GOLD, N_AUDIT, BATCH = 120, 10, 8, 10, 10


def tiny_pool(root: Path, *, seeds: bool) -> Path:
    """The first ``N_ITEMS`` digits as a CSV pool: id, 64 pixels, the label (gold is drawn from it)
    and, with ``seeds``, ``old_label`` (seed labels) on the first ``N_SEEDS`` rows."""
    import pandas as pd
    from sklearn.datasets import load_digits

    X, y = load_digits(return_X_y=True)
    frame = pd.DataFrame(X[:N_ITEMS], columns=[f"px{i}" for i in range(X.shape[1])])
    frame.insert(0, "id", [f"d{i:03d}" for i in range(N_ITEMS)])
    frame["label"] = y[:N_ITEMS].astype(str)
    if seeds:
        frame["old_label"] = ""
        frame.loc[: N_SEEDS - 1, "old_label"] = y[:N_SEEDS].astype(str)
    path = root / "pool.csv"
    frame.to_csv(path, index=False)
    return path


def tiny_project(root: Path, *, reserved: bool = True, **overrides) -> Project:
    """A prepared project over ``tiny_pool`` (no round run); ``reserved``: with seed labels, gold and an audit."""
    pool = {"source": "csv", "path": str(tiny_pool(root, seeds=reserved)), "id_column": "id", "label_column": "label",
            "test_size": 0.3}
    settings = {"pool": pool, "sampler": {"name": "margin", "batch_size": BATCH, "initial_size": BATCH},
                "stopping": {"max_rounds": 3}}
    if reserved:
        pool["seed_labels"] = {"column": "old_label"}
        settings |= {"gold.share": 0.2, "gold.n_items": N_GOLD,
                     "evaluation": {"method": "random", "max_items": N_AUDIT, "batch_size": 5}}
    return Project.prepare(parse_config(small_config(**settings | overrides)), str(root / "p"))


@pytest.fixture(scope="module")
def project(tmp_path_factory) -> Project:
    """Rounds 0 and 1 done, round 2 selected but not dispatched (a round in progress)."""
    p = tiny_project(tmp_path_factory.mktemp("eligible"))
    assert engine.run_round(p, 0) is None and engine.run_round(p, 1) is None
    engine.run_round(p, 2, until="select")
    return p


def seed_items(p: Project) -> set[str]:
    """Pool items with an ``old_label`` in the pool file (the rest of the first rows are held out)."""
    return {f"d{i:03d}" for i in range(N_SEEDS)} & set(p.pool.ids.tolist())


def dispatched_in(p: Project, r: int) -> tuple[set[str], set[str]]:
    """Round ``r``'s dispatched items: (not gold, gold), straight from its intent record."""
    tasks = read_json(p.store, keys.round_key(r, keys.DISPATCH))["tasks"]
    return {t["item_id"] for t in tasks if not t.get("is_gold")}, {t["item_id"] for t in tasks if t.get("is_gold")}


def ineligible(p: Project, r: int) -> set[str]:
    """What no sampler may pick in round ``r``, from the pool file and the intent records."""
    audit = set(p.audit_reserve)
    sent = set().union(*(dispatched_in(p, q)[0] for q in range(r) if p.has(q, keys.DISPATCH))) - audit
    return sent | seed_items(p) | set(p.gold_set) | audit


def test_the_reserved_sets_are_disjoint_and_sized_by_the_config(project):
    p = project
    seeds, gold, audit = seed_items(p), set(p.gold_set), set(p.audit_reserve)
    assert 0 < len(seeds) < N_SEEDS  # some of the first rows fell into the held-out split
    assert len(gold) == N_GOLD and len(p.audit_reserve) == len(audit) == N_AUDIT
    assert not seeds & gold and not seeds & audit and not gold & audit
    assert {label.item_id for label in p.seed_labels} == seeds
    assert p.reserved_items() == seeds | gold | audit


def test_dispatched_items_are_the_non_gold_tasks_of_earlier_rounds_without_audit_items(project):
    p = project
    (new0, gold0), (new1, gold1) = dispatched_in(p, 0), dispatched_in(p, 1)
    audit = set(p.audit_reserve)
    # the filters matter: the intents hold gold tasks and audit items, and round 2 is selected, not dispatched
    assert gold0 and gold1 and new0 & audit and new1 & audit
    assert p.has(2, keys.SELECTION) and not p.has(2, keys.DISPATCH)
    assert p.dispatched_items(before_round=0) == set()
    assert p.dispatched_items(before_round=1) == new0 - audit
    assert p.dispatched_items(before_round=2) == (new0 | new1) - audit
    assert p.dispatched_items(before_round=3) == p.dispatched_items() == (new0 | new1) - audit
    assert len(new0 - audit) == len(new1 - audit) == BATCH


@pytest.mark.parametrize("r", [0, 1, 2, 3])
def test_excluded_masks_exactly_the_dispatched_and_reserved_rows(project, r):
    p = project
    mask = excluded(p, r)
    assert mask.dtype == np.bool_ and mask.shape == (len(p.pool),)
    assert set(p.pool.ids[mask].tolist()) == ineligible(p, r)
    assert int(mask.sum()) == len(ineligible(p, r)) == len(seed_items(p)) + N_GOLD + N_AUDIT + BATCH * min(r, 2)


def test_nothing_is_excluded_in_round_0_of_a_project_without_reserved_items(tmp_path):
    p = tiny_project(tmp_path, reserved=False)
    assert p.reserved_items() == set() and p.dispatched_items() == set()
    mask = excluded(p, 0)
    assert mask.dtype == np.bool_ and mask.shape == (len(p.pool),) and not mask.any()


def test_excluded_ignores_ids_that_are_not_in_the_pool(project):
    p = Project(project.store, project.config)
    p.__dict__["audit_reserve"] = (*project.audit_reserve, "not-a-pool-id")
    assert set(p.pool.ids[excluded(p, 0)].tolist()) == project.reserved_items()


def test_spent_sums_the_pay_records_of_earlier_rounds(project):
    p = project
    totals = [read_json(p.store, keys.round_key(r, keys.PAY))["total"] for r in (0, 1)]
    assert all(t > 0 for t in totals) and round(sum(totals), 2) % 1  # cents, so a rounding to units would show
    assert p.spent(0) == 0.0 and isinstance(p.spent(0), float)
    assert p.spent(1) == totals[0]
    assert p.spent(2) == round(totals[0] + totals[1], 2)
    assert p.spent(3) == p.spent(9) == p.spent(2)  # round 2 has no pay record yet, later rounds none at all


def test_spent_adds_what_the_vendor_paid_later_for_work_of_paid_rounds(project):
    """Money a vendor paid after a batch closed (Prolific's settled late submissions, ``late_paid``)
    counts for that batch's round once the round is paid; other batches' money never does."""
    p = Project.open(project.store)  # a fresh object: the module's project keeps its own vendor
    batches = [p.record(r, keys.DISPATCH)["batch_id"] for r in (0, 1)]
    late = {batches[0]: 0.07, batches[1]: 1.3, "another-project-r0000": 100.0}
    late_vendor = type("LateVendor", (), {"late_paid": lambda self: late})
    p.__dict__["vendor_class"], p.__dict__["vendor"] = late_vendor, late_vendor()
    totals = [read_json(p.store, keys.round_key(r, keys.PAY))["total"] for r in (0, 1)]
    assert p.spent(0) == 0.0
    assert p.spent(1) == round(totals[0] + 0.07, 2)
    assert p.spent(2) == round(totals[0] + totals[1] + 1.37, 2)
    assert p.spent(3) == p.spent(2)  # round 2 is not paid: nothing of it counts yet
    assert project.spent(2) == round(totals[0] + totals[1], 2)  # the simulated crowd has no late_paid

    late.clear()
    late[batches[1]] = 0.004  # round 0's batch paid nothing late; money is counted in cents
    assert p.spent(1) == totals[0]
    assert p.spent(2) == round(totals[0] + totals[1], 2)


def test_spent_names_itself_when_a_paid_round_lost_its_dispatch_record(tmp_path):
    """With a vendor that pays late, a paid round's batch comes from its dispatch record; a store
    that lost it is one line naming the step, the round and the missing key, not a KeyError."""
    p = tiny_project(tmp_path, reserved=False)
    assert engine.run_round(p, 0) is None
    p = Project.open(p.store)
    late_vendor = type("LateVendor", (), {"late_paid": lambda self: {"another-batch": 1.0}})
    p.__dict__["vendor_class"], p.__dict__["vendor"] = late_vendor, late_vendor()
    p.store.delete(keys.round_key(0, keys.DISPATCH))
    with pytest.raises(CrowdloopError, match=r"round 0: step 'spent' needs .*dispatch"):
        p.spent(1)


def test_a_batch_with_an_ineligible_item_is_refused_before_it_is_recorded(tmp_path, monkeypatch):
    """A mask that lets reserved items through (here: only them) fails the selection with one line;
    nothing is recorded, so a fixed run selects again."""
    p = tiny_project(tmp_path)
    right = excluded
    monkeypatch.setattr(selection, "excluded", lambda p, r: ~right(p, r))
    with pytest.raises(CrowdloopError, match=rf"round 0: selection \(margin\) picked {BATCH} ineligible item"):
        engine.run_round(p, 0, until="select")
    assert not p.has(0, keys.SELECTION)
    monkeypatch.setattr(selection, "excluded", right)
    engine.run_round(p, 0, until="select")
    assert not set(p.record(0, keys.SELECTION)["item_ids"]) & p.reserved_items()


def test_a_batch_with_an_item_twice_is_refused(tmp_path, monkeypatch):
    p = tiny_project(tmp_path)
    engine.run_round(p, 0, until="stop")
    free = p.pool.ids[~excluded(p, 0)].tolist()
    monkeypatch.setattr(selection, "_pick", lambda p, r, size: ("margin", [free[0], *free[: size - 1]], {}))
    with pytest.raises(CrowdloopError, match=r"picked 0 ineligible item\(s\) .* and 1 item\(s\) twice"):
        selection.select(p, 0)
    assert not p.has(0, keys.SELECTION)


def test_an_empty_mask_ends_a_pool_exhausting_run_with_that_error_instead_of_re_sending_items(tmp_path, monkeypatch):
    """With no exclusion, a run whose only stop is an exhausted pool used to go on for ever,
    re-sending the items the sampler liked best (found with mutant ``&`` for ``|`` in ``excluded``).
    The loop here is bounded, so a regression fails instead of hanging."""
    p = tiny_project(tmp_path, reserved=False, stopping={"max_rounds": None})
    monkeypatch.setattr(selection, "excluded", lambda p, r: np.zeros(len(p.pool), dtype=bool))
    enough = len(p.pool) // BATCH + 2  # rounds a working run needs to exhaust the pool, and then some
    with pytest.raises(CrowdloopError, match="ineligible item"):
        for r in range(enough):
            assert engine.run_round(p, r) is None, "the run stopped without noticing re-sent items"


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
