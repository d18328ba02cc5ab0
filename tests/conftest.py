"""Shared fixtures: one real Prefect API server per test session, small project configs."""

from __future__ import annotations

import os
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

# tests.no_skips: any skip fails the run; pytester: the test of that guard.
pytest_plugins = ["tests.no_skips", "pytester"]

os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "120")
os.environ.setdefault("PREFECT_LOGGING_LEVEL", "WARNING")

REPO = Path(__file__).resolve().parents[1]
CONFIGS = REPO / "configs"


_TREE_KEY = pytest.StashKey["tuple[str, tuple[str, ...]] | None"]()


def _tree_state() -> tuple[str, tuple[str, ...]] | None:
    """The work tree's ``git status`` (tracked and untracked files, .gitignore'd ones excepted) and
    the names in the venv's site-packages: what a test run must leave as it found it. None outside
    a git checkout (an unpacked sdist has nothing to compare)."""
    import subprocess
    import sysconfig

    try:
        status = subprocess.run(["git", "status", "--porcelain", "--untracked-files=all"], cwd=REPO,
                                capture_output=True, text=True, timeout=60, check=True).stdout
    except (OSError, subprocess.SubprocessError):
        return None
    site = Path(sysconfig.get_paths()["purelib"])
    return status, tuple(sorted(p.name for p in site.iterdir())) if site.is_dir() else ()


def pytest_sessionstart(session: pytest.Session) -> None:
    if not hasattr(session.config, "workerinput"):  # the controlling process only
        session.config.stash[_TREE_KEY] = _tree_state()


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    """Fail the run when the tests changed tracked files, left files in the tree, or installed or
    removed packages in the venv (screenshots and plug-in installs belong in tmp dirs)."""
    before = session.config.stash.get(_TREE_KEY, None)
    if before is None:
        return
    after = _tree_state()
    if after is None or after == before:
        return
    lines = []
    if after[0] != before[0]:
        old, now = set(before[0].splitlines()), set(after[0].splitlines())
        gone, new = old - now, now - old
        lines.append(f"git status changed: now {sorted(new)}, no longer {sorted(gone)}")
    if after[1] != before[1]:
        lines.append(f"site-packages changed: added {sorted(set(after[1]) - set(before[1]))}, "
                     f"removed {sorted(set(before[1]) - set(after[1]))}")
    reporter = session.config.pluginmanager.get_plugin("terminalreporter")
    message = "the test run changed the work tree or the venv: " + "; ".join(lines)
    if reporter is not None:
        reporter.ensure_newline()
        reporter.write_line(message, red=True, bold=True)
    else:
        sys.stderr.write(message + "\n")
    session.exitstatus = pytest.ExitCode.TESTS_FAILED


# Test folders whose files hold few tests that each run a flow, a server or a browser for a minute
# or more. scripts/test.sh hands whole files to two processes in collection order
# (--no-loadscope-reorder); these go first, so the last minutes are short files filling in, not
# one process running a 100-s flow test while the other waits.
SLOW_FIRST = ("flows", "vendors")


def pytest_collection_modifyitems(session: pytest.Session, config: pytest.Config, items: list[pytest.Item]) -> None:
    def rank(item: pytest.Item) -> int:
        try:
            parts = item.path.relative_to(REPO / "tests").parts
        except ValueError:  # a test run inside a test (pytester), in a temporary folder
            return 1
        return 0 if len(parts) > 1 and parts[0] in SLOW_FIRST else 1

    items.sort(key=rank)  # stable: each file's tests keep their order


@pytest.fixture(scope="session")
def prefect_api_url() -> Iterator[str]:
    """A real Prefect server (the test harness) shared by the whole session.

    Subprocesses get its URL through ``PREFECT_API_URL`` so they don't each start their own.
    """
    from prefect.settings import PREFECT_API_URL
    from prefect.testing.utilities import prefect_test_harness

    with prefect_test_harness(server_startup_timeout=90):
        yield PREFECT_API_URL.value()


@pytest.fixture
def cli_env(prefect_api_url: str) -> dict[str, str]:
    """Environment for ``crowdloop`` subprocesses talking to the session's Prefect server."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("CROWDLOOP_FAULT")}
    env["PREFECT_API_URL"] = prefect_api_url
    env["PYTHONUNBUFFERED"] = "1"
    return env


def crowdloop_cmd() -> list[str]:
    return [sys.executable, "-m", "crowdloop.cli"]


def small_config(**overrides) -> dict:
    """A fast project: digits, logistic regression, margin sampling, a simulated crowd."""
    config = {
        "project": "tiny",
        "seed": 7,
        "pool": {"source": "sklearn", "name": "digits", "test_size": 0.3},
        "model": {"estimator": "sklearn.linear_model.LogisticRegression", "params": {"C": 0.1, "max_iter": 500}},
        "sampler": {"name": "margin", "batch_size": 20, "initial_size": 30},
        "vendor": {"name": "simulated", "params": {"n_workers": 12, "accuracy": [0.7, 0.95], "spammer_fraction": 0.1}},
        "consensus": {"method": "one_coin_dawid_skene", "redundancy": 3},
        "stopping": {"max_rounds": 4},
    }
    return with_overrides(config, overrides)


def die_after_writing(monkeypatch: pytest.MonkeyPatch, module, prefixes: tuple[str, ...], died: type[BaseException]):
    """Make ``module.write_json`` write a record under one of ``prefixes``, then raise ``died``
    (the process killed right after that record); returns the call that undoes it."""
    real_write = module.write_json

    def write_then_die(store, key, obj, **kwargs):
        real_write(store, key, obj, **kwargs)
        if key.startswith(prefixes):
            raise died(key)

    monkeypatch.setattr(module, "write_json", write_then_die)
    return lambda: monkeypatch.setattr(module, "write_json", real_write)


def with_overrides(config: dict, overrides: dict) -> dict:
    """``config`` with ``{"a.b.c": value}`` overrides set in place (missing sections created)."""
    for dotted, value in overrides.items():
        node = config
        *parents, leaf = dotted.split(".")
        for part in parents:
            node = node.setdefault(part, {})
        node[leaf] = value
    return config


@pytest.fixture(scope="session")
def s3_endpoint() -> Iterator[str]:
    """A real local S3-compatible server (moto's standalone server) on 127.0.0.1, random port."""
    from tests.s3_server import local_s3_server

    with local_s3_server() as endpoint:
        yield endpoint


@pytest.fixture
def s3_bucket(s3_endpoint: str, request) -> str:
    """A fresh bucket per test."""
    import uuid

    import boto3

    name = f"crowdloop-{uuid.uuid4().hex[:12]}"
    boto3.client("s3", endpoint_url=s3_endpoint).create_bucket(Bucket=name)
    return name
