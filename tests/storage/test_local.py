"""LocalStore: safe keys, create-only history, listing, atomic writes and the project lock."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from crowdloop.errors import InvalidKeyError, ProjectLockedError, RecordExistsError, StoreError
from crowdloop.storage import KeyNotFoundError, PrefixedStore, open_store, read_json, validate_key, write_json
from crowdloop.storage.local import LocalStore


@pytest.fixture
def store(tmp_path: Path) -> LocalStore:
    return LocalStore(tmp_path / "store")


@pytest.mark.parametrize("key", ["", "/etc/passwd", "../x", "a/../b", "a//b", "a/./b", "a\\b", "a/b/", ".hidden", "a/\x00"])
def test_unsafe_keys_are_refused(store: LocalStore, key: str) -> None:
    with pytest.raises(InvalidKeyError):
        store.write_bytes(key, b"x")
    with pytest.raises(InvalidKeyError):
        store.read_bytes(key)


@given(st.text(min_size=1, max_size=40))
def test_validated_keys_never_escape_the_root(key: str) -> None:
    try:
        validate_key(key)
    except InvalidKeyError:
        return
    parts = key.split("/")
    assert ".." not in parts and not key.startswith("/") and "\\" not in key


def test_roundtrip_exists_list_delete(store: LocalStore) -> None:
    store.write_bytes("rounds/0001/a.json", b"1")
    store.write_bytes("rounds/0002/b.json", b"2")
    store.write_bytes("labels/x.jsonl", b"3")
    assert store.read_bytes("rounds/0001/a.json") == b"1"
    assert store.exists("rounds/0002/b.json") and not store.exists("rounds/0003/c.json")
    assert store.list("rounds/") == ["rounds/0001/a.json", "rounds/0002/b.json"]
    assert store.list("rounds/0001") == ["rounds/0001/a.json"]
    assert store.list() == ["labels/x.jsonl", "rounds/0001/a.json", "rounds/0002/b.json"]
    store.delete("labels/x.jsonl")
    store.delete("labels/x.jsonl")  # deleting twice is fine
    with pytest.raises(KeyNotFoundError):
        store.read_bytes("labels/x.jsonl")


def test_create_only_never_overwrites(store: LocalStore) -> None:
    store.write_bytes("r/selection.json", b"first", create_only=True)
    with pytest.raises(RecordExistsError):
        store.write_bytes("r/selection.json", b"second", create_only=True)
    assert store.read_bytes("r/selection.json") == b"first"
    store.write_bytes("r/status.json", b"a")
    store.write_bytes("r/status.json", b"b")  # mutable records may be replaced
    assert store.read_bytes("r/status.json") == b"b"


def test_no_temporary_files_are_listed_or_left(store: LocalStore) -> None:
    for i in range(20):
        store.write_bytes(f"k/{i}.json", b"x" * 1000)
    assert len(store.list("k/")) == 20
    assert not [p for p in (store.root / "k").iterdir() if p.name.startswith(".tmp-")]


def test_json_helpers_and_bad_json(store: LocalStore) -> None:
    write_json(store, "a.json", {"x": [1, 2]})
    assert read_json(store, "a.json") == {"x": [1, 2]}
    assert read_json(store, "missing.json", default=None) is None
    store.write_bytes("broken.json", b"{not json")
    with pytest.raises(StoreError, match=r"broken\.json"):
        read_json(store, "broken.json")


def test_prefixed_store_is_a_view(store: LocalStore) -> None:
    child = PrefixedStore(store, "baseline")
    child.write_bytes("rounds/0000/x.json", b"1", create_only=True)
    assert store.read_bytes("baseline/rounds/0000/x.json") == b"1"
    assert child.list("rounds/") == ["rounds/0000/x.json"]
    assert open_store(child.url).read_bytes("rounds/0000/x.json") == b"1"
    with pytest.raises(InvalidKeyError):
        child.read_bytes("../project.json")


def test_open_without_create_refuses_missing_dir(tmp_path: Path) -> None:
    with pytest.raises(StoreError, match="not found"):
        open_store(str(tmp_path / "missing"), create=False)
    assert not (tmp_path / "missing").exists()


def test_unwritable_directory_is_a_clear_error(tmp_path: Path) -> None:
    target = tmp_path / "file-not-dir"
    target.write_text("x")
    with pytest.raises(StoreError, match=r"not a directory|cannot create"):
        LocalStore(target)


def test_lock_is_exclusive_across_processes_and_released_on_death(store: LocalStore) -> None:
    holder = subprocess.Popen(
        [sys.executable, "-c",
         "import sys,time; from crowdloop.storage.local import LocalStore\n"
         f"s=LocalStore({str(store.root)!r})\n"
         "with s.lock('project'):\n    print('locked', flush=True); time.sleep(60)"],
        stdout=subprocess.PIPE, text=True,
    )
    try:
        assert holder.stdout.readline().strip() == "locked"
        with pytest.raises(ProjectLockedError, match=f"pid {holder.pid}"), store.lock("project"):
            pass
    finally:
        holder.kill()
        holder.wait()
    deadline = time.monotonic() + 10
    while True:  # the kernel drops the lock of a killed process: no stale lock file to clean up
        try:
            with store.lock("project"):
                break
        except ProjectLockedError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.1)
