"""Turn the benchmark JSON files into Markdown tables and PNG plots for BENCHMARKS.md.

    python benchmarks/report.py --label-efficiency benchmarks/results/label_efficiency_*.json \
        --selection-scaling benchmarks/results/selection_scaling.json --plots benchmarks/results
"""

from __future__ import annotations

import argparse
import json
from collections import defaultdict
from pathlib import Path
from typing import Any

import numpy as np

LEVELS = ("0.95", "0.98", "0.99")


def _median_labels(rows: list[dict[str, Any]], level: str) -> float:
    vals = [np.inf if r["labels_to"][level] is None else r["labels_to"][level] for r in rows]
    return float(np.median(vals))


def _fmt(v: float) -> str:
    return "not reached" if not np.isfinite(v) else f"{v:g}"


def label_efficiency_tables(results: list[dict[str, Any]], plots: Path | None) -> str:
    by: dict[str, dict[str, list[dict[str, Any]]]] = defaultdict(lambda: defaultdict(list))
    for r in results:
        by[r["dataset"]][r["strategy"]].append(r)
    out: list[str] = []
    for dataset in sorted(by):
        strategies = by[dataset]
        seeds = sorted({r["seed"] for rows in strategies.values() for r in rows})
        full = np.mean([r["full_accuracy"] for rows in strategies.values() for r in rows])
        out.append(f"\n### {dataset}\n")
        out.append(f"Full-data accuracy {full:.4f} (mean over seeds {seeds}); labels = median over seeds.\n")
        out.append("| strategy | seeds | labels to 95 % | to 98 % | to 99 % | AULC | s / query |")
        out.append("|---|---|---|---|---|---|---|")
        order = sorted(strategies, key=lambda s: (_median_labels(strategies[s], "0.98"),
                                                  -np.mean([r["aulc"] for r in strategies[s]])))
        for s in order:
            rows = strategies[s]
            cells = [_fmt(_median_labels(rows, lv)) for lv in LEVELS]
            aulc = np.mean([r["aulc"] for r in rows])
            q = np.mean([r["query_seconds"] for r in rows])
            name = f"**{s}**" if s == "crowdloop:best" else s
            out.append(f"| {name} | {len(rows)} | {' | '.join(cells)} | {aulc:.4f} | {q:.4f} |")
        out.append("")
        out.append(_target_line(strategies))
        if plots is not None:
            out.append(_plot(dataset, strategies, plots))
    return "\n".join(out)


def _target_line(strategies: dict[str, list[dict[str, Any]]]) -> str:
    if "crowdloop:best" not in strategies:
        return ""
    peers = {s: rows for s, rows in strategies.items() if s.startswith(("modal:", "skal:", "smalltext:"))}
    best = strategies["crowdloop:best"]
    parts = []
    for level in LEVELS:
        ours = _median_labels(best, level)
        if not peers:
            continue
        peer_name = min(peers, key=lambda s: _median_labels(peers[s], level))
        peer = _median_labels(peers[peer_name], level)
        rnd = _median_labels(strategies["crowdloop:random"], level) if "crowdloop:random" in strategies else np.inf
        ratio = ours / peer if np.isfinite(ours) and np.isfinite(peer) and peer > 0 else float("nan")
        parts.append(f"{level}: best {_fmt(ours)} vs best peer {peer_name} {_fmt(peer)} (×{ratio:.2f}), "
                     f"random {_fmt(rnd)}")
    a_best = np.mean([r["aulc"] for r in best])
    a_peer = max(np.mean([r["aulc"] for r in rows]) for rows in peers.values()) if peers else float("nan")
    a_rnd = np.mean([r["aulc"] for r in strategies.get("crowdloop:random", best)])
    parts.append(f"AULC: best {a_best:.4f}, best peer {a_peer:.4f}, random {a_rnd:.4f}")
    return "crowdloop:best against the field — " + "; ".join(parts) + "\n"


