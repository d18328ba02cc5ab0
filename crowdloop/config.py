"""Pydantic models of a crowdloop project configuration, loaded from YAML.

Every model forbids unknown fields so a typo fails loudly instead of being ignored.
``load_config`` turns validation failures into one-line ``ConfigError`` messages that name
the file, the field path, the bad value and what was expected.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from crowdloop.errors import ConfigError

SKLEARN_POOLS = ("digits", "iris", "wine", "breast_cancer")


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class PoolConfig(_Strict):
    """Where the unlabeled items come from, and how the held-out test split is drawn."""

    source: Literal["sklearn", "csv", "parquet"] = "sklearn"
    name: str | None = Field(None, description="scikit-learn bundled set: digits, iris, wine, breast_cancer")
    path: str | None = Field(None, description="CSV/Parquet file; relative paths resolve against the config file")
    feature_columns: list[str] | None = Field(None, description="default: every column but id and label")
    label_column: str | None = Field(None, description="ground truth, used only for evaluation and simulation")
    id_column: str | None = Field(None, description="stable item ids; default: the row number")
    classes: list[str] | None = Field(None, description="class list; default: the ground truth's classes")
    test_size: float = Field(0.25, gt=0, lt=1, description="share of items held out for evaluation")

    @model_validator(mode="after")
    def _check_source(self) -> "PoolConfig":
        if self.source == "sklearn":
            if self.name not in SKLEARN_POOLS:
                raise ValueError(f"name={self.name!r}: expected one of {', '.join(SKLEARN_POOLS)} for source 'sklearn'")
        elif not self.path:
            raise ValueError(f"path is required for source {self.source!r}")
        if self.classes is not None and len(set(self.classes)) < 2:
            raise ValueError(f"classes={self.classes!r}: expected at least two distinct classes")
        return self


class ModelConfig(_Strict):
    """A scikit-learn classifier by import path; flows always fit a clone of it."""

    estimator: str = "sklearn.linear_model.LogisticRegression"
    params: dict[str, Any] = Field(default_factory=dict)
    scale: bool = Field(True, description="standardize features in a Pipeline before the estimator")


class SamplerConfig(_Strict):
    name: str = "margin"
    params: dict[str, Any] = Field(default_factory=dict)
    batch_size: int = Field(20, ge=1, description="items sent to humans per round")
    initial_size: int | None = Field(None, ge=1, description="round-0 batch; default batch_size")
    cold_start: Literal["random", "kmeans", "typiclust"] = Field(
        "random", description="round-0 rule, used whenever no fitted model exists yet"
    )
    chunk_size: int = Field(8192, ge=1, description="rows scored at a time, bounding memory on large pools")


class VendorConfig(_Strict):
    name: str = "simulated"
    params: dict[str, Any] = Field(default_factory=dict, description="validated by the vendor's own model")


class ConsensusConfig(_Strict):
    method: str = Field("dawid_skene", description="aggregator name: majority_vote, dawid_skene, one_coin_dawid_skene")
    redundancy: int = Field(3, ge=1, le=50, description="judgments requested per item")


class CollectConfig(_Strict):
    poll_interval_s: float = Field(2.0, gt=0)
    timeout_s: float = Field(24 * 3600.0, gt=0, description="after this, aggregate what has arrived")


class PayConfig(_Strict):
    hourly_wage: float = Field(12.0, gt=0, description="target wage in currency units per hour")
    pilot_seconds_per_task: float = Field(10.0, gt=0, description="expected seconds per task before measurements")
    fee_rate: float = Field(0.0, ge=0, le=1, description="vendor fee as a share of rewards and bonuses")
    currency: str = "USD"
    top_up_bonus: bool = Field(True, description="bonus when the measured median time exceeds the estimate")


class StoppingConfig(_Strict):
    max_rounds: int | None = Field(20, ge=1, description="labeling rounds")
    label_budget: int | None = Field(None, ge=1, description="human-labeled items")
    judgment_budget: int | None = Field(None, ge=1, description="human judgments")
    money_budget: float | None = Field(None, gt=0, description="money incl. fees")
    target_accuracy: float | None = Field(None, gt=0, le=1, description="test accuracy")


class BaselineConfig(_Strict):
    random: bool = Field(False, description="also run random sampling with the same crowd, for the learning curve")


class StorageConfig(_Strict):
    url: str | None = Field(None, description="store URL; default: the project directory")


class LoopConfig(_Strict):
    """One active-learning project: pool, model, sampler, vendor, consensus, pay and stopping rules."""

    project: str = Field(pattern=r"^[a-z0-9][a-z0-9_-]{0,62}$", description="lowercase name, used in keys and tokens")
    seed: int = Field(0, ge=0)
    pool: PoolConfig
    model: ModelConfig = ModelConfig()
    sampler: SamplerConfig = SamplerConfig()
    vendor: VendorConfig = VendorConfig()
    consensus: ConsensusConfig = ConsensusConfig()
    collect: CollectConfig = CollectConfig()
    pay: PayConfig = PayConfig()
    stopping: StoppingConfig = StoppingConfig()
    baseline: BaselineConfig = BaselineConfig()
    storage: StorageConfig = StorageConfig()


# Fields a resumed project may change: they steer when to stop or how long to wait, not what
# was selected or how it was labeled.
RESUMABLE_SECTIONS = ("stopping", "collect", "baseline")


def format_validation_error(exc: ValidationError, *, source: str) -> str:
    """One line: ``source: field.path: problem (got value)``, plus a count of further errors."""
    errors = exc.errors(include_url=False)
    first = errors[0]
    loc = ".".join(str(p) for p in first["loc"]) or "<top level>"
    if first["type"] == "extra_forbidden":
        problem = "unknown field"
        allowed = _allowed_fields(exc.title, first["loc"])
        if allowed:
            problem += f"; expected one of: {', '.join(allowed)}"
    else:
        problem = first["msg"]
        if problem.startswith("Value error, "):
            problem = problem[len("Value error, ") :]
    value = first.get("input")
    shown = "" if first["type"] in ("missing",) or isinstance(value, dict) else f" (got {value!r})"
    more = f" [and {len(errors) - 1} more error(s)]" if len(errors) > 1 else ""
    return f"{source}: {loc}: {problem}{shown}{more}"


def _allowed_fields(title: str, loc: tuple) -> list[str]:
    model: type[BaseModel] = LoopConfig
    for part in loc[:-1]:
        field = model.model_fields.get(str(part))
        annotation = getattr(field, "annotation", None)
        if isinstance(annotation, type) and issubclass(annotation, BaseModel):
            model = annotation
        else:
            return []
    return sorted(model.model_fields)


def parse_config(data: Any, *, source: str = "<config>", base_dir: Path | None = None) -> LoopConfig:
    """Validate a mapping into a ``LoopConfig``; relative pool paths resolve against ``base_dir``."""
    if not isinstance(data, dict):
        raise ConfigError(f"{source}: expected a mapping at the top level, got {type(data).__name__}")
    try:
        config = LoopConfig.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(format_validation_error(exc, source=source)) from None
    if base_dir is not None and config.pool.path and "://" not in config.pool.path:
        path = Path(config.pool.path).expanduser()
        if not path.is_absolute():
            path = (base_dir / path).resolve()
        config = config.model_copy(update={"pool": config.pool.model_copy(update={"path": str(path)})})
    return config


def load_config(path: str | Path) -> LoopConfig:
    """Read and validate a YAML config file."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError(f"{path}: config file not found") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{path}: cannot read config file: {exc}") from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"line {mark.line + 1}, column {mark.column + 1}: " if mark else ""
        problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
        raise ConfigError(f"{path}: invalid YAML: {where}{problem}") from None
    return parse_config(data, source=str(path), base_dir=path.resolve().parent)
