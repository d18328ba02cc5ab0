"""Shared helpers for the crowd-quality tests: run rounds through the engine, no Prefect."""

from __future__ import annotations

from typing import Any

from crowdloop import engine, keys
from crowdloop.config import parse_config
from crowdloop.engine import Project
from tests.conftest import with_overrides


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

from crowdloop.errors import ConfigError  # noqa: E402
from crowdloop.vendor import NEEDS_GROUND_TRUTH  # noqa: E402
from crowdloop.vendors.simulated import SimulatedCrowd  # noqa: E402


class KeyedCrowd(SimulatedCrowd):
    """The simulated crowd answering from an answer key (``params.answer_key``: an ``id,label``
    CSV) the loop never sees: the pool has no label column, as a team's own data has none."""

    name = "keyed_crowd"
    # it answers from its own key, not from the pool's labels (a blind pool has none)
    capabilities = SimulatedCrowd.capabilities - {NEEDS_GROUND_TRUTH}

    @classmethod
    def check_params(cls, params: dict, plan):
        params = dict(params)
        key = Path(params.pop("answer_key", ""))
        if not key.is_file():
            raise ConfigError(f"vendor.params.answer_key={str(key)!r}: expected an id,label CSV file")
        return super().check_params(params, plan)

    def __init__(self, params: dict, context) -> None:
        import pandas as pd

        params = dict(params)
        frame = pd.read_csv(Path(params.pop("answer_key")), dtype=str)
        key = dict(zip(frame["id"], frame["label"], strict=True))
        super().__init__(params, _replace(context, ground_truth=lambda ids: [key.get(i) for i in ids]))


def register_keyed_crowd() -> None:
    """Make vendor ``keyed_crowd`` available to projects prepared in this process."""
    from crowdloop import registry

    registry.vendors.register(KeyedCrowd.name, KeyedCrowd, replace=True)


def write_blind_digits(root: Path, n_seeds: int = 60) -> dict:
    """digits as ``pool.csv`` (id + 64 pixel columns, no labels), ``answers.csv`` (id,label, the
    crowd's key) and ``pool_with_seeds.csv`` (an ``old_label`` column with ``n_seeds`` labels)."""
    import pandas as pd
    from sklearn.datasets import load_digits

    X, y = load_digits(return_X_y=True)
    ids = [f"d{i:04d}" for i in range(len(X))]
    frame = pd.DataFrame(X, columns=[f"px{i}" for i in range(X.shape[1])])
    frame.insert(0, "id", ids)
    frame.to_csv(root / "pool.csv", index=False)
    pd.DataFrame({"id": ids, "label": y.astype(str)}).to_csv(root / "answers.csv", index=False)
    seeded = frame.copy()
    seeded["old_label"] = ""
    seeded.loc[: n_seeds - 1, "old_label"] = y[:n_seeds].astype(str)
    seeded.to_csv(root / "pool_with_seeds.csv", index=False)
    return {"root": root, "pool": root / "pool.csv", "answers": root / "answers.csv",
            "seeded": root / "pool_with_seeds.csv", "truth": dict(zip(ids, y.astype(str), strict=True))}


def blind_config(data: dict, **overrides: Any) -> dict:
    """A project over the blind digits pool, answered by ``keyed_crowd`` (registered here)."""
    register_keyed_crowd()
    config: dict[str, Any] = {
        "project": "blind", "seed": 3,
        "pool": {"source": "csv", "path": str(data["pool"]), "id_column": "id", "classes": [str(d) for d in range(10)]},
        "model": {"estimator": "sklearn.linear_model.LogisticRegression", "params": {"C": 0.1, "max_iter": 500}},
        "sampler": {"name": "margin", "batch_size": 20, "initial_size": 20},
        "vendor": {"name": "keyed_crowd", "params": {"answer_key": str(data["answers"]), "n_workers": 12,
                                                     "accuracy": [0.8, 0.98], "spammer_fraction": 0.0}},
        "consensus": {"method": "one_coin_dawid_skene", "redundancy": 3},
        "stopping": {"max_rounds": 3},
    }
    return with_overrides(config, overrides)
