"""A real local S3-compatible server for tests and benchmarks (moto's standalone server).

Test machinery, kept out of the package: ``tests/conftest.py``, the crash harness and the
sharded-pool benchmark start it.
"""

from __future__ import annotations

import functools
import logging
import os
import threading
from collections.abc import Iterator
from contextlib import contextmanager

_WRITE_LOCK = threading.Lock()


def _atomic_conditional_writes() -> None:
    """Make moto's conditional PUT/DELETE atomic, as S3's are.

    moto (5.2) honours ``If-None-Match: *`` and ``If-Match: <etag>`` on PutObject and
    ``If-Match`` on DeleteObject, but checks the condition and then writes without a lock, in
    a threaded server: two requests can both pass the check. S3 decides a conditional write
    atomically (one of two racing writers gets 412), and the S3 lock's tests race two
    processes on exactly that, so the test server serializes object writes and deletes.
    """
    from moto.s3.responses import S3Response

    if getattr(S3Response.put_object, "_crowdloop_atomic", False):
        return
    for name in ("put_object", "delete_object"):
        original = getattr(S3Response, name)

        @functools.wraps(original)
        def serialized(self, _original=original):
            with _WRITE_LOCK:
                return _original(self)

        serialized._crowdloop_atomic = True  # type: ignore[attr-defined]
        setattr(S3Response, name, serialized)


@contextmanager
def local_s3_server() -> Iterator[str]:
    """A real local S3-compatible server (moto's standalone server) on 127.0.0.1, random port.

    Yields its endpoint URL. Sets dummy ``AWS_*`` credentials and region where none are set
    (moto accepts any), and quiets werkzeug's one log line per request. Needs ``moto[server]``.
    """
    from moto.server import ThreadedMotoServer

    _atomic_conditional_writes()
    for name, value in (("AWS_ACCESS_KEY_ID", "testing"), ("AWS_SECRET_ACCESS_KEY", "testing"),
                        ("AWS_DEFAULT_REGION", "us-east-1")):
        os.environ.setdefault(name, value)
    logging.getLogger("werkzeug").setLevel(logging.ERROR)
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server._server.server_address
    try:
        yield f"http://{host}:{port}"
    finally:
        server.stop()
