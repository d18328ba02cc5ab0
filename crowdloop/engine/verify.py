"""Records that should exist but do not: a project checked against what its own records promise.

The store is the source of truth, so a record deleted between runs (by hand, a sync tool, a
lifecycle rule on a bucket) changes what a resumed run does. Most steps would quietly redo
their work: a missing ``dispatch.json`` makes the next selection pick its items again, which
sends and pays them twice; a missing label-log segment drops answers from every later
aggregate. Nothing of that is a crash the steps could see, so it is checked here, against the
promises declared next to ``ROUND_STEPS`` (``rounds.py``):

* the step order: a step's record implies the record of every earlier step of its round, and
  every round before the last one is complete (has ``pay.json``);
* ``RECORD_NEEDS``: records a step writes before its own, with their sha256 where recorded;
* ``LOG_COUNTS``: how many answers a record counted in the label log and which segments it read;
* the reviewer's correction records an aggregation read (``corrections_read``): a deleted one
  would quietly put the crowd's label back at the next aggregation.

``problems`` lists every broken promise (one line each); ``check_resumable`` runs the cheap
part (no digests) when a run resumes and stops it with the first problem, before anything is
sent or paid. ``crowdloop verify DIR`` runs everything, digests and the pool's included.
"""

from __future__ import annotations

import hashlib
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from crowdloop import keys
from crowdloop.engine.pools import checked_pool_record
from crowdloop.engine.project import MissingRecordError, Project
from crowdloop.engine.rounds import LOG_COUNTS, RECORD_NEEDS, ROUND_STEPS
from crowdloop.errors import PoolError, StoreError


@dataclass(frozen=True)
class Problem:
    """One broken promise: the record at fault (missing or changed) and a one-line explanation."""

    key: str
    message: str
    missing: bool = True  # False: the record exists but does not match what another one recorded

    def __str__(self) -> str:
        return self.message


