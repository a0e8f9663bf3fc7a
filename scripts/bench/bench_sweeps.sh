#!/usr/bin/env bash
# Times the sweep path on this machine and prints the BENCHMARKS.md rows:
# a 12-run sweep (examples/sweeps/lr-seed.toml: MLPs on the vendored digits,
# 1,000 steps each) trained with --jobs 1 and --jobs 2, analysed, queried,
# plotted and reported.
#
# Usage: scripts/bench/bench_sweeps.sh [BIN_DIR] [OUT]
#   BIN_DIR  release binaries (default target/release; cargo build --release --workspace)
#   OUT      scratch folder (default target/bench-sweeps; removed first)
set -euo pipefail
repo=$(cd "$(dirname "$0")/../.." && pwd)
bin=$(cd "${1:-$repo/target/release}" && pwd)
out=${2:-$repo/target/bench-sweeps}
rm -rf "$out" && mkdir -p "$out"
export LINTRACE_CACHE="$out/cache"
sweep="$repo/examples/sweeps/lr-seed.toml"
now() { date +%s.%N; }
row() { awk -v a="$2" -v b="$3" -v what="$1" 'BEGIN { printf "| %s | %.2f s |\n", what, b - a }'; }

echo "| what | time |"
echo "|---|---|"
for jobs in 1 2; do
    t0=$(now)
    "$bin/lintrace-train" sweep "$sweep" --out "$out/j$jobs" --jobs "$jobs" --quiet >/dev/null
    row "train 12 runs, --jobs $jobs" "$t0" "$(now)"
done
dir="$out/j2/lr-seed"
t0=$(now)
"$bin/lintrace-train" sweep "$dir" --jobs 2 --quiet >/dev/null
row "re-run of the finished sweep (every run skipped)" "$t0" "$(now)"
t0=$(now)
"$bin/lintrace-analyze" "$dir" --quiet --analyzers performance,activation_regime,unit_linear_fit,linearized_agreement,mu >/dev/null
row "analyse 12 runs (probe 512, 5 analyzers)" "$t0" "$(now)"
t0=$(now)
"$bin/lintrace-analyze" "$dir" --quiet --analyzers performance,activation_regime,unit_linear_fit,linearized_agreement,mu >/dev/null
row "re-analyse (nothing missing)" "$t0" "$(now)"
t0=$(now)
"$bin/lintrace-analyze" query "$dir" "SELECT r.\"config.lr\" AS lr, l.tap, l.step, AVG(l.value) AS v FROM layer_metrics l JOIN runs r ON l.run_id = r.run_id WHERE l.metric = 'nonlinearity' AND l.analyzer = 'unit_linear_fit' GROUP BY lr, l.tap, l.step ORDER BY lr, l.tap, l.step" --out "$out/q.csv" >/dev/null
row "query: join + group over all layer rows ($(wc -l <"$out/q.csv") result rows)" "$t0" "$(now)"
t0=$(now)
"$bin/lintrace-analyze" plot facet "$dir" --metric nonlinearity --analyzer unit_linear_fit --by lr --out "$out/facet" >/dev/null
row "plot facet (PNG + SVG)" "$t0" "$(now)"
t0=$(now)
"$bin/lintrace-analyze" report "$dir" --out "$out/report.html" >/dev/null
row "report ($(du -k "$out/report.html" | cut -f1) KiB HTML)" "$t0" "$(now)"
echo
echo "layer rows: $(tail -n +2 "$out/q.csv" | wc -l) groups; sizes: checkpoint $(du -k "$dir"/*/checkpoints/step_00001000.safetensors | head -1 | cut -f1) KiB, train state $(du -k "$dir"/*/train_state.safetensors | head -1 | cut -f1) KiB"
