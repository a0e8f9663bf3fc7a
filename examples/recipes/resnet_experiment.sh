#!/usr/bin/env bash
# Boland/Pinson's setting with a ResNet (docs/findings/resnet20.md): CIFAR-10 classes 0-4 vs 5-9, resnet20 (CIFAR, shortcut A),
# SGD lr 0.01, momentum 0.9, batch 128, augmentation, log-spaced checkpoints;
# partly linear surrogates S_k (the stem and the first k residual blocks
# linear: taps 0..2k) trained on F's final predictions; then F analysed with
# every analyzer and mu against the linear surrogate and every S_k.
#
#   examples/recipes/resnet_experiment.sh [ROOT] DATA [STEPS] [SUR_STEPS] [DEVICE]
#
# DATA: CIFAR-10 (class folders or a .tar.gz of them), or LINTRACE_CIFAR10 when empty.
# PROBE: probe size (default 2048). BIN: folder with lintrace-train and lintrace-analyze (default target/release).
# BLOCKS: the k of the surrogates (default "0 3 6 9": stem only, stage 1,
# stages 1-2, all nine blocks). TIMEOUT: seconds per command (default none).
# ANALYZERS: a comma-separated subset for the analysis of F (default: all).
set -euo pipefail
ROOT=${1:-runs/resnet20}
DATA=${2:-${LINTRACE_CIFAR10:-}}
[[ -n $DATA ]] || { echo "error: CIFAR-10 is needed (class folders ROOT/{train,test}/<class>/*.jpg, or a .tar.gz of them): pass it as the second argument or set LINTRACE_CIFAR10" >&2; exit 2; }
STEPS=${3:-3000}
SUR_STEPS=${4:-$STEPS}
DEVICE=${5:-auto}
BIN=${BIN:-target/release}
BLOCKS=${BLOCKS:-0 3 6 9}
t() { if [[ -n ${TIMEOUT:-} ]]; then timeout "$TIMEOUT" "$@"; else "$@"; fi; }
common=(--model resnet20 --dataset image-folder --data-dir "$DATA" --groups 0-4/5-9 --optimizer momentum
        --lr 0.01 --momentum 0.9 --batch-size 128 --augment --probe-size "${PROBE:-2048}" --device "$DEVICE" --out "$ROOT" --overwrite --quiet)
echo "== F: resnet20, $STEPS steps"
t "$BIN/lintrace-train" "${common[@]}" --steps "$STEPS" --name main
surrogates=(--surrogate linear)
for k in $BLOCKS; do
  taps=$(seq -s, 0 $((2 * k)))
  echo "== S_$k: taps $taps linear, $SUR_STEPS steps on F's final predictions"
  t "$BIN/lintrace-train" "${common[@]}" --steps "$SUR_STEPS" --name "plin-b$k" \
    --linear-taps "$taps" --targets "teacher:$ROOT/main"
  surrogates+=(--surrogate "$ROOT/plin-b$k")
done
echo "== analysis of F"
analyzers=()
[[ -n ${ANALYZERS:-} ]] && analyzers=(--analyzers "$ANALYZERS")
t "$BIN/lintrace-analyze" "$ROOT/main" --device "$DEVICE" "${surrogates[@]}" "${analyzers[@]}"
