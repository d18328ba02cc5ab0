"""A deployed loop on a process work pool scoring a 1M-row pool on a 2-worker vs a 1-worker Dask cluster.

The path a team's deployment takes: ``crowdloop deploy CONFIG --pool POOL`` against a real
``prefect server start`` (127.0.0.1), ``prefect worker start --pool POOL`` runs the loop, and
the config's ``scale.dask_address`` names a local Dask cluster (``LocalCluster``, N worker
processes, one thread each) started by this script. The pool is ``--rows`` × 64 float32
features in 8 ``.npy`` shards on local disk (``pool.source: sharded``), 10 classes; rounds 1-3
each pick 100 items by margin over the whole pool, scored as ``scale.shards`` parallel part
tasks on the cluster. Measured from the Prefect task runs of the deployed flow run: each
round's selection from its first part's start to its ``select`` task's end, and each part's
time. Round 1 is cold (each Dask worker process opens the project, the pool index and the
model the first time); rounds 2-3 run on the same warm workers, as a long-lived cluster does.
The whole-pool reference model (trained once per project, not part of a round) is written
into the store beforehand so it does not dominate the run.

    python benchmarks/dask_deployed.py --rows 1000000 --out benchmarks/results/dask_deployed.json
    python benchmarks/dask_deployed.py --rows 1000000 --workers 2,1 --out benchmarks/results/dask_deployed_2then1.json

Each result records the load average (1, 5, 15 min) before and after its run: on a shared
machine the other jobs' load decides more than the worker count does.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import yaml

REPO = Path(__file__).resolve().parents[1]
ROUNDS = 3  # sharded selection rounds measured (round 0 is a cold start, never sharded)
sys.path.insert(0, str(REPO))

from crowdloop import keys  # noqa: E402
from crowdloop.storage import open_store, write_json  # noqa: E402
from tests.conftest import crowdloop_cmd  # noqa: E402
from tests.flows.prefect_helpers import create_process_pool, worker  # noqa: E402


def write_pool(folder: Path, rows: int, features: int = 64, seed: int = 0) -> None:
    from crowdloop.models.sharded import write_sharded_pool

    rng = np.random.default_rng(seed)
    X = rng.normal(size=(rows, features)).astype(np.float32)
    W = rng.normal(size=(features, 10))
    y = np.argmax(X @ W + rng.normal(scale=4.0, size=(rows, 10)), axis=1).astype(str)
    ids = np.array([f"i{k}" for k in range(rows)])
    write_sharded_pool(str(folder), X, ids, y, classes=tuple(str(c) for c in range(10)),
                       feature_names=tuple(f"f{k}" for k in range(features)), rows_per_shard=-(-rows // 8))


def run_once(n_workers: int, pool_dir: Path, workdir: Path, pool: str, env: dict[str, str], shards: int) -> dict:
    from distributed import LocalCluster
    from prefect import get_client
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId
    from prefect.deployments import run_deployment

    project = f"dask-w{n_workers}"
    project_dir = workdir / project
    with LocalCluster(n_workers=n_workers, threads_per_worker=1, processes=True, dashboard_address=None) as cluster:
        config = {
            "project": project, "seed": 0,
            "pool": {"source": "sharded", "path": str(pool_dir), "test_size": 0.02},
            "model": {"estimator": "sklearn.linear_model.LogisticRegression", "params": {"max_iter": 300}},
            "sampler": {"name": "margin", "initial_size": 200, "batch_size": 100},
            "vendor": {"name": "simulated", "params": {"n_workers": 20, "accuracy": [0.85, 0.95]}},
            "consensus": {"method": "majority_vote", "redundancy": 1},
            "stopping": {"max_rounds": ROUNDS + 1},
            "scale": {"shards": shards, "dask_address": cluster.scheduler_address},
        }
        path = workdir / f"{project}.yaml"
        path.write_text(yaml.safe_dump(config))
        subprocess.run([*crowdloop_cmd(), "deploy", str(path), "--pool", pool, "-p", str(project_dir)], env=env,
                       check=True, capture_output=True, text=True, timeout=900)
        write_json(open_store(str(project_dir)), keys.REFERENCE, {"accuracy": None, "reason": "skipped by the benchmark"})
        with worker(pool, env, workdir / f"{project}-worker.log"):
            load_before = [round(x, 2) for x in os.getloadavg()]
            start = time.perf_counter()
            run = run_deployment(f"crowdloop-active-learning/{project}", timeout=3600)
            wall = time.perf_counter() - start
            load_after = [round(x, 2) for x in os.getloadavg()]
    if not run.state.is_completed():
        raise RuntimeError(f"{project}: {run.state}: {(workdir / f'{project}-worker.log').read_text()[-3000:]}")
    with get_client(sync_client=True) as client:
        tasks, page = [], None
        while page is None or len(page) == 200:
            page = client.read_task_runs(flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[run.id])), limit=200,
                                         offset=len(tasks))
            tasks += page
    rounds = []
    for r in range(1, ROUNDS + 1):
        parts = [t for t in tasks if t.name.startswith("select part") and t.name.endswith(f"· r{r}")]
        select = next(t for t in tasks if t.name == f"select · r{r}")
        if len(parts) != shards:
            raise RuntimeError(f"{project}: round {r}: {len(parts)} part tasks, expected {shards}")
        first = min(t.start_time for t in parts)
        rounds.append({"round": r, "select_seconds": round((select.end_time - first).total_seconds(), 2),
                       "part_seconds": sorted(round(t.total_run_time.total_seconds(), 2) for t in parts)})
    return {"dask_workers": n_workers, "shards": shards, "rounds": rounds,
            "flow_run_seconds": round(run.total_run_time.total_seconds(), 2), "run_deployment_wall_seconds": round(wall, 2),
            "load_average_before": load_before, "load_average_after": load_after}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--shards", type=int, default=8)
    parser.add_argument("--workers", default="1,2",
                        help="Dask worker counts in the order run, e.g. 2,1 to check that the order (load drift) "
                             "does not decide the result")
    parser.add_argument("--out", default=None)
    args = parser.parse_args()
    from prefect.settings import PREFECT_API_URL, temporary_settings

    from tests.flows.prefect_helpers import real_prefect_server

    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        write_pool(work / "pool", args.rows)
        with real_prefect_server(work / "home", work / "server.log") as api, temporary_settings(updates={PREFECT_API_URL: api}):
            env = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_")}
            env.update(PREFECT_API_URL=api, PREFECT_LOGGING_LEVEL="WARNING")
            create_process_pool("bench", env)
            results = []
            for n in (int(w) for w in args.workers.split(",")):
                results.append(run_once(n, work / "pool", work, "bench", env, args.shards))
                print(json.dumps(results[-1]), flush=True)
    out = {"rows": args.rows, "features": 64, "workers_order": args.workers, "results": results,
           "load_average": [round(x, 2) for x in os.getloadavg()], "cpus": os.cpu_count()}
    print(json.dumps(out, indent=1))
    if args.out:
        Path(args.out).write_text(json.dumps(out, indent=1) + "\n")


if __name__ == "__main__":
    main()
