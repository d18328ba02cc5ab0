"""Hostile answers from vendors: MTurk answer XML and Label Studio annotation JSON.

Whatever a worker, a broken client or someone with write access to the vendor's side sends,
``poll`` returns only well-formed annotations for dispatched items with a known class, never
raises, and every returned record survives the label log's JSON round trip. Unusable answers
are reported (MTurk: ``bad/`` records; Label Studio: a warning) and never returned twice.
"""

from __future__ import annotations

import itertools
import json
import math
import re
import tempfile
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from crowdloop.records import Annotation, Task
from crowdloop.storage import PrefixedStore, write_json
from crowdloop.storage.local import LocalStore
from crowdloop.vendor import VendorContext
from crowdloop.vendors import label_studio as ls
from crowdloop.vendors import mturk

CLASSES = ("cat", "dog", "bird")
FUZZ = settings(max_examples=60, deadline=None,
                suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
_batch_ids = (f"fuzz-{n:05d}" for n in itertools.count())


def _check_records(got: list[Annotation], items: set[str]) -> None:
    """What the label log would store: valid, known classes and items, finite numbers, unique ids."""
    for a in got:
        assert Annotation.model_validate_json(a.model_dump_json()) == a
        assert a.label in CLASSES and a.item_id in items
        assert math.isfinite(a.duration_s) and a.duration_s >= 0 and a.submitted_at.tzinfo is not None
    assert len({a.assignment_id for a in got}) == len(got)


# -- MTurk: QuestionFormAnswers -------------------------------------------------------------------
QFA_NS = "http://mechanicalturk.amazonaws.com/AWSMechanicalTurkDataSchemas/2005-10-01/QuestionFormAnswers.xsd"


def _xml_escape(text: str) -> str:
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


_xml_chars = st.characters(blacklist_categories=("Cs",), blacklist_characters="\x00")
_values = st.one_of(st.sampled_from((*CLASSES, "item0", "item1", "CAT", " cat", "cat\n", "")),
                    st.text(_xml_chars, max_size=12), st.just("x" * 100_000))
_qids = st.one_of(st.sampled_from(["label-0", "item-0", "label-1", "label-00", "LABEL-0", ""]), st.text(_xml_chars, max_size=8))


@st.composite
def answer_documents(draw) -> str:
    """Mostly well-formed QuestionFormAnswers with hostile parts, sometimes raw noise."""
    if draw(st.integers(0, 5)) == 0:
        return draw(st.text(max_size=80))
    ns = draw(st.sampled_from([f' xmlns="{QFA_NS}"', "", ' xmlns="urn:evil"', ' xmlns:q="urn:q"']))
    parts = []
    for _ in range(draw(st.integers(0, 4))):
        qid, value = draw(_qids), draw(_values)
        answer = (f"<QuestionIdentifier>{_xml_escape(qid)}</QuestionIdentifier>"
                  f"<{draw(st.sampled_from(['FreeText', 'SelectionIdentifier', 'q:FreeText']))}>"
                  f"{_xml_escape(value)}</{draw(st.sampled_from(['FreeText', 'SelectionIdentifier', 'q:FreeText']))}>")
        parts.append(f"<{draw(st.sampled_from(['Answer', 'answer', 'q:Answer']))}>{answer}</Answer>")
    root = draw(st.sampled_from(["QuestionFormAnswers", "q:QuestionFormAnswers", "Other"]))
    head = draw(st.sampled_from(['<?xml version="1.0" encoding="UTF-8"?>', "", '<?xml version="1.0" encoding="UTF-16"?>',
                                 "<!-- c -->", "<?pi x?>"]))
    return f"{head}<{root}{ns}>{''.join(parts)}</{root.split(':')[-1] if draw(st.booleans()) else root}>"


@given(st.one_of(answer_documents(), st.text(max_size=200)))
@settings(max_examples=300, deadline=None)
def test_parse_answers_returns_strings_or_raises_value_error(text: str) -> None:
    try:
        out = mturk.parse_answers(text)
    except ValueError as exc:
        assert str(exc)  # a reason for the bad/ record
    else:
        assert all(isinstance(k, str) and isinstance(v, str) for k, v in out.items())


BOMB = ('<?xml version="1.0"?><!DOCTYPE lolz [<!ENTITY lol "lol">'
        + "".join(f'<!ENTITY lol{i} "{("&lol" + (str(i - 1) if i > 1 else "") + ";") * 10}">' for i in range(1, 10))
        + f']><QuestionFormAnswers xmlns="{QFA_NS}"><Answer><QuestionIdentifier>label-0</QuestionIdentifier>'
        "<FreeText>&lol9;</FreeText></Answer></QuestionFormAnswers>")


@pytest.mark.parametrize("xml, reason", [
    (BOMB, "document type declarations are not allowed"),
    ('<!doctype x [<!ENTITY e SYSTEM "file:///etc/passwd">]><QuestionFormAnswers>&e;</QuestionFormAnswers>',
     "document type declarations are not allowed"),
    ("<QuestionFormAnswers><Answer><QuestionIdentifier>label-0</QuestionIdentifier><FreeText>&xxe;</FreeText>"
     "</Answer></QuestionFormAnswers>", "undefined entity"),
    ("<QuestionFormAnswers>" + "<Answer><QuestionIdentifier>label-0</QuestionIdentifier><FreeText>"
     + "x" * 1_100_000 + "</FreeText></Answer></QuestionFormAnswers>", "expected at most 1000000"),
    ("<QuestionFormAnswers><Answer><FreeText>cat</FreeText></Answer></QuestionFormAnswers>", "without QuestionIdentifier"),
    ('<q:Other xmlns:q="urn:x"/>', "root element 'Other'"),
    ("\x00<QuestionFormAnswers/>", "not well-formed"),
])
def test_hostile_answer_xml_is_refused_with_a_reason(xml: str, reason: str) -> None:
    with pytest.raises(ValueError, match=reason):
        mturk.parse_answers(xml)


def _mturk_vendor(root: Path, items_per_hit: int = 1):
    ctx = VendorContext(project="hostile", name="mturk", seed=0, classes=CLASSES,
                        store=PrefixedStore(LocalStore(root), "vendor/mturk"),
                        item_payload=lambda item: {"kind": "text", "text": f"text of {item}"})
    return mturk.MTurkVendor({"max_requests_per_second": 100, "items_per_hit": items_per_hit}, ctx)


@settings(FUZZ, max_examples=30)
@given(answers=st.lists(st.one_of(answer_documents(), st.dictionaries(_qids, _values, max_size=3)), min_size=1, max_size=5),
       items_per_hit=st.sampled_from([1, 2]))
def test_mturk_poll_keeps_only_well_formed_answers(fake, answers: list, items_per_hit: int) -> None:
    with tempfile.TemporaryDirectory() as root:
        vendor = _mturk_vendor(Path(root), items_per_hit)
        batch = next(_batch_ids)
        tasks = [Task(item_id=f"item{k}", round=0, batch_id=batch, replicas=len(answers), reward=0.05)
                 for k in range(items_per_hit)]
        refs = vendor.submit(tasks, batch_id=batch)
        assert len(refs) == 1
        for n, answer in enumerate(answers):
            fake.work(refs[0]["hit_id"], answer, worker=f"AFUZZ{n}")
        got = vendor.poll(refs)
        _check_records(got, {t.item_id for t in tasks})
        assignments = {a.assignment_id.split(":")[0] for a in got}
        bad = vendor.bad_assignments()
        assert len(assignments) + len(bad) == len(answers)  # every assignment: used or reported, never both
        assert not assignments & {b["assignment_id"] for b in bad}
        assert all(len(a) == 1 or len([x for x in got if x.assignment_id.startswith(a)]) == items_per_hit
                   for a in assignments)  # a multi-item assignment is used whole or not at all
        restarted = _mturk_vendor(Path(root), items_per_hit)
        restarted._client = vendor._client  # a new process, minus the cost of building a boto3 client
        assert vendor.poll(refs) == [] and restarted.poll(refs) == got


# -- Label Studio: task and annotation JSON ------------------------------------------------------
class _Tasks:
    def __init__(self, pages: list[dict[str, Any]]) -> None:
        self.pages = pages

    def list(self, **_: Any) -> list[dict[str, Any]]:
        return [json.loads(json.dumps(t)) for t in self.pages]  # fresh copies, as from the wire


class _Client:
    def __init__(self, tasks: list[dict[str, Any]]) -> None:
        self.tasks = _Tasks(tasks)


_json_scalar = st.one_of(st.none(), st.booleans(), st.integers(-3, 2**63), st.floats(allow_nan=False, allow_infinity=False),
                         st.text(max_size=10))
_json = st.recursive(_json_scalar,
                     lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=6), inner, max_size=3),
                     max_leaves=8)


