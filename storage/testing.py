"""``check_store``: the Store contract as a reusable conformance check.

Run it over any store implementation (``check_store(lambda: MyStore(...))``); each call of the
factory must return a store over the *same* empty location, so persistence across instances
is checked too. Raises ``AssertionError`` naming the broken promise.
"""

from __future__ import annotations

from collections.abc import Callable

from crowdloop.errors import InvalidKeyError, RecordExistsError
from crowdloop.storage import KeyNotFoundError, PrefixedStore, Store, open_store


def _expect(exc_type: type[BaseException], fn: Callable[[], object], promise: str) -> None:
    try:
        fn()
    except exc_type:
        return
    except Exception as exc:
        raise AssertionError(f"{promise}: raised {type(exc).__name__}: {exc}, expected {exc_type.__name__}") from exc
    raise AssertionError(f"{promise}: no {exc_type.__name__} raised")


def check_store(factory: Callable[[], Store], *, n_listed: int = 30, large_object_bytes: int = 0) -> None:
    """Assert the Store contract on the stores ``factory`` returns (same empty location).

    ``n_listed`` keys are written and listed back: use more than one page (e.g. 1005 for S3's
    1000-key pages) to check pagination; ``large_object_bytes`` > 0 checks big objects
    (multipart on S3).
    """
    store = factory()
    if store.list():
        raise AssertionError("check_store needs an empty location")

    # round trip, exists, overwrite of mutable records
    store.write_bytes("rounds/0001/a.json", b'{"a": 1}')
    if store.read_bytes("rounds/0001/a.json") != b'{"a": 1}':
        raise AssertionError("read_bytes must return what write_bytes stored")
    if not store.exists("rounds/0001/a.json") or store.exists("rounds/0001/missing.json"):
        raise AssertionError("exists must tell present from missing keys")
    store.write_bytes("rounds/0001/a.json", b"2")
    if store.read_bytes("rounds/0001/a.json") != b"2":
        raise AssertionError("a plain write must replace a mutable record")
    _expect(KeyNotFoundError, lambda: store.read_bytes("rounds/0001/missing.json"), "reading a missing key")

    # create-only never overwrites history
    store.write_bytes("rounds/0001/selection.json", b"first", create_only=True)
    _expect(RecordExistsError, lambda: store.write_bytes("rounds/0001/selection.json", b"x", create_only=True),
            "a second create-only write")
    if store.read_bytes("rounds/0001/selection.json") != b"first":
        raise AssertionError("a refused create-only write must leave the record unchanged")

    # unsafe keys are refused everywhere
    for bad in ("../escape", "/abs", "a/../b", "a//b", "a\\b", ""):
        _expect(InvalidKeyError, lambda bad=bad: store.write_bytes(bad, b"x"), f"writing key {bad!r}")
        _expect(InvalidKeyError, lambda bad=bad: store.read_bytes(bad), f"reading key {bad!r}")

    # listing: sorted, by prefix, beyond one page, persistent across instances
    names = [f"labels/segments/{i:05d}.jsonl" for i in range(n_listed)]
    for name in names:
        store.write_bytes(name, b"x")
    listed = factory().list("labels/segments/")
    if listed != sorted(names):
        raise AssertionError(f"list(prefix) must return every key under the prefix, sorted ({len(listed)} of {len(names)})")
    if factory().list("rounds/0001/") != ["rounds/0001/a.json", "rounds/0001/selection.json"]:
        raise AssertionError("list must filter by prefix")

    # delete is idempotent
    store.delete("rounds/0001/a.json")
    store.delete("rounds/0001/a.json")
    if store.exists("rounds/0001/a.json"):
        raise AssertionError("delete must remove the key")

    # prefixed views reopen by URL
    child = PrefixedStore(store, "baseline")
    child.write_bytes("rounds/0000/x.json", b"1", create_only=True)
    if open_store(child.url).read_bytes("rounds/0000/x.json") != b"1":
        raise AssertionError("a prefixed store's url must reopen the same records")

    # large objects
    if large_object_bytes:
        blob = bytes(range(256)) * (large_object_bytes // 256 + 1)
        store.write_bytes("models/big.bin", blob, create_only=True)
        if factory().read_bytes("models/big.bin") != blob:
            raise AssertionError("large objects must round-trip")
        _expect(RecordExistsError, lambda: store.write_bytes("models/big.bin", b"x", create_only=True),
                "create-only on a large object")

    # the lock is exclusive while held and free after
    from crowdloop.errors import ProjectLockedError

    with store.lock("project"):
        _expect(ProjectLockedError, lambda: factory().lock("project").__enter__(), "taking a held lock")
    with factory().lock("project"):
        pass
