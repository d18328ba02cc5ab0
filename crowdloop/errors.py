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


class SamplerError(CrowdloopError, ValueError):
    """A sampler was called with arguments it cannot honour (e.g. batch larger than pool)."""


class VendorError(CrowdloopError):
    """A vendor failed permanently or returned data that breaks its contract."""


class VendorDataError(VendorError, ValueError):
    """A vendor returned an annotation that is not valid for the task (e.g. unknown label)."""