def _maybe(strategy):
    return st.one_of(strategy, _json)


_choice_result = st.fixed_dictionaries({
    "from_name": _maybe(st.just("label")), "type": _maybe(st.just("choices")), "to_name": st.just("item"),
    "value": _maybe(st.fixed_dictionaries({"choices": _maybe(st.lists(_maybe(st.sampled_from((*CLASSES, "horse"))),
                                                                      max_size=2))})),
})
_annotation = st.fixed_dictionaries(
    {"id": _maybe(st.integers(1, 10_000))},
    optional={
        "result": _maybe(st.lists(_maybe(_choice_result), max_size=3)),
        "was_cancelled": _maybe(st.booleans()),
        "completed_by": _maybe(st.one_of(st.integers(1, 50), st.fixed_dictionaries({"id": _maybe(st.integers(1, 50))}))),
        "lead_time": st.one_of(_maybe(st.floats(0, 5000)), st.sampled_from(["1e999", "nan", -1, 1e300])),
        "updated_at": _maybe(st.sampled_from(["2026-05-01T10:00:00.123456Z", "2026-05-01T10:00:00", "yesterday", 1_700_000_000])),
        "created_at": _maybe(st.just("2026-05-01T09:00:00Z")),
    })
_task = st.fixed_dictionaries({
    "id": _maybe(st.sampled_from([1, 2, 3, "2", 99])),
    "annotations": _maybe(st.lists(_maybe(_annotation), max_size=4)),
})


