"""Prefect ``Secret`` blocks as crowdloop's secret source (the ``prefect`` entry of ``crowdloop.secrets``).

Create them in the UI (Blocks → Secret) or in Python::

    from prefect.blocks.system import Secret
    Secret(value={"aws_access_key_id": "AKIA...", "aws_secret_access_key": "..."}).save("crowdloop-aws")
    Secret(value="<Label Studio API key>").save("crowdloop-label-studio")

and name them in the config (``credentials.aws: crowdloop-aws``). Values are read when a client
is built and never logged; errors name the block, never its value.
"""

from __future__ import annotations

from typing import Any

from crowdloop.errors import ConfigError


def read_secret(name: str, *, field: str) -> Any:
    """The value of the Prefect ``Secret`` block ``name`` (a string, or the JSON object it holds)."""
    from prefect.blocks.system import Secret

    try:
        block = Secret.load(name, _sync=True)
    except ValueError as exc:  # Prefect: "Unable to find block document named ..."
        raise ConfigError(f"{field}: no Prefect Secret block named {name!r} ({' '.join(str(exc).split())[:160]}); "
                          "create it in the Prefect UI (Blocks → Secret) or with Secret(value=...).save(name)") from None
    return block.get()
