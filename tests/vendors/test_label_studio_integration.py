"""Two rounds of the engine against a real Label Studio server; the test plays the annotators.

Slow tier: the server runs from its own venv (see label_studio_server.SETUP_HINT; missing, the
test fails with the command that creates it); the first run on a machine migrates a template
data directory (minutes), later runs copy it.
"""

from __future__ import annotations

import zlib
from pathlib import Path

import pytest

from crowdloop import engine, keys
from crowdloop.config import parse_config
from crowdloop.engine import Project
from crowdloop.errors import VendorError
from crowdloop.storage import read_json
from tests.conftest import small_config
from tests.vendors import label_studio_server as lss

pytestmark = pytest.mark.slow


def _choice(label: str) -> list[dict]:
    return [{"from_name": "label", "to_name": "item", "type": "choices", "value": {"choices": [label]}}]


def test_two_rounds_with_label_studio(tmp_path: Path, label_studio: lss.Server, monkeypatch: pytest.MonkeyPatch) -> None:
    from label_studio_sdk import LabelStudio

    monkeypatch.setenv("LABEL_STUDIO_URL", label_studio.url)
    monkeypatch.setenv("LABEL_STUDIO_API_KEY", label_studio.token)
    config = small_config(**{
        "project": "lsloop", "vendor": {"name": "label_studio", "params": {"instructions": "Pick the digit."}},
        "sampler.initial_size": 6, "sampler.batch_size": 4, "consensus.redundancy": 2,
        "collect.poll_interval_s": 0.2, "collect.timeout_s": 60, "stopping.max_rounds": 2,
    })
    p = Project.prepare(parse_config(config), str(tmp_path / "p"))
    truth = {item: str(label) for item, label in zip(p.pool.ids.tolist(), p.pool.y.tolist(), strict=True)}
    ls = LabelStudio(base_url=label_studio.url, api_key=label_studio.token)
    annotators = [ls.users.create(username=f"annotator{k}", email=f"annotator{k}@example.com",
                                  password=f"annotator-{k}-password") for k in range(2)]

    for r in range(2):
        engine.run_round(p, r, until="dispatch")
        dispatched = engine.dispatch(p, r)
        batch = read_json(p.vendor.store, f"batches/{dispatched['batch_id']}.json")
        project_id = batch["project_id"]
        assert ls.projects.get(project_id).maximum_annotations == 2  # redundancy as the project's overlap
        # the annotators work through the batch; one first skips a task (a cancelled annotation is no label)
        for item, task_id in batch["tasks"].items():
            if zlib.crc32(item.encode()) % 3 == 0:
                ls.annotations.create(task_id, result=[], was_cancelled=True, completed_by=annotators[0].id, lead_time=2.0)
            for k, user in enumerate(annotators):
                ls.annotations.create(task_id, result=_choice(truth[item]), completed_by=user.id, lead_time=5.0 + k)
        engine.collect(p, r)
        engine.aggregate(p, r)
        engine.pay(p, r)
        engine.collect(p, r)  # replay: nothing new

    anns = p.annotations()
    assert len(anns) == 2 * (6 + 4) and {a.vendor for a in anns} == {"label_studio"}
    assert {a.worker_id for a in anns} == {f"ls-user-{u.id}" for u in annotators}
    assert sorted({a.duration_s for a in anns}) == [5.0, 6.0]
    labels = p.human_labels(before_round=2)
    assert len(labels) == 10 and all(item.label == truth[item.item_id] for item in labels)
    assert read_json(p.store, keys.round_key(1, keys.COLLECTED))["complete"] is True
    tasks = list(ls.tasks.list(project=project_id, fields="all"))
    assert len(tasks) == 10  # nothing imported twice
    # a resubmission of a batch creates nothing new
    intent = read_json(p.store, keys.round_key(1, keys.DISPATCH))
    from crowdloop.records import Task

    p.vendor.submit([Task.model_validate(t) for t in intent["tasks"]], batch_id=intent["batch_id"])
    assert len(list(ls.tasks.list(project=project_id))) == 10

    # tasks whose payload carries the model's prediction are imported with it as pre-annotation
    spare = next(i for i in truth if i not in p.dispatched_items())
    extra = Task(item_id=spare, round=2, batch_id="lsloop-extra", replicas=2, reward=0.01,
                 payload={"prediction": {"label": truth[spare], "score": 0.83}})
    p.vendor.submit([extra], batch_id="lsloop-extra")
    task_id = read_json(p.vendor.store, "batches/lsloop-extra.json")["tasks"][spare]
    prediction = ls.tasks.get(str(task_id)).model_dump()["predictions"][0]
    assert prediction["score"] == pytest.approx(0.83) and prediction["result"] == _choice(truth[spare])

    # a crash during an import: one task of the batch reached Label Studio, the result was never
    # recorded; the rerun imports only the missing one
    fresh = [i for i in truth if i not in p.dispatched_items() and i != spare][:2]
    batch = [Task(item_id=i, round=3, batch_id="lsloop-crash", replicas=2, reward=0.01) for i in fresh]
    from crowdloop.vendors.label_studio import DATA_FIELD

    field = DATA_FIELD[read_json(p.vendor.store, "project.json")["data_type"]]  # digits show as images
    row = p.vendor._import_row(batch[0], p.vendor.context.item_payload(fresh[0]), field, "lsloop-crash")
    ls.projects.import_tasks(project_id, request=[row])
    p.vendor.submit(batch, batch_id="lsloop-crash")
    imported = [t.data.get("crowdloop_item") for t in ls.tasks.list(project=project_id)
                if t.data.get("crowdloop_batch") == "lsloop-crash"]
    assert sorted(imported) == sorted(fresh)


