import json, numpy as np, collections
R = json.load(open("benchmarks/results/label_efficiency_selftraining.json")) + [
    r for r in json.load(open("benchmarks/results/label_efficiency_fashion_mnist.json")) if r["strategy"].endswith("+st")]
base = json.load(open("benchmarks/results/label_efficiency_small.json")) + json.load(open("benchmarks/results/label_efficiency_fashion_mnist.json"))
by = collections.defaultdict(list)
for r in R: by[(r["dataset"], r["strategy"])].append(r)
for r in base:
    if r["strategy"] in ("crowdloop:best", "crowdloop:margin") and (r["dataset"], r["strategy"] + "+st") in by:
        by[(r["dataset"], r["strategy"])].append(r)
def med(rows, lv):
    v = float(np.median([np.inf if r["labels_to"][lv] is None else r["labels_to"][lv] for r in rows]))
    return "not reached" if not np.isfinite(v) else f"{v:g}"
for (d, s), rows in sorted(by.items()):
    print(f"| {d} | {s} | {len(rows)} | {med(rows,'0.95')} | {med(rows,'0.98')} | {med(rows,'0.99')} | {np.mean([r['aulc'] for r in rows]):.4f} |")
