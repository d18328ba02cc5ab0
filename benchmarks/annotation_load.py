"""The annotation app under load: concurrent annotators, every answer accounted for.

Starts ``crowdloop annotate`` (real uvicorn on 127.0.0.1, a subprocess, as a user would)
over a local-vendor project whose round 0 holds ``items × replicas`` judgments, then lets
``annotators`` threads work like the real page: open the personal link (cookie), load the
page, read the item, the batch and the CSRF token from the form, post the answer with the
browser's ``Origin`` / ``Sec-Fetch-Site`` headers, follow the redirect. A share of answers is
posted twice (a double click). Afterwards the loop's ``collect`` step reads the answers into
the label log and the script compares: every answer the app accepted (303) is in the log
once (0 lost, 0 duplicated), nothing else is.

    python benchmarks/annotation_load.py                      # 50 annotators, 2000 answers
    python benchmarks/annotation_load.py --annotators 10 --submissions 200 --out /tmp/x.json

Writes ``benchmarks/results/annotation_load.json``. Timings depend on the machine; the
figures in BENCHMARKS.md were taken on a shared 2-core machine.
"""

from __future__ import annotations

import argparse
import html
import json
import os
import platform
import re
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))  # the app-starting helper lives under tests/

from tests.vendors.app_server import start_annotate  # noqa: E402

DEFAULT_OUT = REPO / "benchmarks" / "results" / "annotation_load.json"

_FIELD = re.compile(r'<input type="hidden" name="(csrf|batch_id|item_id)" value="([^"]*)">')
_ITEM = re.compile(r'<div class="card" id="item" data-item="([^"]*)"')
_LABEL = re.compile(r'<button type="submit" class="label" name="label" value="([^"]*)"')


def prepare(project_dir: str, *, items: int, replicas: int, annotators: int, seed: int = 7) -> tuple[Any, dict[str, str]]:
    """A digits project with the local vendor, round 0 dispatched; returns (project, name → token)."""
    from crowdloop import engine
    from crowdloop.config import parse_config

    config = {
        "project": "load", "seed": seed,
        "pool": {"source": "sklearn", "name": "digits", "test_size": 0.25},
        "model": {"estimator": "sklearn.linear_model.LogisticRegression", "params": {"C": 0.1, "max_iter": 200}},
        "sampler": {"name": "margin", "batch_size": 10, "initial_size": items},
        # undo_window_s 0: answers are final at once, so collect right after the run sees them all
        "vendor": {"name": "local", "params": {"undo_window_s": 0, "lease_s": 3600}},
        "consensus": {"method": "majority_vote", "redundancy": replicas},
        # a day: the desk offers a batch's items only until collect.timeout_s after the dispatch
        "collect": {"timeout_s": 86400, "poll_interval_s": 0.01},
        "stopping": {"max_rounds": 1},
    }
    project = engine.Project.prepare(parse_config(config), project_dir)
    engine.run_round(project, 0, until="dispatch")
    tokens = {f"ann{k:03d}": project.vendor.add_annotator(f"ann{k:03d}") for k in range(annotators)}
    return project, tokens


@dataclass
class Tally:
    """What the clients saw, shared by the annotator threads."""

    limit: int
    accepted: list[tuple[str, str]] = field(default_factory=list)  # (annotator, item) answered with 303
    post_ms: list[float] = field(default_factory=list)
    page_ms: list[float] = field(default_factory=list)
    double_posts: int = 0
    errors: list[str] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def claim(self) -> bool:
        """One more submission allowed (the run is bounded in count)."""
        with self.lock:
            if len(self.accepted) + self._pending >= self.limit:
                return False
            self._pending += 1
            return True

    def settle(self, who: str | None, item: str | None) -> None:
        with self.lock:
            self._pending -= 1
            if who is not None and item is not None:
                self.accepted.append((who, item))

    _pending: int = 0


def annotator(base: str, name: str, token: str, tally: Tally, *, double_every: int, deadline: float,
              rng: np.random.Generator) -> None:
    """One person at the page: load, answer, repeat until nothing is left or the run is full."""
    headers = {"Origin": base, "Sec-Fetch-Site": "same-origin"}
    with httpx.Client(base_url=base, timeout=60.0, follow_redirects=False) as client:
        first = client.get(f"/?token={token}")
        if first.status_code != 303:
            tally.errors.append(f"{name}: personal link answered {first.status_code}")
            return
        n = 0
        while time.monotonic() < deadline:
            started = time.perf_counter()
            page = client.get("/")
            tally.page_ms.append((time.perf_counter() - started) * 1000)
            if page.status_code != 200:
                tally.errors.append(f"{name}: page answered {page.status_code}")
                return
            item = _ITEM.search(page.text)
            if item is None:
                return  # "Nothing to label right now"
            if not tally.claim():
                return
            form = {k: html.unescape(v) for k, v in _FIELD.findall(page.text)}
            labels = [html.unescape(v) for v in _LABEL.findall(page.text)]
            form.update(label=labels[int(rng.integers(len(labels)))], client_ms=str(int(rng.integers(800, 6000))))
            started = time.perf_counter()
            answer = client.post("/answer", data=form, headers=headers)
            tally.post_ms.append((time.perf_counter() - started) * 1000)
            n += 1
            if answer.status_code == 303 and double_every and n % double_every == 0:
                again = client.post("/answer", data=form, headers=headers)  # the double click
                with tally.lock:
                    tally.double_posts += 1
                if again.status_code != 303:
                    tally.errors.append(f"{name}: double post answered {again.status_code}")
            if answer.status_code == 303:
                tally.settle(name, html.unescape(item.group(1)))
            else:
                tally.settle(None, None)
                tally.errors.append(f"{name}: answer answered {answer.status_code}: {answer.text[:200]}")