def test_a_text_round_with_label_studio(tmp_path: Path, label_studio: lss.Server, monkeypatch: pytest.MonkeyPatch) -> None:
    """A text pool (the fortunes sample, TF-IDF) on Label Studio: a Text + Choices project whose
    tasks carry the texts verbatim (markup included: Label Studio shows it as text)."""
    from label_studio_sdk import LabelStudio

    from tests.conftest import REPO

    monkeypatch.setenv("LABEL_STUDIO_URL", label_studio.url)
    monkeypatch.setenv("LABEL_STUDIO_API_KEY", label_studio.token)
    classes = ["computers", "politics", "startrek"]
    config = small_config(**{
        "project": "lstext", "vendor": {"name": "label_studio", "params": {}},
        "guidelines": {"text": "Which fortune file?\nRead it to the end.", "classes": {"startrek": "Kirk, Spock & co"}},
        "pool": {"source": "fortunes", "path": str(REPO / "tests" / "data" / "fortunes"), "classes": classes,
                 "test_size": 0.3},
        "model": {"estimator": "sklearn.linear_model.LogisticRegression", "params": {"max_iter": 500},
                  "features": {"kind": "tfidf", "dense_dim": 16}},
        "sampler.initial_size": 5, "consensus.redundancy": 1, "consensus.method": "majority_vote",
        "collect.poll_interval_s": 0.2, "collect.timeout_s": 60, "stopping.max_rounds": 1,
    })
    p = Project.prepare(parse_config(config), str(tmp_path / "p"))
    texts = dict(zip(p.pool.ids.tolist(), p.pool.content.tolist(), strict=True))
    truth = dict(zip(p.pool.ids.tolist(), p.pool.y.tolist(), strict=True))
    ls = LabelStudio(base_url=label_studio.url, api_key=label_studio.token)
    engine.run_round(p, 0, until="dispatch")
    dispatched = engine.dispatch(p, 0)
    batch = read_json(p.vendor.store, f"batches/{dispatched['batch_id']}.json")
    label_config = ls.projects.get(batch["project_id"]).label_config
    assert '<Text name="item" value="$text"/>' in label_config and '<Choices name="label" toName="item"' in label_config
    assert all(f'<Choice value="{c}"/>' in label_config for c in classes[:2])
    assert '<Choice value="startrek" hint="Kirk, Spock &amp; co"/>' in label_config
    # the project's guidelines and class notes are its instructions (escaped: '&' is text)
    shown = ls.projects.get(batch["project_id"])
    assert shown.expert_instruction == ("<p>Which fortune file?<br>Read it to the end.</p>"
                                        "<ul><li><b>startrek</b>: Kirk, Spock &amp; co</li></ul>")
    assert shown.show_instruction
    for item, task_id in batch["tasks"].items():
        assert ls.tasks.get(str(task_id)).data["text"] == texts[item]
        ls.annotations.create(task_id, result=_choice(truth[item]), lead_time=4.0)
    engine.collect(p, 0)
    engine.aggregate(p, 0)
    labels = p.human_labels(before_round=1)
    assert sorted(item.item_id for item in labels) == sorted(batch["tasks"])
    assert all(item.label == truth[item.item_id] for item in labels)


