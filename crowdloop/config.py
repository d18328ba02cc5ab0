"""Pydantic models of a crowdloop project configuration, loaded from YAML.

Every model forbids unknown fields so a typo fails loudly instead of being ignored.
``load_config`` turns validation failures into one-line ``ConfigError`` messages that name
the file, the field path, the bad value and what was expected.
"""

from __future__ import annotations

import math
import re
from pathlib import Path
from typing import Any, Literal, get_args

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from crowdloop.errors import ConfigError

SKLEARN_POOLS = ("digits", "iris", "wine", "breast_cancer")
# Built-in pool sources (crowdloop.pools entry points in pyproject.toml); any other registered
# pool plug-in is accepted too, and its name is checked against the registry by ``crowdloop check``.
BUILTIN_POOL_SOURCES = ("sklearn", "csv", "parquet", "sharded", "images", "fashion_mnist")
_PATH_SOURCES = ("csv", "parquet", "sharded", "images", "text_folder")
PLUGIN_NAME = r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,99}$"
# The source-specific pool fields each built-in source reads (models/datasets.py, images.py,
# text_pools.py, sharded.py). A field set in the config that its source never reads is refused:
# `max_items: 5000` on a CSV pool would otherwise load every row without a word. A plug-in
# source may read any of them, so only built-in sources are checked.
_TABLE_FIELDS = frozenset({"path", "feature_columns", "label_column", "id_column", "text_column", "image_column",
                           "categorical_columns", "missing_values"})
_CSV_FIELDS = _TABLE_FIELDS | {"ids_as_written"}
_SOURCE_FIELDS: dict[str, frozenset[str]] = {
    "sklearn": frozenset({"name"}),
    "csv": _CSV_FIELDS,
    "parquet": _TABLE_FIELDS,
    "sharded": frozenset({"path"}),
    "images": frozenset({"path", "image_size", "image_mode", "max_items"}),
    "fashion_mnist": frozenset({"path", "split", "max_items"}),
    "text_folder": frozenset({"path", "max_items"}),
    "fortunes": frozenset({"path", "max_items"}),
}
_SOURCE_SPECIFIC = frozenset().union(*_SOURCE_FIELDS.values())


def pool_fields_unread_by(source: str) -> frozenset[str]:
    """The source-specific pool fields a built-in ``source`` never reads (none for a plug-in source)."""
    reads = _SOURCE_FIELDS.get(source)
    return frozenset() if reads is None else _SOURCE_SPECIFIC - reads


def yaml_word(names: Any, field: str) -> None:
    """Refuse a class name YAML turned into a boolean or null: ``classes: [yes, no]`` reads as
    ``[True, False]`` (YAML 1.1, PyYAML), which pydantic called "not a valid string" — of a word
    the user typed as a string."""
    for k, v in enumerate(names):
        if isinstance(v, bool) or v is None:
            raise ValueError(f"{field}[{k}] is {v!r}: YAML reads an unquoted yes/no/on/off/true/false as a boolean and "
                             "~/null as nothing; quote the class names ('yes', 'no')")


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class LabelFileConfig(_Strict):
    """A file of labels the team already has, and how to read it (``crowdloop/label_files.py``)."""

    path: str | None = Field(
        None, description="id,label CSV or Parquet; a SageMaker Ground Truth output manifest (.manifest, .jsonl); a "
        "Label Studio JSON export (.json); relative paths resolve against the config file")
    format: Literal["auto", "csv", "parquet", "gt-manifest", "label-studio"] = Field(
        "auto", description="auto: by the file's extension")
    id_column: str | None = Field(
        None, description="csv/parquet: the id column (default 'id'); manifest/Label Studio: the field naming the pool "
        "item id (default: item-id, id or crowdloop_item; else matched by source-ref/source, image or text)")
    label_column: str | None = Field(None, description="csv/parquet: the label column (default 'label')")
    label_attribute: str | None = Field(
        None, description="Ground Truth manifest: the label attribute (default: the one attribute with a -metadata twin)")


class SeedLabelsConfig(LabelFileConfig):
    """Labels the team already has: they train from round 0, are recorded as ``imported`` and
    counted apart from bought labels, and their items are never sent to anyone."""

    column: str | None = Field(None, description="a column of the pool file holding partial labels (empty = unlabeled)")

    @model_validator(mode="after")
    def _one_source(self) -> SeedLabelsConfig:
        if (self.column is None) == (self.path is None):
            raise ValueError("expected exactly one of column (a column of the pool file) or path (a label file)")
        if self.column is not None and (self.format != "auto" or self.id_column or self.label_column
                                        or self.label_attribute):
            raise ValueError("column: format, id_column, label_column and label_attribute are for a label file (path)")
        return self


MAX_CLASS_CHARS = 200


def class_name_problem(name: str) -> str | None:
    """What is wrong with ``name`` as a class annotators choose (None: nothing). The rule for
    ``pool.classes`` and for classes read from a label column."""
    if not name.strip() or name != name.strip() or not name.isprintable() or len(name) > MAX_CLASS_CHARS:
        return (f"class {name[:60]!r}: expected a name of 1-{MAX_CLASS_CHARS} printable characters without leading or "
                "trailing spaces")
    return None


MAX_SHOWN_VALUE_CHARS = 200  # of a bad value in an error line


