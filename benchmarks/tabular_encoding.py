"""What words and gaps in a table are worth: palmerpenguins through crowdloop's own CSV loader.

Before ``pool.categorical_columns`` and ``pool.missing_values: impute`` a team had to drop the
columns of words (island, sex) and the rows with an empty cell before crowdloop would load the
file; rows dropped are items nobody can label. This script writes penguins CSVs, loads them with
the loader a project uses (``crowdloop.engine.pools.load_pool``), and reports the full-data
accuracy of the default model (standardized logistic regression) by stratified 5-fold
cross-validation, repeated over seeds, and how many of the 344 birds each way keeps.

    python benchmarks/tabular_encoding.py --seeds 10 --out benchmarks/results/tabular_encoding.json

``--blank`` also empties that share of the number cells at random (as a form filled in by
hand), the harder case for dropping rows.
"""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path

import numpy as np


def _ways(blank: float, rng: np.random.Generator, folder: Path) -> dict[str, tuple[Path, dict]]:
    from palmerpenguins import load_penguins

    frame = load_penguins()
    frame.insert(0, "id", [f"p{i:03d}" for i in range(len(frame))])
    numbers = ["bill_length_mm", "bill_depth_mm", "flipper_length_mm", "body_mass_g"]
    if blank:
        for column in numbers:
            frame.loc[rng.random(len(frame)) < blank, column] = np.nan
    base = {"source": "csv", "id_column": "id", "label_column": "species"}
    ways: dict[str, tuple[Path, dict]] = {}
    dropped = frame.dropna(subset=numbers)[["id", *numbers, "species"]]
    ways["numbers only, rows with a gap dropped (before)"] = (folder / "a.csv", {**base, "feature_columns": numbers})
    dropped.to_csv(folder / "a.csv", index=False)
    frame[["id", *numbers, "species"]].to_csv(folder / "b.csv", index=False)
    ways["numbers only, gaps imputed"] = (folder / "b.csv", {**base, "feature_columns": numbers, "missing_values": "impute"})
    frame.drop(columns=["year"]).to_csv(folder / "c.csv", index=False)
    ways["numbers + island + sex, gaps imputed"] = (folder / "c.csv", {**base, "categorical_columns": ["island", "sex"],
                                                                       "missing_values": "impute"})
    return ways


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=10)
    parser.add_argument("--blank", type=float, default=0.0, help="share of number cells emptied at random")
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()

    from sklearn.base import clone
    from sklearn.model_selection import StratifiedKFold, cross_val_score

    from crowdloop.config import parse_config
    from crowdloop.engine.pools import load_pool
    from crowdloop.models.sklearn import build_model

    rows = []
    for seed in range(args.seeds):
        rng = np.random.default_rng(seed)
        with tempfile.TemporaryDirectory() as tmp:
            for way, (path, pool) in _ways(args.blank, rng, Path(tmp)).items():
                config = parse_config({"project": "penguins", "pool": {**pool, "path": str(path)}})
                loaded = load_pool(config.pool)
                folds = StratifiedKFold(5, shuffle=True, random_state=seed)
                scores = cross_val_score(clone(build_model(config.model)), loaded.X, loaded.y.astype(str), cv=folds)
                rows.append({"seed": seed, "blank": args.blank, "way": way, "items": len(loaded),
                             "features": len(loaded.feature_names), "accuracy": float(scores.mean())})
    print(f"penguins, {args.seeds} seeds, blank share {args.blank}: full-data accuracy (5-fold CV, the default model)")
    print("| way | items kept of 344 | features | accuracy: mean (min, max) |")
    print("|---|---|---|---|")
    for way in dict.fromkeys(r["way"] for r in rows):
        acc = [r["accuracy"] for r in rows if r["way"] == way]
        items = sorted({r["items"] for r in rows if r["way"] == way})
        kept = f"{items[0]}" if len(items) == 1 else f"{min(items)}–{max(items)}"
        features = next(r["features"] for r in rows if r["way"] == way)
        print(f"| {way} | {kept} | {features} | {np.mean(acc):.4f} ({min(acc):.4f}, {max(acc):.4f}) |")
    if args.out:
        args.out.write_text(json.dumps(rows, indent=1) + "\n")


if __name__ == "__main__":
    main()
