"""The demo config with its simulated crowd: plain margin against k-means-margin (and margin
with label-spreading machine labels), over seeds.

The label-efficiency benchmark uses true labels; this one asks whether the sampler that wins
there also wins once the labels come from the demo's noisy crowd (3 judgments, one-coin
Dawid-Skene, 480-label budget). In-process engine, no Prefect.

    python benchmarks/demo_sampler_choice.py --seeds 5 --out benchmarks/results/demo_sampler_crowd.json
    python benchmarks/demo_sampler_choice.py --seeds 5 --variants margin margin+label_spreading \
        --out benchmarks/results/demo_semi_supervised_crowd.json
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import yaml

from crowdloop import engine
from crowdloop.config import parse_config
from crowdloop.engine import Project

REPO = Path(__file__).resolve().parents[1]
# variant -> (sampler, sampler params, other config sections merged in)
VARIANTS = {
    "margin": ("margin", {}, {}),
    "kmeans_margin": ("kmeans_margin", {"measure": "margin", "candidates_factor": 10}, {}),
    "margin+label_spreading": ("margin", {}, {"semi_supervised": {"method": "label_spreading"}}),
}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seeds", type=int, default=5)
    ap.add_argument("--out", default=None)
    ap.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=list(VARIANTS))
    args = ap.parse_args()
    base = yaml.safe_load((REPO / "configs" / "digits.yaml").read_text())
    rows = []
    for seed in range(args.seeds):
        for name in args.variants:
            sampler, params, extra = VARIANTS[name]
            cfg = json.loads(json.dumps(base)) | {"seed": seed} | extra
            cfg["sampler"] |= {"name": sampler, "params": params}
            cfg.pop("baseline", None)
            with tempfile.TemporaryDirectory() as tmp:
                p = Project.prepare(parse_config(cfg, source="benchmark"), f"{tmp}/p")
                start = time.perf_counter()
                ref = engine.reference(p)["accuracy"]
                engine.run_in_process(p)
                metrics = p.metrics()
                curve = [m["accuracy"] for m in metrics if m["accuracy"] is not None]
                row = {"seed": seed, "sampler": name, "final": metrics[-1]["accuracy"], "reference": ref,
                       "mean_curve": sum(curve) / len(curve), "labels": metrics[-1]["n_labeled"],
                       "labels_to_98": next((m["n_labeled"] for m in metrics
                                             if m["accuracy"] and m["accuracy"] >= 0.98 * ref), None),
                       "seconds": round(time.perf_counter() - start, 1)}
            print(json.dumps(row), flush=True)
            rows.append(row)
    if args.out:
        Path(args.out).write_text(json.dumps(rows, indent=1) + "\n")


if __name__ == "__main__":
    main()