class PoolConfig(_Strict):
    """Where the unlabeled items come from, and how the held-out test split is drawn."""

    source: str = Field(
        "sklearn", pattern=PLUGIN_NAME,
        description="pool plug-in (crowdloop.pools): sklearn, csv, parquet, sharded, images, fashion_mnist, text_folder, "
        "fortunes or an installed one",
    )
    name: str | None = Field(None, description="scikit-learn bundled set: digits, iris, wine, breast_cancer")
    path: str | None = Field(
        None, description="CSV/Parquet file; a sharded pool's folder or s3:// URL; an image folder or s3://bucket/prefix "
        "(images); an idx folder (fashion_mnist); a folder of text files, optionally in class subfolders (text_folder); "
        "the fortunes folder (fortunes, default /usr/share/games/fortunes); relative paths resolve against the config file")
    feature_columns: list[str] | None = Field(None, description="default: every column but id and label")
    categorical_columns: list[str] = Field(
        default_factory=list, description="csv/parquet: feature columns of categories (words, or numbers that name "
        "something), one-hot encoded for the model (island=Biscoe, island=Dream, ...); annotators see the cells as "
        "written. A feature column of words not listed here is refused")
    missing_values: Literal["refuse", "impute"] = Field(
        "refuse", description="csv/parquet: empty feature cells. refuse: the load fails naming the columns; impute: a "
        "number column's gaps take its median plus a 0/1 '<column> (missing)' column, a categorical column's are a "
        "category of their own; fitted on the rows the project started with")
    label_column: str | None = Field(None, description="ground truth, used only for evaluation and simulation")
    id_column: str | None = Field(None, description="stable item ids; default: the row number")
    ids_as_written: bool = Field(
        True, description="csv: id_column (and the ids of label files) read as the text in the file, '007' stays "
        "'007'; false: as numbers where the column holds only numbers ('7'), as projects created before this field "
        "read them (they keep that reading)")
    classes: list[str] | None = Field(
        None, description="class list; default: the ground truth's classes (fortunes: the category files to read)")
    text_column: str | None = Field(None, description="text shown to annotators (not a feature)")
    image_column: str | None = Field(
        None, description="image file shown to annotators (not a feature); relative paths resolve against the pool file"
    )
    test_size: float = Field(0.25, gt=0, lt=1, description="share of items held out for evaluation")
    duplicates: Literal["ask_once", "ask_each"] = Field(
        "ask_once", description="items that show annotators the same thing as an earlier item (the same text, image "
        "file bytes, or row of values): ask_once asks only the first and exports its label for each copy (source "
        "'copied'); ask_each asks every copy, as projects created before this field did (they keep that)")
    # Image pools (source images / fashion_mnist, crowdloop.models.images).
    image_size: int | None = Field(None, ge=4, le=4096, description="images: resize to this square side; default: native size")
    image_mode: Literal["gray", "rgb"] = Field("rgb", description="images: decode as grayscale or RGB")
    split: Literal["train", "test", "all"] = Field("train", description="fashion_mnist: which official split forms the pool")
    max_items: int | None = Field(
        None, ge=2, description="images/fashion_mnist/text_folder/fortunes: a fixed random subset of this many items")
    # Text pools (text_column, text_folder, fortunes; crowdloop.models.text).
    max_text_chars: int = Field(
        100_000, ge=1, le=10_000_000,
        description="longest item text accepted; a longer one fails the load with one line naming the item")
    seed_labels: SeedLabelsConfig | None = Field(
        None, description="labels you already have: {column: NAME} of the pool file, or {path: FILE} (id,label CSV/Parquet, "
        "Ground Truth output manifest, Label Studio JSON export)")

    @field_validator("classes", mode="before")
    @classmethod
    def _classes_as_names(cls, value: Any) -> Any:
        """``classes: [0, 1]`` in YAML names the label column's 0/1 (read as "0"/"1"); it was refused
        as "not a valid string"."""
        if not isinstance(value, list):
            return value
        yaml_word(value, "classes")
        from crowdloop.label_files import label_name  # the one rule for a label value (imports this module)

        def finite_number(v: Any) -> bool:  # anything else is left for the type check to refuse
            return isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v)

        return [label_name(v) if finite_number(v) else v for v in value]

    @field_validator("classes")
    @classmethod
    def _check_class_names(cls, value: list[str] | None) -> list[str] | None:
        """A class is a name annotators choose: listed twice, it was two buttons and two columns of
        every confusion matrix; empty, padded or with a line break, a button nobody can read."""
        if value is None:
            return value
        for name in value:
            problem = class_name_problem(name)
            if problem:
                raise ValueError(problem)
        twice = sorted({name for name in value if value.count(name) > 1})
        if twice:
            raise ValueError(f"class {twice[0]!r} is listed more than once; expected each class once")
        return value

    @model_validator(mode="after")
    def _check_source(self) -> PoolConfig:
        if self.source == "sklearn":
            if self.name not in SKLEARN_POOLS:
                raise ValueError(f"name={self.name!r}: expected one of {', '.join(SKLEARN_POOLS)} for source 'sklearn'")
        elif self.source in _PATH_SOURCES and not self.path:
            raise ValueError(f"path is required for source {self.source!r}")
        if self.text_column and self.image_column:
            raise ValueError("text_column and image_column: expected at most one content column per pool")
        if self.source == "sharded":
            given = [f for f in ("feature_columns", "label_column", "id_column", "text_column", "image_column")
                     if getattr(self, f) is not None]
            if given:
                raise ValueError(f"{', '.join(given)}: not used by source 'sharded' "
                                 "(its manifest names ids, labels and features)")
        if (self.text_column or self.image_column) and self.source not in ("csv", "parquet"):
            raise ValueError(f"text_column/image_column: expected a csv or parquet pool, not source {self.source!r}")
        if self.classes is not None and len(set(self.classes)) < 2:
            raise ValueError(f"classes={self.classes!r}: expected at least two distinct classes")
        seed_column = self.seed_labels.column if self.seed_labels else None
        if self.categorical_columns:
            twice = sorted({c for c in self.categorical_columns if self.categorical_columns.count(c) > 1})
            if twice:
                raise ValueError(f"categorical_columns: column {twice[0]!r} is listed more than once")
            taken = [c for c in self.categorical_columns
                     if c in (self.label_column, self.id_column, self.text_column, self.image_column, seed_column)]
            if taken:
                raise ValueError(f"categorical_columns: {taken[0]!r} is the pool's id, label, content or seed-label "
                                 "column, not a feature")
            if self.feature_columns is not None:
                outside = [c for c in self.categorical_columns if c not in self.feature_columns]
                if outside:
                    raise ValueError(f"categorical_columns: {outside} not in feature_columns {self.feature_columns}; "
                                     "expected feature columns")
        if seed_column is not None:
            if self.source not in ("csv", "parquet"):
                raise ValueError(f"seed_labels.column: expected a csv or parquet pool, not source {self.source!r} "
                                 "(use seed_labels.path with an id,label file)")
            if seed_column in (self.label_column, self.id_column, self.text_column, self.image_column) \
                    or seed_column in (self.feature_columns or []):
                raise ValueError(f"seed_labels.column={seed_column!r} is also used as another pool column")
        return self


