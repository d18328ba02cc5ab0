"""Shared helpers for the crowd-quality tests: run rounds through the engine, no Prefect."""

from __future__ import annotations

from typing import Any

from crowdloop import keys
from crowdloop import engine
from crowdloop.config import parse_config
from crowdloop.engine import Project


def run_engine(config: dict[str, Any], location: str) -> Project:
    """Run the loop's steps in order until a stopping rule holds; return the project."""
    p = Project.prepare(parse_config(config, source="test"), location)
    return engine.run_in_process(p)


def intents(p: Project) -> list[dict[str, Any]]:
    from crowdloop.storage import read_json

    return [d for r in p.rounds() if (d := read_json(p.store, keys.round_key(r, keys.DISPATCH), default=None))]


# -- a crowd for pools without ground truth ------------------------------------------------------
from dataclasses import replace as _replace  # noqa: E402
from pathlib import Path  # noqa: E402

from crowdloop.vendors.simulated import SimulatedCrowd  # noqa: E402


class KeyedCrowd(SimulatedCrowd):
    """The simulated crowd answering from an answer key (``params.answer_key``: an ``id,label``
    CSV) the loop never sees: the pool has no label column, as a team's own data has none."""

    name = "keyed_crowd"

    def __init__(self, params: dict, context) -> None:
        import pandas as pd

        params = dict(params)
        frame = pd.read_csv(Path(params.pop("answer_key")), dtype=str)
        key = dict(zip(frame["id"], frame["label"]))
        super().__init__(params, _replace(context, ground_truth=lambda ids: [key.get(i) for i in ids]))


def register_keyed_crowd() -> None:
    """Make vendor ``keyed_crowd`` available to projects prepared in this process."""
    from crowdloop import registry

    registry.vendors.register(KeyedCrowd.name, KeyedCrowd)
