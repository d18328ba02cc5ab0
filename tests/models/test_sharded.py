"""Sharded pools: written to a folder or an S3 prefix, read shard by shard, scored without a copy."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import boto3
import numpy as np
import pytest

from crowdloop import engine
from crowdloop.config import PoolConfig, parse_config
from crowdloop.engine import Project
from crowdloop.errors import ConfigError, PoolError
from crowdloop.models.datasets import load_sklearn_pool
from crowdloop.models.sharded import ShardedRows, load_sharded_pool, write_sharded_pool
from tests.conftest import crowdloop_cmd, small_config


@pytest.fixture
def cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("CROWDLOOP_CACHE_DIR", str(tmp_path / "cache"))
    return tmp_path / "cache"


def digits():
    return load_sklearn_pool(PoolConfig(source="sklearn", name="digits"))


def write_digits(url: str, rows_per_shard: int = 400) -> dict:
    base = digits()
    return write_sharded_pool(url, base.X, base.ids, base.y, classes=base.classes, feature_names=base.feature_names,
                              rows_per_shard=rows_per_shard)


def test_s3_pool_round_trips_and_fetches_each_shard_once(s3_endpoint: str, s3_bucket: str, cache: Path) -> None:
    url = f"s3://{s3_bucket}/pools/digits?endpoint_url={s3_endpoint}"
    manifest = write_digits(url)
    assert [s["rows"] for s in manifest["shards"]] == [400, 400, 400, 400, 197]
    keys = {o["Key"] for o in boto3.client("s3", endpoint_url=s3_endpoint).list_objects_v2(Bucket=s3_bucket)["Contents"]}
    shards = {f"pools/digits/part-{i:05d}.npy" for i in range(5)}
    assert keys == {f"pools/digits/{n}" for n in ("pool.json", "index.parquet")} | shards

    pool = load_sharded_pool(PoolConfig(source="sharded", path=url))
    base = digits()
    assert isinstance(pool.X, ShardedRows) and pool.X.shape == base.X.shape
    assert pool.ids.tolist() == base.ids.tolist() and pool.y.tolist() == base.y.tolist() and pool.classes == base.classes
    source = pool.X._source
    assert source.fetches == 0  # opening reads the manifest and the index only
    np.testing.assert_array_equal(pool.X[[5, 1500, 3]], base.X[[5, 1500, 3]].astype(np.float32))
    assert source.fetches == 2
    chunks = list(pool.X.chunks(150))
    assert max(len(c) for _, c in chunks) == 150 and [s for s, _ in chunks] == sorted(s for s, _ in chunks)
    np.testing.assert_array_equal(np.concatenate([c for _, c in chunks]), base.X.astype(np.float32))
    assert source.fetches == 5  # each shard fetched once, then memory-mapped from the cache

    again = load_sharded_pool(PoolConfig(source="sharded", path=url))
    np.testing.assert_array_equal(np.asarray(again.X), base.X.astype(np.float32))
    assert again.X._source.fetches == 0  # verified cache files are reused across processes


def test_damaged_or_missing_pools_are_one_line_errors(tmp_path: Path, cache: Path) -> None:
    url = str(tmp_path / "pool")
    write_digits(url)
    with pytest.raises(PoolError, match="already exists"):
        write_digits(url)
    with pytest.raises(PoolError, match=r"no sharded pool at .*crowdloop pool shard"):
        load_sharded_pool(PoolConfig(source="sharded", path=str(tmp_path / "nowhere")))
    shard = tmp_path / "pool" / "part-00002.npy"
    data = bytearray(shard.read_bytes())
    data[-1] ^= 0xFF
    shard.write_bytes(bytes(data))
    pool = load_sharded_pool(PoolConfig(source="sharded", path=url))
    with pytest.raises(PoolError, match=r"part-00002\.npy.*checksum") as info:
        pool.X[900]
    assert "\n" not in str(info.value)
    with pytest.raises(PoolError, match="rows_per_shard=0"):
        write_sharded_pool(str(tmp_path / "other"), np.zeros((3, 2)), np.array(["a", "b", "c"], dtype=object), None,
                           classes=("x", "y"), rows_per_shard=0)
    with pytest.raises(ConfigError, match="label_column: not used by source 'sharded'"):
        parse_config(small_config(pool={"source": "sharded", "path": url, "label_column": "y"}))


def test_loop_over_an_s3_pool_scores_shard_by_shard(s3_endpoint: str, s3_bucket: str, cache: Path, tmp_path: Path) -> None:
    """Same picks from the S3 pool as from the local one; selection never holds more than a chunk."""
    s3_url = f"s3://{s3_bucket}/pools/digits?endpoint_url={s3_endpoint}"
    write_digits(s3_url)
    write_digits(str(tmp_path / "local-pool"))
    results = {}
    for name, url in (("s3", s3_url), ("local", str(tmp_path / "local-pool"))):
        config = parse_config(small_config(**{"pool": {"source": "sharded", "path": url, "test_size": 0.3},
                                              "sampler.chunk_size": 256, "stopping.max_rounds": 3}))
        p = Project.prepare(config, str(tmp_path / f"project-{name}"))
        largest: list[int] = []
        original_rows = type(p.pool.X._source).rows

        def rows(self, global_rows, _orig=original_rows, _largest=largest, **kwargs):
            _largest.append(len(global_rows))
            return _orig(self, global_rows, **kwargs)

        for r in range(3):
            engine.train(p, r)
            engine.evaluate(p, r)
            largest.clear()
            type(p.pool.X._source).rows = rows
            try:
                engine.select(p, r)
            finally:
                type(p.pool.X._source).rows = original_rows
            if r > 0:  # with a model, selection streams: at most one chunk (or one picked batch) at a time
                assert max(largest) <= 256
            engine.dispatch(p, r)
            engine.collect(p, r)
            engine.aggregate(p, r)
            engine.pay(p, r)
        results[name] = ([engine.select(p, r)["item_ids"] for r in range(3)], p.metrics())
    assert results["s3"] == results["local"]
    accuracy = [m["accuracy"] for m in results["s3"][1]]
    assert accuracy[0] is None and accuracy[2] > accuracy[1] > 0.4  # it learns from the sharded rows


def test_cli_shards_a_configured_pool_and_runs_on_it(tmp_path: Path, cli_env: dict, cache: Path) -> None:
    import yaml

    source = tmp_path / "source.yaml"
    source.write_text(yaml.safe_dump(small_config()))
    done = subprocess.run([*crowdloop_cmd(), "pool", "shard", str(source), str(tmp_path / "pool"), "--rows-per-shard", "500"],
                          env=cli_env | {"CROWDLOOP_CACHE_DIR": str(cache)}, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert "wrote 1797 rows in 4 shards" in done.stdout
    manifest = json.loads((tmp_path / "pool" / "pool.json").read_text())
    assert manifest["format"] == "crowdloop-sharded-pool/1" and manifest["classes"] == [str(i) for i in range(10)]
    again = subprocess.run([*crowdloop_cmd(), "pool", "shard", str(source), str(tmp_path / "pool")],
                           env=cli_env, capture_output=True, text=True, timeout=120)
    assert again.returncode == 2 and again.stderr.count("\n") == 1 and "already exists" in again.stderr

    sharded = tmp_path / "sharded.yaml"
    sharded.write_text(yaml.safe_dump(small_config(**{"pool": {"source": "sharded", "path": "pool", "test_size": 0.3},
                                                      "stopping.max_rounds": 2})))
    run = subprocess.run([*crowdloop_cmd(), "run", str(sharded), "--project-dir", str(tmp_path / "proj")],
                         env=cli_env | {"CROWDLOOP_CACHE_DIR": str(cache)}, capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr
    metrics = json.loads((tmp_path / "proj" / "metrics.json").read_text())
    assert [r["n_labeled"] for r in metrics["rounds"]] == [0, 30, 50]