def test_label_studio_honours_the_contract_with_its_capabilities(tmp_path: Path, label_studio: lss.Server,
                                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    """check_vendor on the real server: a blocked annotator's labeling stream answers 403, and a
    re-ask (a raised overlap on the item's own task) never reaches an annotator who annotated it."""
    import httpx

    from crowdloop.storage.local import LocalStore
    from crowdloop.testing import check_vendor, make_context
    from crowdloop.vendors.label_studio import LabelStudioVendor
    from tests.vendors.quality_loop import sign_up

    monkeypatch.setenv("LABEL_STUDIO_URL", label_studio.url)
    monkeypatch.setenv("LABEL_STUDIO_API_KEY", label_studio.token)
    tokens = {}
    for k in range(4):
        uid, token = sign_up(label_studio.url, f"contract{k}@example.com", f"Contract-{k}-pass!")
        tokens[f"ls-user-{uid}"] = token
    refused = []

    def annotators(vendor, tasks, batch_id):
        pid = vendor.project_id()
        for worker, token in tokens.items():  # each works through what the labeling stream gives them
            headers = {"Authorization": f"Token {token}"}
            stream = f"{label_studio.url}/api/projects/{pid}/next/"
            while (nxt := httpx.get(stream, headers=headers, timeout=60)).status_code == 200:
                result = [{"from_name": "label", "to_name": "item", "type": "choices",
                           "value": {"choices": [vendor.context.classes[0]]}}]
                httpx.post(f"{label_studio.url}/api/tasks/{nxt.json()['id']}/annotations/", headers=headers, timeout=60,
                           json={"result": result, "lead_time": 4.0}).raise_for_status()
            if nxt.status_code == 403:
                refused.append(worker)

    context = make_context(LocalStore(tmp_path), name="label_studio", project="lscontract")
    report = check_vendor(LabelStudioVendor, params={"block_removes_membership": True}, context=context,
                          respond=annotators, n_items=3, replicas=2, workers=list(tokens), timeout_s=60)
    assert not report.skipped and report.n_annotations == 6 + 3 + 6
    assert refused == [next(iter(tokens))]  # the blocked annotator, and only in the second batch


def test_a_closed_rounds_tasks_take_no_new_work_and_late_annotations_are_reported(
        tmp_path: Path, label_studio: lss.Server, monkeypatch: pytest.MonkeyPatch) -> None:
    """On main a round's tasks stayed in the Label Studio project after collect.timeout_s: its
    unanswered tasks could be annotated for ever, and such labels were lost without a word."""
    import time

    from label_studio_sdk import LabelStudio
    from label_studio_sdk.core.api_error import ApiError

    monkeypatch.setenv("LABEL_STUDIO_URL", label_studio.url)
    monkeypatch.setenv("LABEL_STUDIO_API_KEY", label_studio.token)
    config = small_config(**{
        "project": "lslate", "vendor": {"name": "label_studio", "params": {}},
        "sampler.initial_size": 4, "sampler.batch_size": 2, "consensus.redundancy": 2,
        "consensus.method": "majority_vote", "collect.poll_interval_s": 0.2, "collect.timeout_s": 4,
        "stopping.max_rounds": 2,
    })
    p = Project.prepare(parse_config(config), str(tmp_path / "p"))
    truth = {item: str(label) for item, label in zip(p.pool.ids.tolist(), p.pool.y.tolist(), strict=True)}
    ls = LabelStudio(base_url=label_studio.url, api_key=label_studio.token)
    first, second = (ls.users.create(username=f"late{k}", email=f"late{k}@example.com", password=f"late-{k}-password")
                     for k in range(2))
    engine.run_round(p, 0, until="dispatch")
    batch = read_json(p.vendor.store, f"batches/{engine.dispatch(p, 0)['batch_id']}.json")
    items = sorted(batch["tasks"])
    done, partial, untouched = items[:2], items[2], items[3]
    for item in done:
        for user in (first, second):
            ls.annotations.create(batch["tasks"][item], result=_choice(truth[item]), completed_by=user.id, lead_time=5.0)
    ls.annotations.create(batch["tasks"][partial], result=_choice(truth[partial]), completed_by=first.id, lead_time=5.0)
    dispatched_at = read_json(p.store, keys.round_key(0, keys.REFS))["dispatched_at"]
    time.sleep(max(0.0, dispatched_at + 4 - time.time()) + 0.5)
    collected = engine.collect(p, 0)  # the poll after the deadline closes the batch
    assert collected["n_annotations"] == 5 and collected["incomplete_items"] == sorted([partial, untouched])
    with pytest.raises(ApiError):  # nobody annotated it: deleted, so nobody can start on it now
        ls.tasks.get(str(batch["tasks"][untouched]))
    kept = ls.tasks.get(str(batch["tasks"][partial]))
    assert kept.id == batch["tasks"][partial]  # its answer stays ...
    assert (kept.overlap, kept.is_labeled) == (1, True)  # ... and Label Studio hands it to nobody else
    assert [(t.id, t.overlap) for t in (ls.tasks.get(str(batch["tasks"][i])) for i in done)] == [
        (batch["tasks"][i], 2) for i in done]  # finished tasks are left as they were
    engine.aggregate(p, 0)
    engine.pay(p, 0)
    late = ls.annotations.create(batch["tasks"][partial], result=_choice(truth[partial]), completed_by=second.id,
                                 lead_time=5.0)  # an editor left open: after the close
    engine.run_round(p, 1, until="dispatch")
    engine.dispatch(p, 1)
    p.vendor.poll(read_json(p.store, keys.round_key(1, keys.REFS))["refs"])
    found = p.vendor.late_annotations()
    assert [(x["annotation"], x["batch_id"], x["worker_id"]) for x in found] == [
        (f"ls{batch['project_id']}-{late.id}", batch["batch_id"], f"ls-user-{second.id}")]
    assert p.vendor.ledger()["late"] == 1 and all(a.assignment_id != found[0]["annotation"] for a in p.annotations())
    p.vendor.poll(read_json(p.store, keys.round_key(1, keys.REFS))["refs"])
    assert len(p.vendor.late_annotations()) == 1  # reported once


def test_a_batch_with_two_redundancies_gives_each_task_its_own_overlap_and_touches_no_earlier_task(
        tmp_path: Path, label_studio: lss.Server, monkeypatch: pytest.MonkeyPatch) -> None:
    """The audit asks 5 judgments of its items beside the batch's 3. Before, such a batch failed
    ("one batch needs one redundancy"); and changing the project's maximum_annotations would make
    Label Studio reset the overlap of every task above 1, reopening a finished one. A crash after
    the import and before the overlaps are set is repaired by the rerun."""
    from label_studio_sdk import LabelStudio

    from crowdloop.records import Task

    monkeypatch.setenv("LABEL_STUDIO_URL", label_studio.url)
    monkeypatch.setenv("LABEL_STUDIO_API_KEY", label_studio.token)
    config = small_config(**{"project": "lsmixed", "vendor": {"name": "label_studio", "params": {}},
                             "consensus.redundancy": 3, "collect.timeout_s": 600})
    p = Project.prepare(parse_config(config), str(tmp_path / "p"))
    items = [str(i) for i in p.pool.ids.tolist()[:9]]
    ls = LabelStudio(base_url=label_studio.url, api_key=label_studio.token)
    first = [Task(item_id=i, round=0, batch_id="lsmixed-0", replicas=r, reward=0.01)
             for i, r in zip(items[:4], (3, 3, 3, 5), strict=True)]
    p.vendor.submit(first, batch_id="lsmixed-0")
    batch0 = read_json(p.vendor.store, "batches/lsmixed-0.json")
    pid = batch0["project_id"]
    assert ls.projects.get(pid).maximum_annotations == 3  # the first batch's most common redundancy
    assert [ls.tasks.get(str(batch0["tasks"][i])).overlap for i in items[:4]] == [3, 3, 3, 5]
    finished = str(batch0["tasks"][items[0]])
    ls.tasks.update(finished, overlap=2, is_labeled=True)  # as a closed batch leaves a task with 2 of its 3

    # the second batch: mostly 5 (an audit batch); the process dies at the first overlap it sets
    second = [Task(item_id=i, round=1, batch_id="lsmixed-1", replicas=r, reward=0.01)
              for i, r in zip(items[4:], (5, 5, 5, 3, 2), strict=True)]
    real_update = p.vendor.client.tasks.update
    calls = {"n": 0}

    def dies_on_first_overlap(*args, **kwargs):
        calls["n"] += 1
        raise KeyboardInterrupt("killed after the import")

    monkeypatch.setattr(p.vendor.client.tasks, "update", dies_on_first_overlap)
    with pytest.raises(KeyboardInterrupt):
        p.vendor.submit(second, batch_id="lsmixed-1")
    monkeypatch.setattr(p.vendor.client.tasks, "update", real_update)
    assert calls["n"] == 1 and not p.vendor.store.exists("batches/lsmixed-1.json")
    p.vendor.submit(second, batch_id="lsmixed-1")  # the rerun
    batch1 = read_json(p.vendor.store, "batches/lsmixed-1.json")
    assert [ls.tasks.get(str(batch1["tasks"][i])).overlap for i in items[4:]] == [5, 5, 5, 3, 2]
    assert len(list(ls.tasks.list(project=pid))) == 9  # nothing imported twice
    assert ls.projects.get(pid).maximum_annotations == 3  # never changed once the project held tasks
    kept = ls.tasks.get(finished)
    assert (kept.overlap, kept.is_labeled) == (2, True)  # the finished task stays finished


def test_a_second_store_of_the_same_project_name_is_refused_before_it_takes_the_first_ones_answers(
        tmp_path: Path, label_studio: lss.Server, monkeypatch: pytest.MonkeyPatch) -> None:
    """Batch ids are ``<project>-rNNNN``. Before, a store deleted to start over (or a second store of
    the same name) found the Label Studio project by its title, found round 0's batch there and took
    its tasks and answers as its own: the old answers became the new run's labels and were booked
    again. Now the new store refuses in one line before it imports or collects anything."""
    from label_studio_sdk import LabelStudio

    monkeypatch.setenv("LABEL_STUDIO_URL", label_studio.url)
    monkeypatch.setenv("LABEL_STUDIO_API_KEY", label_studio.token)
    config = small_config(**{"project": "lsrestart", "vendor": {"name": "label_studio", "params": {}},
                             "sampler.initial_size": 4, "consensus.redundancy": 1, "collect.timeout_s": 600})
    first = Project.prepare(parse_config(config), str(tmp_path / "first"))
    engine.run_round(first, 0, until="dispatch")
    pid = read_json(first.vendor.store, "project.json")["id"]
    ls = LabelStudio(base_url=label_studio.url, api_key=label_studio.token)
    n_tasks = len(list(ls.tasks.list(project=pid)))

    again = Project.prepare(parse_config(config), str(tmp_path / "again"))  # the same config, a new store
    with pytest.raises(VendorError, match=r"already holds tasks of batch 'lsrestart-r0000', which this project "
                                          r"store did not send") as refused:
        engine.run_round(again, 0, until="dispatch")
    assert len(str(refused.value).splitlines()) == 1 and "vendor.params.title" in str(refused.value)
    assert len(list(ls.tasks.list(project=pid))) == n_tasks  # nothing imported
    assert not again.vendor.store.exists("project.json")

    # batches of a project whose name merely starts like this one's ('lsx-rerun-r0000') are not this one's
    rerun = small_config(**{**config, "project": "lsx-rerun",
                            "vendor": {"name": "label_studio", "params": {"title": "crowdloop lsx"}}})
    engine.run_round(Project.prepare(parse_config(rerun), str(tmp_path / "rerun")), 0, until="dispatch")
    lsx = Project.prepare(parse_config(small_config(**{**config, "project": "lsx"})), str(tmp_path / "lsx"))
    engine.run_round(lsx, 0, until="dispatch")  # finds 'crowdloop lsx' by title and shares it
    shared = read_json(lsx.vendor.store, "project.json")["id"]
    assert {t.data["crowdloop_batch"] for t in ls.tasks.list(project=shared)} == {"lsx-rerun-r0000", "lsx-r0000"}

    # with a Label Studio project of its own the new store runs
    own = small_config(**{**config, "vendor": {"name": "label_studio", "params": {"title": "crowdloop lsrestart 2"}}})
    fresh = Project.prepare(parse_config(own), str(tmp_path / "fresh"))
    engine.run_round(fresh, 0, until="dispatch")
    assert read_json(fresh.vendor.store, "project.json")["id"] != pid


def test_guidelines_changed_on_resume_reach_the_label_studio_project(tmp_path: Path, label_studio: lss.Server,
                                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    """Guidelines may change on resume: the project's instructions follow, once per new text;
    a config without any never empties a reused project's own."""
    import dataclasses

    from label_studio_sdk import LabelStudio

    from crowdloop.records import Task
    from crowdloop.storage.local import LocalStore
    from crowdloop.testing import make_context
    from crowdloop.vendors.label_studio import LabelStudioVendor

    monkeypatch.setenv("LABEL_STUDIO_URL", label_studio.url)
    monkeypatch.setenv("LABEL_STUDIO_API_KEY", label_studio.token)
    base = make_context(LocalStore(tmp_path), name="label_studio", project="lsguide")

    def submit(guidelines: str, batch: str) -> LabelStudioVendor:
        vendor = LabelStudioVendor({}, dataclasses.replace(base, guidelines=guidelines))
        vendor.submit([Task(item_id=f"{batch}-{k}", round=0, batch_id=batch, replicas=1, reward=0.01) for k in range(2)],
                      batch_id=batch)
        return vendor

    ls = LabelStudio(base_url=label_studio.url, api_key=label_studio.token)
    pid = submit("Read it all.", "lsguide-r0000").project_id()
    assert ls.projects.get(pid).expert_instruction == "<p>Read it all.</p>"
    submit("Read it all.\nA refund is billing.", "lsguide-r0001")
    shown = ls.projects.get(pid)
    assert shown.expert_instruction == "<p>Read it all.<br>A refund is billing.</p>" and shown.show_instruction
    submit("", "lsguide-r0002")  # no guidelines: the project keeps what it shows
    assert ls.projects.get(pid).expert_instruction == "<p>Read it all.<br>A refund is billing.</p>"