class FeaturesConfig(_Strict):
    """How a text pool's items become model inputs (crowdloop.models.text)."""

    kind: Literal["tfidf", "hashing", "embedding"] = Field(
        description="tfidf: TfidfVectorizer fitted once on the pool and stored with the project; hashing: "
        "HashingVectorizer, stateless, rows featurized chunk by chunk; embedding: a sentence-embedding model "
        "from a local folder, embeddings cached in the store")
    params: dict[str, Any] = Field(
        default_factory=dict, description="keyword arguments of TfidfVectorizer / HashingVectorizer (e.g. ngram_range, "
        "min_df, n_features); embedding: of the model's encode()")
    model_path: str | None = Field(
        None, description="embedding: a local folder with a sentence-transformers or model2vec model; nothing is "
        "downloaded; relative paths resolve against the config file")
    backend: Literal["auto", "sentence_transformers", "model2vec"] = Field(
        "auto", description="embedding: which library loads model_path; auto: from the folder's files")
    dense_dim: int = Field(
        100, ge=2, le=2048, description="dense view for distance-based samplers and label spreading: TruncatedSVD "
        "components (tfidf) or a sparse random projection (hashing); embeddings are their own dense view")

    @model_validator(mode="after")
    def _check_model_path(self) -> FeaturesConfig:
        if self.kind == "embedding" and not self.model_path:
            raise ValueError("model_path is required for kind 'embedding' (a local model folder; nothing is downloaded)")
        if self.kind != "embedding" and (self.model_path or self.backend != "auto"):
            raise ValueError(f"model_path/backend: only used by kind 'embedding', not {self.kind!r}")
        return self


class ModelConfig(_Strict):
    """A scikit-learn classifier by import path; flows always fit a clone of it."""

    estimator: str = Field(
        "sklearn.linear_model.LogisticRegression",
        description="import path of a scikit-learn-style classifier; only sklearn.* and crowdloop.* are imported, plus "
        "the module prefixes listed in CROWDLOOP_ESTIMATOR_MODULES")
    params: dict[str, Any] = Field(default_factory=dict, description="keyword arguments of the estimator")
    scale: bool = Field(
        True, description="standardize features in a Pipeline before the estimator (dense features only: "
        "tfidf/hashing rows are already unit length and stay sparse)")
    features: FeaturesConfig | None = Field(
        None, description="text pools: turn each item's text into features (tfidf, hashing or embedding)")


class SamplerConfig(_Strict):
    """Which pool items the humans label next (``samplers/``)."""

    name: str = Field(
        "margin", description="sampler plug-in (crowdloop.samplers): least_confident, margin, entropy, qbc, ranked_batch, "
        "coreset, badge, bald, batchbald, cluster_margin, kmeans_margin, typiclust, prefiltered, mixed, random, auto, "
        "best (= kmeans_margin) or an installed one")
    params: dict[str, Any] = Field(default_factory=dict, description="keyword arguments of the sampler")
    batch_size: int = Field(20, ge=1, description="items sent to humans per round")
    initial_size: int | None = Field(None, ge=1, description="round-0 batch; default batch_size")
    cold_start: Literal["random", "kmeans", "typiclust"] = Field(
        "random", description="round-0 rule, used whenever no fitted model exists yet"
    )
    chunk_size: int = Field(8192, ge=1, description="rows scored at a time, bounding memory on large pools")


class VendorConfig(_Strict):
    """Who answers: the vendor plug-in and its parameters (``vendors/``)."""

    name: str = Field(
        "simulated", description="vendor plug-in (crowdloop.vendors): simulated, local, manifest, mturk, label_studio, "
        "prolific or an installed one")
    params: dict[str, Any] = Field(default_factory=dict, description="validated by the vendor's own model")