def _plot(dataset: str, strategies: dict[str, list[dict[str, Any]]], plots: Path) -> str:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.2))
    show = [s for s in strategies if s in ("crowdloop:best", "crowdloop:random", "crowdloop:margin",
                                          "crowdloop:badge", "skal:Badge",
                                          "skal:CoreSet", "modal:margin_sampling",
                                          "modal:uncertainty_batch_sampling", "skal:TypiClust",
                                          "smalltext:LeastConfidence",
                                          "smalltext:EmbeddingKMeans")]
    for s in sorted(show):
        rows = strategies[s]
        n = min(len(r["curve"]["labels"]) for r in rows)
        x = rows[0]["curve"]["labels"][:n]
        y = np.mean([r["curve"]["accuracy"][:n] for r in rows], axis=0)
        ax.plot(x, y, label=s, lw=2.2 if s == "crowdloop:best" else 1.1)
    ax.set_xlabel("human labels")
    ax.set_ylabel("test accuracy (mean over seeds)")
    ax.set_title(f"label efficiency: {dataset}")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    path = plots / f"label_efficiency_{dataset}.png"
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return f"![{dataset} learning curves](benchmarks/results/{path.name})\n"


def selection_scaling_table(results: list[dict[str, Any]]) -> str:
    out = ["| pool rows | batch | strategy | seconds | × predict_proba | extra peak RSS (MB) | note |",
           "|---|---|---|---|---|---|---|"]
    floor = {(r["pool_size"], r["batch_size"]): r["seconds"] for r in results if r["strategy"] == "floor:predict_proba"}
    for r in sorted(results, key=lambda r: (r["pool_size"], r["batch_size"])):
        f = floor.get((r["pool_size"], r["batch_size"]))
        ratio = f"{r['seconds'] / f:.2f}" if r["seconds"] is not None and f else "—"
        sec = "—" if r["seconds"] is None else f"{r['seconds']:.3f}"
        mb = "—" if r["extra_peak_mb"] is None else f"{r['extra_peak_mb']:.0f}"
        out.append(f"| {r['pool_size']:,} | {r['batch_size']} | `{r['strategy']}` | {sec} | {ratio} | {mb} | "
                   f"{r.get('error') or ''} |")
    return "\n".join(out)


def text_scaling_table(results: list[dict[str, Any]]) -> str:
    """benchmarks/text_selection_scaling.py: wall and CPU seconds against the chunked predict_proba pass."""
    out = ["| pool texts | batch | strategy | seconds (wall) | CPU seconds | × predict_proba (CPU) | extra peak RSS (MB) "
           "| runs |",
           "|---|---|---|---|---|---|---|---|"]
    floor = {r["pool_size"]: r.get("cpu_seconds") for r in results if r["strategy"] == "floor:predict_proba"}

    def num(v: float | None, fmt: str) -> str:
        return "—" if v is None else format(v, fmt)

    for r in sorted(results, key=lambda r: r["pool_size"]):
        f, cpu = floor.get(r["pool_size"]), r.get("cpu_seconds")
        ratio = f"{cpu / f:.2f}" if cpu is not None and f else "—"
        out.append(f"| {r['pool_size']:,} | {r['batch_size']} | `{r['strategy']}` | {num(r['seconds'], '.1f')} | "
                   f"{num(cpu, '.1f')} | {ratio} | {num(r['extra_peak_mb'], '.0f')} | "
                   f"{r.get('runs', '')} {r.get('error') or ''} |")
    return "\n".join(out)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--label-efficiency", nargs="*", type=Path, default=[])
    ap.add_argument("--selection-scaling", type=Path)
    ap.add_argument("--plots", type=Path)
    ap.add_argument("--text-scaling", type=Path)
    args = ap.parse_args()
    if args.label_efficiency:
        results = [r for p in args.label_efficiency for r in json.loads(p.read_text())]
        print(label_efficiency_tables(results, args.plots))
    if args.selection_scaling:
        print(selection_scaling_table(json.loads(args.selection_scaling.read_text())))
    if args.text_scaling:
        print(text_scaling_table(json.loads(args.text_scaling.read_text())))


if __name__ == "__main__":
    main()
