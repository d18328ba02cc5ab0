"""Shared helpers for the crowd-quality tests: run rounds through the engine, no Prefect."""

from __future__ import annotations

from typing import Any

from crowdloop import engine, keys
from crowdloop.config import parse_config
from crowdloop.engine import Project


def run_engine(config: dict[str, Any], location: str) -> Project:
    """Run the loop's steps in order until a stopping rule holds; return the project."""
    p = Project.prepare(parse_config(config, source="test"), location)
    return engine.run_in_process(p)


def intents(p: Project) -> list[dict[str, Any]]:
    from crowdloop.storage import read_json

    return [d for r in p.rounds() if (d := read_json(p.store, keys.round_key(r, keys.DISPATCH), default=None))]
