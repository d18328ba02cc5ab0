"""Typed errors. Every user-facing failure is a ``CrowdloopError`` with a one-line message.

The CLI prints ``error: <message>`` and exits with code 2 for these (3 when ``is_transient``
says an outside failure is worth a retry); anything else is a bug and keeps its traceback.
See docs/cli.md for the exit codes.
"""

from __future__ import annotations

import errno
import socket


class CrowdloopError(Exception):
    """Base class for errors caused by input, configuration or environment, not by bugs."""

    exit_code = 2


class ConfigError(CrowdloopError, ValueError):
    """A configuration file or value is invalid."""


class RegistryError(CrowdloopError, LookupError):
    """An unknown or unloadable plug-in name (vendor, sampler, aggregator, pool, store)."""


class StoreError(CrowdloopError):
    """The project store is unreadable, unwritable or inconsistent."""


class InvalidKeyError(StoreError, ValueError):
    """A store key is not a safe relative path."""


class RecordExistsError(StoreError, FileExistsError):
    """A create-only write found an existing record: history is never overwritten."""


class ProjectLockedError(StoreError):
    """Another run holds the project lock."""


class PoolError(CrowdloopError, ValueError):
    """The pool data cannot be loaded or does not match its configuration."""


class SamplerError(CrowdloopError, ValueError):
    """A sampler was called with arguments it cannot honour (e.g. batch larger than pool)."""


class VendorError(CrowdloopError):
    """A vendor failed permanently or returned data that breaks its contract."""


class VendorDataError(VendorError, ValueError):
    """A vendor returned an annotation that is not valid for the task (e.g. unknown label)."""


class TransientError(Exception):
    """An outside failure worth a retry that says so itself (throttled, 5xx, timed out).

    Not a ``CrowdloopError``: nothing about the input is wrong. Vendors raise it (or a
    subclass) for failures their service reports as temporary; errors of the HTTP and AWS
    libraries are recognised by ``is_transient`` without this wrapper.
    """

    exit_code = 3


# -- which outside failures are worth a retry ----------------------------------------------
# Recognised by class name and module along the MRO, so this module imports none of botocore,
# httpx, requests or urllib3 (they are optional, and slow to import).
_TRANSIENT_CLASSES: dict[str, frozenset[str]] = {
    "botocore": frozenset({"ConnectionError", "EndpointConnectionError", "ConnectTimeoutError", "ReadTimeoutError",
                           "ConnectionClosedError", "HTTPClientError", "IncompleteReadError", "ResponseStreamingError",
                           "ProxyConnectionError"}),
    "httpx": frozenset({"TimeoutException", "NetworkError", "RemoteProtocolError"}),
    "requests": frozenset({"ConnectionError", "Timeout", "ChunkedEncodingError"}),
    "urllib3": frozenset({"TimeoutError", "NewConnectionError", "ProtocolError"}),
}
# A certificate or TLS setup problem does not heal by waiting, although the libraries file it
# under connection errors.
_NEVER_TRANSIENT = frozenset({"SSLError", "SSLCertVerificationError", "CertificateError"})
_TRANSIENT_CODES = frozenset({
    "Throttling", "ThrottlingException", "ThrottledException", "RequestThrottled", "RequestThrottledException",
    "TooManyRequestsException", "RequestLimitExceeded", "SlowDown", "ProvisionedThroughputExceededException",
    "ServiceUnavailable", "ServiceUnavailableException", "InternalError", "InternalFailure", "InternalServerError",
    "RequestTimeout", "RequestTimeoutException", "PriorRequestNotComplete", "ServiceFault",
})
_TRANSIENT_ERRNOS = frozenset({errno.ECONNREFUSED, errno.ECONNRESET, errno.ECONNABORTED, errno.ETIMEDOUT,
                               errno.ENETDOWN, errno.ENETUNREACH, errno.EHOSTUNREACH, errno.EHOSTDOWN, errno.EPIPE})


def _transient_status(status: object) -> bool:
    """408/429 and 5xx, except the 5xx answers that say a request can never work (501, 505)."""
    return isinstance(status, int) and (status in (408, 429) or (500 <= status <= 599 and status not in (501, 505)))


def _status_of(exc: BaseException) -> object:
    status = getattr(exc, "status_code", None)  # label-studio-sdk's ApiError
    if status is None:
        response = getattr(exc, "response", None)
        if isinstance(response, dict):  # botocore's ClientError
            error = response.get("Error") or {}
            if str(error.get("Code", "")) in _TRANSIENT_CODES:
                return 503
            status = (response.get("ResponseMetadata") or {}).get("HTTPStatusCode")
        else:  # httpx.HTTPStatusError, requests.HTTPError
            status = getattr(response, "status_code", None)
    return status


def _is_transient_itself(exc: BaseException) -> bool:
    mro = type(exc).__mro__
    if any(cls.__name__ in _NEVER_TRANSIENT for cls in mro):
        return False
    if isinstance(exc, TransientError):
        return True
    for cls in mro:
        library = cls.__module__.partition(".")[0]
        if cls.__name__ in _TRANSIENT_CLASSES.get(library, ()):
            return True
    if isinstance(exc, socket.gaierror):  # DNS: "try again" is the network, "unknown name" is a typo
        return exc.errno == socket.EAI_AGAIN
    if isinstance(exc, (ConnectionError, TimeoutError)):
        return True
    if isinstance(exc, OSError) and exc.errno in _TRANSIENT_ERRNOS:
        return True
    return _transient_status(_status_of(exc))


def is_transient(exc: BaseException) -> bool:
    """True if ``exc`` is an outside failure worth retrying: network down, throttled, 5xx, timeout.

    A ``CrowdloopError`` that wraps such a failure (raised ``from`` it, or ``from None`` while
    handling it) counts too: the store and vendor modules keep their messages to one line that
    way. Any other exception is judged by itself only, so a bug raised while handling a network
    error still fails at once. Used for the CLI's exit code 3 and for task retries.
    """
    if _is_transient_itself(exc):
        return True
    if not isinstance(exc, CrowdloopError):
        return False
    seen: set[int] = {id(exc)}
    cause = exc.__cause__ or exc.__context__
    while cause is not None and id(cause) not in seen:
        if _is_transient_itself(cause):
            return True
        seen.add(id(cause))
        cause = cause.__cause__ or cause.__context__
    return False