class ProjectCheck:
    """The checks over one project store (its baseline twin is a second one)."""

    def __init__(self, p: Project, *, deep: bool) -> None:
        self.p, self.deep = p, deep
        self.prefix = ""  # how keys are shown: "baseline/" for the twin
        listing = p.store.list("rounds/")
        self.names: dict[int, set[str]] = {}
        for key in listing:
            r = keys.round_of(key)
            if r is not None:
                self.names.setdefault(r, set()).add(key[len(keys.round_key(r, "")):])
        self.segments = set(p.store.list(keys.SEGMENTS))
        self.found: list[Problem] = []

    def key(self, r: int, name: str) -> str:
        return self.prefix + keys.round_key(r, name)

    def has(self, r: int, name: str) -> bool:
        return name in self.names.get(r, set())

    def record(self, r: int, name: str) -> dict[str, Any]:
        return self.p.record(r, name, default=None) or {}

    def missing(self, r: int, name: str, why: str) -> None:
        self.found.append(Problem(self.key(r, name), f"{self.key(r, name)} is missing, but {why}"))

    # -- the checks -----------------------------------------------------------------------
    def run(self) -> list[Problem]:
        rounds = sorted(self.names)
        if rounds:
            self.rounds_complete(rounds[-1])
        for r in rounds:
            self.step_order(r)
            self.record_needs(r)
        self.log_counts(rounds)
        self.corrections_read(rounds)
        return self.found

    def rounds_complete(self, last: int) -> None:
        for r in range(last):
            if not self.has(r, keys.PAY):
                self.missing(r, keys.PAY, f"round {last} exists, so round {r} finished paying")

    def step_order(self, r: int) -> None:
        steps = [s for s in ROUND_STEPS if s.record is not None and s.enabled(self.p.config)]
        done = [i for i, s in enumerate(steps) if self.has(r, s.record)]
        if not done:
            return
        last = steps[done[-1]]
        for step in steps[:done[-1]]:
            if not self.has(r, step.record):
                self.missing(r, step.record, f"{self.key(r, last.record)} exists (step {last.name!r} runs after "
                                             f"{step.name!r})")

    def record_needs(self, r: int) -> None:
        for need in RECORD_NEEDS:
            if not self.has(r, need.record):
                continue
            record = self.record(r, need.record) if (need.when or need.digest) else {}
            if need.when is not None and (record.get(need.when) is None or record.get(need.when) is False):
                continue
            if not self.has(r, need.needs):
                self.missing(r, need.needs, f"{self.key(r, need.record)} recorded it")
            elif self.deep and need.digest and record.get(need.digest):
                actual = hashlib.sha256(self.p.store.read_bytes(keys.round_key(r, need.needs))).hexdigest()
                if actual != record[need.digest]:
                    self.found.append(Problem(self.key(r, need.needs), (
                        f"{self.key(r, need.needs)} has sha256 {actual[:12]}…, not the {record[need.digest][:12]}… "
                        f"recorded in {self.key(r, need.record)}: it changed after it was written"), missing=False))

    def log_counts(self, rounds: list[int]) -> None:
        if not any(self.has(r, c.record) for r in rounds for c in LOG_COUNTS):
            return
        log = self.p.annotations()
        batch_of = {r: self.p.batch_id(r) for r in rounds}
        per_batch = Counter(a.batch_id for a in log)
        per_round = Counter(a.round for a in log)
        for count in LOG_COUNTS:
            for r in rounds:
                if not self.has(r, count.record):
                    continue
                record = self.record(r, count.record)
                for segment in record.get(count.listed, []) if count.listed else []:
                    if segment not in self.segments:
                        self.found.append(Problem(self.prefix + segment, (
                            f"{self.prefix}{segment} is missing, but {self.key(r, count.record)} read answers from it")))
                if count.field not in record:
                    continue  # a record written before it counted (older projects)
                if count.scope == "batch":
                    have, what = per_batch[batch_of[r]], f"answers of batch {batch_of[r]!r}"
                else:
                    have, what = sum(n for q, n in per_round.items() if q <= r), f"answers up to round {r}"
                if have < record[count.field]:
                    self.found.append(Problem(self.prefix + keys.SEGMENTS, (
                        f"the label log ({self.prefix}{keys.SEGMENTS}) holds {have} {what}, but "
                        f"{self.key(r, count.record)} counted {record[count.field]}: a segment is missing")))

    def corrections_read(self, rounds: list[int]) -> None:
        from crowdloop.corrections import PREFIX

        have = set(self.p.store.list(PREFIX))
        gone: dict[str, int] = {}
        for r in rounds:
            if self.has(r, keys.AGGREGATE):
                for key in self.record(r, keys.AGGREGATE).get("corrections_read", []):
                    if key not in have:
                        gone.setdefault(key, r)
        for key, r in gone.items():
            self.found.append(Problem(self.prefix + key, (
                f"{self.prefix}{key} is missing, but {self.key(r, keys.AGGREGATE)} applied its corrections "
                "(the next aggregation would put the crowd's labels back)")))

    def pool(self) -> None:
        """The pool is the one the project was created with (deep only: hashes the pool file)."""
        from crowdloop.storage import read_json

        try:
            checked_pool_record(self.p, read_json(self.p.store, keys.PROJECT, default=None))
        except PoolError as exc:  # a changed or unreadable pool: reported with the rest
            line = " ".join(str(exc).split())
            where = self.p.config.pool.path
            if where and "://" not in where and not Path(where).exists():  # moved with the project, perhaps
                line += ("; if it moved, `crowdloop run CONFIG` with pool.path naming its new place resumes the "
                         "project (the pool's digest checks it is the same)")
            self.found.append(Problem("pool", line, missing=False))


def problems(p: Project, *, deep: bool = False) -> list[Problem]:
    """Every broken promise of project ``p`` and of its random-baseline twin, one line each.

    ``deep`` also hashes what records hold digests of (models, label files) and the pool.
    """
    check = ProjectCheck(p, deep=deep)
    found = check.run()
    if deep:
        check.pool()
    if p.store.list(f"{keys.BASELINE}/rounds/"):
        twin = ProjectCheck(p.baseline(), deep=deep)
        twin.prefix = f"{keys.BASELINE}/"
        found += twin.run()
    return found


def check_resumable(p: Project) -> None:
    """Stop a resuming run with one line if a record it would build on is missing (no digests)."""
    found = problems(p)
    if found:
        first = found[0]
        more = f"; {len(found) - 1} more problem(s), `crowdloop verify {p.store.url}` lists them" if len(found) > 1 else ""
        error = MissingRecordError if first.missing else StoreError
        raise error(f"{p.store.url}: {first.message}; the run stops rather than redo paid work or go on with "
                    f"less data (restore the record, or start a new project){more}")
