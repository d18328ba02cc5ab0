"""The Prefect UI in real Chromium: deployment and schedule, approval form, triggered run's logs, round table.

The test harness's server serves no UI, so this test starts ``prefect server start`` on
127.0.0.1 with its own home. The project pays real money (MTurk production: the fake MTurk
server, which accepts only the key stored in a Prefect Secret block), so the first run pauses
for the approval form, which the test fills in and submits in the browser. The fake's workers
answer while no process waits; a notifying vendor's ``crowdloop.batch.answered`` event then
triggers the collect deployment, whose logs show the vendor's warning about a broken answer.

Screenshots go to ``$CROWDLOOP_SCREENSHOTS`` when set (``docs/images`` for the README):

    CROWDLOOP_SCREENSHOTS=docs/images python -m pytest tests/flows/test_prefect_ui.py
"""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from crowdloop import keys
from crowdloop.engine import Project
from crowdloop.engine.approval import latest_approval
from tests.conftest import crowdloop_cmd, small_config
from tests.flows.prefect_helpers import deployment_ids, real_prefect_server, spawn, stop, wait_for
from tests.vendors.browser import ARGS, CHROMIUM, require_chromium
from tests.vendors.mturk_fake import items_in_question
from tests.vendors.mturk_server import FakeMTurkServer

pytestmark = pytest.mark.slow

KEY_ID, SECRET = "AKIAUIDEMOFAKEKEY0001", "ui-demo-secret-for-the-fake-mturk"


def _state(run_id: Any) -> Any:
    from prefect import get_client

    with get_client(sync_client=True) as client:
        return client.read_flow_run(run_id)


def _runs_of(deployment_name: str) -> list[Any]:
    """The deployment's flow runs, newest first (a sync client: Playwright's loop runs in this thread)."""
    from prefect import get_client
    from prefect.client.schemas.filters import DeploymentFilter, DeploymentFilterId
    from prefect.client.schemas.sorting import FlowRunSort

    with get_client(sync_client=True) as client:
        deployment = client.read_deployment_by_name(deployment_name)
        return client.read_flow_runs(deployment_filter=DeploymentFilter(id=DeploymentFilterId(any_=[deployment.id])),
                                     sort=FlowRunSort.EXPECTED_START_TIME_DESC)


def _latest_artifact(key: str) -> Any:
    from prefect import get_client
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterKey

    with get_client(sync_client=True) as client:
        found = client.read_artifacts(artifact_filter=ArtifactFilter(key=ArtifactFilterKey(any_=[key])))
    return max(found, key=lambda a: a.created)


def _shown_after_reload(page: Any, text: str) -> bool:
    """Reload ``page`` and wait briefly for ``text``: the scheduler service (every 60 s) may not have
    created a deployment's next run yet when the page first loads."""
    from playwright.sync_api import TimeoutError as PlaywrightTimeout

    page.reload()
    try:
        page.get_by_text(text, exact=False).first.wait_for(timeout=5_000)
    except PlaywrightTimeout:
        return False
    return True


def _emit_batch_answered(api: str, project: str, batch: str) -> None:
    """What a notifying vendor's process does when a batch is answered (here: a separate process)."""
    code = ("import sys; from crowdloop.flows.events import emit_answer; "
            "from prefect.events.worker import EventsWorker; "
            "emit_answer(sys.argv[1], sys.argv[2], 0, waiting=0, source='test'); EventsWorker.drain_all()")
    env = {**os.environ, "PREFECT_API_URL": api}
    subprocess.run([sys.executable, "-c", code, project, batch], env=env, check=True, timeout=120)


