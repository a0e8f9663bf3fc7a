#!/usr/bin/env bash
# Do transformers become nonlinear like CNNs (Pinson et al., 2024)?
# docs/findings/transformers.md. Three CPU-sized runs, each with
# log-spaced checkpoints and every analyzer, then a summary:
#
#  1. modadd: Nanda et al.'s (2023) one-block ReLU transformer on a + b mod P,
#     full-batch AdamW (lr 1e-3, weight decay 1, betas 0.9/0.98), through its
#     train/test transition (grokking);
#  2. vit: a ViT (vit-mini, GELU) on CIFAR-10, AdamW, warmup + cosine;
#  3. char: a character-level GPT (gpt-char-tiny, GELU) on the embedded
#     Shakespeare corpus, nanoGPT's shakespeare_char settings (AdamW lr 1e-3,
#     beta2 0.99, weight decay 0.1, warmup + cosine, clipping 1, gpt2 init).
#
#   examples/recipes/transformer_experiment.sh [ROOT] [DATA] [DEVICE]
#
# DATA: CIFAR-10 for the ViT (class folders or a .tar.gz of them; default
# LINTRACE_CIFAR10); not needed with SKIP=vit.
#
# Env: P (modulus, default 113), FRAC (train fraction, 0.3), MOD_LR (0.001), MOD_STEPS
# (default 10000), MOD_BLOCKS (1), VIT_STEPS (2000), VIT_MODEL (vit-mini),
# PROBE (1024), BIN (target/release, with lintrace-train, lintrace-analyze
# and lintrace-query: cargo build --release --workspace), SKIP ("modadd" or
# "vit" or "char" to leave runs out), CHAR_MODEL (gpt-char-tiny), CHAR_STEPS
# (3000), CHAR_BATCH (32), CHAR_PROBE (probe tokens, 4096). GPU-sized: P=113
# MOD_STEPS=40000 VIT_MODEL=vit-tiny VIT_STEPS=20000 CHAR_MODEL=gpt-char-small
# CHAR_STEPS=5000 CHAR_BATCH=64, with cuda as the third argument. The
# CPU numbers of docs/findings/transformers.md: P=59 FRAC=0.3 MOD_LR=0.003 MOD_STEPS=4000 VIT_STEPS=1500.
set -euo pipefail
ROOT=${1:-runs/transformers}
DATA=${2:-${LINTRACE_CIFAR10:-}}
DEVICE=${3:-cpu}
BIN=${BIN:-target/release}
P=${P:-113}
FRAC=${FRAC:-0.3}
PROBE=${PROBE:-1024}
SKIP=${SKIP:-}
mkdir -p "$ROOT"
if [[ $SKIP != *modadd* ]]; then
  echo "== modadd: a + b mod $P, ${MOD_STEPS:-10000} full-batch AdamW steps"
  "$BIN/lintrace-train" --model modadd --blocks "${MOD_BLOCKS:-1}" --dataset modular-addition --modulus "$P" \
    --train-fraction "$FRAC" --optimizer adamw --lr "${MOD_LR:-0.001}" --weight-decay 1 --adam-beta2 0.98 --init gpt2 \
    --batch-size 100000 --steps "${MOD_STEPS:-10000}" --ckpt-per-decade 12 --probe-size "$PROBE" \
    --device "$DEVICE" --out "$ROOT" --name modadd --overwrite --quiet
  "$BIN/lintrace-analyze" "$ROOT/modadd" --device "$DEVICE" --quiet
fi
if [[ $SKIP != *vit* ]]; then
  [[ -n $DATA ]] || { echo "error: the ViT run needs CIFAR-10 (class folders ROOT/{train,test}/<class>/*.jpg, or a .tar.gz of them): pass it as the second argument, set LINTRACE_CIFAR10, or SKIP=vit" >&2; exit 2; }
  echo "== ${VIT_MODEL:-vit-mini}: CIFAR-10, ${VIT_STEPS:-2000} steps of batch 128"
  "$BIN/lintrace-train" --model "${VIT_MODEL:-vit-mini}" --activation gelu --dataset image-folder --data-dir "$DATA" \
    --optimizer adamw --lr 0.001 --weight-decay 0.05 --lr-schedule warmup-cosine --warmup-steps 200 \
    --grad-clip 1 --label-smoothing 0.1 --init gpt2 --augment --batch-size 128 --steps "${VIT_STEPS:-2000}" \
    --probe-size "$PROBE" --device "$DEVICE" --out "$ROOT" --name vit --overwrite --quiet
  "$BIN/lintrace-analyze" "$ROOT/vit" --device "$DEVICE" --quiet
fi
if [[ $SKIP != *char* ]]; then
  echo "== ${CHAR_MODEL:-gpt-char-tiny}: the embedded Shakespeare corpus, ${CHAR_STEPS:-3000} steps of batch ${CHAR_BATCH:-32}"
  "$BIN/lintrace-train" --model "${CHAR_MODEL:-gpt-char-tiny}" --activation gelu --dataset text \
    --optimizer adamw --lr 0.001 --adam-beta2 0.99 --weight-decay 0.1 --lr-schedule warmup-cosine --warmup-steps 100 \
    --grad-clip 1 --init gpt2 --batch-size "${CHAR_BATCH:-32}" --steps "${CHAR_STEPS:-3000}" --ckpt-per-decade 8 \
    --probe-size "${CHAR_PROBE:-4096}" --device "$DEVICE" --out "$ROOT" --name char --overwrite --quiet
  "$BIN/lintrace-analyze" "$ROOT/char" --device "$DEVICE" --quiet
fi
Q=$BIN/lintrace-query
for run in modadd vit char; do
  [[ -d $ROOT/$run/analysis ]] || continue
  echo "== $run: train/test accuracy over steps"
  "$Q" query "$ROOT/$run" "SELECT step, metric, surrogate, ROUND(value, 4) AS v FROM model_metrics
      WHERE (analyzer = 'performance' AND metric IN ('accuracy', 'loss')) OR (analyzer = 'mu' AND metric IN ('mu', 'network_accuracy', 'surrogate_accuracy'))
      ORDER BY step, metric"
  echo "== $run: nonlinearity of each tap, linearity score of each sublayer, attention entropy"
  "$Q" query "$ROOT/$run" "SELECT step, layer_kind, layer_name, metric, ROUND(value, 4) AS v FROM layer_metrics
      WHERE (analyzer = 'unit_linear_fit' AND metric = 'nonlinearity')
         OR (analyzer = 'block_linear_fit' AND metric IN ('linearity_score', 'linearity_score_residual') AND layer_kind <> 'dense')
         OR (analyzer = 'attention' AND metric = 'attention_entropy')
         OR (analyzer = 'linearized_agreement' AND metric = 'agreement')
      ORDER BY layer_kind, layer_name, metric, step"
  mkdir -p "$ROOT/fig"
  "$Q" plot heatmap "$ROOT/$run" --metric nonlinearity --analyzer unit_linear_fit --out "$ROOT/fig/$run-nonlinearity"
  "$Q" plot lines "$ROOT/$run" --metric mu --surrogate linear --out "$ROOT/fig/$run-mu"
done
