"""A real local S3-compatible server for tests and benchmarks (moto's standalone server).

Test machinery, kept out of the package: ``tests/conftest.py``, the crash harness and the
sharded-pool benchmark start it.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterator
from contextlib import contextmanager


@contextmanager
def local_s3_server() -> Iterator[str]:
    """A real local S3-compatible server (moto's standalone server) on 127.0.0.1, random port.

    Yields its endpoint URL. Sets dummy ``AWS_*`` credentials and region where none are set
    (moto accepts any), and quiets werkzeug's one log line per request. Needs ``moto[server]``.
    """
    from moto.server import ThreadedMotoServer

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
