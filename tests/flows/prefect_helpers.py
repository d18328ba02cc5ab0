"""Prefect test machinery: work pools, workers, deployments, a flow run's logs and task runs.

Everything talks to the Prefect server the test's environment names (``PREFECT_API_URL``): the
session's test-harness server, or a real ``prefect server start`` (``real_prefect_server``)
when a test needs the UI, which the harness does not serve.
"""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from tests.vendors.app_server import free_port


def prefect_cli(*args: str, env: dict[str, str], timeout: float = 120) -> subprocess.CompletedProcess:
    out = subprocess.run([sys.executable, "-m", "prefect", *args], env=env, capture_output=True, text=True,
                         timeout=timeout)
    if out.returncode != 0:
        raise RuntimeError(f"prefect {' '.join(args)} failed: {out.stdout[-1500:]} {out.stderr[-1500:]}")
    return out


def spawn(args: list[str], *, env: dict[str, str], log_path: Path) -> subprocess.Popen:
    """A background process in its own session, its output in ``log_path``; stop it with ``stop``."""
    with open(log_path, "w") as log:  # the child keeps its own handle
        return subprocess.Popen(args, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)


def create_process_pool(name: str, env: dict[str, str]) -> None:
    prefect_cli("work-pool", "create", name, "--type", "process", "--overwrite", env=env)


@contextmanager
def worker(pool: str, env: dict[str, str], log_path: Path) -> Iterator[subprocess.Popen]:
    """``prefect worker start --pool POOL`` polling every second; stopped (SIGINT, then kill) after the block."""
    env = {**env, "PREFECT_WORKER_QUERY_SECONDS": "1", "PREFECT_WORKER_PREFETCH_SECONDS": "1"}
    proc = spawn([sys.executable, "-m", "prefect", "worker", "start", "--pool", pool, "--type", "process"],
                 env=env, log_path=log_path)
    try:
        yield proc
    finally:
        stop(proc)


def stop(proc: subprocess.Popen, timeout: float = 30) -> None:
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGINT)
        try:
            proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=10)


async def deployment_ids(names: list[str], timeout: float) -> dict[str, str]:
    """The ids of the deployments called ``names``, waiting up to ``timeout`` for them to appear."""
    from prefect.client.orchestration import get_client
    from prefect.exceptions import ObjectNotFound

    found: dict[str, str] = {}
    deadline = time.monotonic() + timeout
    async with get_client() as client:
        while len(found) < len(names) and time.monotonic() < deadline:
            for name in names:
                try:
                    found[name] = str((await client.read_deployment_by_name(name)).id)
                except ObjectNotFound:
                    await asyncio.sleep(0.5)
    return found


async def flow_run_logs(flow_run_id: Any) -> list[tuple[str, int, str]]:
    """(logger name, level, message) of every log line of a flow run and its task runs."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import LogFilter, LogFilterFlowRunId

    out: list[tuple[str, int, str]] = []
    async with get_client() as client:
        offset = 0
        while page := await client.read_logs(log_filter=LogFilter(flow_run_id=LogFilterFlowRunId(any_=[flow_run_id])),
                                             limit=200, offset=offset):
            out += [(entry.name, entry.level, entry.message) for entry in page]
            offset += len(page)
    return out


async def task_run_names(flow_run_id: Any) -> list[str]:
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId

    async with get_client() as client:
        runs = await client.read_task_runs(flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[flow_run_id])))
    return [t.name for t in runs]


async def flow_runs_of(deployment_name: str) -> list[Any]:
    """Every flow run of a deployment (``flow/deployment``), oldest first."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import DeploymentFilter, DeploymentFilterId
    from prefect.client.schemas.sorting import FlowRunSort

    async with get_client() as client:
        deployment = await client.read_deployment_by_name(deployment_name)
        return await client.read_flow_runs(deployment_filter=DeploymentFilter(id=DeploymentFilterId(any_=[deployment.id])),
                                           sort=FlowRunSort.EXPECTED_START_TIME_ASC)


def wait_for(condition, *, timeout: float, interval: float = 1.0, what: str = "condition") -> Any:
    """Poll ``condition()`` until it returns something truthy; that value (AssertionError on timeout)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout:g} s waiting for {what}")


@contextmanager
def real_prefect_server(home: Path, log_path: Path) -> Iterator[str]:
    """``prefect server start`` on 127.0.0.1 with the UI, its database under ``home``; yields the API URL."""
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_")}
    env.update(PREFECT_HOME=str(home), PREFECT_SERVER_ANALYTICS_ENABLED="false", PREFECT_UI_ENABLED="true",
               PREFECT_SERVER_API_HOST="127.0.0.1", PREFECT_SERVER_API_PORT=str(port),
               PREFECT_UI_API_URL=f"http://127.0.0.1:{port}/api", PYTHONUNBUFFERED="1")
    # ``python -m prefect``: a venv need not have the ``prefect`` script (a thin venv over shared packages)
    proc = spawn([sys.executable, "-m", "prefect", "server", "start", "--host", "127.0.0.1", "--port", str(port)],
                 env=env, log_path=log_path)
    url = f"http://127.0.0.1:{port}/api"
    try:
        def healthy() -> bool:
            if proc.poll() is not None:
                raise RuntimeError(f"prefect server exited: {log_path.read_text()[-2000:]}")
            try:
                with urllib.request.urlopen(f"{url}/health", timeout=2) as resp:
                    return resp.status == 200
            except OSError:
                return False

        wait_for(healthy, timeout=180, interval=0.5, what="prefect server start")
        yield url
    finally:
        stop(proc)
