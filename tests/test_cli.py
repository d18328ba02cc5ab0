"""CLI conventions: --version, help on every parameter, -p/--project-dir on every project command,
and distinct exit codes (0 ok, 2 bad input, 3 worth a retry, 130 interrupted, 1 a bug)."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import time
from collections.abc import Iterator
from importlib.metadata import version
from pathlib import Path
from typing import Any

import pytest
import typer
import yaml
from typer.testing import CliRunner

from crowdloop.cli import app
from crowdloop.config import parse_config
from tests.conftest import REPO, crowdloop_cmd, small_config
from tests.throwaway_dist import write_dist

COMMAND = typer.main.get_command(app)


def _commands(group: Any = COMMAND, prefix: str = "") -> dict[str, Any]:
    """Every leaf command by its path (typer carries its own click, so groups are duck-typed)."""
    found: dict[str, Any] = {}
    for name, command in group.commands.items():
        path = f"{prefix}{name}"
        if hasattr(command, "commands"):
            found.update(_commands(command, path + " "))
        else:
            found[path] = command
    return found


def test_version_comes_from_the_package_metadata() -> None:
    result = CliRunner().invoke(app, ["--version"])
    assert result.exit_code == 0 and result.output == f"crowdloop {version('crowdloop')}\n"


def test_every_option_and_argument_has_help_text() -> None:
    missing = [f"{path} {param.name}" for path, command in _commands().items() for param in command.params
               if not (getattr(param, "help", None) or "").strip()]
    assert missing == []
    assert all((command.help or "").strip() for command in _commands().values())


def test_docs_cli_md_names_every_command_and_option_and_readme_links_it() -> None:
    doc = (REPO / "docs" / "cli.md").read_text()
    for path, command in _commands().items():
        assert f"crowdloop {path}" in doc, path
        for param in command.params:
            for flag in getattr(param, "opts", []):
                if flag.startswith("-") and flag != "--help":
                    assert flag in doc, f"{path} {flag}"
    for code in ("| 0 ", "| 1 ", "| 2 ", "| 3 ", "| 130 "):
        assert code in doc
    using = (REPO / "README.md").read_text().split("## Using it", 1)[1].split("\n## ", 1)[0]
    assert "docs/cli.md" in using


# -- one way to give the project directory ------------------------------------------------------
@pytest.fixture(scope="module")
def project(tmp_path_factory) -> str:
    from crowdloop.engine import Project

    location = str(tmp_path_factory.mktemp("cli") / "project")
    Project.prepare(parse_config(small_config(**{"pool.name": "iris", "sampler.batch_size": 5,
                                                 "sampler.initial_size": 5})), location)
    return location


@pytest.mark.parametrize("command, expected_code, expected", [
    (["status", "--json"], 0, '"project": "tiny"'),
    (["workers", "--json"], 0, '"n_workers": 0'),
    (["annotate"], 2, "vendor.name is 'simulated'; the annotation app serves projects whose vendor is 'local'"),
    (["annotators", "list"], 2, "the annotation app serves projects whose vendor is 'local'"),
    (["annotators", "add", "ann"], 2, "the annotation app serves projects whose vendor is 'local'"),
    (["annotators", "remove", "ann"], 2, "the annotation app serves projects whose vendor is 'local'"),
    (["mturk", "expire-round", "0"], 2, "vendor.name is 'simulated', expected 'mturk'"),
])
def test_every_project_command_takes_project_dir(project: str, command, expected_code, expected) -> None:
    for flag in ("--project-dir", "-p"):
        result = CliRunner().invoke(app, [*command, flag, project])
        assert result.exit_code == expected_code, result.output
        assert expected in result.output


@pytest.mark.parametrize("command", [["status", "{}", "--json"], ["workers", "{}", "--json"],
                                     ["mturk", "expire-round", "{}", "0"], ["annotate", "{}"]])
def test_the_positional_shorthand_still_works(project: str, command) -> None:
    result = CliRunner().invoke(app, [part.format(project) for part in command])
    assert result.exit_code in (0, 2) and "missing project directory" not in result.output
    assert ("project" in result.output) if result.exit_code == 0 else ("vendor.name is" in result.output)


def test_a_missing_or_doubled_project_dir_is_one_line_exit_2(project: str) -> None:
    result = CliRunner().invoke(app, ["status"])
    assert result.exit_code == 2 and result.output == "error: missing project directory; expected --project-dir DIR (or -p DIR)\n"
    result = CliRunner().invoke(app, ["status", project, "-p", project + "-other"])
    assert result.exit_code == 2 and "project directory given twice" in result.output
    result = CliRunner().invoke(app, ["mturk", "expire-round", "-p", project, "last"])
    assert result.exit_code == 2 and result.output == "error: ROUND: expected a round number >= 0, got 'last'\n"


# -- exit codes, through the real command ----------------------------------------------------
POOLS = '''
import os
import time


def slow(cfg):
    open(os.environ["CLPLUG_READY"], "w").close()
    time.sleep(120)


def offline(cfg):
    raise ConnectionRefusedError(111, "Connection refused by 127.0.0.1:9")


def buggy(cfg):
    raise TypeError("a bug in the loader")
'''


@pytest.fixture(scope="module")
def plugin_env(tmp_path_factory) -> dict[str, str]:
    root = write_dist(tmp_path_factory.mktemp("exitcodes") / "site", "clplug-exit", "1.0",
                      {"crowdloop.pools": {name: f"clplug_exit_pools:{name}" for name in ("slow", "offline", "buggy")}},
                      {"clplug_exit_pools.py": POOLS})
    return {**os.environ, "PYTHONPATH": str(root)}


def _config(tmp_path: Path, source: str) -> Path:
    path = tmp_path / f"{source}.yaml"
    path.write_text(yaml.safe_dump(small_config(pool={"source": source, "test_size": 0.3})))
    return path


def test_an_outside_failure_exits_3_in_one_line(plugin_env, tmp_path) -> None:
    result = subprocess.run([*crowdloop_cmd(), "check", str(_config(tmp_path, "offline")), "-p", str(tmp_path / "p")],
                            env=plugin_env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 3, result.stderr
    assert result.stderr == ("error: ConnectionRefusedError: [Errno 111] Connection refused by 127.0.0.1:9 "
                             "(an outside failure: worth a retry)\n")


def test_a_bug_exits_1_with_its_traceback(plugin_env, tmp_path) -> None:
    result = subprocess.run([*crowdloop_cmd(), "check", str(_config(tmp_path, "buggy")), "-p", str(tmp_path / "p")],
                            env=plugin_env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 1
    assert "Traceback (most recent call last)" in result.stderr and result.stderr.rstrip().endswith(
        "TypeError: a bug in the loader")


def _default_sigint() -> None:
    """Give the child SIGINT's default action: a suite started in the background by a shell without
    job control inherits SIGINT *ignored*, and Python then installs no KeyboardInterrupt handler."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def test_ctrl_c_exits_130(plugin_env, tmp_path) -> None:
    ready = tmp_path / "ready"
    proc = subprocess.Popen([*crowdloop_cmd(), "check", str(_config(tmp_path, "slow")), "-p", str(tmp_path / "p")],
                            env={**plugin_env, "CLPLUG_READY": str(ready)}, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, preexec_fn=_default_sigint)
    try:
        deadline = time.monotonic() + 240
        while not ready.exists():
            assert proc.poll() is None and time.monotonic() < deadline, proc.communicate()
            time.sleep(0.1)
        proc.send_signal(signal.SIGINT)
        _, stderr = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 130, stderr
    assert "Traceback" not in stderr and re.fullmatch(r"interrupted; .*\n", stderr)


