"""MTurk API calls per round and what the client-side rate limit means for wall time.

Runs the engine on configs/digits-mturk-sandbox.yaml against the in-memory MTurk used by the
tests (boto3's real client, requests answered at botocore's ``before-send``), so no network
and no money. Prints and writes per-round call counts, vendor seconds, and the lower bound
on wall time at the configured ``max_requests_per_second``.

    python benchmarks/mturk_calls.py --rounds 3 --out benchmarks/results/mturk_calls.json
"""

from __future__ import annotations

import argparse
import collections
import json
import os
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from crowdloop import engine  # noqa: E402
from crowdloop.config import load_config  # noqa: E402
from crowdloop.vendors import mturk  # noqa: E402
from tests.vendors.mturk_fake import FakeMTurk  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--out", type=Path, default=REPO / "benchmarks" / "results" / "mturk_calls.json")
    args = parser.parse_args()
    os.environ.setdefault("AWS_ACCESS_KEY_ID", "benchmark")
    os.environ.setdefault("AWS_SECRET_ACCESS_KEY", "benchmark")
    cfg = load_config(REPO / "configs" / "digits-mturk-sandbox.yaml")
    default_rate = cfg.vendor.params.get("max_requests_per_second", mturk.MTurkParams().max_requests_per_second)
    params = {**cfg.vendor.params, "max_requests_per_second": 100.0}  # measure the calls, not the limiter
    cfg = cfg.model_copy(update={"vendor": cfg.vendor.model_copy(update={"params": params}),
                                 "collect": cfg.collect.model_copy(update={"poll_interval_s": 0.01})})
    fake = FakeMTurk(duration_s=18.0)
    mturk._session_factory = fake.session
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        p = engine.Project.prepare(cfg, str(Path(tmp) / "p"))
        truth = {i: str(y) for i, y in zip(p.pool.ids.tolist(), p.pool.y.tolist(), strict=True)}
        fake.answer = lambda item, replica: truth[item]
        for r in range(args.rounds):
            before = len(fake.calls)
            start = time.perf_counter()
            for step in (engine.train, engine.evaluate, engine.select):
                step(p, r)
            vendor_start = time.perf_counter()
            engine.dispatch(p, r)
            engine.collect(p, r)
            engine.aggregate(p, r)
            engine.pay(p, r)
            vendor_seconds = time.perf_counter() - vendor_start
            calls = collections.Counter(fake.calls[before:])
            n = sum(calls.values())
            rows.append({"round": r, "items": len(engine.dispatch(p, r)["refs"]), "calls": dict(sorted(calls.items())),
                         "total_calls": n, "vendor_seconds_at_100_rps": round(vendor_seconds, 2),
                         f"min_seconds_at_{default_rate:g}_rps": round(n / default_rate, 1),
                         "round_seconds": round(time.perf_counter() - start, 2)})
            print(json.dumps(rows[-1]))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"config": "configs/digits-mturk-sandbox.yaml", "rounds": rows}, indent=1) + "\n")


if __name__ == "__main__":
    main()
