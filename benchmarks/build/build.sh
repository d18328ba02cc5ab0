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
$PY benchmarks/build/replace_section.py samplers benchmarks/build/.samplers_section.md
rm -f benchmarks/build/.samplers_section.md
# The text section (between the text:start/end markers), from the fortunes results.
$PY benchmarks/report.py --label-efficiency benchmarks/results/label_efficiency_fortunes.json --plots benchmarks/results \
    > benchmarks/build/.text_le.md
$PY benchmarks/report.py --text-scaling benchmarks/results/text_selection_scaling.json > benchmarks/build/.text_scaling.md
$PY benchmarks/build/replace_section.py text benchmarks/build/bench_text.md TEXT_LE_TABLE=benchmarks/build/.text_le.md \
    TEXT_SCALING_TABLE=benchmarks/build/.text_scaling.md TEXT_SCALING_VERDICT=benchmarks/build/bench_text_verdict.md
rm -f benchmarks/build/.text_le.md benchmarks/build/.text_scaling.md