class ConsensusConfig(_Strict):
    """How judgments become labels, how many are asked, and which workers stop getting tasks."""

    method: str = Field(
        "auto",
        description="aggregator name: auto (Dawid-Skene shrunk towards one-coin by a learned strength), majority_vote, "
                    "weighted_majority_vote, dawid_skene, one_coin_dawid_skene, shrunk_dawid_skene",
    )
    redundancy: int = Field(3, ge=1, le=50, description="judgments requested per item (fixed redundancy)")
    # Adaptive redundancy: on when confidence_threshold is set.
    confidence_threshold: float | None = Field(
        None, gt=0, lt=1, description="adaptive redundancy: re-ask items whose posterior confidence is below this"
    )
    min_judgments: int | None = Field(None, ge=1, le=50, description="adaptive: judgments per new item (default 1)")
    max_judgments: int | None = Field(None, ge=1, le=50, description="adaptive: most judgments per item (default redundancy)")
    model_weight: float = Field(
        0.0, ge=0, le=1,
        description="adaptive: weight of the model's out-of-fold probability in the confidence (CROWDLAB-style); 0 = crowd only",
    )

    learn_from_corrections: bool = Field(
        True,
        description="a reviewer's correction (crowdloop correct, crowdloop review) is held as known truth when the "
                    "consensus model estimates each worker, as gold is, so it also moves the labels of items nobody "
                    "reviewed; it never blocks or rejects a worker (reviewed items are disputed ones, hard by "
                    "selection); false: a correction replaces its own item's label only",
    )

    block_below_agreement: float | None = Field(
        None, gt=0, lt=1,
        description="stop sending tasks to workers whose answers on multiply-judged items agree with the aggregated "
                    "truth less than this (they are still paid); unset: never",
    )
    block_min_judgments: int = Field(10, ge=1, description="multiply-judged answers a worker needs before that check")
    block_rings: bool = Field(
        False,
        description="stop sending tasks to members of rings of colluders (workers who agree with each other far above "
                    "what the consensus model predicts, consensus/collusion.py); each is told the ring's evidence and "
                    "is still paid",
    )

    @property
    def adaptive(self) -> bool:
        return self.confidence_threshold is not None

    @property
    def first_judgments(self) -> int:
        """Judgments each newly selected item gets in its first batch."""
        return (self.min_judgments or 1) if self.adaptive else self.redundancy

    @property
    def most_judgments(self) -> int:
        return (self.max_judgments or self.redundancy) if self.adaptive else self.redundancy

    @model_validator(mode="after")
    def _check_adaptive(self) -> ConsensusConfig:
        if self.adaptive and self.first_judgments > self.most_judgments:
            raise ValueError(
                f"min_judgments={self.first_judgments} is larger than max_judgments={self.most_judgments}; expected min <= max"
            )
        return self


class GoldConfig(LabelFileConfig):
    """Known-answer items mixed unmarked into every batch; they measure workers, never labels.

    The gold set is ``path`` (pool item ids with their answers, read like ``pool.seed_labels``)
    or, without it, ``n_items`` drawn by seed from pool items with ground truth.
    """

    share: float = Field(0.0, ge=0, lt=1, description="share of each batch's tasks that are gold; 0 = no gold")
    n_items: int = Field(50, ge=1, description="gold set size when drawn from the ground truth (no path)")
    min_answers: int = Field(4, ge=1, description="gold answers a worker needs before being judged on them")
    min_accuracy: float = Field(0.5, ge=0, le=1, description="workers below this gold accuracy stop receiving tasks")
    evidence_level: float = Field(
        0.05, gt=0, le=1,
        description="a worker is judged below min_accuracy / reject_below only when a worker exactly at that bar "
                    "would answer this badly with at most this chance (one-sided binomial test); 1 = the observed share")
    reject_below: float | None = Field(
        None, ge=0, le=1,
        description="reject (unpaid) a batch's work of a worker below this gold accuracy who missed gold in it; unset: never",
    )

    @property
    def enabled(self) -> bool:
        return self.share > 0


class AutolabelConfig(_Strict):
    """Ground-Truth-style machine labels for items the model is confident about."""

    enabled: bool = Field(False, description="machine-label the items whose confidence clears the calibrated threshold")
    target_accuracy: float = Field(0.95, gt=0, le=1, description="machine-label accuracy the threshold is calibrated for")
    min_validation: int = Field(50, ge=2, description="human-labeled items needed before calibrating")
    min_support: int = Field(20, ge=1, description="validation items at or above the threshold, at least")
    folds: int = Field(5, ge=2, le=20, description="cross-validation folds for out-of-fold confidences")
    use_in_training: bool = Field(False, description="train on machine labels too (human labels win on overlap)")


class SemiSupervisedConfig(_Strict):
    """Machine labels from the unlabeled pool (label spreading), used in training only."""

    method: Literal["none", "label_spreading", "auto"] = Field(
        "none", description="label_spreading: human labels spread over a k-NN graph of the pool; confident ones train the "
                            "model; auto: label spreading only in rounds where it makes the model more accurate on the "
                            "random audit (uniformly picked human-labeled items; models.semi.spreading_helps)"
    )
    n_neighbors: int = Field(10, ge=1, description="neighbours per row in the graph")
    alpha: float = Field(0.2, gt=0, lt=1, description="how far a label may drift from its human seed (LabelSpreading's alpha)")
    min_confidence: float = Field(0.9, gt=0, le=1, description="spread label probability needed to train on it")
    max_items: int = Field(50_000, ge=2, description="rows in the graph: all human-labeled ones plus a seeded sample of the rest")

    @property
    def enabled(self) -> bool:
        return self.method != "none"