@pytest.fixture
def unreachable_prefect_api() -> Iterator[None]:
    """PREFECT_API_URL set in Prefect's own settings (the commands' first check), to a port nothing
    listens on, so a test that reaches a server fails. An environment variable set in the test is
    not enough: this process read its settings at import; such tests once passed only because the
    session's Prefect server had been started by an earlier test."""
    from prefect.settings import PREFECT_API_URL, temporary_settings

    with temporary_settings(updates={PREFECT_API_URL: "http://127.0.0.1:9/api"}):
        yield


@pytest.mark.parametrize("command", [["serve"], ["deploy", "--pool", "p"]])
def test_a_bad_cron_is_one_line_exit_2_before_the_project_is_opened(command, tmp_path, unreachable_prefect_api) -> None:
    """It was a traceback from inside Prefect's deployment, after the pool had been loaded."""
    config = tmp_path / "c.yaml"
    config.write_text(yaml.safe_dump(small_config()))
    store = tmp_path / "project"
    result = CliRunner().invoke(app, [*command, str(config), "-p", str(store), "--cron", "61 * * * *"])
    assert result.exit_code == 2, result.output
    assert result.output.strip() == ("error: --cron '61 * * * *': not a cron schedule; expected five fields "
                                     "(minute hour day month weekday), e.g. '0 6 * * *', or @hourly/@daily/@weekly")
    assert not store.exists()


