"""The whole loop with its project store on a real local S3-compatible server (moto)."""

from __future__ import annotations

import json

import boto3
import pytest

from crowdloop.config import parse_config
from crowdloop.engine import Project, default_location
from tests.conftest import small_config

pytestmark = pytest.mark.slow


def test_loop_on_s3_store_resumes_and_writes_outputs(prefect_api_url: str, s3_endpoint: str, s3_bucket: str) -> None:
    from crowdloop.flows.loop import active_learning_loop

    config = parse_config(small_config(project="s3loop", **{
        "stopping.max_rounds": 2,
        "storage.url": f"s3://{s3_bucket}/projects/s3loop",
        "storage.endpoint_url": s3_endpoint,
    }))
    state = active_learning_loop(config)
    assert [r["n_labeled"] for r in state["rounds"]] == [0, 30, 50]
    assert state["store"].startswith(f"s3://{s3_bucket}/projects/s3loop?endpoint_url=")

    s3 = boto3.client("s3", endpoint_url=s3_endpoint)
    keys = {o["Key"] for o in s3.list_objects_v2(Bucket=s3_bucket, Prefix="projects/s3loop/")["Contents"]}
    for name in ("project.json", "metrics.json", "labels.jsonl", "learning_curve.png", "rounds/0001/selection.json"):
        assert f"projects/s3loop/{name}" in keys
    segments = [k for k in keys if "/labels/segments/" in k]
    assert len(segments) == 2  # one label-log object per collect batch, not one per answer
    assert not any("/.crowdloop/locks/" in k for k in keys)  # the lock is released

    more = parse_config(config.model_dump(mode="json") | {"stopping": {"max_rounds": 3}})
    extended = active_learning_loop(more)
    assert extended["rounds"][:3] == state["rounds"] and len(extended["rounds"]) == 4
    reopened = Project.open(default_location(more))
    assert reopened.vendor.ledger()["tasks"] == 70
    body = s3.get_object(Bucket=s3_bucket, Key="projects/s3loop/metrics.json")["Body"].read()
    assert json.loads(body)["rounds"] == extended["rounds"]
