"""Credentials and tokens never land in the store, files, console output, logs, artifacts or errors.

Each run is given canary secrets (fake AWS keys for S3 and MTurk, a Label Studio API key,
the local app's annotator tokens) — from the environment, or from Prefect ``Secret`` blocks
named in the config — and afterwards every file it wrote, everything it printed, every Prefect
artifact and log line, and every error message is searched for them, as text and URL-encoded.
"""

from __future__ import annotations

import asyncio
import http.server
import json
import os
import re
import subprocess
import threading
import time
import traceback
from collections.abc import Iterable
from pathlib import Path
from urllib.parse import quote

import boto3
import httpx
import pytest
import yaml

from tests.conftest import crowdloop_cmd, small_config

pytestmark = pytest.mark.slow

KEY_ID = "AKIACROWDLOOPLEAKTEST"
SECRET = "s3cr3t-Crowdloop-Leak-Canary-0123456789abcdef"
LS_KEY = "ls-canary-0f1e2d3c4b5a69788796a5b4c3d2e1f0"
LS_KEY_ENV = "LABEL_STUDIO_API_KEY"


def _forms(secret: str) -> set[bytes]:
    return {secret.encode(), quote(secret, safe="").encode()}


def find_leaks(secrets: Iterable[str], *, dirs: Iterable[Path] = (), texts: Iterable[str] = ()) -> list[str]:
    """Where any secret occurs: ``path`` of files under ``dirs`` (recursively) or ``text #n``."""
    forms = {f: s for s in secrets for f in _forms(s)}
    found = []
    for root in dirs:
        for path in sorted(p for p in Path(root).rglob("*") if p.is_file() and not p.is_symlink()):
            data = path.read_bytes()
            found += [f"{path}: {f.decode()[:6]}..." for f in forms if f in data]
    for n, text in enumerate(texts):
        data = text.encode("utf-8", errors="replace")
        found += [f"text #{n}: {f.decode()[:6]}..." for f in forms if f in data]
    return found


def test_find_leaks_finds_what_it_should(tmp_path: Path) -> None:
    (tmp_path / "a" / "b").mkdir(parents=True)
    (tmp_path / "a" / "b" / "x.log").write_text(f"GET /?token={quote('tok/en+=', safe='')}")
    (tmp_path / "clean.json").write_text("{}")
    assert find_leaks(["tok/en+="], dirs=[tmp_path]) == [f"{tmp_path / 'a' / 'b' / 'x.log'}: tok%2F..."]
    assert find_leaks(["tok/en+="], texts=["", "... tok/en+= ..."]) == ["text #1: tok/en..."]


