"""Event-driven collection: answers become Prefect events, and the collect trigger advances the loop.

* The local app (``crowdloop annotate``) emits an event per answer; when the batch has no item
  waiting, the collect deployment's trigger runs collection and the next round is dispatched,
  with no collect run from a schedule (the test-harness server runs no scheduler at all).
* Label Studio's webhook reaches ``crowdloop webhook``, which emits the same events.
"""

from __future__ import annotations

import asyncio
import re
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from crowdloop import engine, keys
from crowdloop.config import parse_config
from crowdloop.engine import Project
from crowdloop.storage import read_json
from tests.conftest import crowdloop_cmd, small_config
from tests.flows.prefect_helpers import deployment_ids, flow_runs_of, spawn, stop, wait_for
from tests.vendors import label_studio_server as lss
from tests.vendors.app_server import free_port, start_annotate

pytestmark = pytest.mark.slow


async def project_events(project: str, name: str) -> list[Any]:
    from prefect.client.orchestration import get_client
    from prefect.events.filters import EventFilter, EventNameFilter, EventResourceFilter

    async with get_client() as client:
        page = await client.read_events(EventFilter(event=EventNameFilter(name=[name]),
                                                    resource=EventResourceFilter(id=[f"crowdloop.project.{project}"])),
                                        limit=50)
        events = list(page.events)
        while page.next_page:
            page = await client.read_events_page(page.next_page)
            events += page.events
    return events


def _annotators_at_work(base: str, tokens: dict[str, str], done: threading.Event, errors: list[str]) -> None:
    """Annotators answering whatever the app shows them (the page's own form) until ``done``."""
    clients = {}
    for name, token in tokens.items():
        c = httpx.Client(base_url=base, timeout=30, follow_redirects=False)
        c.get(f"/?token={token}")
        clients[name] = c
    try:
        while not done.is_set():
            for name, c in clients.items():
                page = c.get("/")
                if not re.search(r'data-item="([^"]*)"', page.text):
                    continue
                form = dict(re.findall(r'<input type="hidden" name="(csrf|batch_id|item_id)" value="([^"]*)">', page.text))
                form.update(label=re.findall(r'name="label" value="([^"]*)"', page.text)[0], client_ms="900")
                if c.post("/answer", data=form, headers={"Origin": base}).status_code != 303:
                    errors.append(f"{name}: answer refused")
            time.sleep(0.3)
    finally:
        for c in clients.values():
            c.close()


def test_answers_in_the_local_app_trigger_collection_and_the_next_round(cli_env: dict, tmp_path: Path) -> None:
    from prefect.deployments import run_deployment

    config = small_config(project="evented", **{
        "vendor": {"name": "local", "params": {"undo_window_s": 0}}, "collect.mode": "defer",
        "sampler.initial_size": 6, "sampler.batch_size": 4, "consensus.redundancy": 2,
        "consensus.method": "majority_vote", "stopping.max_rounds": 2, "collect.poll_interval_s": 0.5})
    (tmp_path / "c.yaml").write_text(yaml.safe_dump(config))
    project_dir = tmp_path / "p"
    p = Project.prepare(parse_config(config), str(project_dir))
    tokens = {name: p.vendor.add_annotator(name) for name in ("ana", "ben")}
    served = spawn([*crowdloop_cmd(), "serve", str(tmp_path / "c.yaml"), "-p", str(project_dir)], env=cli_env,
                   log_path=tmp_path / "serve.log")
    base, app = start_annotate(str(project_dir), tmp_path / "annotate.log", env=cli_env)
    done, errors = threading.Event(), []
    try:
        names = ["crowdloop-active-learning/evented", "crowdloop-collect/evented-collect"]
        assert len(asyncio.run(deployment_ids(names, timeout=120))) == 2, (tmp_path / "serve.log").read_text()[-2000:]
        first = run_deployment(names[0], timeout=300)
        assert first.state.is_completed() and Project.open(str(project_dir)).has(0, keys.REFS)
        threading.Thread(target=_annotators_at_work, args=(base, tokens, done, errors), daemon=True).start()
        wait_for(lambda: (project_dir / "stop.json").exists(), timeout=420, what="the loop to finish through events")
    finally:
        done.set()
        app.terminate()
        app.wait(timeout=10)
        stop(served)
    assert not errors, errors[:3]
    p = Project.open(str(project_dir))
    assert [m["n_labeled"] for m in p.metrics()] == [0, 6, 10]
    collects = asyncio.run(flow_runs_of(names[1]))
    assert collects and all(run.created_by and run.created_by.type == "AUTOMATION" for run in collects), \
        [(r.name, r.created_by) for r in collects]
    assert all(" · collect · " in run.name and run.name.startswith("evented · collect · ") for run in collects)
    loops = asyncio.run(flow_runs_of(names[0]))
    assert len(loops) == 3  # the first by hand, then one per answered batch, started by the collect runs
    answered = asyncio.run(project_events("evented", "crowdloop.batch.answered"))
    submitted = asyncio.run(project_events("evented", "crowdloop.answer.submitted"))
    assert len(submitted) == 2 * (6 + 4) and {e.resource["crowdloop.batch"] for e in answered} == {"evented-r0000",
                                                                                                   "evented-r0001"}


