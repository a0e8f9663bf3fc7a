#!/usr/bin/env bash
# Everything still to be measured on a GPU, in one call of at most ~9
# minutes (TOTAL, default 540 s) on a GPU machine: the GPU check
# (CNN, modular-addition transformer and char-GPT trained and analysed on the
# GPU and compared with the CPU; benchmarks beside PyTorch; the cuDNN ops of a
# --cudnn build checked against the CPU and timed; a training step split into
# phases), then a short
# resnet20 run of the resnet20 study's recipe (docs/findings/resnet20.md) on a
# CIFAR-10 subset, then a
# gpt-char-small run with every analyzer; before those, a Pythia-160M-shaped
# Hugging Face revision on the GPU (scripts/make_hf_bench.py --torch-only). Results go to $OUT. Needs .gpu/ packed
# by build-cuda.sh --cudnn --pack plus .gpu/cifar10-subset.tar.gz (CIFAR-10 in the
# image-folder layout, 2,500 training and 500 test images per class: 9.9 MB,
# so that the tree copied to the GPU machine stays small).
#
#   TOTAL=540 OUT=results bash scripts/gpu/pending-runs.sh     # on the GPU machine, from the repository root
set -u
cd "$(dirname "$0")/../.."
OUT=${OUT:-/tmp/out}; mkdir -p "$OUT"
T0=$(date +%s)
left() { echo $(( ${TOTAL:-540} - ($(date +%s) - T0) )); }
cap() { local a=$1 b; b=$(( $(left) - 5 )); (( b < a )) && a=$b; (( a < 0 )) && a=0; echo "$a"; }
DATA=.gpu/cifar10-subset.tar.gz NETS="cnn modadd gpt" CHECKS="train analyze compare bench" \
  BENCH_KERNELS=1 BENCH_LT_ARGS=--no-per-analyzer BENCH_MODELS="gpt-char-small vit-tiny" TRAIN_STEPS=60 BENCH_STEPS=20 \
  STEP_TIMEOUT=100 TOTAL_TIMEOUT=${CHECK_TIMEOUT:-330} RESULTS_DIR="$OUT/check" \
  bash scripts/gpu/gpu-check.sh > "$OUT/gpu-check.log" 2>&1
echo "gpu-check: rc $? after $(( $(date +%s) - T0 )) s"
grep -E '^(PASS|FAIL|SKIP)' "$OUT/gpu-check.log" | cut -c1-330
BIN=/tmp/lintrace-gpu-check/bin
# A Pythia-160M-shaped GPT-NeoX revision (random weights, written with torch
# alone) analysed on the GPU: time per revision with the peer's metrics and
# with every analyzer (issue: under 2 s for the 160M size), and the tiny
# size on the CPU and the GPU, whose tables should agree.
hf_runs() {
  python3 scripts/make_hf_bench.py /tmp/hf160 --size 160m --torch-only
  python3 scripts/make_hf_bench.py /tmp/hftiny --size tiny --torch-only
  for dev in cpu cuda; do
    rm -rf /tmp/hftiny/analysis
    "$BIN/lintrace-analyze" /tmp/hftiny --probe /tmp/hftiny/probe.safetensors --device $dev -q \
      --analyzers performance,unit_linear_fit,attention,block_linear_fit
    mkdir -p "$OUT/hftiny-$dev" && cp -r /tmp/hftiny/analysis/. "$OUT/hftiny-$dev/"
  done
  for set in performance,unit_linear_fit,attention all; do
    local a=(--analyzers "$set"); [[ $set == all ]] && a=()
    local s=$(date +%s%N)
    "$BIN/lintrace-analyze" /tmp/hf160 --probe /tmp/hf160/probe.safetensors --device cuda -q --force "${a[@]}"
    echo "hf160 cuda $set: $(( ($(date +%s%N) - s) / 1000000 )) ms per revision (with reading and hashing 0.65 GB)"
  done
  mkdir -p "$OUT/hf160" && cp -r /tmp/hf160/analysis/. "$OUT/hf160/"
}
if [[ ${HF:-1} == 1 && -x $BIN/lintrace-analyze ]]; then
  T1=$(date +%s); to=$(cap "${HF_TIMEOUT:-100}")
  export -f hf_runs; export BIN OUT
  timeout -k 5 "$to" bash -c hf_runs > "$OUT/hf.log" 2>&1
  echo "hugging face: rc $? after $(( $(date +%s) - T1 )) s (limit $to)"
  grep -E "^hf160|error|analysed" "$OUT/hf.log" | head
fi
if [[ ${RESNET:-1} == 1 && -x $BIN/lintrace-train ]]; then
  T1=$(date +%s); to=$(cap "${RESNET_TIMEOUT:-175}")
  BIN=$BIN PROBE=1024 BLOCKS="0 4 9" timeout -k 5 "$to" bash examples/recipes/resnet_experiment.sh /tmp/rn \
    .gpu/cifar10-subset.tar.gz "${RN_STEPS:-500}" "${RN_SUR_STEPS:-250}" cuda > "$OUT/resnet.log" 2>&1
  echo "resnet experiment: rc $? after $(( $(date +%s) - T1 )) s (limit $to)"
  for r in /tmp/rn/*/; do
    n=$(basename "$r"); mkdir -p "$OUT/resnet/$n"
    cp -r "$r"/run.json "$r"/train_log.parquet "$r"/analysis "$OUT/resnet/$n/" 2>/dev/null
  done
  grep -E "^==|error" "$OUT/resnet.log" | head
fi
if [[ ${CHAR:-1} == 1 && -x $BIN/lintrace-train ]]; then
  T1=$(date +%s); to=$(cap "${CHAR_TIMEOUT:-120}")
  BIN=$BIN SKIP="modadd vit" CHAR_MODEL=gpt-char-small CHAR_STEPS=${CHAR_STEPS:-300} CHAR_BATCH=64 CHAR_PROBE=2048 \
    timeout -k 5 "$to" bash examples/recipes/transformer_experiment.sh /tmp/tx x cuda > "$OUT/char.log" 2>&1
  echo "char experiment: rc $? after $(( $(date +%s) - T1 )) s (limit $to)"
  mkdir -p "$OUT/char"
  cp -r /tmp/tx/char/analysis /tmp/tx/char/run.json /tmp/tx/char/train_log.parquet "$OUT/char/" 2>/dev/null
  grep -E "^==|error" "$OUT/char.log" | head
fi
nvidia-smi --query-gpu=name,driver_version,memory.used --format=csv,noheader 2>/dev/null
echo "total $(( $(date +%s) - T0 )) s"