def percentiles(values: list[float]) -> dict[str, float]:
    if not values:
        return {}
    arr = np.asarray(values)
    return {"p50": round(float(np.percentile(arr, 50)), 1), "p95": round(float(np.percentile(arr, 95)), 1),
            "p99": round(float(np.percentile(arr, 99)), 1), "max": round(float(arr.max()), 1), "n": int(arr.size)}


def run(*, annotators: int, submissions: int, replicas: int = 2, double_every: int = 20, max_seconds: float = 900,
        workdir: str | None = None, seed: int = 7) -> dict[str, Any]:
    """Run the load and account for every answer; returns the figures (see module docstring)."""
    from crowdloop import engine

    if submissions % replicas:
        raise ValueError(f"submissions={submissions}: expected a multiple of replicas={replicas}")
    load_before = round(os.getloadavg()[0], 2)  # the machine may be shared: say how busy it was
    with tempfile.TemporaryDirectory(dir=workdir) as tmp:
        project_dir = str(Path(tmp) / "project")
        project, tokens = prepare(project_dir, items=submissions // replicas, replicas=replicas, annotators=annotators,
                                  seed=seed)
        base, proc = start_annotate(project_dir, Path(tmp) / "annotate.log")
        tally = Tally(limit=submissions)
        rng = np.random.default_rng(seed)
        deadline = time.monotonic() + max_seconds
        threads = [threading.Thread(target=annotator, args=(base, name, token, tally),
                                    kwargs={"double_every": double_every, "deadline": deadline,
                                            "rng": np.random.default_rng(rng.integers(2**32))}, daemon=True)
                   for name, token in tokens.items()]
        started = time.perf_counter()
        try:
            for t in threads:
                t.start()
            for t in threads:
                t.join(timeout=max(0.0, deadline - time.monotonic()) + 30)
            wall = time.perf_counter() - started
        finally:
            proc.terminate()
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()
        server_log = (Path(tmp) / "annotate.log").read_text()
        collected = engine.collect(project, 0, wait=False)
        batch = read_batch_id(project)
        stored = [(a.worker_id, a.item_id) for a in project.annotations() if a.batch_id == batch]
        files = len(project.vendor.store.list(f"answers/{batch}/"))

    accepted, in_log = Counter(tally.accepted), Counter(stored)
    per_item = Counter(item for _, item in stored)
    result = {
        "annotators": annotators, "submissions_target": submissions, "replicas": replicas,
        "accepted": len(tally.accepted), "double_posts": tally.double_posts, "answer_files": files,
        "in_label_log": len(stored), "collected": collected.get("n_annotations"),
        "lost": sum((accepted - in_log).values()),
        "duplicated": sum(n - 1 for n in in_log.values() if n > 1) + sum(n - 1 for n in accepted.values() if n > 1),
        "unexpected": sum((in_log - accepted).values()),
        "items_over_replicas": sum(1 for n in per_item.values() if n > replicas),
        "errors": tally.errors[:20], "n_errors": len(tally.errors),
        "wall_s": round(wall, 2), "throughput_answers_per_s": round(len(tally.accepted) / wall, 1) if wall else None,
        "answer_post_ms": percentiles(tally.post_ms), "page_get_ms": percentiles(tally.page_ms),
        "server_log_lines": len([line for line in server_log.splitlines() if line.strip()]),
        "machine": {"python": platform.python_version(), "cpus": os.cpu_count(), "platform": platform.platform(),
                    "load_average_1m_before": load_before, "load_average_1m_after": round(os.getloadavg()[0], 2)},
        "measured_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
    return result


def read_batch_id(project: Any) -> str:
    from crowdloop import keys
    from crowdloop.storage import read_json

    return read_json(project.store, keys.round_key(0, keys.DISPATCH))["batch_id"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--annotators", type=int, default=50)
    parser.add_argument("--submissions", type=int, default=2000)
    parser.add_argument("--replicas", type=int, default=2)
    parser.add_argument("--double-every", type=int, default=20, help="every n-th answer of an annotator is posted twice")
    parser.add_argument("--max-seconds", type=float, default=900)
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT)
    args = parser.parse_args()
    result = run(annotators=args.annotators, submissions=args.submissions, replicas=args.replicas,
                 double_every=args.double_every, max_seconds=args.max_seconds)
    result["command"] = "python benchmarks/annotation_load.py " + " ".join(sys.argv[1:])
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))
    ok = (result["lost"] == 0 and result["duplicated"] == 0 and result["unexpected"] == 0
          and result["accepted"] == args.submissions and not result["n_errors"])
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    main()
