#!/usr/bin/env bash
# Reproduces the two seed experiments at CPU size (see
# docs/findings/seed-experiments.md):
#   1. Kalimeris et al. (2019): mu(F_t; L) with the linear surrogate L over
#      log-spaced steps, next to the accuracies of F_t and L.
#   2. Pinson et al. (2024): partly linear surrogates S_k (taps 0..k linear,
#      trained on the main network's final predictions), mu(F_t; S_k) over
#      time; and the post-hoc view from linearized_agreement.
# Usage: examples/recipes/seed_experiments.sh [RUNS_ROOT] CIFAR10_TAR_OR_DIR [STEPS] [SURROGATE_STEPS]
# CIFAR-10: the second argument (an empty one keeps RUNS_ROOT's default), or
# the LINTRACE_CIFAR10 environment variable.
set -euo pipefail
cd "$(dirname "$0")/../.."
ROOT=${1:-runs/seed}
DATA=${2:-${LINTRACE_CIFAR10:-}}
[[ -n $DATA ]] || { echo "error: CIFAR-10 is needed (class folders ROOT/{train,test}/<class>/*.jpg, or a .tar.gz of them): pass it as the second argument or set LINTRACE_CIFAR10" >&2; exit 2; }
STEPS=${3:-1500}
SUR_STEPS=${4:-$STEPS}
cargo build --release -q --bin lintrace-train --bin lintrace-analyze
TRAIN=target/release/lintrace-train
ANALYZE=target/release/lintrace-analyze
CFG=examples/recipes/seed.toml

$TRAIN --config $CFG --data-dir "$DATA" --steps "$STEPS" --out "$ROOT" --name main --overwrite
surrogates=(--surrogate linear)
for k in 0 1 2; do
  taps=$(seq -s, 0 "$k")
  $TRAIN --config $CFG --data-dir "$DATA" --steps "$SUR_STEPS" --out "$ROOT" --name "plin-k$k" \
    --linear-taps "$taps" --targets "teacher:$ROOT/main" --overwrite
  surrogates+=(--surrogate "$ROOT/plin-k$k")
done
$ANALYZE "$ROOT/main" "${surrogates[@]}"
python3 examples/recipes/summarize.py "$ROOT/main"
