"""Quality controls with real annotators, per vendor: three rounds with one spammer (issue 17).

Runs ``tests/vendors/quality_loop.py`` on MTurk (the fake behind boto3's real client: every
request validated by botocore's model), the local annotation app (real HTTP, four annotators),
the manifest drop-box and Label Studio (a real server from its own venv), and writes what
happened: the spammer's judgments before and after the block, re-asks answered by a worker who
had answered the item (must be 0), the spammer's paid work, and the money by the status JSON
and by the vendor's own accounting.

    python benchmarks/vendor_quality.py --out benchmarks/results/vendor_quality.json
    python benchmarks/vendor_quality.py --vendors mturk local manifest   # without Label Studio
    python benchmarks/vendor_quality.py --audit --out benchmarks/results/vendor_quality_audit.json

``--audit`` adds issue 15's random audit with re-asks (``quality_loop.AUDIT``) and six honest
workers, and prints what the audit bought through each vendor.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from tests.vendors import label_studio_server as lss  # noqa: E402
from tests.vendors import quality_loop as q  # noqa: E402

COLUMNS = ("vendor", "spammer judgments before / after the block", "blocked before round", "re-asks (by a repeat worker)",
           "spammer paid", "status JSON cost", "vendor's accounting")


AUDIT_COLUMNS = ("vendor", "audit items", "audit judgments", "items asked again", "wrong audit labels",
                 "estimated accuracy [95% interval]", "audit cost", "project cost")


def run(vendor: str, root: Path, *, audit: bool = False) -> dict:
    start = time.perf_counter()
    extra, n_honest = (q.AUDIT, 6) if audit else (None, 3)
    if vendor == "label_studio":
        server = lss.start_copy(root / "ls")
        try:
            out = q.run_label_studio(root, server.url, server.token, extra, n_honest=n_honest)
        finally:
            server.stop()
    else:
        out = q.RUNNERS[vendor](root, extra, n_honest=n_honest)
    out["seconds"] = round(time.perf_counter() - start, 1)
    return out


def row(out: dict) -> str:
    ledger = out["vendor_ledger"]
    own = (f"{ledger['total']:.2f} (MTurk's bill {out['mturk_bill']['total']:.2f})" if "total" in ledger
           else f"{ledger['paid'] + ledger['bonuses']:.2f} paid + bonused")
    cost = out["status_cost"] if "total" in ledger else out["paid_to_workers"]
    cells = (out["vendor"], f"{out['spammer_judgments_before_block']} / {out['spammer_judgments_after_block']}",
             str(out["blocked_before_round"]), f"{out['reask_answers']} ({out['reasks_by_a_repeat_worker']})",
             f"{out['spammer_paid_judgments']} judgments, ${out['spammer_paid']:.2f}", f"{cost:.2f}", own)
    return "| " + " | ".join(cells) + " |"


def audit_row(out: dict) -> str:
    cells = (out["vendor"], str(out["audit_items"]), str(out["last_audit_judgments"]), str(out["audit_reasked"]),
             str(out["audit_labels_wrong"]),
             f"{out['last_estimated_accuracy']:.3f} [{out['last_ci_low']:.3f}, {out['last_ci_high']:.3f}]",
             f"{out['last_audit_cost']:.2f}", f"{out['status_cost']:.2f}")
    return "| " + " | ".join(cells) + " |"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--vendors", nargs="+", default=list(q.RUNNERS), choices=list(q.RUNNERS))
    parser.add_argument("--out", type=Path, default=REPO / "benchmarks" / "results" / "vendor_quality.json")
    parser.add_argument("--audit", action="store_true", help="add the random audit with re-asks, six honest workers")
    args = parser.parse_args()
    for name, value in (("AWS_ACCESS_KEY_ID", "benchmark"), ("AWS_SECRET_ACCESS_KEY", "benchmark"),
                        ("AWS_DEFAULT_REGION", "us-east-1")):
        os.environ.setdefault(name, value)
    results = []
    with tempfile.TemporaryDirectory(prefix="vendor-quality-") as tmp:
        for vendor in args.vendors:
            results.append(run(vendor, Path(tmp) / vendor, audit=args.audit))
            print(f"{vendor}: done in {results[-1]['seconds']} s", flush=True)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    command = "python benchmarks/vendor_quality.py" + (" --audit" if args.audit else "")
    args.out.write_text(json.dumps({"command": command, "rounds": q.ROUNDS, "audit": q.AUDIT if args.audit else None,
                                    "results": results}, indent=1, default=str) + "\n")
    for columns, make in ((COLUMNS, row), *(((AUDIT_COLUMNS, audit_row),) if args.audit else ())):
        print("| " + " | ".join(columns) + " |")
        print("|" + "---|" * len(columns))
        for out in results:
            print(make(out))


if __name__ == "__main__":
    main()
