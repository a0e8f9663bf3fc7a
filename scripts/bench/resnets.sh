#!/usr/bin/env bash
# ResNets, lintrace and PyTorch on the same machine in the same call
# (BENCHMARKS.md, "ResNets"): training images/s and forward images/s at batch
# 128 for resnet20 (CIFAR, shortcut A) and resnet18 with the small stem
# (torchvision's ResNet-18 for 32x32 inputs), momentum SGD, fp32.
# lintrace trains on CIFAR-10 (data loading excluded from its timing);
# PyTorch on synthetic batches of the same shape (scripts/bench/torch_train_cnn.py).
#
#   scripts/bench/resnets.sh [DEVICE] [THREADS]
#
# Environment: DATA (CIFAR-10 folder or .tar.gz, default
# $LINTRACE_CIFAR10; required), PY (python with torch; default
# /opt/bench-venv/bin/python), BIN (default target/release), OUT (default
# target/bench-resnets), STEPS20 / STEPS18 (timed training steps; 20 / 6).
set -euo pipefail
DEVICE=${1:-cpu}
THREADS=${2:-2}
DATA=${DATA:-${LINTRACE_CIFAR10:-}}
[[ -n $DATA ]] || { echo "error: CIFAR-10 is needed (class folders ROOT/{train,test}/<class>/*.jpg, or a .tar.gz of them): set DATA or LINTRACE_CIFAR10" >&2; exit 2; }
OUT=${OUT:-target/bench-resnets}
PY=${PY:-/opt/bench-venv/bin/python}
[[ -x $PY ]] || PY=python3
BIN=${BIN:-target/release}
export RAYON_NUM_THREADS=$THREADS
mkdir -p "$OUT"
echo "== $(date -u +%F) $(uname -m), $(nproc) cores, device $DEVICE, $THREADS threads, torch $("$PY" -c 'import torch; print(torch.__version__)')"
for m in resnet20 resnet18; do
  if [[ $m == resnet20 ]]; then steps=${STEPS20:-20}; stem=(); peer=resnet20
  else steps=${STEPS18:-6}; stem=(--stem small); peer=resnet18-small; fi
  echo "== $m"
  "$BIN/lintrace-bench" --model "$m" "${stem[@]}" --data-dir "$DATA" --device "$DEVICE" --steps "$steps" \
    --probe-size 128 --no-analysis --out "$OUT/runs-$m" | grep -E '^(train|forward):' | tee "$OUT/lintrace-$m.txt"
  for mode in train forward; do
    flag=(); [[ $mode == forward ]] && flag=(--forward)
    "$PY" scripts/bench/torch_train_cnn.py --model "$peer" "${flag[@]}" --device "$DEVICE" --threads "$THREADS" \
      --batch 128 --steps "$steps" --warmup 2 | tee "$OUT/torch-$m-$mode.json"
  done
done