class CollectConfig(_Strict):
    """How the loop waits for human answers."""

    mode: Literal["wait", "defer"] = Field(
        "wait",
        description="wait: the loop polls until answers are in; defer: the loop stops after dispatch and a "
        "scheduled collect flow polls and starts the next round (for human waits of hours)",
    )
    poll_interval_s: float = Field(2.0, gt=0, description="wait mode: seconds between polls of the vendor")
    timeout_s: float = Field(24 * 3600.0, gt=0, description="after this (from dispatch), aggregate what has arrived")


class VendorFee(_Strict):
    """A vendor's commission on rewards and bonuses."""

    rate: float = Field(ge=0, le=1, description="share of rewards and bonuses")
    bulk_rate: float = Field(0.0, ge=0, le=1, description="extra share on tasks with many assignments")
    bulk_min_assignments: int | None = Field(None, ge=2, description="assignments per task from which bulk_rate applies")


class PayConfig(_Strict):
    """What workers are paid: rewards from measured task time and a target wage (``crowdloop/pay.py``)."""

    hourly_wage: float = Field(12.0, gt=0, description="target wage in currency units per hour")
    pilot_seconds_per_task: float = Field(
        10.0, gt=0, le=86_400, description="expected seconds per task before measurements (a day at most: more is a typo)")
    fee_rate: float = Field(0.0, ge=0, le=1,
                            description="vendor fee as a share of rewards and bonuses (vendors without a fee rule)")
    vendor_fees: dict[str, VendorFee] = Field(
        default_factory=dict,
        description="fee rule per vendor name, overriding the vendor's own rule (mturk: 20%, +20% at >= 10 assignments "
                    "per task, $0.01 minimum per assignment) and fee_rate")
    approval_deadline_h: float = Field(72.0, gt=0, description="assignments are approved (or rejected) within this many hours")
    currency: str = Field("USD", description="currency of every amount (wage, budget, fees)")
    top_up_bonus: bool = Field(True, description="bonus when the measured median time exceeds the estimate")
    max_top_up: float = Field(
        1.0, ge=0, le=10,
        description="the top-up bonus per task is at most this share of its reward (what money_budget reserves)")


class EvaluationConfig(_Strict):
    """Accuracy estimated from human labels: an audit sample of the pool, labeled by the same
    vendor with the same consensus, never used for training or selection, its cost reported apart
    (``crowdloop/audit.py`` holds the estimators, ``crowdloop/engine/auditing.py`` the step)."""

    method: Literal["none", "random", "active"] = Field(
        "none", description="random: a uniform sample grown in batches; active: items drawn towards the model's expected "
        "loss with an importance-weighted unbiased estimate (Kossen et al. 2021); none: no audit")
    target_half_width: float = Field(0.03, gt=0, lt=0.5, description="grow the sample until the 95% interval is this narrow")
    max_items: int = Field(300, ge=2, description="most pool items labeled for the audit")
    batch_size: int = Field(30, ge=1, description="audit draws added in a round while the interval is wider than the target")
    redundancy: int | None = Field(
        None, ge=1, le=50, description="judgments per audit item, aggregated with the same consensus; default: 5, or more "
        "if an item may get more (consensus.redundancy, max_judgments). A wrong audit label counts a right prediction "
        "as wrong, so the estimate sits below the truth by about the audit labels' error rate")
    reserve: int | None = Field(
        None, ge=2, description="pool items set aside for the audit (never trained on, never selected); default max_items "
        "(random) or 3 x max_items (active), at most half the pool")
    reask_below: float = Field(
        0.0, ge=0, le=1, description="ask an audit item once more (as many judgments again, less one, from other "
        "workers; vendors that can keep a task from them) when fewer than this share of its judgments agree with its "
        "label; 0 (default): never. A wrong audit label counts a right prediction as wrong, and wrong labels hide in "
        "split votes; 0.8 asks again after a 3-2 of five. Off by default because the re-ask needs 2 x redundancy - 1 "
        "workers: a smaller team would leave the item open until collect.timeout_s")
    estimator: Literal["inclusion", "draws"] = Field(
        "inclusion", description="active: inclusion (each labeled item weighted by its chance of having been drawn at "
        "all, Horvitz-Thompson) or draws (each draw weighted by its proposal, Hansen-Hurwitz; the only one before this "
        "field). On the "
        "benchmark, inclusion's intervals held the truth more often on digits (0.91 vs 0.89 of rounds), breast cancer and "
        "the synthetic set, a little less on Fashion-MNIST (0.88 vs 0.89); fewer judgments on digits and synthetic, more "
        "on breast cancer (BENCHMARKS.md, v4)")
    control_variate: bool = Field(
        False, description="active: add the surrogate's calibrated loss probability on every reserve item as a control "
        "variate (difference estimator). Narrower intervals, but on the benchmark's synthetic set they held the truth less "
        "often (0.86 vs 0.95 of rounds): the calibration is fitted on the same audit labels")
    uniform_share: float = Field(
        0.2, gt=0, le=1, description="active: share of uniform sampling mixed into the proposal (bounds the weights)")
    tilt: float | None = Field(
        None, ge=0, le=5, description="active: draw items with probability proportional to the surrogate's loss "
        "probability to this power (before the uniform share is mixed in); 0 draws uniformly. Default: 2 with estimator "
        "inclusion (on the benchmark it needed fewer judgments than 1 on three sets of four and its intervals held the "
        "truth more often on three: BENCHMARKS.md, v5); 1 (Kossen et al.) with draws")
    surrogate: ModelConfig = Field(
        default_factory=lambda: ModelConfig(estimator="sklearn.ensemble.ExtraTreesClassifier",
                                            params={"n_estimators": 200}, scale=False),
        description="active: the model whose disagreement with the project's model predicts its errors (trained on the "
                    "training labels only; it shapes which audit items are drawn, never the estimate's expectation). On "
                    "a text pool it is fitted on the pool's dense view, unless its own features asks for the text features")

    @property
    def enabled(self) -> bool:
        return self.method != "none"

    @property
    def proposal_tilt(self) -> float:
        """``tilt``, or its default for the estimator: 2 for inclusion (a labeled item drawn for sure
        adds no variance there, and a repeated draw costs nothing), 1 for draws (every draw adds
        variance, repeats included)."""
        if self.tilt is not None:
            return self.tilt
        return 2.0 if self.estimator == "inclusion" else 1.0

    @model_validator(mode="after")
    def _check_reserve(self) -> EvaluationConfig:
        if self.reserve is not None and self.reserve < self.max_items and self.method == "random":
            raise ValueError(f"reserve={self.reserve} is smaller than max_items={self.max_items}; expected reserve >= max_items")
        return self