def test_a_webhook_public_url_that_is_no_url_is_refused_before_anything_is_registered(tmp_path) -> None:
    result = CliRunner().invoke(app, ["webhook", "-p", str(tmp_path / "nowhere"), "--public-url", "receiver.local:8787"])
    assert result.exit_code == 2
    assert result.output.startswith("error: --public-url 'receiver.local:8787': expected an http(s) base URL")


@pytest.fixture(scope="module")
def local_project(tmp_path_factory) -> str:
    from crowdloop.engine import Project

    store = str(tmp_path_factory.mktemp("annotate") / "p")
    Project.prepare(parse_config(small_config(vendor={"name": "local", "params": {}})), store)
    return store


@pytest.mark.parametrize(("host", "expected"), [
    ("8.8.8.8", "error: --host 8.8.8.8 --port {port}: 8.8.8.8 is not an address of this machine "
                "(Cannot assign requested address); use 127.0.0.1, or 0.0.0.0 for every interface"),
    ("300.1.1.1", "error: --host 300.1.1.1 --port {port}: '300.1.1.1' is not an address or host name this machine "
                  "resolves (Name or service not known); use 127.0.0.1, or 0.0.0.0 for every interface"),
    ("127.0.0.1", "error: --host 127.0.0.1 --port {port}: port {port} is already in use on 127.0.0.1; stop what "
                  "holds it or pick another --port"),
])
def test_a_host_or_port_the_server_cannot_listen_on_is_one_line_exit_2_before_the_banner(local_project, host,
                                                                                       expected) -> None:
    """It was uvicorn's log line and exit 3 ("worth a retry") after the start banner had named the URL."""
    import socket

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        result = CliRunner().invoke(app, ["annotate", local_project, "--host", host, "--port", str(port)])
    assert result.exit_code == 2, result.output
    assert result.output.strip() == expected.format(port=port)


def test_the_webhook_checks_its_port_before_it_registers_anything(monkeypatch, tmp_path,
                                                                  unreachable_prefect_api) -> None:
    """A port in use was found only after the webhook had been registered on Label Studio."""
    import socket
    from types import SimpleNamespace

    from crowdloop.engine import Project

    registered: list[str] = []
    project = SimpleNamespace(config=SimpleNamespace(project="t", vendor=SimpleNamespace(name="label_studio")),
                              vendor=SimpleNamespace(ensure_webhook=lambda url, **kw: registered.append(url)))
    monkeypatch.setattr(Project, "open", lambda *a, **kw: project)
    store = str(tmp_path / "p")
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        result = CliRunner().invoke(app, ["webhook", "-p", store, "--port", str(port)])
    assert result.exit_code == 2, result.output
    assert "is already in use" in result.output and registered == []
