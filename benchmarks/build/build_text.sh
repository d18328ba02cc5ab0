# Regenerates the text-classification section of BENCHMARKS.md (between the text:start/end
# markers) from the committed fortunes results; run from the repository root. Nothing else changes.
set -e
PY=${PYTHON:-python}
$PY benchmarks/report.py --label-efficiency benchmarks/results/label_efficiency_fortunes.json --plots benchmarks/results \
    > benchmarks/build/.text_le.md
$PY benchmarks/report.py --text-scaling benchmarks/results/text_selection_scaling.json > benchmarks/build/.text_scaling.md
$PY benchmarks/build/replace_section.py text benchmarks/build/bench_text.md TEXT_LE_TABLE=benchmarks/build/.text_le.md \
    TEXT_SCALING_TABLE=benchmarks/build/.text_scaling.md TEXT_SCALING_VERDICT=benchmarks/build/bench_text_verdict.md
rm -f benchmarks/build/.text_le.md benchmarks/build/.text_scaling.md
