"""SIGTERM ends `crowdloop run` like Ctrl-C does (issue 19, point 6).

`crowdloop run` without ``PREFECT_API_URL`` starts Prefect's temporary API server (a uvicorn
child process). Ctrl-C shut it down; SIGTERM (what ``kill``, systemd, Docker and CI runners
send) left it running under init. The test runs the real CLI, waits until the server child is
up and the flow is working, sends SIGTERM and checks that no child survives.
"""

from __future__ import annotations

import os
import signal
import subprocess
import time
from pathlib import Path

import psutil
import pytest
import yaml

from tests.conftest import crowdloop_cmd, small_config

REPO = Path(__file__).resolve().parents[1]


def _server_children(proc: psutil.Process) -> list[psutil.Process]:
    found = []
    for child in proc.children(recursive=True):
        try:
            if "uvicorn" in " ".join(child.cmdline()):
                found.append(child)
        except psutil.NoSuchProcess:
            continue
    return found


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_a_signal_stops_the_run_and_its_temporary_prefect_server(tmp_path: Path, sig: signal.Signals) -> None:
    config = tmp_path / "config.yaml"
    # a slow crowd: the run is still collecting when the signal comes
    config.write_text(yaml.safe_dump(small_config(**{"vendor.params.latency_s": 600,
                                                     "collect.poll_interval_s": 0.5})))
    env = {k: v for k, v in os.environ.items() if not k.startswith(("CROWDLOOP_", "PREFECT_"))}
    env.update(PREFECT_HOME=str(tmp_path / "prefect-home"), PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS="180",
               PYTHONUNBUFFERED="1")
    project = tmp_path / "p"
    # output to files: a left-over child would keep pipes open
    with open(tmp_path / "stdout", "w") as out, open(tmp_path / "stderr", "w") as err:
        run = subprocess.Popen([*crowdloop_cmd(), "run", str(config), "--project-dir", str(project)], cwd=REPO, env=env,
                               stdout=out, stderr=err, text=True,
                               preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))  # as from a terminal
    servers: list[psutil.Process] = []
    try:
        deadline = time.monotonic() + 240
        while time.monotonic() < deadline and run.poll() is None:
            servers = servers or _server_children(psutil.Process(run.pid))
            if servers and (project / "rounds" / "0000" / "refs.json").exists():
                break  # the server is up and the flow has dispatched round 0
            time.sleep(0.3)
        assert run.poll() is None, (tmp_path / "stderr").read_text()[-3000:]
        assert servers, "the temporary Prefect server never started"
        os.kill(run.pid, sig)
        run.wait(timeout=120)
        stderr = (tmp_path / "stderr").read_text()
        _, alive = psutil.wait_procs(servers, timeout=30)
        assert alive == [], f"{len(alive)} uvicorn server(s) left running after {sig.name}: {[p.pid for p in alive]}"
        assert run.returncode == 130 and "interrupted" in stderr, (run.returncode, stderr[-3000:])  # like Ctrl-C
        assert "Traceback" not in stderr, stderr[-3000:]
    finally:
        if run.poll() is None:
            run.kill()
        for server in servers:
            if server.is_running():
                server.kill()
