"""``is_transient``: which outside failures are worth a retry, from the libraries' real exceptions."""

from __future__ import annotations

import errno
import socket
import subprocess
import sys

import pytest

from crowdloop.errors import ConfigError, StoreError, TransientError, VendorError, is_transient


def _client_error(code: str, status: int):
    from botocore.exceptions import ClientError

    return ClientError({"Error": {"Code": code, "Message": "m"}, "ResponseMetadata": {"HTTPStatusCode": status}}, "Op")


def _httpx_status(status: int):
    import httpx

    request = httpx.Request("GET", "http://127.0.0.1/x")
    return httpx.HTTPStatusError("s", request=request, response=httpx.Response(status, request=request))


def _requests_status(status: int):
    import requests

    response = requests.Response()
    response.status_code = status
    return requests.HTTPError("s", response=response)


def _label_studio(status: int):
    from label_studio_sdk.core.api_error import ApiError

    return ApiError(status_code=status, body="b")


def _botocore(name: str, **kwargs):
    import botocore.exceptions

    return getattr(botocore.exceptions, name)(**kwargs)


def _httpx(name: str):
    import httpx

    return getattr(httpx, name)("x")


def _requests(name: str):
    import requests

    return getattr(requests.exceptions, name)("x")


TRANSIENT = {
    "connection refused": lambda: ConnectionRefusedError(errno.ECONNREFUSED, "refused"),
    "reset": lambda: ConnectionResetError(errno.ECONNRESET, "reset"),
    "socket timeout": lambda: TimeoutError("timed out"),
    "network unreachable": lambda: OSError(errno.ENETUNREACH, "unreachable"),
    "dns try again": lambda: socket.gaierror(socket.EAI_AGAIN, "Temporary failure in name resolution"),
    "botocore endpoint": lambda: _botocore("EndpointConnectionError", endpoint_url="http://127.0.0.1:9"),
    "botocore read timeout": lambda: _botocore("ReadTimeoutError", endpoint_url="http://127.0.0.1:9"),
    "botocore connect timeout": lambda: _botocore("ConnectTimeoutError", endpoint_url="http://127.0.0.1:9"),
    "aws throttling": lambda: _client_error("Throttling", 400),
    "s3 slow down": lambda: _client_error("SlowDown", 503),
    "mturk service fault": lambda: _client_error("ServiceFault", 500),
    "aws 502": lambda: _client_error("BadGateway", 502),
    "httpx connect": lambda: _httpx("ConnectError"),
    "httpx read timeout": lambda: _httpx("ReadTimeout"),
    "httpx 503": lambda: _httpx_status(503),
    "httpx 429": lambda: _httpx_status(429),
    "requests connection": lambda: _requests("ConnectionError"),
    "requests timeout": lambda: _requests("ReadTimeout"),
    "requests 500": lambda: _requests_status(500),
    "label studio 504": lambda: _label_studio(504),
    "said so": lambda: TransientError("vendor 'x': queue full, try later"),
}
PERMANENT = {
    "bug": lambda: TypeError("unsupported operand"),
    "key error": lambda: KeyError("x"),
    "file not found": lambda: FileNotFoundError(errno.ENOENT, "missing"),
    "permission": lambda: PermissionError(errno.EACCES, "denied"),
    "dns unknown name": lambda: socket.gaierror(socket.EAI_NONAME, "Name or service not known"),
    "config": lambda: ConfigError("sampler.name: unknown"),
    "aws no such bucket": lambda: _client_error("NoSuchBucket", 404),
    "aws access denied": lambda: _client_error("AccessDenied", 403),
    "mturk request error": lambda: _client_error("RequestError", 400),
    "aws not implemented": lambda: _client_error("NotImplemented", 501),
    "botocore no credentials": lambda: _botocore("NoCredentialsError"),
    "botocore ssl": lambda: _botocore("SSLError", endpoint_url="https://x", error="bad certificate"),
    "requests ssl": lambda: _requests("SSLError"),
    "httpx 404": lambda: _httpx_status(404),
    "requests 400": lambda: _requests_status(400),
    "label studio 401": lambda: _label_studio(401),
}


@pytest.mark.parametrize("make", TRANSIENT.values(), ids=TRANSIENT.keys())
def test_outside_failures_worth_a_retry(make) -> None:
    assert is_transient(make())


@pytest.mark.parametrize("make", PERMANENT.values(), ids=PERMANENT.keys())
def test_bugs_and_permanent_failures_are_not_retried(make) -> None:
    assert not is_transient(make())


def test_a_one_line_wrapper_keeps_the_cause_visible() -> None:
    """Stores and vendors raise ``StoreError(...) from None``; the cause is still the context."""
    endpoint = TRANSIENT["botocore endpoint"]
    try:
        try:
            raise endpoint()
        except Exception:  # noqa: BLE001 - the wrapper under test catches whatever the client raised
            raise StoreError("s3://b/p: cannot open '': Could not connect") from None
    except StoreError as wrapped:
        assert is_transient(wrapped)
    try:
        try:
            raise _client_error("NoSuchBucket", 404)
        except Exception:  # noqa: BLE001 - the wrapper under test catches whatever the client raised
            raise StoreError("s3://b/p: bucket 'b' not found") from None
    except StoreError as wrapped:
        assert not is_transient(wrapped)
    try:
        try:
            raise ConnectionResetError(errno.ECONNRESET, "reset")
        except Exception as exc:
            raise VendorError("vendor 'x': list failed") from exc
    except VendorError as wrapped:
        assert is_transient(wrapped)


def test_a_bug_raised_while_handling_a_network_error_is_still_a_bug() -> None:
    try:
        try:
            raise ConnectionRefusedError(errno.ECONNREFUSED, "refused")
        except ConnectionError:
            raise AttributeError("'NoneType' object has no attribute 'read'")  # noqa: B904 - a bug, raised as one
    except AttributeError as bug:
        assert not is_transient(bug)


def test_classifying_imports_none_of_the_http_libraries() -> None:
    code = ("import sys, crowdloop.errors as e; e.is_transient(TimeoutError()); "
            "print(sorted(m for m in ('botocore', 'boto3', 'httpx', 'requests', 'urllib3') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True)
    assert out.stdout.strip() == "[]"
