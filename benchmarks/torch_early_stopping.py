"""Early stopping on a validation split vs a fixed number of epochs, for the small CNN on
Fashion-MNIST with few labels (the measurement behind ``TorchClassifier``'s default
``patience=None``). Random labeled sets of 400/800/2,000 images from a seeded 10,000-image pool,
2,000 test images, 1 torch thread::

    python benchmarks/torch_early_stopping.py --out benchmarks/results/torch_early_stopping.json
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

RECIPES = {
    "early stopping (10 % split, patience 3, ≤ 30 epochs)": {"epochs": 30, "patience": 3},
    "fixed 40 epochs, all labels": {"epochs": 40, "patience": None},
}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", type=int, nargs="+", default=[400, 800, 2000])
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", type=Path, default=Path("benchmarks/results/torch_early_stopping.json"))
    args = ap.parse_args(argv)
    import torch

    torch.set_num_threads(1)
    sys.path.insert(0, str(Path(__file__).parent))
    from fashion_mnist import load

    from crowdloop.models.torch import TorchClassifier

    X, y, Xt, yt = load(args.seed, 10000, 2000)
    rows = []
    for n in args.sizes:
        idx = np.random.default_rng([args.seed, 9]).choice(len(X), n, replace=False)
        for name, params in RECIPES.items():
            start = time.perf_counter()
            model = TorchClassifier(arch="cnn", width=16, num_threads=1, random_state=args.seed, **params).fit(X[idx], y[idx])
            rows.append({"labels": n, "recipe": name, "accuracy": round(float(model.score(Xt, yt)), 4),
                         "epochs_run": model.n_epochs_, "best_epoch": model.best_epoch_,
                         "fit_seconds": round(time.perf_counter() - start, 1)})
            print(rows[-1], flush=True)
    args.out.write_text(json.dumps(rows, indent=1))
    print("\n| labels | " + " | ".join(RECIPES) + " |\n|---|" + "---|" * len(RECIPES))
    for n in args.sizes:
        cells = [next(f"{r['accuracy']:.3f} ({r['epochs_run']} epochs)" for r in rows if r["labels"] == n and r["recipe"] == k)
                 for k in RECIPES]
        print(f"| {n} | " + " | ".join(cells) + " |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