class StabilizingPredictions(_Strict):
    """Stop when consecutive models agree on a fixed unlabeled stop set (Bloodgood & Vijay-Shanker, 2009)."""

    agreement: float = Field(0.99, gt=0, le=1, description="Cohen's kappa between consecutive models' predictions, at least")
    rounds: int = Field(3, ge=1, description="for this many consecutive rounds")
    stop_set: int = Field(2000, ge=10, description="pool items in the stop set (drawn once by seed; no labels needed)")
    average: bool = Field(
        False, description="true: the mean kappa of the last `rounds` rounds must reach `agreement` (small-text's "
        "KappaAverage), so one round's dip does not restart the count; false: every one of them must")

    @model_validator(mode="after")
    def _average_needs_rounds(self) -> StabilizingPredictions:
        if self.average and self.rounds < 2:
            raise ValueError(f"average=true with rounds={self.rounds}: the mean of one kappa is that kappa; "
                             "expected rounds >= 2 (or average: false)")
        return self


class StoppingConfig(_Strict):
    """When the loop stops: the first rule that holds."""

    max_rounds: int | None = Field(20, ge=1, description="labeling rounds")
    label_budget: int | None = Field(None, ge=1, description="human-labeled items")
    judgment_budget: int | None = Field(None, ge=1, description="human judgments")
    money_budget: float | None = Field(None, gt=0, description="money incl. fees")
    target_accuracy: float | None = Field(
        None, gt=0, le=1, description="test accuracy; without ground truth, the lower bound of the estimated accuracy")
    stabilizing_predictions: StabilizingPredictions | None = Field(
        None, description="{agreement, rounds, stop_set, average}: stop when consecutive models' predictions stop "
                    "changing")


class ScaleConfig(_Strict):
    """Scale-out of pool scoring: shards scored as parallel Prefect tasks, optionally on Dask."""

    shards: int = Field(1, ge=1, le=4096, description="pool shards scored in parallel (decomposable samplers)")
    dask_workers: int = Field(0, ge=0, description="start a local Dask cluster with this many worker processes")
    dask_address: str | None = Field(None, description="or use this Dask scheduler, e.g. tcp://10.0.0.5:8786")

    @model_validator(mode="after")
    def _one_cluster(self) -> ScaleConfig:
        if self.dask_workers and self.dask_address:
            raise ValueError("set dask_workers (local cluster) or dask_address (existing cluster), not both")
        return self


MAX_GUIDELINES_CHARS = 20_000
MAX_CLASS_NOTE_CHARS = 1_000


class GuidelinesConfig(_Strict):
    """What annotators read before they answer: the task's rules and what each class means.

    Vague tasks make noisy labels and unfair rejections (a worker judged against gold they
    could not know how to answer); every vendor that shows people a task shows these."""

    text: str = Field("", max_length=MAX_GUIDELINES_CHARS,
                      description="the labeling guidelines, plain text (line breaks kept): shown above every item in the "
                                  "local app (and to Prolific participants), on every MTurk HIT, as Label Studio's "
                                  "instructions, and beside each manifest batch")
    classes: dict[str, str] = Field(
        default_factory=dict,
        description="a short note per class (what belongs there), shown with its button or choice; keys must be classes")

    @field_validator("classes", mode="before")
    @classmethod
    def _notes_of_names(cls, value: Any) -> Any:
        if isinstance(value, dict):
            yaml_word(list(value), "classes")
            return {(str(int(k)) if isinstance(k, int) else k): v for k, v in value.items()}  # {0: ...} names class "0"
        return value

    @model_validator(mode="after")
    def _check_notes(self) -> GuidelinesConfig:
        for name, note in self.classes.items():
            if len(note) > MAX_CLASS_NOTE_CHARS:
                raise ValueError(f"classes[{name!r}]: a note of {len(note):,} characters; expected at most "
                                 f"{MAX_CLASS_NOTE_CHARS:,} (the guidelines' text has room for more)")
        return self


class BaselineConfig(_Strict):
    """A random-sampling twin of the project, for the learning curve."""

    random: bool = Field(False, description=("also run random sampling with the same crowd, for the learning curve; only "
                                             "with a vendor that answers from ground truth (the simulated crowd): with "
                                             "people it would buy every label twice, so it is refused"))