async def _prefect_texts(prefix: str) -> list[str]:
    """The project's artifacts and every log line the Prefect server holds."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterKey

    async with get_client() as client:
        arts = await client.read_artifacts(artifact_filter=ArtifactFilter(key=ArtifactFilterKey(like_=prefix)))
        logs, offset = [], 0
        while page := await client.read_logs(limit=200, offset=offset):
            logs += page
            offset += len(page)
    assert arts, "the run left no artifacts to search"  # (the loop itself logs little; whatever there is, is searched)
    return [f"{a.key} {a.data} {a.description}" for a in arts] + [f"{log.name} {log.message}" for log in logs]


@pytest.fixture
def canary_blocks(prefect_api_url: str) -> dict[str, str]:
    """Prefect Secret blocks holding the canary AWS keys and Label Studio key; their names."""
    import uuid

    from prefect.blocks.system import Secret

    suffix = uuid.uuid4().hex[:8]
    names = {"aws": f"crowdloop-aws-{suffix}", "label_studio_api_key": f"crowdloop-ls-{suffix}"}
    Secret(value={"aws_access_key_id": KEY_ID, "aws_secret_access_key": SECRET}).save(names["aws"])
    Secret(value=LS_KEY).save(names["label_studio_api_key"])
    return names


def _without_aws(env: dict[str, str], tmp_path: Path) -> dict[str, str]:
    """``env`` with no AWS credentials anywhere boto3 looks (env, shared files, instance metadata)."""
    out = {k: v for k, v in env.items() if not k.startswith("AWS_") and k != LS_KEY_ENV}
    out.update(AWS_SHARED_CREDENTIALS_FILE=str(tmp_path / "no-credentials"), AWS_CONFIG_FILE=str(tmp_path / "no-config"),
               AWS_EC2_METADATA_DISABLED="true", AWS_DEFAULT_REGION="us-east-1")
    return out


def _isolated_env(cli_env: dict, tmp_path: Path, **extra: str) -> dict[str, str]:
    """A subprocess env whose Prefect home and temp dir are inside ``tmp_path`` (so they get searched)."""
    home, tmp = tmp_path / "prefect-home", tmp_path / "tmp"
    home.mkdir(exist_ok=True)
    tmp.mkdir(exist_ok=True)
    return {**cli_env, "PREFECT_HOME": str(home), "TMPDIR": str(tmp), **extra}


def test_run_on_s3_leaks_no_credentials(cli_env: dict, s3_endpoint: str, s3_bucket: str, tmp_path: Path) -> None:
    config = small_config(project="leakcheck", **{"stopping.max_rounds": 2,
                                                  "storage.url": f"s3://{s3_bucket}/leak",
                                                  "storage.endpoint_url": s3_endpoint})
    (tmp_path / "c.yaml").write_text(yaml.safe_dump(config))
    env = _isolated_env(cli_env, tmp_path, AWS_ACCESS_KEY_ID=KEY_ID, AWS_SECRET_ACCESS_KEY=SECRET,
                        LABEL_STUDIO_API_KEY=LS_KEY)
    run = subprocess.run([*crowdloop_cmd(), "run", str(tmp_path / "c.yaml"), "--verbose"], env=env,
                         capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert run.returncode == 0, run.stderr[-2000:]
    status = subprocess.run([*crowdloop_cmd(), "status", f"s3://{s3_bucket}/leak?endpoint_url={s3_endpoint}", "--json"],
                            env=env, capture_output=True, text=True, timeout=120, cwd=tmp_path)
    assert status.returncode == 0

    s3 = boto3.client("s3", endpoint_url=s3_endpoint)
    objects = s3.list_objects_v2(Bucket=s3_bucket, Prefix="leak/")["Contents"]
    assert len(objects) > 20
    texts = [run.stdout, run.stderr, status.stdout, status.stderr]
    texts += [s3.get_object(Bucket=s3_bucket, Key=o["Key"])["Body"].read().decode("latin-1") for o in objects]
    texts += asyncio.run(_prefect_texts("crowdloop-leakcheck-%"))
    assert find_leaks([KEY_ID, SECRET, LS_KEY], dirs=[tmp_path], texts=texts) == []


def test_run_on_s3_with_keys_from_secret_blocks_leaks_nothing(cli_env: dict, s3_endpoint: str, s3_bucket: str,
                                                            canary_blocks: dict[str, str], tmp_path: Path) -> None:
    """No AWS key anywhere but in the Secret block the config names: the run works, and leaks nothing."""
    config = small_config(project="blockleak", **{"stopping.max_rounds": 2, "storage.url": f"s3://{s3_bucket}/blocks",
                                                  "storage.endpoint_url": s3_endpoint, "credentials": canary_blocks})
    (tmp_path / "c.yaml").write_text(yaml.safe_dump(config))
    env = _without_aws(_isolated_env(cli_env, tmp_path), tmp_path)
    run = subprocess.run([*crowdloop_cmd(), "run", str(tmp_path / "c.yaml"), "--verbose"], env=env,
                         capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert run.returncode == 0, run.stderr[-2000:]
    url = f"s3://{s3_bucket}/blocks?endpoint_url={s3_endpoint}&credentials={canary_blocks['aws']}"
    status = subprocess.run([*crowdloop_cmd(), "status", url, "--json"], env=env, capture_output=True, text=True,
                            timeout=120, cwd=tmp_path)
    assert status.returncode == 0, status.stderr[-2000:]
    assert json.loads(status.stdout)["rounds"][-1]["n_labeled"] == 50

    # the control: the same environment without the blocks has no credentials at all
    bare = {k: v for k, v in config.items() if k != "credentials"} | {"project": "nokeys",
                                                                       "storage": {**config["storage"], "url": f"s3://{s3_bucket}/none"}}
    (tmp_path / "bare.yaml").write_text(yaml.safe_dump(bare))
    refused = subprocess.run([*crowdloop_cmd(), "run", str(tmp_path / "bare.yaml")], env=env, capture_output=True,
                             text=True, timeout=120, cwd=tmp_path)
    assert refused.returncode == 2 and "no AWS credentials found" in refused.stderr, refused.stderr[-1000:]

    s3 = boto3.client("s3", endpoint_url=s3_endpoint)
    objects = s3.list_objects_v2(Bucket=s3_bucket, Prefix="blocks/")["Contents"]
    texts = [run.stdout, run.stderr, status.stdout, status.stderr, refused.stdout, refused.stderr]
    texts += [s3.get_object(Bucket=s3_bucket, Key=o["Key"])["Body"].read().decode("latin-1") for o in objects]
    texts += asyncio.run(_prefect_texts("crowdloop-blockleak-%"))
    assert find_leaks([KEY_ID, SECRET, LS_KEY], dirs=[tmp_path], texts=texts) == []


def test_a_missing_secret_block_is_one_line_before_anything_runs(prefect_api_url: str, tmp_path: Path) -> None:
    from crowdloop.config import parse_config
    from crowdloop.engine import Project
    from crowdloop.errors import ConfigError

    config = parse_config(small_config(project="noblock", **{"credentials.aws": "no-such-block-here"}))
    with pytest.raises(ConfigError) as info:
        Project.prepare(config, str(tmp_path / "p"))
    assert str(info.value).startswith("credentials.aws: no Prefect Secret block named 'no-such-block-here'")
    assert "\n" not in str(info.value) and not (tmp_path / "p").exists()


def _annotate_until(base: str, tokens: dict[str, str], done: threading.Event, errors: list[str]) -> None:
    """Annotators at work (the page's own requests) until ``done``; one visitor tries a bad token."""
    clients = {}
    for name, token in tokens.items():
        c = httpx.Client(base_url=base, timeout=30, follow_redirects=False)
        if c.get(f"/?token={token}").status_code != 303:
            errors.append(f"{name}: link refused")
        clients[name] = c
    intruder = httpx.Client(base_url=base, timeout=30)
    try:
        while not done.is_set():
            intruder.get(f"/?token={tokens['alice'][:-3]}xyz")
            for name, c in clients.items():
                page = c.get("/")
                found = re.search(r'data-item="([^"]*)"', page.text)
                if not found:
                    continue
                form = dict(re.findall(r'<input type="hidden" name="(csrf|batch_id|item_id)" value="([^"]*)">', page.text))
                form.update(label=re.findall(r'name="label" value="([^"]*)"', page.text)[0], client_ms="1500")
                r = c.post("/answer", data=form, headers={"Origin": base})
                if r.status_code != 303:
                    errors.append(f"{name}: answer refused {r.status_code}")
            time.sleep(0.2)
    finally:
        for c in [*clients.values(), intruder]:
            c.close()


def test_local_annotation_run_leaks_no_tokens(cli_env: dict, tmp_path: Path) -> None:
    """A Prefect run with the local vendor while annotators work in `crowdloop annotate`."""
    from crowdloop import engine
    from crowdloop.config import parse_config
    from tests.vendors.app_server import start_annotate

    config = small_config(project="tokenleak", **{
        "vendor": {"name": "local", "params": {"undo_window_s": 0}}, "stopping.max_rounds": 2,
        "sampler.initial_size": 6, "sampler.batch_size": 4, "consensus.redundancy": 2,
        "consensus.method": "majority_vote", "collect.timeout_s": 120, "collect.poll_interval_s": 0.3})
    (tmp_path / "c.yaml").write_text(yaml.safe_dump(config))
    project_dir = tmp_path / "project"
    p = engine.Project.prepare(parse_config(config), str(project_dir))
    tokens = {name: p.vendor.add_annotator(name) for name in ("alice", "bob")}
    env = _isolated_env(cli_env, tmp_path, AWS_ACCESS_KEY_ID=KEY_ID, AWS_SECRET_ACCESS_KEY=SECRET,
                        LABEL_STUDIO_API_KEY=LS_KEY)
    app_log = tmp_path / "annotate.log"
    base, app = start_annotate(str(project_dir), app_log, env=env, cwd=tmp_path)
    done, errors = threading.Event(), []
    try:
        workers = threading.Thread(target=_annotate_until, args=(base, tokens, done, errors), daemon=True)
        workers.start()
        run = subprocess.run([*crowdloop_cmd(), "run", str(tmp_path / "c.yaml"), "--project-dir", str(project_dir),
                              "--verbose"], env=env, capture_output=True, text=True, timeout=300, cwd=tmp_path)
    finally:
        done.set()
        app.terminate()
        app.wait(timeout=10)
    assert run.returncode == 0, run.stderr[-2000:]
    assert not errors, errors[:5]
    answered = engine.Project.open(str(project_dir)).annotations()
    assert {a.worker_id for a in answered} == {"alice", "bob"} and len(answered) >= 2 * 6

    texts = [run.stdout, run.stderr, *asyncio.run(_prefect_texts("crowdloop-tokenleak-%"))]
    assert find_leaks([*tokens.values(), KEY_ID, SECRET, LS_KEY], dirs=[tmp_path], texts=texts) == []


def test_mturk_run_leaks_no_keys(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog, capfd) -> None:
    """Two rounds against the in-memory MTurk with canary keys from the environment, every log at DEBUG."""
    from botocore.exceptions import ClientError

    from crowdloop import engine, keys
    from crowdloop.config import parse_config
    from crowdloop.vendors import mturk
    from tests.vendors.mturk_fake import FakeMTurk

    monkeypatch.setenv("AWS_ACCESS_KEY_ID", KEY_ID)
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", SECRET)
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    fake = FakeMTurk(answer=lambda item, replica: "3")

    def session() -> boto3.session.Session:  # boto3's own credential chain: the canary keys from the env
        s = boto3.session.Session()
        s.events.register("before-send.mturk", fake._handle)
        return s

    monkeypatch.setattr(mturk, "_session_factory", session)
    config = small_config(project="mturkleak", **{
        "vendor": {"name": "mturk", "params": {"max_requests_per_second": 100, "assignment_duration_s": 30}},
        "stopping.max_rounds": 2,
        "sampler.initial_size": 6, "sampler.batch_size": 4, "consensus.redundancy": 2,
        "consensus.method": "majority_vote", "collect.timeout_s": 90, "collect.poll_interval_s": 0.01})
    with caplog.at_level("DEBUG"):
        p = engine.Project.prepare(parse_config(config), str(tmp_path / "project"))
        engine.run_in_process(p)
        assert fake.hits and any(a.vendor == "mturk" for a in p.annotations())
        assert p.vendor.client._request_signer._credentials.access_key == KEY_ID  # the canary was really used
        fake.throttle["ListAssignmentsForHIT"] = 100  # an error path too: retries give up
        with pytest.raises(ClientError, match=r"^An error occurred \(ThrottlingException\) when calling the "
                           r"ListAssignmentsForHIT operation \(reached max retries: \d+\): Rate exceeded$") as info:
            params = {"max_requests_per_second": 100, "max_attempts": 2, "assignment_duration_s": 30}
            mturk.MTurkVendor(params, p.vendor.context).poll(
                p.record(0, keys.REFS)["refs"][:1])  # a real HIT of round 0, so the call is made (and refused)
    out, err = capfd.readouterr()
    texts = [out, err, *(r.getMessage() for r in caplog.records),
             "".join(traceback.format_exception(info.value))]
    assert find_leaks([KEY_ID, SECRET], dirs=[tmp_path], texts=texts) == []


def test_mturk_run_with_keys_from_a_secret_block_leaks_nothing(canary_blocks: dict[str, str], tmp_path: Path,
                                                               monkeypatch: pytest.MonkeyPatch, caplog, capfd) -> None:
    """MTurk (a fake server that refuses every key but the canary) with the keys only in a Secret block."""
    from crowdloop import engine
    from crowdloop.config import parse_config
    from tests.vendors.mturk_server import FakeMTurkServer

    clean = _without_aws(dict(os.environ), tmp_path)
    for name in set(os.environ) - set(clean):
        monkeypatch.delenv(name)
    for name in ("AWS_SHARED_CREDENTIALS_FILE", "AWS_CONFIG_FILE", "AWS_EC2_METADATA_DISABLED", "AWS_DEFAULT_REGION"):
        monkeypatch.setenv(name, clean[name])
    with FakeMTurkServer(answer=lambda item, replica: "3", access_key=KEY_ID) as server, caplog.at_level("DEBUG"):
        config = small_config(project="mturkblock", **{
            "vendor": {"name": "mturk", "params": {"endpoint_url": server.url, "max_requests_per_second": 100,
                                                   "assignment_duration_s": 30}},
            "credentials": canary_blocks, "stopping.max_rounds": 2, "sampler.initial_size": 6, "sampler.batch_size": 4,
            "consensus.redundancy": 2, "consensus.method": "majority_vote", "collect.timeout_s": 90,
            "collect.poll_interval_s": 0.01})
        p = engine.Project.prepare(parse_config(config), str(tmp_path / "project"))
        engine.run_in_process(p)
        assert server.ledger()["n_hits"] == 10 and len(p.annotations()) == 20  # the server took only the canary key
    out, err = capfd.readouterr()
    texts = [out, err, *(r.getMessage() for r in caplog.records)]
    assert find_leaks([KEY_ID, SECRET, LS_KEY], dirs=[tmp_path], texts=texts) == []


class _EchoHandler(http.server.BaseHTTPRequestHandler):
    """A hostile or broken server that echoes the request headers in its error body."""

    def _echo(self) -> None:
        body = f"unauthorized: {self.headers.get('Authorization')!r} is not valid; you sent {dict(self.headers)}".encode()
        self.send_response(401)
        self.send_header("Content-Type", "text/plain")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    do_GET = do_POST = do_PATCH = _echo

    def log_message(self, *args) -> None:
        pass


@pytest.mark.parametrize("key_from", ["environment", "secret block"])
def test_label_studio_errors_never_carry_the_api_key(key_from: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                     request: pytest.FixtureRequest) -> None:
    from crowdloop.credentials import Credentials
    from crowdloop.errors import VendorError
    from crowdloop.records import Task
    from crowdloop.storage import PrefixedStore
    from crowdloop.storage.local import LocalStore
    from crowdloop.vendor import VendorContext
    from crowdloop.vendors import label_studio as lsv

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _EchoHandler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        for url in (f"http://127.0.0.1:{server.server_address[1]}", "http://127.0.0.1:9"):  # echoing, refused
            monkeypatch.setenv(lsv.URL_ENV, url)
            credentials = Credentials()
            if key_from == "environment":
                monkeypatch.setenv(lsv.KEY_ENV, LS_KEY)
            else:
                monkeypatch.delenv(lsv.KEY_ENV, raising=False)
                credentials = Credentials(label_studio_api_key=request.getfixturevalue("canary_blocks")["label_studio_api_key"])
            ctx = VendorContext(project="p", name="label_studio", seed=0, classes=("a", "b"),
                                store=PrefixedStore(LocalStore(tmp_path), "vendor/label_studio"),
                                item_payload=lambda i: {"kind": "text", "text": i}, credentials=credentials)
            with pytest.raises(VendorError) as info:
                lsv.LabelStudioVendor({"timeout_s": 5}, ctx).submit(
                    [Task(item_id="i", round=0, batch_id="b", replicas=1, reward=0.01)], batch_id="b")
            text = "".join(traceback.format_exception(info.value))
            assert find_leaks([LS_KEY], dirs=[tmp_path], texts=[str(info.value), text]) == [], str(info.value)
    finally:
        server.shutdown()
