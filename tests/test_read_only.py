"""Commands that only read a project work on a read-only one (issue 19, point 12).

The project sits on a read-only bind mount (a private mount namespace through ``unshare``,
util-linux), as a snapshot, a read-only share or an archived copy would: ``status``,
``workers`` and ``verify`` read it; ``run`` still refuses in one line.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from crowdloop import engine
from crowdloop.config import parse_config
from crowdloop.engine import Project
from tests.conftest import small_config

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def project(tmp_path_factory) -> Path:
    where = tmp_path_factory.mktemp("ro") / "p"
    p = Project.prepare(parse_config(small_config(**{"stopping.max_rounds": 1})), str(where))
    engine.run_in_process(p)
    return where


def _read_only(project: Path, *command: str) -> subprocess.CompletedProcess:
    """``crowdloop COMMAND`` with ``project`` mounted read-only."""
    unshare = shutil.which("unshare")
    assert unshare, "needs unshare from util-linux: apt-get install util-linux"
    cli = " ".join(f"'{part}'" for part in (sys.executable, "-m", "crowdloop.cli", *command))
    script = f"mount --bind {project} {project} && mount -o remount,bind,ro {project} && exec {cli}"
    env = {k: v for k, v in os.environ.items() if not k.startswith("CROWDLOOP_")}
    return subprocess.run([unshare, "--user", "--map-root-user", "--mount", "sh", "-c", script], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=120)


@pytest.mark.parametrize("command", ["status", "workers", "verify"])
def test_reading_commands_work_on_a_read_only_project(project: Path, command: str) -> None:
    done = _read_only(project, command, str(project), *(["--json"] if command != "verify" else []))
    assert done.returncode == 0, done.stderr
    if command != "verify":
        state = json.loads(done.stdout)
        assert state["project"] == "tiny"
    else:
        assert done.stdout.startswith("ok: ")


def test_run_on_a_read_only_project_is_one_line(project: Path, tmp_path: Path) -> None:
    config = tmp_path / "c.yaml"
    config.write_text(yaml.safe_dump(small_config(**{"stopping.max_rounds": 2})))
    done = _read_only(project, "run", str(config), "--project-dir", str(project))
    assert done.returncode == 2 and done.stderr.startswith("error: ") and done.stderr.count("\n") == 1, done.stderr
    assert "not readable and writable" in done.stderr or "Read-only file system" in done.stderr, done.stderr
