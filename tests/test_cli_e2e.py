"""End-to-end through the ``crowdloop`` command in subprocesses against a real Prefect server:
the demo's acceptance figures, ``status --json``, the project lock, and SIGKILL + resume."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from crowdloop import keys
from crowdloop.engine import Project
from crowdloop.storage import read_json
from crowdloop.storage.local import LocalStore
from tests.conftest import CONFIGS, REPO, crowdloop_cmd, small_config

pytestmark = pytest.mark.slow


def run_cli(args: list[str], env: dict[str, str], timeout: float = 300) -> subprocess.CompletedProcess:
    return subprocess.run(crowdloop_cmd() + args, env=env, capture_output=True, text=True, timeout=timeout)


def status(project_dir: Path, env: dict[str, str]) -> dict:
    result = run_cli(["status", str(project_dir), "--json"], env)
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


def test_demo_config_reaches_reference_accuracy(cli_env: dict[str, str], tmp_path: Path) -> None:
    project_dir = tmp_path / "demo"
    result = run_cli(["run", str(CONFIGS / "digits.yaml"), "--project-dir", str(project_dir)], cli_env)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "final test accuracy" in result.stdout and "label_budget" in result.stdout
    state = status(project_dir, cli_env)
    assert set(state["rounds"][0]) >= {"round", "n_labeled", "n_judgments", "cost", "accuracy"}
    final = state["rounds"][-1]
    assert final["accuracy"] >= state["reference_accuracy"] - 0.02, (final, state["reference_accuracy"])
    assert final["n_labeled"] <= 480 and final["n_judgments"] == 3 * final["n_labeled"]
    assert state["baseline"]["rounds"][-1]["n_labeled"] == final["n_labeled"]
    assert state["totals"]["effective_hourly_wage"] >= 12.0
    for name in ("metrics.json", "metrics.csv", "learning_curve.png", "labels.jsonl", "annotations.jsonl"):
        assert (project_dir / name).stat().st_size > 0


def test_second_run_on_a_locked_project_fails_fast(cli_env: dict[str, str], tmp_path: Path) -> None:
    config = tmp_path / "c.yaml"
    config.write_text(yaml.safe_dump(small_config()))
    project_dir = tmp_path / "p"
    assert run_cli(["run", str(config), "--project-dir", str(project_dir)], cli_env).returncode == 0
    with LocalStore(project_dir).lock("project"):
        started = time.monotonic()
        result = run_cli(["run", str(config), "--project-dir", str(project_dir)], cli_env)
    assert result.returncode == 2
    assert result.stderr.strip().startswith("error: project") and "in use" in result.stderr
    assert "Traceback" not in result.stderr and time.monotonic() - started < 60


def test_status_of_a_missing_project_is_one_line(cli_env: dict[str, str], tmp_path: Path) -> None:
    result = run_cli(["status", str(tmp_path / "nope"), "--json"], cli_env)
    assert result.returncode == 2 and result.stderr.count("\n") == 1 and "not found" in result.stderr


# --- crash and resume -------------------------------------------------------------------
CRASH_CONFIG = small_config(project="crash", **{"stopping.max_rounds": 4})


def outcome(project_dir: Path) -> dict:
    """What must not depend on crashes: labels, per-round metrics, vendor-side effects, money."""
    p = Project.open(str(project_dir))
    labels = {rec["item-id"]: rec["label-metadata"]["class-name"]
              for rec in map(json.loads, (project_dir / "labels.jsonl").read_text().splitlines())}
    batches = [read_json(p.vendor.store, k) for k in p.vendor.store.list("batches/")]
    vendor_items = [t["item_id"] for b in batches for t in b["tasks"]]
    log = [json.loads(item) for item in (project_dir / "annotations.jsonl").read_text().splitlines()]
    pay_total = sum(read_json(p.store, keys.round_key(r, keys.PAY))["total"] for r in p.rounds()
                    if p.store.exists(keys.round_key(r, keys.PAY)))
    ledger = p.vendor.ledger()
    return {
        "labels": labels,
        "rounds": [dict(r.items()) for r in p.metrics()],
        "vendor_items": sorted(vendor_items),
        "vendor_items_unique": len(set(vendor_items)) == len(vendor_items),
        "log_ids": sorted(a["assignment_id"] for a in log),
        "log_unique": len({a["assignment_id"] for a in log}) == len(log),
        "vendor_assignments": ledger["assignments"],
        "money_matches_vendor": abs(pay_total - (ledger["paid"] + ledger["bonuses"])) < 1e-6,
    }


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory, prefect_api_url: str) -> dict:
    env = {k: v for k, v in os.environ.items() if not k.startswith("CROWDLOOP_FAULT")}
    env["PREFECT_API_URL"] = prefect_api_url
    root = tmp_path_factory.mktemp("uninterrupted")
    (root / "c.yaml").write_text(yaml.safe_dump(CRASH_CONFIG))
    result = run_cli(["run", str(root / "c.yaml"), "--project-dir", str(root / "p")], env)
    assert result.returncode == 0, result.stderr[-3000:]
    return outcome(root / "p")


def check_same_as_uninterrupted(project_dir: Path, expected: dict) -> None:
    got = outcome(project_dir)
    assert got["vendor_items_unique"], "an item was dispatched twice on the vendor"
    assert got["log_unique"], "an annotation was stored twice"
    assert got["log_ids"] == expected["log_ids"] and len(got["log_ids"]) == got["vendor_assignments"]
    assert got["money_matches_vendor"]
    assert got["vendor_items"] == expected["vendor_items"]
    assert got["labels"] == expected["labels"]
    assert got["rounds"] == expected["rounds"]


@pytest.mark.parametrize("fault", ["dispatch:before_submit@1", "dispatch:after_submit@2", "collect:after_segment@1"])
def test_sigkill_at_a_step_boundary_then_resume(fault: str, cli_env: dict, uninterrupted: dict, tmp_path: Path) -> None:
    (tmp_path / "c.yaml").write_text(yaml.safe_dump(CRASH_CONFIG))
    args = ["run", str(tmp_path / "c.yaml"), "--project-dir", str(tmp_path / "p")]
    launcher = [sys.executable, "-m", "tests.faults"]  # `crowdloop` with the test harness's kill points
    killed = subprocess.run(launcher + args, env={**cli_env, "CROWDLOOP_FAULT_AT": fault}, capture_output=True,
                            text=True, timeout=300, cwd=REPO)
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-2000:]
    assert not (tmp_path / "p" / "labels.jsonl").exists()  # it really died mid-run
    resumed = run_cli(args, cli_env)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    check_same_as_uninterrupted(tmp_path / "p", uninterrupted)


def test_sigkill_from_outside_mid_round_then_resume(cli_env: dict, uninterrupted: dict, tmp_path: Path) -> None:
    (tmp_path / "c.yaml").write_text(yaml.safe_dump(CRASH_CONFIG))
    args = ["run", str(tmp_path / "c.yaml"), "--project-dir", str(tmp_path / "p")]
    proc = subprocess.Popen(crowdloop_cmd() + args, env=cli_env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    marker = tmp_path / "p" / "rounds" / "0002" / "refs.json"
    deadline = time.monotonic() + 240
    while not marker.exists() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.01)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL
    resumed = run_cli(args, cli_env)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    check_same_as_uninterrupted(tmp_path / "p", uninterrupted)
