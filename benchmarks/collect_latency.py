"""Round-to-round latency of a deferred loop: answer events vs the 300-s collect schedule.

From the last answer of a round in the local annotation app to the next round's dispatch
(``refs.json``'s ``dispatched_at``), with the loop and collect deployments served by
``crowdloop serve`` against a real ``prefect server start`` (127.0.0.1, its own home):

* ``events``: ``crowdloop annotate`` with ``PREFECT_API_URL`` set; the last answer of a batch emits
  ``crowdloop.batch.answered`` and the collect deployment's trigger runs collection at once
  (it polls while the answers pass the app's undo window);
* ``polling``: ``crowdloop annotate`` without a Prefect API (no events); only the collect deployment's interval
  schedule (every 300 s) runs collection.

A bot annotator answers every task of a round as soon as it is dispatched. The app's undo
window (``--undo-window``, 30 s by default as in ``vendors/local.py``) delays every answer's
collection in both modes. Everything else is Prefect's defaults (the runner polls for
scheduled runs every 10 s).

    python benchmarks/collect_latency.py --modes events,polling --rounds 3 \\
        --out benchmarks/results/collect_latency.json
"""

from __future__ import annotations

import argparse
import json
import os
import re
import statistics
import sys
import tempfile
import time
from pathlib import Path

import httpx
import yaml

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from crowdloop import keys  # noqa: E402
from crowdloop.config import parse_config  # noqa: E402
from crowdloop.engine import Project  # noqa: E402
from tests.conftest import crowdloop_cmd, small_config  # noqa: E402
from tests.flows.prefect_helpers import deployment_ids, real_prefect_server, spawn, stop, wait_for  # noqa: E402
from tests.vendors.app_server import start_annotate  # noqa: E402


def answer_everything(base: str, token: str) -> float:
    """Answer every task the app offers the bot; the wall-clock time of the last answer."""
    last = 0.0
    with httpx.Client(base_url=base, timeout=30, follow_redirects=False) as client:
        client.get(f"/?token={token}")
        while True:
            page = client.get("/")
            if not re.search(r'data-item="([^"]*)"', page.text):
                return last
            form = dict(re.findall(r'<input type="hidden" name="(csrf|batch_id|item_id)" value="([^"]*)">', page.text))
            form.update(label=re.findall(r'name="label" value="([^"]*)"', page.text)[0], client_ms="800")
            response = client.post("/answer", data=form, headers={"Origin": base})
            if response.status_code != 303:
                raise RuntimeError(f"answer refused: {response.status_code}")
            last = time.time()


def measure(mode: str, rounds: int, undo_window_s: float, workdir: Path, api: str) -> dict:
    from prefect.deployments import run_deployment

    project = f"latency-{mode}"
    config = small_config(project=project, **{
        "vendor": {"name": "local", "params": {"undo_window_s": undo_window_s}}, "collect.mode": "defer",
        "sampler.initial_size": 6, "sampler.batch_size": 6, "consensus.redundancy": 1,
        "consensus.method": "majority_vote", "stopping.max_rounds": rounds + 1})
    path = workdir / f"{project}.yaml"
    path.write_text(yaml.safe_dump(config))
    project_dir = workdir / project
    p = Project.prepare(parse_config(config), str(project_dir))
    token = p.vendor.add_annotator("bot")
    env = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_")}
    env.update(PREFECT_API_URL=api, PREFECT_LOGGING_LEVEL="WARNING")
    served = spawn([*crowdloop_cmd(), "serve", str(path), "-p", str(project_dir), "--collect-every", "300"], env=env,
                   log_path=workdir / f"{project}-serve.log")
    # `crowdloop annotate` emits events when a Prefect API is configured (polling: none is)
    app_env = env if mode == "events" else {k: v for k, v in env.items() if k != "PREFECT_API_URL"}
    base, app = start_annotate(str(project_dir), workdir / f"{project}-annotate.log", env=app_env)
    latencies = []
    try:
        names = [f"crowdloop-active-learning/{project}", f"crowdloop-collect/{project}-collect"]
        if len(wait_ids(names)) != 2:
            raise RuntimeError((workdir / f"{project}-serve.log").read_text()[-2000:])
        run_deployment(names[0], timeout=0)
        for r in range(rounds):
            wait_for(lambda r=r: Project.open(str(project_dir)).has(r, keys.REFS), timeout=900, interval=0.2,
                     what=f"round {r} to be dispatched")
            last_answer = answer_everything(base, token)
            wait_for(lambda r=r: Project.open(str(project_dir)).has(r + 1, keys.REFS), timeout=900, interval=0.2,
                     what=f"round {r + 1} to be dispatched")
            dispatched = Project.open(str(project_dir)).record(r + 1, keys.REFS)["dispatched_at"]
            latencies.append(round(dispatched - last_answer, 2))
            print(f"{mode}: round {r} -> {r + 1}: {latencies[-1]:.1f} s", flush=True)
    finally:
        app.terminate()
        app.wait(timeout=10)
        stop(served)
    return {"mode": mode, "undo_window_s": undo_window_s, "collect_every_s": 300, "rounds": rounds,
            "latency_s": latencies, "median_s": statistics.median(latencies), "mean_s": round(statistics.fmean(latencies), 2)}


def wait_ids(names: list[str]) -> dict[str, str]:
    import asyncio

    return asyncio.run(deployment_ids(names, timeout=180))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--modes", default="events,polling")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--undo-window", type=float, default=30.0)
    parser.add_argument("--out", default=None)
    args = parser.parse_args()
    from prefect.settings import PREFECT_API_URL, temporary_settings

    results = []
    with tempfile.TemporaryDirectory() as tmp, real_prefect_server(Path(tmp) / "home", Path(tmp) / "server.log") as api, \
            temporary_settings(updates={PREFECT_API_URL: api}):
        for mode in args.modes.split(","):
            results.append(measure(mode, args.rounds, args.undo_window, Path(tmp), api))
    load = os.getloadavg()
    out = {"results": results, "load_average": [round(x, 2) for x in load], "cpus": os.cpu_count()}
    print(json.dumps(out, indent=1))
    if args.out:
        Path(args.out).write_text(json.dumps(out, indent=1) + "\n")


if __name__ == "__main__":
    main()
