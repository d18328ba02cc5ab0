"""Credentials never land in the store, the console output or Prefect artifacts."""

from __future__ import annotations

import asyncio
import subprocess
from pathlib import Path

import boto3
import pytest
import yaml

from tests.conftest import crowdloop_cmd, small_config

pytestmark = pytest.mark.slow

KEY_ID = "AKIACROWDLOOPLEAKTEST"
SECRET = "s3cr3t-Crowdloop-Leak-Canary-0123456789abcdef"


async def _artifact_texts(prefix: str) -> list[str]:
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterKey

    async with get_client() as client:
        arts = await client.read_artifacts(artifact_filter=ArtifactFilter(key=ArtifactFilterKey(like_=prefix)))
    return [f"{a.data} {a.description}" for a in arts]


def test_run_on_s3_leaks_no_credentials(cli_env: dict, s3_endpoint: str, s3_bucket: str, tmp_path: Path) -> None:
    config = small_config(project="leakcheck", **{"stopping.max_rounds": 2,
                                                  "storage.url": f"s3://{s3_bucket}/leak",
                                                  "storage.endpoint_url": s3_endpoint})
    (tmp_path / "c.yaml").write_text(yaml.safe_dump(config))
    env = {**cli_env, "AWS_ACCESS_KEY_ID": KEY_ID, "AWS_SECRET_ACCESS_KEY": SECRET}
    run = subprocess.run(crowdloop_cmd() + ["run", str(tmp_path / "c.yaml"), "--verbose"], env=env,
                         capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr[-2000:]
    status = subprocess.run(crowdloop_cmd() + ["status", f"s3://{s3_bucket}/leak?endpoint_url={s3_endpoint}", "--json"],
                            env=env, capture_output=True, text=True, timeout=120)
    assert status.returncode == 0

    s3 = boto3.client("s3", endpoint_url=s3_endpoint)
    objects = s3.list_objects_v2(Bucket=s3_bucket, Prefix="leak/")["Contents"]
    assert len(objects) > 20
    texts = [run.stdout, run.stderr, status.stdout, status.stderr]
    texts += [s3.get_object(Bucket=s3_bucket, Key=o["Key"])["Body"].read().decode("latin-1") for o in objects]
    texts += asyncio.run(_artifact_texts("crowdloop-leakcheck-%"))
    for text in texts:
        assert SECRET not in text and KEY_ID not in text
