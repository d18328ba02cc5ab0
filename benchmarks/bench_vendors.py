"""Vendor throughput: manifest ingest rate, annotation-app latency, contract-check time.

    python benchmarks/bench_vendors.py [--lines 20000] [--items 300]

Writes benchmarks/results/vendors.json and the "Vendors" section of BENCHMARKS.md.
Figures come from whatever machine runs it; note its load when you quote them.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import tempfile
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np

from crowdloop.records import Task
from crowdloop.storage.local import LocalStore
from crowdloop.testing import check_vendor, make_context
from crowdloop.vendors.local import LocalVendor
from crowdloop.vendors.manifest import ManifestVendor
from crowdloop.vendors.simulated import SimulatedCrowd

ROOT = Path(__file__).resolve().parents[1]
T0 = datetime(2026, 5, 1, tzinfo=UTC)


def bench_manifest(tmp: Path, n_lines: int, rng: np.random.Generator) -> dict:
    v = ManifestVendor({}, make_context(LocalStore(tmp / "manifest"), name="manifest"))
    n_items = n_lines // 3
    tasks = [Task(item_id=f"item-{i:06d}", round=0, batch_id="b0", replicas=3, reward=0.02) for i in range(n_items)]
    start = time.perf_counter()
    refs = v.submit(tasks, batch_id="b0")
    submit_s = time.perf_counter() - start
    classes = list(v.context.classes)
    lines, bad = [], 0
    for i in range(n_items):
        for r in range(3):
            label = classes[int(rng.integers(len(classes)))]
            if rng.random() < 0.05:  # 5% bad lines of mixed kinds
                bad += 1
                label = "not-a-class"
            stamp = T0 + timedelta(seconds=int(rng.integers(10_000)))
            lines.append(json.dumps({"item-id": f"item-{i:06d}", "worker-id": f"w{r}", "label": label,
                                     "started-at": stamp.isoformat(),
                                     "submitted-at": (stamp + timedelta(seconds=8)).isoformat()}))
    n_files = 10
    for f in range(n_files):
        chunk = lines[f::n_files]
        v.exchange.write_bytes(f"results/part-{f:02d}.jsonl", ("\n".join(chunk) + "\n").encode(), create_only=True)
    start = time.perf_counter()
    got = v.poll(refs)
    ingest_s = time.perf_counter() - start
    start = time.perf_counter()
    again = v.poll(refs)
    repoll_s = time.perf_counter() - start
    return {"lines": len(lines), "files": n_files, "bad_lines": bad, "accepted": len(got), "submit_items": n_items,
            "submit_s": round(submit_s, 3), "ingest_s": round(ingest_s, 3),
            "lines_per_s": round(len(lines) / ingest_s), "repoll_s_no_new_files": round(repoll_s, 4),
            "repoll_returned": len(again)}


def bench_local_app(tmp: Path, n_items: int) -> dict:
    from fastapi.testclient import TestClient

    from crowdloop.vendors.local_app import create_app, csrf_for

    v = LocalVendor({"undo_window_s": 0}, make_context(LocalStore(tmp / "local"), name="local"))
    v.submit([Task(item_id=f"item-{i:05d}", round=0, batch_id="b0", replicas=1, reward=0.02) for i in range(n_items)],
             batch_id="b0")
    token = v.add_annotator("bench")
    client = TestClient(create_app(v), follow_redirects=False)
    client.get(f"/?token={token}")
    get_ms, post_ms = [], []
    for _ in range(n_items):
        start = time.perf_counter()
        page = client.get("/")
        get_ms.append((time.perf_counter() - start) * 1000)
        item = page.text.split('data-item="', 1)[1].split('"', 1)[0]
        start = time.perf_counter()
        r = client.post("/answer", data={"csrf": csrf_for(token), "batch_id": "b0", "item_id": item, "label": "cat",
                                         "client_ms": "900"})
        post_ms.append((time.perf_counter() - start) * 1000)
        if r.status_code != 303:
            raise RuntimeError(f"answer failed: {r.status_code} {r.text[:200]}")
    start = time.perf_counter()
    polled = v.poll([{"batch_id": "b0"}])
    poll_s = time.perf_counter() - start
    return {"items": n_items, "page_ms_median": round(statistics.median(get_ms), 1),
            "page_ms_p95": round(float(np.percentile(get_ms, 95)), 1),
            "answer_ms_median": round(statistics.median(post_ms), 1),
            "answer_ms_p95": round(float(np.percentile(post_ms, 95)), 1),
            "poll_s": round(poll_s, 3), "polled": len(polled)}


def bench_contract(tmp: Path) -> dict:
    out = {}
    start = time.perf_counter()
    check_vendor(SimulatedCrowd, params={"n_workers": 10}, n_items=20, replicas=3)
    out["simulated_s"] = round(time.perf_counter() - start, 3)

    def drop(v, tasks, batch_id):
        lines = [json.dumps({"item-id": t.item_id, "worker-id": f"w{r}", "label": "cat", "duration-s": 5,
                             "submitted-at": T0.isoformat()}) for t in tasks for r in range(t.replicas)]
        v.exchange.write_bytes("results/all.jsonl", ("\n".join(lines) + "\n").encode())

    start = time.perf_counter()
    check_vendor(ManifestVendor, context=make_context(LocalStore(tmp / "c-manifest"), name="manifest"), respond=drop,
                 n_items=20, replicas=3)
    out["manifest_s"] = round(time.perf_counter() - start, 3)

    def answer(v, tasks, batch_id):
        for t in tasks:
            for r in range(t.replicas):
                v.answer(f"a{r}", batch_id, t.item_id, "cat")

    start = time.perf_counter()
    check_vendor(LocalVendor, params={"undo_window_s": 0}, respond=answer,
                 context=make_context(LocalStore(tmp / "c-local"), name="local"), n_items=20, replicas=3)
    out["local_s"] = round(time.perf_counter() - start, 3)
    return out


def write_markdown(result: dict) -> None:
    m, a, c = result["manifest"], result["local_app"], result["contract"]
    section = "\n".join([
        "<!-- vendors:start -->",
        "## Vendors (`python benchmarks/bench_vendors.py`)",
        "",
        f"Measured {result['date']} on {result['machine']} (shared, loaded machine; local-directory store).",
        "",
        "| what | figure |",
        "|---|---|",
        f"| manifest: ingest {m['lines']} result lines in {m['files']} files ({m['bad_lines']} bad) | "
        f"{m['ingest_s']} s, {m['lines_per_s']} lines/s; {m['accepted']} accepted |",
        f"| manifest: poll with no new files | {m['repoll_s_no_new_files']} s |",
        f"| manifest: submit {m['submit_items']} items (manifest written) | {m['submit_s']} s |",
        f"| annotation app: page (next item), {a['items']} items | median {a['page_ms_median']} ms, p95 {a['page_ms_p95']} ms |",
        f"| annotation app: answer post | median {a['answer_ms_median']} ms, p95 {a['answer_ms_p95']} ms |",
        f"| local vendor: poll {a['polled']} answers | {a['poll_s']} s |",
        f"| check_vendor, 20 items x 3 replicas: simulated / manifest / local | "
        f"{c['simulated_s']} s / {c['manifest_s']} s / {c['local_s']} s |",
        "<!-- vendors:end -->",
    ])
    path = ROOT / "BENCHMARKS.md"
    text = path.read_text() if path.exists() else "# Benchmarks\n"
    if "<!-- vendors:start -->" in text:
        head, rest = text.split("<!-- vendors:start -->", 1)
        text = head + section + rest.split("<!-- vendors:end -->", 1)[1]
    else:
        text = text.rstrip("\n") + "\n\n" + section + "\n"
    path.write_text(text)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--lines", type=int, default=20_000)
    parser.add_argument("--items", type=int, default=300)
    args = parser.parse_args()
    rng = np.random.default_rng(0)
    with tempfile.TemporaryDirectory() as tmp:
        result = {
            "date": datetime.now(UTC).strftime("%Y-%m-%d"),
            "machine": f"{platform.machine()}, {os.cpu_count()} CPUs, Python {platform.python_version()}",
            "manifest": bench_manifest(Path(tmp), args.lines, rng),
            "local_app": bench_local_app(Path(tmp), args.items),
            "contract": bench_contract(Path(tmp)),
        }
    out = ROOT / "benchmarks" / "results" / "vendors.json"
    out.write_text(json.dumps(result, indent=1) + "\n")
    write_markdown(result)
    print(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
