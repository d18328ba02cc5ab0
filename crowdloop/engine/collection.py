"""Step ``collect``: poll the vendor until round ``r``'s answers are in or its deadline passed.

Answers go to the append-only label log at once (one content-addressed segment per poll,
de-duplicated by ``(vendor, assignment_id)``), so polling again after a crash loses nothing
and stores nothing twice. The deadline is ``collect.timeout_s`` after the dispatch recorded
in the store, so it holds across processes. With ``collect.mode: defer`` a poll that finds
answers missing returns ``pending`` without recording anything final: a scheduled flow calls
it again later instead of keeping a process asleep through hours of human work.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import pandas as pd

from crowdloop import keys
from crowdloop.engine import hooks
from crowdloop.engine.project import Project, write_once, write_once_bytes
from crowdloop.errors import VendorDataError
from crowdloop.records import Annotation, content_hash, to_jsonl


def collect(p: Project, r: int, *, wait: bool | None = None, sleep: Callable[[float], None] = time.sleep,
            on_progress: Callable[[int, int], None] | None = None) -> dict[str, Any]:
    """Poll until every task of round ``r`` has its judgments or the collect deadline passes.

    ``wait`` defaults to the config (``collect.mode == "wait"``); with ``wait=False`` this polls
    once and returns ``{"pending": True, ...}`` while answers are missing.
    """
    done = p.record(r, keys.COLLECTED, default=None)
    if done is not None:
        return done
    intent = p.require(r, keys.DISPATCH, step="collect")
    sent = p.require(r, keys.REFS, step="collect")
    if wait is None:
        wait = p.config.collect.mode == "wait"
    expected = {t["item_id"]: t["replicas"] for t in intent["tasks"]}
    wanted = sum(expected.values())
    deadline = sent.get("dispatched_at", time.time()) + p.config.collect.timeout_s
    while True:
        # Decided before the poll: the poll that closes the round by its deadline is made after
        # it, so whatever a vendor let workers submit until the deadline is in (vendors end their
        # listing early enough for that: docs/vendors.md "Work after the deadline").
        closing = time.time() >= deadline
        try:
            good, error = _validated(p, intent, p.vendor.poll(sent["refs"]))
            append_segment(p, r, good)
        except Exception:
            # A vendor object returns each answer once; answers it handed out that never reached
            # the log would be lost to a retry in this process. A fresh vendor object polls again
            # from the store and the vendor, and the log de-duplicates.
            p.forget_vendor()
            raise
        hooks.point("collect:after_segment", r)
        if error is not None:
            raise error
        have = sum(1 for a in p.annotations() if a.batch_id == intent["batch_id"])
        if on_progress:
            on_progress(have, wanted)
        if have >= wanted or closing:
            break
        if not wait:
            return {"round": r, "pending": True, "n_annotations": have, "expected": wanted, "deadline": deadline}
        sleep(p.config.collect.poll_interval_s)
    mine = [a for a in p.annotations() if a.batch_id == intent["batch_id"]]
    per_item = pd.Series([a.item_id for a in mine]).value_counts() if mine else pd.Series(dtype=int)
    missing = sorted(i for i, n in expected.items() if per_item.get(i, 0) < n)
    # ``segments``: the part of the label log these answers are in, so a segment lost later is named
    result = {"round": r, "n_annotations": len(mine), "expected": wanted, "complete": not missing,
              "incomplete_items": missing[:100], "n_incomplete": len(missing),
              "segments": [k for k in p.store.list(keys.SEGMENTS) if keys.round_of_segment(k) == r]}
    write_once(p.store, keys.round_key(r, keys.COLLECTED), result)
    return result


def _validated(p: Project, intent: dict[str, Any], anns: list[Annotation]) -> tuple[list[Annotation], VendorDataError | None]:
    """The answers before the first bad one, and the error naming that one (None if all are good).

    Good answers before a bad one are still stored: they were handed out once and would be lost.
    """
    items = {t["item_id"] for t in intent["tasks"]}
    good: list[Annotation] = []
    for a in anns:
        problem = None
        if a.label not in p.classes:
            problem = f"label {a.label!r} for item {a.item_id!r} is not one of the classes {list(p.classes)}"
        elif a.item_id not in items:
            problem = f"item {a.item_id!r} was not dispatched in batch {intent['batch_id']!r}"
        elif a.vendor != intent["vendor"]:
            problem = f"annotation claims vendor {a.vendor!r}, expected {intent['vendor']!r}"
        if problem:
            return good, VendorDataError(
                f"vendor {intent['vendor']!r} returned a bad answer (assignment {a.assignment_id!r}): {problem}")
        good.append(a)
    return good, None


def append_segment(p: Project, r: int, anns: list[Annotation]) -> int:
    """Append new annotations to the label log as one content-addressed segment; returns how many were new."""
    known = {a.key for a in p.annotations()}
    fresh: list[Annotation] = []
    for a in anns:
        if a.key not in known:
            known.add(a.key)
            fresh.append(a)
    if fresh:
        data = to_jsonl(fresh)
        write_once_bytes(p.store, keys.segment_key(r, content_hash(data)), data)
    return len(fresh)
