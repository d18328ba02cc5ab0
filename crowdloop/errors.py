"""Typed errors. Every user-facing failure is a ``CrowdloopError`` with a one-line message.

The CLI prints ``error: <message>`` and exits with code 2 for these; anything else is a bug
and keeps its traceback.
"""

from __future__ import annotations


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


class LabelFileError(CrowdloopError, ValueError):
    """A file of labels (seed labels, gold answers) has a bad row; nothing from it is used."""


class SamplerError(CrowdloopError, ValueError):
    """A sampler was called with arguments it cannot honour (e.g. batch larger than pool)."""


class VendorError(CrowdloopError):
    """A vendor failed permanently or returned data that breaks its contract."""


class VendorDataError(VendorError, ValueError):
    """A vendor returned an annotation that is not valid for the task (e.g. unknown label)."""


class TransientError(Exception):
    """An outside failure worth a retry that says so itself (throttled, 5xx, timed out).

    Not a ``CrowdloopError``: nothing about the input is wrong. Vendors raise it (or a
    subclass) for failures their service reports as temporary.
    """

    exit_code = 3


# Error codes services use for "try again later" (AWS: throttling; HTTP: 408, 429, 5xx).
_TRANSIENT_CODES = {"Throttling", "ThrottlingException", "TooManyRequestsException", "RequestLimitExceeded",
                    "SlowDown", "ServiceUnavailable", "ServiceUnavailableException", "InternalError",
                    "InternalServerError", "InternalFailure", "RequestTimeout", "RequestTimeoutException"}
_TRANSIENT_NAMES = {"EndpointConnectionError", "ConnectTimeoutError", "ReadTimeoutError", "ConnectionClosedError",
                    "ProxyConnectionError", "TransportError", "TimeoutException", "NetworkError", "ConnectError",
                    "ReadTimeout", "ConnectTimeout", "RemoteProtocolError"}


def is_transient(exc: BaseException) -> bool:
    """Whether ``exc`` is an outside failure worth a retry: network, throttling, 5xx, timeouts.

    Input errors (``CrowdloopError``) and programming errors (``TypeError``, ...) are not: a
    retry would fail the same way. Client libraries are recognised by their exception names and
    attributes, so this module imports none of them.
    """
    if isinstance(exc, CrowdloopError):
        return False
    if isinstance(exc, (TransientError, ConnectionError, TimeoutError)):
        return True
    names = {cls.__name__ for cls in type(exc).__mro__}
    if names & _TRANSIENT_NAMES:
        return True
    response = getattr(exc, "response", None)
    if isinstance(response, dict):  # botocore's ClientError
        error = response.get("Error", {}) or {}
        status = (response.get("ResponseMetadata", {}) or {}).get("HTTPStatusCode")
        return error.get("Code") in _TRANSIENT_CODES or (isinstance(status, int) and (status >= 500 or status in (408, 429)))
    status = getattr(response, "status_code", None) or getattr(exc, "status_code", None)
    return isinstance(status, int) and (status >= 500 or status in (408, 429))