@FUZZ
@given(tasks=st.lists(_task, max_size=5))
def test_label_studio_poll_keeps_only_well_formed_answers(tmp_path_factory, tasks: list) -> None:
    with tempfile.TemporaryDirectory() as root:
        store = PrefixedStore(LocalStore(root), "vendor/label_studio")
        ctx = VendorContext(project="hostile", name="label_studio", seed=0, classes=CLASSES, store=store,
                            item_payload=lambda item: {"kind": "text", "text": item})
        vendor = ls.LabelStudioVendor({}, ctx)
        items = {"item1": 1, "item2": 2, "item3": 3}
        write_json(store, "batches/b.json", {"batch_id": "b", "project_id": 7, "round": 0, "tasks": items,
                                             "rewards": dict.fromkeys(items, 0.04), "is_gold": dict.fromkeys(items, False)})
        vendor._client = _Client(tasks)
        got = vendor.poll([{"batch_id": "b", "project_id": 7}])
        _check_records(got, set(items))
        assert all(re.fullmatch(r"ls-user-[1-9]\d*", a.worker_id) and re.fullmatch(r"ls7-[1-9]\d*", a.assignment_id)
                   for a in got)
        assert vendor.poll([{"batch_id": "b", "project_id": 7}]) == []


def test_label_studio_skips_the_unusable_and_keeps_the_good(tmp_path: Path, caplog) -> None:
    store = PrefixedStore(LocalStore(tmp_path), "vendor/label_studio")
    ctx = VendorContext(project="hostile", name="label_studio", seed=0, classes=CLASSES, store=store,
                        item_payload=lambda item: {"kind": "text", "text": item})
    vendor = ls.LabelStudioVendor({}, ctx)
    write_json(store, "batches/b.json", {"batch_id": "b", "project_id": 7, "round": 0, "tasks": {"i": 1},
                                         "rewards": {"i": 0.04}, "is_gold": {"i": False}})

    def ann(n: int, **extra: Any) -> dict[str, Any]:
        base = {"id": n, "completed_by": 3, "lead_time": 4.5, "updated_at": "2026-05-01T10:00:00Z",
                "result": [{"from_name": "label", "to_name": "item", "type": "choices", "value": {"choices": ["dog"]}}]}
        return {**base, **extra}

    vendor._client = _Client([{"id": 1, "annotations": [
        ann(1), ann(2, result=[{"from_name": "label", "type": "choices", "value": {"choices": ["<script>"]}}]),
        ann(3, lead_time=float("inf")), ann(4, updated_at="not a date"), ann(5, completed_by=None),
        ann(6, result="dog"), {"id": "x"}, "junk", ann(7, updated_at="2026-05-01T10:00:00")]}])
    with caplog.at_level("WARNING", logger="crowdloop.vendors.label_studio"):
        got = vendor.poll([{"batch_id": "b", "project_id": 7}])
    assert [(a.assignment_id, a.label, a.worker_id, a.duration_s) for a in got] == [
        ("ls7-1", "dog", "ls-user-3", 4.5), ("ls7-7", "dog", "ls-user-3", 4.5)]
    assert got[1].submitted_at.tzinfo is not None  # naive server times are read as UTC
    skipped = sorted(re.search(r"annotation (ls7-\d+)", r.message).group(1) for r in caplog.records)
    assert skipped == ["ls7-2", "ls7-3", "ls7-4", "ls7-5"]
