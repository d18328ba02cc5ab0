"""The annotation app on a real uvicorn in a background thread (127.0.0.1, random port).

Raw HTTP (``http.client``) reaches it without any client-side URL normalization, which the
path-traversal tests need; the browser tests load it like a user's Chromium would.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import uvicorn
from fastapi import FastAPI


def free_port() -> int:
    """A TCP port free on 127.0.0.1 right now (for servers started as subprocesses)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_annotate(project_dir: str, log_path: Path, *, env: dict[str, str] | None = None,
                   cwd: Path | None = None, timeout_s: float = 60,
                   port: int | None = None, command: str = "annotate") -> tuple[str, subprocess.Popen]:
    """``crowdloop annotate PROJECT`` (or ``command``: ``review``) in a subprocess on ``port``
    (default: a free one) of 127.0.0.1, as a user starts it; returns (base URL, process) once it
    accepts connections. The caller stops it. A fixed port is for links made before the app starts
    (a Prolific study's entry URL)."""
    port = free_port() if port is None else port
    env = {**(os.environ if env is None else env), "PYTHONUNBUFFERED": "1"}
    with open(log_path, "w") as log:  # the child keeps its own handle
        proc = subprocess.Popen([sys.executable, "-m", "crowdloop.cli", command, str(project_dir), "--port", str(port)],
                                stdout=log, stderr=subprocess.STDOUT, env=env, cwd=cwd)
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"crowdloop {command} exited: {log_path.read_text()[-2000:]}")
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
            return f"http://127.0.0.1:{port}", proc
        except OSError:
            time.sleep(0.1)
    proc.kill()
    raise RuntimeError(f"crowdloop {command} did not start within {timeout_s:g} s")


def stop_process(proc: subprocess.Popen, *, timeout_s: float = 10) -> None:
    """Stop a server started by a test: SIGTERM, then SIGKILL if it has not exited in ``timeout_s``."""
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            proc.kill()


@contextmanager
def running(app: FastAPI) -> Iterator[str]:
    """Serve ``app`` until the block ends; yields the base URL."""
    port = free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning", lifespan="off"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:
        if time.monotonic() > deadline or not thread.is_alive():
            raise RuntimeError("uvicorn did not start within 30 s")
        time.sleep(0.02)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(timeout=10)


def raw_request(base: str, method: str, target: str, *, headers: dict[str, str] | None = None,
                body: bytes | None = None) -> tuple[int, dict[str, str], bytes]:
    """Send ``target`` byte for byte over a socket (no normalization of ``..``, ``%2e``, ``\\``)."""
    host, port = base.removeprefix("http://").split(":")
    lines = [f"{method} {target} HTTP/1.1", f"Host: {host}:{port}", "Connection: close"]
    lines += [f"{k}: {v}" for k, v in (headers or {}).items()]
    if body is not None:
        lines.append(f"Content-Length: {len(body)}")
    request = ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1", errors="surrogateescape") + (body or b"")
    with socket.create_connection((host, int(port)), timeout=30) as conn:
        conn.sendall(request)
        chunks = []
        while chunk := conn.recv(65536):
            chunks.append(chunk)
    raw = b"".join(chunks)
    head, _, payload = raw.partition(b"\r\n\r\n")
    status_line, *header_lines = head.decode("latin-1").split("\r\n")
    found = {}
    for line in header_lines:
        k, _, v = line.partition(":")
        found[k.strip().lower()] = v.strip()
    return int(status_line.split()[1]), found, payload