class StorageConfig(_Strict):
    """Where the project's records live."""

    url: str | None = Field(None, description="store URL: a directory or s3://bucket/prefix; default projects/<project>")
    endpoint_url: str | None = Field(None, description="S3-compatible endpoint (MinIO, moto); credentials from boto3's chain")

    @model_validator(mode="after")
    def _check_url(self) -> StorageConfig:
        # Any scheme may name a store plug-in (crowdloop.stores); ``crowdloop check`` looks it up.
        if self.url and "://" in self.url and not re.match(r"^[a-z][a-z0-9+.-]*://", self.url):
            raise ValueError(f"url={self.url!r}: expected a directory, file://, s3://bucket/prefix or another store scheme")
        if self.endpoint_url and not (self.url or "").startswith("s3://"):
            raise ValueError("endpoint_url is only valid with an s3:// url")
        return self


class CredentialsConfig(_Strict):
    """Names of secret blocks holding credentials (never the credentials); see ``crowdloop/credentials.py``."""

    aws: str | None = Field(
        None, min_length=1, max_length=128,
        description="Prefect Secret block with {aws_access_key_id, aws_secret_access_key[, aws_session_token, region_name]} "
                    "for the S3 store and MTurk; default: boto3's credential chain")
    label_studio_api_key: str | None = Field(
        None, min_length=1, max_length=128,
        description="Prefect Secret block holding the Label Studio API key; default: LABEL_STUDIO_API_KEY")
    source: str = Field("prefect", description="secret source plug-in (crowdloop.secrets entry points)")


class LoopConfig(_Strict):
    """One active-learning project: pool, model, sampler, vendor, consensus, pay and stopping rules."""

    project: str = Field(pattern=r"^[a-z0-9][a-z0-9_-]{0,62}$", description="lowercase name, used in keys and tokens")
    seed: int = Field(0, ge=0, le=2**32 - 1, description="seeds the test split, selection, audit draws and the simulated crowd")
    pool: PoolConfig
    model: ModelConfig = ModelConfig()
    sampler: SamplerConfig = SamplerConfig()
    vendor: VendorConfig = VendorConfig()
    consensus: ConsensusConfig = ConsensusConfig()
    gold: GoldConfig = GoldConfig()
    evaluation: EvaluationConfig = EvaluationConfig()
    autolabel: AutolabelConfig = AutolabelConfig()
    semi_supervised: SemiSupervisedConfig = SemiSupervisedConfig()
    collect: CollectConfig = CollectConfig()
    guidelines: GuidelinesConfig = GuidelinesConfig()
    pay: PayConfig = PayConfig()
    stopping: StoppingConfig = StoppingConfig()
    baseline: BaselineConfig = BaselineConfig()
    storage: StorageConfig = StorageConfig()
    scale: ScaleConfig = ScaleConfig()
    credentials: CredentialsConfig = CredentialsConfig()


# Fields a resumed project may change: they steer when to stop or how long to wait (or which
# secret block holds a key), not what was selected or how it was labeled.
RESUMABLE_SECTIONS = ("stopping", "collect", "baseline", "scale", "credentials", "guidelines")
# Single fields of other sections a resumed project may change: how the same records are read.
# ``evaluation.estimator`` came after projects that estimated with ``draws``: they resume with
# the new default, or keep ``draws`` by saying so.
RESUMABLE_FIELDS = ("evaluation.estimator",)
# Where a project's input files are: a resumed project may find them elsewhere (the team moved
# the folder, or copied it to another machine) when what it finds there is what it started
# with: the pool by its digest, a seed or gold file by the labels it imported from it.
MOVABLE_FIELDS = ("pool.path", "pool.seed_labels.path", "gold.path")


def format_validation_error(exc: ValidationError, *, source: str, model: type[BaseModel] | None = None) -> str:
    """One line: ``source: field.path: problem (got value)``, plus a count of further errors.

    ``model`` is the model that was validated (default ``LoopConfig``): an unknown field lists
    the fields of the section it was found in.
    """
    errors = exc.errors(include_url=False)
    first = errors[0]
    loc = ".".join(_loc_part(p) for p in first["loc"]) or "<top level>"
    if first["type"] == "extra_forbidden":
        problem = "unknown field"
        allowed = _allowed_fields(model or LoopConfig, first["loc"])
        if allowed:
            problem += f"; expected one of: {', '.join(allowed)}"
    else:
        problem = first["msg"]
        if problem.startswith("Value error, "):
            problem = problem[len("Value error, ") :]
    value = first.get("input")
    got = repr(value)
    if len(got) > MAX_SHOWN_VALUE_CHARS:  # a pasted 5,000-character value made a 5,000-character "one line"
        got = f"{got[:MAX_SHOWN_VALUE_CHARS]}... ({len(got):,} characters)"
    shown = "" if first["type"] in ("missing",) or isinstance(value, dict) else f" (got {got})"
    more = f" [and {len(errors) - 1} more error(s)]" if len(errors) > 1 else ""
    return " ".join(f"{source}: {loc}: {problem}{shown}{more}".splitlines())


def _loc_part(part: object) -> str:
    """Field names as written; anything odd (spaces, newlines, empty) quoted so it stays one line."""
    text = str(part)
    return text if text.replace("_", "").replace("-", "").isalnum() else repr(text)


