"""A small team: each judgment of an item comes from another worker, and blocked workers get none.

With a vendor whose workers are a known group (``workforce``: the simulated crowd, the local
app's annotators), a dispatch never asks an item for more judgments than the workers who can
still give them (``crowdloop.engine.dispatching._fit_to_workforce``). Before, blocking one member
of a three-person team left every later item a judgment short: the simulated crowd failed the
dispatch, the local app's round waited for ``collect.timeout_s``.
"""

from __future__ import annotations

from crowdloop import keys
from crowdloop.engine.dispatching import _fit_to_workforce
from crowdloop.records import Task
from flows.logs import step_summary
from tests.conftest import small_config
from tests.crowd_helpers import intents, run_engine


def _task(item: str, replicas: int, exclude: tuple[str, ...] = ()) -> Task:
    return Task(item_id=item, round=1, batch_id="b1", replicas=replicas, reward=0.05, exclude_workers=exclude)


def test_tasks_are_fitted_to_the_workers_who_can_still_answer() -> None:
    tasks = [_task("new", 3), _task("reask", 1, ("w1", "w2")), _task("gold", 3, ("w1",)), _task("done", 1, ("w1", "w2", "w3"))]
    assert _fit_to_workforce(tasks, None, {"w3"}) == (tasks, [])  # a marketplace: as planned
    assert _fit_to_workforce(tasks, 10, {"w3"}) == (tasks, [])  # enough fresh workers everywhere
    kept, fitted = _fit_to_workforce(tasks, 3, {"w3"})
    assert [(t.item_id, t.replicas) for t in kept] == [("new", 2), ("gold", 1)]
    assert [t.exclude_workers for t in kept] == [(), ("w1",)]
    assert fitted == [{"item_id": "new", "replicas": 3, "sent": 2}, {"item_id": "reask", "replicas": 1, "sent": 0},
                      {"item_id": "gold", "replicas": 3, "sent": 1}, {"item_id": "done", "replicas": 1, "sent": 0}]


def test_a_three_person_team_goes_on_after_blocking_a_member(tmp_path) -> None:
    # one spammer in three workers; gold blocks it after round 0
    cfg = small_config(**{"vendor.params": {"n_workers": 3, "spammer_fraction": 0.34, "accuracy": [0.9, 0.97]},
                          "consensus": {"method": "majority_vote", "redundancy": 3},
                          "gold": {"share": 0.3, "n_items": 30, "min_answers": 3, "min_accuracy": 0.5},
                          "stopping.max_rounds": 3})
    p = run_engine(cfg, str(tmp_path / "p"))
    assert p.rounds()[-1] == 3 and p.has(3, keys.METRICS)
    sent = intents(p)
    assert not sent[0].get("fitted_to_workforce") and {t["replicas"] for t in sent[0]["tasks"]} == {3}
    blocked = set(sent[1]["blocked_workers"])
    assert len(blocked) == 1
    for r, intent in enumerate(sent[1:], start=1):
        assert intent["fitted_to_workforce"] and {t["replicas"] for t in intent["tasks"]} == {2}
        answered = {a.worker_id for a in p.annotations() if a.round == r}
        assert answered and not answered & blocked  # the two left answered everything
    refs = p.record(1, keys.REFS)
    assert refs["n_fitted_to_workforce"] == len(sent[1]["fitted_to_workforce"])
    assert "fewer judgments than planned" in step_summary("dispatch", 1, refs)
