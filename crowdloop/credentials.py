"""Where credentials come from: named secret blocks when the config names them, else the usual chain.

A config may name, in its ``credentials`` section, the Prefect ``Secret`` blocks that hold the
project's credentials (names only: the YAML, the store and the artifacts never hold a secret):

* ``credentials.aws``: a block whose value is a JSON object with ``aws_access_key_id``,
  ``aws_secret_access_key`` and optionally ``aws_session_token`` and ``region_name``; used for
  the S3 store and MTurk. Not named: boto3's own chain (environment, ``~/.aws``, instance role).
* ``credentials.label_studio_api_key``: a block holding the Label Studio API key. Not named:
  ``LABEL_STUDIO_API_KEY``.

A named block that cannot be read is a one-line error, never a silent fall back to other
credentials. Blocks are read through the ``crowdloop.secrets`` plug-in group (the built-in
``prefect`` source is ``crowdloop.flows.blocks``), so the core imports no Prefect.

Why ``Secret`` and not ``prefect-aws``'s ``AwsCredentials``: prefect-aws pulls aiobotocore,
which pins botocore to a narrow older range (aiobotocore 3.10 wants botocore <1.43.118) and
would downgrade the boto3 every other part of crowdloop uses. A ``Secret`` holding the same
fields is a core Prefect block and shows obfuscated in the UI.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from crowdloop.errors import ConfigError, CrowdloopError

AWS_FIELDS = ("aws_access_key_id", "aws_secret_access_key", "aws_session_token", "region_name")


def read_secret(source: str, name: str, *, field: str) -> Any:
    """The value of secret ``name`` from secret source ``source`` (one-line error naming ``field``)."""
    from crowdloop import registry

    try:
        reader = registry.secrets.load(source)
    except CrowdloopError as exc:
        raise ConfigError(f"credentials.source: {exc}") from None
    return reader(name, field=field)


@dataclass(frozen=True)
class Credentials:
    """A project's credential settings: block names (or None for the default chain)."""

    aws: str | None = None
    label_studio_api_key: str | None = None
    source: str = "prefect"

    @classmethod
    def from_config(cls, config: Any) -> Credentials:
        """From a ``LoopConfig`` (its ``credentials`` section)."""
        section = config.credentials
        return cls(aws=section.aws, label_studio_api_key=section.label_studio_api_key, source=section.source)

    def aws_keys(self) -> dict[str, str]:
        """boto3 ``Session`` keyword arguments from the AWS block; empty: use boto3's chain."""
        if self.aws is None:
            return {}
        value = read_secret(self.source, self.aws, field="credentials.aws")
        if not isinstance(value, dict) or not value.get("aws_access_key_id") or not value.get("aws_secret_access_key"):
            raise ConfigError(f"credentials.aws: secret block {self.aws!r} must hold a JSON object with "
                              "aws_access_key_id and aws_secret_access_key (optional aws_session_token, region_name)")
        unknown = sorted(set(value) - set(AWS_FIELDS))
        if unknown:
            raise ConfigError(f"credentials.aws: secret block {self.aws!r} has unknown fields {unknown}; "
                              f"expected {', '.join(AWS_FIELDS)}")
        return {k: str(v) for k, v in value.items() if v}

    def aws_session(self, factory: Callable[..., Any] | None = None) -> Any:
        """A boto3 session with the block's keys, or boto3's own chain when no block is named."""
        if factory is None:
            import boto3

            factory = boto3.session.Session
        keys = self.aws_keys()
        return factory(**keys) if keys else factory()

    def label_studio_key(self) -> str | None:
        """The Label Studio API key from its block; None: use the environment."""
        if self.label_studio_api_key is None:
            return None
        value = read_secret(self.source, self.label_studio_api_key, field="credentials.label_studio_api_key")
        if not isinstance(value, str) or not value:
            raise ConfigError(f"credentials.label_studio_api_key: secret block {self.label_studio_api_key!r} "
                              "must hold the API key as a string")
        return value

    def check(self) -> None:
        """Read every named block once, so a missing or malformed one fails before a run starts."""
        self.aws_keys()
        self.label_studio_key()


DEFAULT = Credentials()
