"""Crash anywhere, faulty vendors and storage: the full matrix (issue 9).

    python benchmarks/crash_harness.py [--mode cli|fork] [--random 20] [--seed 9]
                                       [--vendors simulated,manifest,mturk] [--stores local,s3]

For each vendor (simulated, manifest drop-box with a seeded answering side, MTurk behind a
fake JSON 1.1 server) on each store (local directory, S3 on moto's server): one uninterrupted
run, then a SIGKILL at every step boundary it passed and at ``--random`` seeded random points
(the n-th store write or vendor call), each followed by a rerun to completion and the checks of
``tests/fault_harness.compare`` (no double dispatch, no lost or duplicated annotation, money =
vendor ledger, same labels and metrics). Then one run with transient faults at p=0.2 on every
store and vendor call, and one with revoked credentials mid-run followed by a clean rerun.
Last, a record deleted between runs: every kind of record the finished run left (each round's
records, a label-log segment per round, project.json, reference.json, stop.json), deleted, then
a run with one more round, which must resume equal to the uninterrupted longer run or stop in
one line naming the record, with nothing sent, paid or written (``--no-deletions`` skips it).

``--mode cli`` runs the real ``crowdloop run`` (Prefect flow) in a subprocess per run;
``--mode fork`` runs the engine's steps in a forked child (same steps and order, no Prefect),
about 5x faster. Writes benchmarks/results/crash_harness_<mode>.json and a markdown summary
next to it. Timings come from whatever machine runs it; note its load when quoting them.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import platform
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # tests.fault_harness and the fake MTurk live under tests/

from tests.fault_harness import STORES, VENDORS, Scenario, compare, moto_s3  # noqa: E402

PERMANENT = {"s3": ("s3", 60), "local": None}


def run_matrix(args: argparse.Namespace, prefect_url: str) -> dict[str, Any]:
    results: list[dict[str, Any]] = []
    faulty: list[dict[str, Any]] = []
    deleted: list[dict[str, Any]] = []
    combos: list[dict[str, Any]] = []
    work = Path(tempfile.mkdtemp(prefix="crash-harness-"))
    with moto_s3() as (endpoint, bucket):
        for vendor, store in args.combos:
            started = time.monotonic()
            s = Scenario(vendor, store, work / f"{vendor}-{store}", prefect_url, endpoint, bucket,
                         max_rounds=args.max_rounds, mode=args.mode,
                         backoff_scale=args.backoff_scale)
            s.prepare()
            points = s.boundaries + s.random_points(args.random, args.seed)
            print(f"{vendor}/{store}: {len(s.boundaries)} boundaries, {s.n_calls} calls, "
                  f"{len(points)} kill points", flush=True)
            mine = []
            for point in points:
                r = s.kill_and_resume(point)
                r["kind"] = "random" if point.startswith("call:") else "boundary"
                mine.append(r)
                flag = "ok" if not r["mismatches"] else f"MISMATCH {r['mismatches']}"
                print(f"  {point:32s} killed={r['killed']} {r.get('seconds', '-')}s {flag}", flush=True)
            results.extend(mine)
            if args.faults:
                faulty.extend(faulty_runs(s, vendor, store, args))
            if args.deletions:
                deleted.extend(deletion_runs(s))
            combos.append({"vendor": vendor, "store": store, "boundaries": len(s.boundaries),
                           "random": args.random, "calls_in_clean_run": s.n_calls,
                           "kills": sum(r["killed"] for r in mine), "points": len(mine),
                           "reruns_ok": sum(r.get("rerun_rc") == 0 for r in mine),
                           "mismatches": sum(bool(r["mismatches"]) for r in mine),
                           "seconds": round(time.monotonic() - started, 1)})
    return {"results": results, "faulty": faulty, "deleted": deleted, "combos": combos}


def deletion_runs(s: Scenario) -> list[dict[str, Any]]:
    """Every kind of record the finished run left, deleted, then a run with one more round."""
    out = []
    for kind, key in s.prepare_deletions():
        r = s.delete_and_resume(kind, key)
        out.append(r)
        detail = r.get("message", "") if r["verdict"] == "stopped with one line" else r["mismatches"]
        print(f"  deleted {kind:28s} {r['verdict']:22s} {str(detail)[:140]}", flush=True)
    return out


def faulty_runs(s: Scenario, vendor: str, store: str, args: argparse.Namespace) -> list[dict[str, Any]]:
    out = []
    t = time.monotonic()
    first, _, got = s.faulty_run(transient=f"p=0.2,seed={args.seed}", name="transient")
    trace = (s.workdir / "transient" / "trace.txt").read_text().splitlines()
    injected: dict[str, int] = {}
    for line in trace:
        if line.startswith("fault "):
            kind = line.split(" ", 2)[1]
            injected[kind] = injected.get(kind, 0) + 1
    out.append({"vendor": vendor, "store": store, "fault": "transient p=0.2", "rc": first.returncode,
                "injected": injected, "mismatches": compare(got, s.clean) if got else [f"run failed: {first.stderr[-500:]}"],
                "seconds": round(time.monotonic() - t, 1)})
    print(f"  transient p=0.2: rc={first.returncode} injected={injected} mismatches={out[-1]['mismatches']}", flush=True)
    service = "mturk" if vendor == "mturk" else "s3" if store == "s3" else None
    if service:
        t = time.monotonic()
        first, rerun, got = s.faulty_run(permanent=f"{service}:{40 if service == 's3' else 3}", name="permanent")
        line = first.stderr.strip().splitlines()[-1] if first.stderr.strip() else ""
        one_line = first.returncode == 2 and line.startswith("error: ") and len(first.stderr.strip().splitlines()) == 1
        out.append({"vendor": vendor, "store": store, "fault": f"revoked {service} credentials", "rc": first.returncode,
                    "message": line[:300], "one_line": one_line, "rerun_rc": rerun.returncode if rerun else None,
                    "mismatches": compare(got, s.clean) if got else ["rerun failed"],
                    "seconds": round(time.monotonic() - t, 1)})
        print(f"  permanent {service}: rc={first.returncode} one_line={one_line} rerun={out[-1]['rerun_rc']} "
              f"mismatches={out[-1]['mismatches']}", flush=True)
    return out


def summary_markdown(report: dict[str, Any]) -> str:
    lines = [f"Crash harness ({report['mode']} mode, max_rounds={report['max_rounds']}, seed {report['seed']}), "
             f"{report['finished']}, {report['machine']}; total {report['seconds'] / 60:.1f} min wall.", "",
             "| vendor | store | boundaries | random points | kills | reruns ok | mismatches | minutes |",
             "|---|---|---:|---:|---:|---:|---:|---:|"]
    for c in report["combos"]:
        lines.append(f"| {c['vendor']} | {c['store']} | {c['boundaries']} | {c['random']} | {c['kills']} | "
                     f"{c['reruns_ok']} | {c['mismatches']} | {c['seconds'] / 60:.1f} |")
    t = report["totals"]
    lines.append(f"| **all** | | | | **{t['kills']}** | **{t['reruns_ok']}** | **{t['mismatches']}** | "
                 f"{report['seconds'] / 60:.1f} |")
    if report.get("deleted"):
        lines += ["", "A record deleted between runs (every kind the finished run left), then a run with one more round:",
                  "", "| vendor | store | record kinds | resumed exactly | stopped with one line | mismatches |",
                  "|---|---|---:|---:|---:|---:|"]
        for vendor, store in dict.fromkeys((d["vendor"], d["store"]) for d in report["deleted"]):
            mine = [d for d in report["deleted"] if (d["vendor"], d["store"]) == (vendor, store)]
            lines.append(f"| {vendor} | {store} | {len(mine)} | "
                         f"{sum(d['verdict'] == 'resumed exactly' for d in mine)} | "
                         f"{sum(d['verdict'] == 'stopped with one line' for d in mine)} | "
                         f"{sum(d['verdict'] == 'mismatch' for d in mine)} |")
    if report["faulty"]:
        lines += ["", "| vendor | store | fault | exit | injected | rerun | mismatches |", "|---|---|---|---:|---|---:|---:|"]
        for f in report["faulty"]:
            injected = ", ".join(f"{k} {v}" for k, v in sorted(f.get("injected", {}).items())) or "-"
            lines.append(f"| {f['vendor']} | {f['store']} | {f['fault']} | {f['rc']} | {injected} | "
                         f"{f.get('rerun_rc', '-')} | {len(f['mismatches'])} |")
    return "\n".join(lines) + "\n"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--mode", choices=("cli", "fork"), default="cli")
    ap.add_argument("--vendors", default=",".join(VENDORS))
    ap.add_argument("--stores", default=",".join(STORES))
    ap.add_argument("--combos", default=None,
                    help="vendor/store pairs instead of vendors x stores, e.g. simulated/local,mturk/s3")
    ap.add_argument("--random", type=int, default=20, help="random kill points per vendor/store")
    ap.add_argument("--seed", type=int, default=9)
    ap.add_argument("--max-rounds", type=int, default=1, help="rounds with a dispatch (the run also trains round N)")
    ap.add_argument("--no-faults", dest="faults", action="store_false", help="skip the transient/permanent runs")
    ap.add_argument("--no-deletions", dest="deletions", action="store_false",
                    help="skip deleting each kind of record between runs")
    ap.add_argument("--backoff-scale", type=float, default=None, help="shorten botocore back-off in faulty runs")
    ap.add_argument("--out", type=Path, default=None)
    args = ap.parse_args()
    args.vendors = [v for v in args.vendors.split(",") if v]
    args.stores = [s for s in args.stores.split(",") if s]
    args.combos = ([tuple(c.split("/")) for c in args.combos.split(",") if c] if args.combos
                   else [(v, s) for v in args.vendors for s in args.stores])
    out = args.out or ROOT / "benchmarks" / "results" / f"crash_harness_{args.mode}.json"
    started = time.monotonic()
    if args.mode == "cli":
        from prefect.settings import PREFECT_API_URL
        from prefect.testing.utilities import prefect_test_harness

        ctx: Any = prefect_test_harness(server_startup_timeout=120)
    else:
        ctx = contextlib.nullcontext()
    with ctx:
        url = PREFECT_API_URL.value() if args.mode == "cli" else "http://127.0.0.1:9"
        matrix = run_matrix(args, url)
    res = matrix["results"]
    report = {
        "mode": args.mode, "max_rounds": args.max_rounds, "seed": args.seed, "random_per_combo": args.random,
        "finished": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "machine": f"{platform.processor() or platform.machine()}, shared and loaded",
        "seconds": round(time.monotonic() - started, 1),
        "totals": {"points": len(res), "kills": sum(r["killed"] for r in res),
                   "reruns_ok": sum(r.get("rerun_rc") == 0 for r in res),
                   "mismatches": sum(bool(r["mismatches"]) for r in res),
                   "faulty_runs": len(matrix["faulty"]),
                   "deletions": len(matrix["deleted"]),
                   "deletion_verdicts": {v: sum(d["verdict"] == v for d in matrix["deleted"])
                                         for v in ("resumed exactly", "stopped with one line", "mismatch")},
                   "faulty_mismatches": sum(bool(f["mismatches"]) for f in matrix["faulty"])},
        **matrix,
    }
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=1))
    md = summary_markdown(report)
    out.with_suffix(".md").write_text(md)
    print(md)


if __name__ == "__main__":
    main()
