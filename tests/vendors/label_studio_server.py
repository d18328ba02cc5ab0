"""Run a real Label Studio server from its own virtual environment, bound to loopback only.

The server's pins conflict with Prefect, so it lives in a separate venv: ``CROWDLOOP_LS_VENV``,
else the checkout's ``.ls-venv`` (what ``bash scripts/test.sh`` creates), else
``/work/ls-venv`` (the shared one on the development machine). By hand::

    python3 -m venv .ls-venv && .ls-venv/bin/pip install -c tests/vendors/label_studio_constraints.txt label-studio==1.23.2

The first start on an empty data directory runs the migrations (minutes); they run once into
a template directory (kept between sessions, keyed by version) that every test copies.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import tempfile
import time
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from tests.vendors.app_server import free_port

LS_VERSION = "1.23.2"  # scripts/test.sh reads it from here


def _ls_venv() -> Path:
    if os.environ.get("CROWDLOOP_LS_VENV"):
        return Path(os.environ["CROWDLOOP_LS_VENV"])
    in_checkout = Path(__file__).resolve().parents[2] / ".ls-venv"
    return in_checkout if in_checkout.exists() else Path("/work/ls-venv")


LS_VENV = _ls_venv()
LS_BIN = LS_VENV / "bin" / "label-studio"
USERNAME = "crowdloop-admin@example.com"
PASSWORD = "crowdloop-test-password"
TOKEN = "c0ffee00c0ffee00c0ffee00c0ffee00c0ffee00"  # 40 characters, test-only
SETUP_HINT = (f"Label Studio server venv not found at {LS_VENV}; run bash scripts/test.sh (it creates it), "
              f"or create it with: python3 -m venv {LS_VENV} && {LS_VENV}/bin/pip install "
              f"-c tests/vendors/label_studio_constraints.txt label-studio=={LS_VERSION} "
              "(or set CROWDLOOP_LS_VENV)")


@dataclass
class Server:
    url: str
    token: str
    process: subprocess.Popen
    log: Path

    def stop(self) -> None:
        if self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGTERM)
            try:
                self.process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait(timeout=10)


def _env(data_dir: Path, extra: dict[str, str] | None = None) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("VIRTUAL_ENV", "PYTHON", "PREFECT", "LABEL_STUDIO"))}
    env.update(LABEL_STUDIO_ENABLE_LEGACY_API_TOKEN="true", DJANGO_DB="sqlite", LABEL_STUDIO_BASE_DATA_DIR=str(data_dir),
               PYTHONUNBUFFERED="1")
    return {**env, **(extra or {})}


def start(data_dir: Path, *, timeout_s: float, env: dict[str, str] | None = None) -> Server:
    """Start Label Studio on 127.0.0.1 (``--internal-host``: never on all interfaces)."""
    port = free_port()
    log = data_dir.parent / f"{data_dir.name}.log"
    with open(log, "ab") as out:
        process = subprocess.Popen(
            [str(LS_BIN), "start", "--no-browser", "--internal-host", "127.0.0.1", "--port", str(port),
             "--host", f"http://127.0.0.1:{port}", "--data-dir", str(data_dir), "--username", USERNAME,
             "--password", PASSWORD, "--user-token", TOKEN, "--enable-legacy-api-token"],
            cwd=data_dir, env=_env(data_dir, env), stdout=out, stderr=subprocess.STDOUT, start_new_session=True,
        )
    server = Server(f"http://127.0.0.1:{port}", TOKEN, process, log)
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"label-studio exited with {process.returncode}; see {log}, which ends:\n{_tail(log)}")
        try:
            with urllib.request.urlopen(f"{server.url}/health", timeout=2) as resp:
                if resp.status == 200:
                    return server
        except OSError:
            pass
        time.sleep(1.0)
    server.stop()
    raise RuntimeError(f"label-studio did not answer on {server.url} within {timeout_s:.0f}s; see {log}")


def _tail(log: Path, lines: int = 15) -> str:
    """The end of the server's log, so a CI report shows why it stopped (the file is gone by then)."""
    return "\n".join(log.read_text(errors="replace").splitlines()[-lines:])


def template_dir() -> Path:
    """A migrated data directory with the admin user and token, made once per machine and version."""
    template = Path(tempfile.gettempdir()) / f"crowdloop-ls-template-{LS_VERSION}"
    if (template / ".ready").exists():
        return template
    shutil.rmtree(template, ignore_errors=True)
    data = template / "data"
    data.mkdir(parents=True)
    server = start(data, timeout_s=900)  # migrations: 1-6 minutes on a loaded machine
    server.stop()
    (template / ".ready").write_text(LS_VERSION)
    return template


@contextmanager
def running_copy(workdir: Path, *, env: dict[str, str] | None = None) -> Iterator[Server]:
    """A fresh server on a copy of the template for the block (a missing venv fails with the setup hint)."""
    if not LS_BIN.exists():
        raise RuntimeError(SETUP_HINT)
    server = start_copy(workdir, env=env)
    try:
        yield server
    finally:
        server.stop()


def start_copy(workdir: Path, *, env: dict[str, str] | None = None) -> Server:
    """A fresh server on a copy of the template (15-25 s instead of minutes); ``env`` adds settings."""
    shutil.copytree(template_dir() / "data", workdir / "data")
    return start(workdir / "data", timeout_s=240, env=env)