# -- Label Studio ------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def label_studio(tmp_path_factory: pytest.TempPathFactory) -> Iterator[lss.Server]:
    # The receiver listens on 127.0.0.1, which Label Studio's SSRF guard refuses as a webhook target
    # by default; a team running both on a private network sets the same.
    with lss.running_copy(tmp_path_factory.mktemp("label-studio"), env={"SSRF_PROTECTION_ENABLED": "false"}) as server:
        yield server


def _choice(label: str) -> list[dict]:
    return [{"from_name": "label", "to_name": "item", "type": "choices", "value": {"choices": [label]}}]


def test_label_studio_webhook_becomes_prefect_events(cli_env: dict, label_studio: lss.Server, tmp_path: Path,
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    from label_studio_sdk import LabelStudio

    monkeypatch.setenv("LABEL_STUDIO_URL", label_studio.url)
    monkeypatch.setenv("LABEL_STUDIO_API_KEY", label_studio.token)
    config = small_config(project="lshook", **{"vendor": {"name": "label_studio", "params": {}},
                                               "sampler.initial_size": 3, "consensus.redundancy": 2,
                                               "stopping.max_rounds": 1})
    p = Project.prepare(parse_config(config), str(tmp_path / "p"))
    engine.run_round(p, 0, until="dispatch")
    batch = read_json(p.vendor.store, f"batches/{p.batch_id(0)}.json")
    port = free_port()
    env = {**cli_env, "LABEL_STUDIO_URL": label_studio.url, "LABEL_STUDIO_API_KEY": label_studio.token,
           "CROWDLOOP_WEBHOOK_SECRET": "hook-secret-for-the-test"}
    receiver = spawn([*crowdloop_cmd(), "webhook", "-p", str(tmp_path / "p"), "--port", str(port)], env=env,
                     log_path=tmp_path / "webhook.log")
    try:
        wait_for(lambda: _healthy(f"http://127.0.0.1:{port}/health", receiver, tmp_path / "webhook.log"), timeout=60,
                 what="the webhook receiver")
        # strangers are refused; a post without the secret emits nothing
        assert httpx.post(f"http://127.0.0.1:{port}/label-studio", json={"action": "ANNOTATION_CREATED"}).status_code == 403
        ls = LabelStudio(base_url=label_studio.url, api_key=label_studio.token)
        hooks = [h for h in ls.webhooks.list(project=str(batch["project_id"])) if h.url.endswith(f":{port}/label-studio")]
        assert len(hooks) == 1 and hooks[0].actions == ["ANNOTATION_CREATED"]
        users = [ls.users.create(username=f"hook{k}", email=f"hook{k}@example.com", password=f"hook-{k}-password")
                 for k in range(2)]
        truth = {item: str(label) for item, label in zip(p.pool.ids.tolist(), p.pool.y.tolist(), strict=True)}
        for item, task_id in batch["tasks"].items():
            for user in users:
                ls.annotations.create(task_id, result=_choice(truth[item]), completed_by=user.id, lead_time=4.0)
        submitted = wait_for(lambda: len(asyncio.run(project_events("lshook", "crowdloop.answer.submitted"))) >= 6 or None,
                             timeout=60, what="six answer events")
        answered = wait_for(lambda: asyncio.run(project_events("lshook", "crowdloop.batch.answered")), timeout=60,
                            what="the batch-answered event")
    finally:
        stop(receiver)
    assert submitted
    assert len(answered) == 1 and answered[0].resource["crowdloop.batch"] == "lshook-r0000"
    assert answered[0].payload["source"] == "label_studio"
    assert "hook-secret-for-the-test" not in (tmp_path / "webhook.log").read_text()


def _healthy(url: str, proc: subprocess.Popen, log: Path) -> bool:
    if proc.poll() is not None:
        raise AssertionError(f"crowdloop webhook exited: {log.read_text()[-3000:]}")
    try:
        return httpx.get(url, timeout=2).status_code == 200
    except httpx.HTTPError:
        return False
