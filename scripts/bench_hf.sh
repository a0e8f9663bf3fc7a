#!/usr/bin/env bash
# lintrace beside transformers + numpy on the same Hugging Face revision and
# probe, in one call: wall time and peak memory per revision.
#
#   python3 scripts/make_hf_bench.py /tmp/bench160 --size 160m   # no download
#   cargo build --release --bin lintrace-analyze --bin lintrace-bench
#   scripts/bench_hf.sh /tmp/bench160 [THREADS]
#
# Runs, each as its own process under /usr/bin/time -v:
#   peer        scripts/hf_peer.py: load, forward with hooks on every MLP
#               activation, attention and stream, numpy metrics
#               (unit_linear_fit, attention, loss)
#   peer-all    scripts/hf_peer.py --all: also block fits, effective ranks,
#               CKA, weights and the linearised variants (a full forward
#               pass per variant, as forward hooks do it): every analyzer
#               lintrace runs by default, the same numbers (`all` below)
#   taps        lintrace-analyze --analyzers unit_linear_fit: load, the
#               forward pass with every tap, the cheapest tap metric
#   same        lintrace-analyze with the peer's metrics: performance,
#               unit_linear_fit, attention
#   all         lintrace-analyze with every analyzer
#   novariants  lintrace-analyze with every analyzer that applies here but
#               linearized_agreement (what a long series costs without the
#               variants)
#   forward     lintrace-bench --hf-forward: the forward pass alone with every
#               tap, stream and attention weight recorded, in chunks of 2
#               windows as the peer's (its "forward_with_hooks")
# RUNS="peer forward taps same" picks some of the runs (default: all six;
# the two `all` runs take minutes at 160M).
# lintrace's times include reading and hashing the weights (its inventory
# of the series); the peer's include transformers' load.
set -euo pipefail
dir=${1:?usage: scripts/bench_hf.sh DIR [THREADS]}
threads=${2:-2}
bin=${LINTRACE_BIN:-target/release}
probe="$dir/probe.safetensors"
echo "date: $(date -u +%Y-%m-%dT%H:%M:%SZ)"
echo "machine: $(nproc) cores, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs), $(free -g | awk '/Mem:/{print $2}') GiB"
python3 -c "import torch, transformers, numpy; print(f'torch {torch.__version__}, transformers {transformers.__version__}, numpy {numpy.__version__}')"
peak() { grep -E "Maximum resident set size" "$1" | awk '{printf "%.0f MiB", $6/1024}'; }
wall() { grep -E "Elapsed \(wall clock\)" "$1" | awk '{print $8}'; }
log=$(mktemp -d)
for run in ${RUNS:-peer forward taps same peer-all all}; do
  if [[ $run == peer || $run == peer-all ]]; then
    flags=(); [[ $run == peer-all ]] && flags=(--all)
    OMP_NUM_THREADS=$threads /usr/bin/time -v python3 scripts/hf_peer.py "$dir" --probe "$probe" --threads "$threads" "${flags[@]}" >"$log/$run.out" 2>"$log/$run.time" || { cat "$log/$run.time"; exit 1; }
    secs=$(python3 -c 'import json,sys; s=[json.loads(l) for l in open(sys.argv[1]) if l.startswith("{\"summary")][0]["summary"]["seconds"]; print(", ".join(f"{k} {v:.2f} s" for k, v in s.items()))' "$log/$run.out")
    echo "$run: $secs; wall $(wall "$log/$run.time"), peak $(peak "$log/$run.time")"
    continue
  fi
  if [[ $run == forward ]]; then
    RAYON_NUM_THREADS=$threads /usr/bin/time -v "$bin/lintrace-bench" --hf-forward "$dir/$(ls "$dir" | grep -v -e analysis -e probe | head -1)" --hf-probe "$probe" >"$log/$run.out" 2>"$log/$run.time" || { cat "$log/$run.time"; exit 1; }
    echo "lintrace forward: $(cat "$log/$run.out")"
    continue
  fi
  case $run in
    taps) set=(--analyzers unit_linear_fit) ;;
    same) set=(--analyzers performance,unit_linear_fit,attention) ;;
    all) set=() ;;
    novariants) set=(--analyzers performance,unit_linear_fit,attention,block_linear_fit,representation,cka_time,weights) ;;
  esac
  rm -rf "$dir/analysis"
  RAYON_NUM_THREADS=$threads /usr/bin/time -v "$bin/lintrace-analyze" "$dir" --probe "$probe" "${set[@]}" -q >"$log/$run.out" 2>"$log/$run.time" || { cat "$log/$run.time"; exit 1; }
  echo "lintrace $run: wall $(wall "$log/$run.time"), peak $(peak "$log/$run.time"); $(grep -m1 '^analysed' "$log/$run.out")"
done