def _allowed_fields(model: type[BaseModel], loc: tuple) -> list[str]:
    for part in loc[:-1]:
        field = model.model_fields.get(str(part))
        annotation = getattr(field, "annotation", None)
        # an optional section (``X | None``) names its fields like a plain one
        found = [a for a in (annotation, *get_args(annotation)) if isinstance(a, type) and issubclass(a, BaseModel)]
        if not found:
            return []
        model = found[0]
    return sorted(model.model_fields)


def parse_config(data: Any, *, source: str = "<config>", base_dir: Path | None = None) -> LoopConfig:
    """Validate a mapping into a ``LoopConfig``; relative pool paths resolve against ``base_dir``."""
    if not isinstance(data, dict):
        raise ConfigError(f"{source}: expected a mapping at the top level, got {type(data).__name__}")
    _check_size(data, source)
    try:
        config = LoopConfig.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(format_validation_error(exc, source=source)) from None
    # Checked here, on the configs users write, and not in PoolConfig itself, so that a project a
    # release before this check stored with such a field still opens (engine/project.py ignores them
    # when comparing a resumed config).
    pool = config.pool
    ignored = sorted(f for f in pool_fields_unread_by(pool.source)
               if getattr(pool, f) != PoolConfig.model_fields[f].get_default(call_default_factory=True))
    if ignored:
        users = sorted(src for src, fields in _SOURCE_FIELDS.items() if ignored[0] in fields)
        raise ConfigError(f"{source}: pool.{ignored[0]}={getattr(pool, ignored[0])!r}: not used by source {pool.source!r}; "
                          f"expected it only with source {' or '.join(repr(u) for u in users)}")
    if base_dir is not None:
        pool = config.pool
        seeds = pool.seed_labels
        if seeds is not None and seeds.path:
            pool = pool.model_copy(update={"seed_labels": seeds.model_copy(update={"path": _resolve(seeds.path, base_dir)})})
        if pool.path:
            pool = pool.model_copy(update={"path": _resolve(pool.path, base_dir)})
        gold = config.gold
        if gold.path:
            gold = gold.model_copy(update={"path": _resolve(gold.path, base_dir)})
        model = config.model
        if model.features is not None and model.features.model_path:
            model = model.model_copy(update={"features": model.features.model_copy(
                update={"model_path": _resolve(model.features.model_path, base_dir)})})
        config = config.model_copy(update={"pool": pool, "gold": gold, "model": model})
    return config


def _resolve(path: str, base_dir: Path) -> str:
    """A local path relative to the config file's folder, made absolute (URLs stay as they are)."""
    if "://" in path:
        return path
    found = Path(path).expanduser()
    return str(found if found.is_absolute() else (base_dir / found).resolve())


MAX_CONFIG_VALUES = 100_000
MAX_CONFIG_DEPTH = 64


def _check_size(data: Any, source: str) -> None:
    """Refuse documents that expand beyond any real config before anything walks them.

    YAML aliases let a few lines stand for billions of values ("billion laughs"), and deep
    nesting exhausts the recursion limit of whatever serializes the config later.
    """
    stack: list[tuple[Any, int]] = [(data, 1)]
    seen = 0
    while stack:
        value, depth = stack.pop()
        seen += 1
        if seen > MAX_CONFIG_VALUES:
            raise ConfigError(f"{source}: the document holds more than {MAX_CONFIG_VALUES} values "
                              "(YAML aliases expanding?); expected a config of ordinary size")
        if depth > MAX_CONFIG_DEPTH:
            raise ConfigError(f"{source}: values nested more than {MAX_CONFIG_DEPTH} levels deep; expected a flatter config")
        if isinstance(value, dict):
            stack.extend((v, depth + 1) for v in value.values())
        elif isinstance(value, (list, tuple)):
            stack.extend((v, depth + 1) for v in value)


class _UniqueKeyLoader(yaml.SafeLoader):
    """``yaml.SafeLoader`` that refuses a key written twice in one mapping.

    Plain YAML keeps the last value silently, so a second ``sampler:`` block would quietly
    replace the first. Keys merged in with ``<<`` may still be overridden: that is what merging
    is for.
    """

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict:
        if isinstance(node, yaml.MappingNode):
            first_seen: dict[Any, yaml.Node] = {}
            for key_node, _ in node.value:
                if not isinstance(key_node, yaml.ScalarNode) or key_node.tag == "tag:yaml.org,2002:merge":
                    continue
                key = self.construct_object(key_node)
                if key in first_seen:
                    raise yaml.constructor.ConstructorError(
                        None, None,
                        f"duplicate key {key!r} (first at line {first_seen[key].start_mark.line + 1}); "
                        "expected each key once in a mapping",
                        key_node.start_mark,
                    )
                first_seen[key] = key_node
        return super().construct_mapping(node, deep=deep)


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
        data = yaml.load(text, Loader=_UniqueKeyLoader)
    except RecursionError:
        raise ConfigError(f"{path}: invalid YAML: nested too deeply") from None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"line {mark.line + 1}, column {mark.column + 1}: " if mark else ""
        problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
        raise ConfigError(f"{path}: invalid YAML: {where}{problem}") from None
    except (ValueError, OverflowError) as exc:  # a scalar YAML resolves but cannot build, e.g. the date 2026-13-45
        raise ConfigError(f"{path}: invalid YAML value: {exc}; quote it if it is meant as text") from None
    return parse_config(data, source=str(path), base_dir=path.resolve().parent)
