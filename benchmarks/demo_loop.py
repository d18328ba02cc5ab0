"""Demo-loop figures: wall time of ``crowdloop run`` (Prefect start-up included) and final
accuracy against the whole-pool reference, over several seeds of configs/digits.yaml.

    python benchmarks/demo_loop.py --seeds 5 --out benchmarks/results/demo_loop.json
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[1]


def run_seed(seed: int, config: dict, workdir: Path) -> dict:
    cfg_path = workdir / f"seed{seed}.yaml"
    cfg_path.write_text(yaml.safe_dump({**config, "seed": seed}))
    project = workdir / f"p{seed}"
    start = time.perf_counter()
    subprocess.run([sys.executable, "-m", "crowdloop.cli", "run", str(cfg_path), "--project-dir", str(project)],
                   check=True, capture_output=True, text=True)
    wall = time.perf_counter() - start
    state = json.loads(subprocess.run([sys.executable, "-m", "crowdloop.cli", "status", str(project), "--json"],
                                      check=True, capture_output=True, text=True).stdout)
    final = state["rounds"][-1]
    base = state["baseline"]["rounds"][-1] if state.get("baseline") else None
    return {
        "seed": seed, "wall_seconds": round(wall, 1), "accuracy": final["accuracy"],
        "reference_accuracy": state["reference_accuracy"], "n_labeled": final["n_labeled"],
        "n_judgments": final["n_judgments"], "cost": final["cost"],
        "baseline_accuracy": None if base is None else base["accuracy"],
        "effective_hourly_wage": state["totals"]["effective_hourly_wage"],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default=str(REPO / "configs" / "digits.yaml"))
    parser.add_argument("--seeds", type=int, default=5)
    parser.add_argument("--out", default=None)
    args = parser.parse_args()
    config = yaml.safe_load(Path(args.config).read_text())
    with tempfile.TemporaryDirectory() as tmp:
        rows = [run_seed(s, config, Path(tmp)) for s in range(args.seeds)]
    if args.out:
        Path(args.out).write_text(json.dumps(rows, indent=1) + "\n")
    print("| seed | wall s | accuracy | reference | gap (points) | random baseline | labels | judgments | cost | wage/h |")
    print("|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for r in rows:
        gap = 100 * (r["reference_accuracy"] - r["accuracy"])
        print(f"| {r['seed']} | {r['wall_seconds']} | {r['accuracy']:.4f} | {r['reference_accuracy']:.4f} | {gap:.1f} | "
              f"{r['baseline_accuracy']:.4f} | {r['n_labeled']} | {r['n_judgments']} | {r['cost']:.2f} | "
              f"{r['effective_hourly_wage']:.2f} |")
    gaps = [100 * (r["reference_accuracy"] - r["accuracy"]) for r in rows]
    print(f"\nmedian wall {statistics.median(r['wall_seconds'] for r in rows):.1f} s, "
          f"median gap {statistics.median(gaps):.1f} points, max gap {max(gaps):.1f} points")


if __name__ == "__main__":
    main()