def test_deployment_approval_triggered_logs_and_round_table_in_the_ui(tmp_path: Path) -> None:
    from playwright.sync_api import TimeoutError as PlaywrightTimeout
    from playwright.sync_api import sync_playwright
    from prefect.blocks.system import Secret
    from prefect.deployments import run_deployment
    from prefect.settings import PREFECT_API_URL, temporary_settings

    require_chromium()
    shots = Path(os.environ.get("CROWDLOOP_SCREENSHOTS") or tmp_path / "shots")
    shots.mkdir(parents=True, exist_ok=True)
    project_dir = tmp_path / "p"
    with real_prefect_server(tmp_path / "prefect-home", tmp_path / "server.log") as api, \
            temporary_settings(updates={PREFECT_API_URL: api}), \
            FakeMTurkServer(answer=None, access_key=KEY_ID) as mturk:
        ui = api.removesuffix("/api")
        Secret(value={"aws_access_key_id": KEY_ID, "aws_secret_access_key": SECRET}).save("mturk-production")
        config = small_config(project="ui-demo", **{
            "vendor": {"name": "mturk", "params": {"endpoint_url": mturk.url, "sandbox": False, "max_requests_per_second": 50}},
            "credentials": {"aws": "mturk-production"}, "collect.mode": "defer", "collect.poll_interval_s": 0.5,
            "sampler.initial_size": 6, "sampler.batch_size": 4, "consensus.redundancy": 2,
            "consensus.method": "majority_vote", "stopping.max_rounds": 2, "pay.pilot_seconds_per_task": 30})
        (tmp_path / "c.yaml").write_text(yaml.safe_dump(config))
        env = {k: v for k, v in os.environ.items() if not k.startswith(("PREFECT_", "AWS_"))}
        env.update(PREFECT_API_URL=api, PREFECT_LOGGING_LEVEL="INFO", PREFECT_RUNNER_POLL_FREQUENCY="2",
                   PREFECT_HOME=str(tmp_path / "prefect-home"), AWS_EC2_METADATA_DISABLED="true",
                   AWS_SHARED_CREDENTIALS_FILE=str(tmp_path / "none"), AWS_CONFIG_FILE=str(tmp_path / "none"))
        served = spawn([*crowdloop_cmd(), "serve", str(tmp_path / "c.yaml"), "-p", str(project_dir),
                        "--cron", "0 6 * * 1-5"], env=env, log_path=tmp_path / "serve.log")
        try:
            names = ["crowdloop-active-learning/ui-demo", "crowdloop-collect/ui-demo-collect"]
            ids = asyncio.run(deployment_ids(names, timeout=180))
            assert len(ids) == 2, (tmp_path / "serve.log").read_text()[-2000:]
            with sync_playwright() as pw:
                browser = pw.chromium.launch(executable_path=str(CHROMIUM), args=ARGS, headless=True)
                page = browser.new_page(viewport={"width": 1400, "height": 900})

                # 1. the loop deployment with its schedule
                page.goto(f"{ui}/deployments/deployment/{ids[names[0]]}")
                page.get_by_text("ui-demo", exact=False).first.wait_for(timeout=60_000)
                page.get_by_text("At 06:00 AM", exact=False).first.wait_for(timeout=60_000)
                wait_for(lambda: _shown_after_reload(page, "Scheduled for"), timeout=180, interval=0,
                         what="the deployment's next scheduled run in the UI")
                page.screenshot(path=str(shots / "prefect-deployment.png"))
                page.goto(f"{ui}/deployments/deployment/{ids[names[1]]}")  # collect: its trigger and the fallback interval
                page.get_by_text("collect when a batch may be complete", exact=False).first.wait_for(timeout=60_000)
                page.get_by_text("Every 5 minutes", exact=False).first.wait_for(timeout=60_000)
                page.screenshot(path=str(shots / "prefect-collect-deployment.png"))

                # 2. a run on a real-money vendor pauses for the approval form; approve a budget of our own
                # (above the forecast: the money budget also reserves the worst-case wage top-ups)
                run = run_deployment(names[0], timeout=0, _sync=True)
                paused = wait_for(lambda: _state(run.id).state.is_paused() or None, timeout=300,
                                  what="the loop run to pause for approval")
                assert paused and mturk.ledger()["n_hits"] == 0
                page.goto(f"{ui}/runs/flow-run/{run.id}")
                page.get_by_role("button", name="Resume").first.click()
                dialog = page.get_by_role("dialog")
                dialog.get_by_text("spends real money", exact=False).wait_for(timeout=60_000)
                budget = dialog.locator("input[type=number]")
                budget.fill("3.5")
                page.screenshot(path=str(shots / "prefect-approval.png"))
                # Submit, and see the API take it: on a loaded machine a click on the form can land before
                # the UI has wired it; the dialog stays open then, and one more click goes through
                for _ in range(3):
                    dialog.get_by_role("button", name="Submit").click()
                    try:
                        dialog.wait_for(state="hidden", timeout=30_000)
                        break
                    except PlaywrightTimeout:
                        continue
                wait_for(lambda: not _state(run.id).state.is_paused(), timeout=120, what="the approval to resume the run")
                done = wait_for(lambda: ((s := _state(run.id)).state.is_final() and s) or None, timeout=300,
                                what="the approved run to dispatch and finish")
                assert done.state.is_completed(), done.state
                assert latest_approval(Project.open(str(project_dir)))["money_budget"] == 3.5
                hits = list(mturk.fake.hits)
                assert len(hits) == 6

                # 3. the workers answer (one sends a broken form); the vendor says the batch is answered
                pool = Project.open(str(project_dir)).pool
                truth = {str(i): str(y) for i, y in zip(pool.ids.tolist(), pool.y.tolist(), strict=True)}
                with mturk._lock:
                    for hit_id in hits:
                        [item] = items_in_question(mturk.fake.hits[hit_id]["Question"])
                        for replica in range(2):
                            mturk.fake.work(hit_id, {"label-0": truth[item]}, worker=f"AWORKER{replica:03d}")
                    mturk.fake.work(hits[0], "<QuestionFormAnswers><broken", worker="AWORKER099")
                _emit_batch_answered(api, "ui-demo", "ui-demo-r0000")
                collect_run = wait_for(lambda: next((r for r in _runs_of(names[1]) if r.created_by
                                                     and r.created_by.type == "AUTOMATION" and r.state.is_final()), None),
                                       timeout=300, what="the triggered collect run")
                assert collect_run.created_by.type == "AUTOMATION" and collect_run.state.is_completed()
                page.goto(f"{ui}/runs/flow-run/{collect_run.id}")
                page.get_by_text("skipping assignment", exact=False).first.wait_for(timeout=60_000)
                page.screenshot(path=str(shots / "prefect-triggered-run-logs.png"))

                # 4. the next round ran from the collect run; the round table artifact
                wait_for(lambda: Project.open(str(project_dir)).has(1, keys.REFS) or None, timeout=300,
                         what="round 1 to be dispatched")
                page.goto(f"{ui}/artifacts/artifact/{_latest_artifact('crowdloop-ui-demo-main-rounds').id}")
                page.locator("table").first.wait_for(timeout=60_000)
                page.get_by_text("wage_per_hour", exact=False).first.wait_for(timeout=60_000)
                page.screenshot(path=str(shots / "prefect-rounds.png"))
                browser.close()
        finally:
            stop(served)
    p = Project.open(str(project_dir))
    assert [m["n_labeled"] for m in p.metrics()] == [0, 6]
    assert p.config.stopping.money_budget == 3.5
    for name in ("prefect-deployment", "prefect-collect-deployment", "prefect-approval", "prefect-triggered-run-logs",
                 "prefect-rounds"):
        assert (shots / f"{name}.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
