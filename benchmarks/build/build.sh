# Regenerates the samplers' sections of BENCHMARKS.md (between the samplers:start/end markers)
# from the committed JSON results; run from the repository root. Other sections are left alone.
set -e
cd .
PY=${PYTHON:-python}
{
cat benchmarks/build/bench_head.md
$PY benchmarks/report.py --label-efficiency benchmarks/results/label_efficiency_small.json benchmarks/results/label_efficiency_synthetic.json benchmarks/results/label_efficiency_fashion_mnist.json --plots benchmarks/results
cat benchmarks/build/bench_mid.md
$PY benchmarks/build/st_table.py
cat benchmarks/build/bench_targets.md
cat benchmarks/build/bench_scaling_head.md
echo
$PY benchmarks/report.py --selection-scaling benchmarks/results/selection_scaling.json
} > benchmarks/build/.samplers_section.md
REP=$($PY benchmarks/report.py --selection-scaling benchmarks/results/selection_scaling_1m_repeat.json)
$PY - "$REP" <<'PYEOF'
import sys
t=open('benchmarks/build/bench_scaling_targets.md').read().replace('REPEAT_TABLE', sys.argv[1])
open('benchmarks/build/.samplers_section.md','a').write(t)
PYEOF
$PY - <<'PYEOF'
text = open('BENCHMARKS.md').read()
section = open('benchmarks/build/.samplers_section.md').read()
start, end = '<!-- samplers:start -->', '<!-- samplers:end -->'
head, _, rest = text.partition(start)
_, _, tail = rest.partition(end)
open('BENCHMARKS.md', 'w').write(f"{head}{start}\n{section}{end}{tail}")
PYEOF
rm -f benchmarks/build/.samplers_section.md
