#!/usr/bin/env bash
# lintrace and PyTorch on the same machine, in the same call (BENCHMARKS.md):
#   1. lintrace-bench: trains the default CNN on CIFAR-10 (images/s) and
#      analyses its checkpoints with all the analyzers (s/checkpoint);
#   2. scripts/bench/torch_train_cnn.py: the same CNN, batch and optimizer in
#      PyTorch (images/s);
#   3. scripts/bench/torch_analyze.py: a straightforward PyTorch + numpy
#      implementation of the nine analyzers that apply to a plain CNN (all but
#      residual_linear_fit and attention) on the same run's checkpoints.
# and prints the ratios. Run from the project root after `cargo build --release`.
#
#   scripts/bench/side_by_side.sh [DEVICE] [THREADS]
#
# Environment: DATA (CIFAR-10 folder or .tar.gz, default
# $LINTRACE_CIFAR10; required), PY (a python with torch, numpy and
# safetensors; default /opt/bench-venv/bin/python, else python3), OUT
# (scratch folder, default target/bench-side-by-side), BENCH_ARGS (extra
# lintrace-bench flags, e.g. "--no-per-analyzer").
set -euo pipefail
DEVICE=${1:-cpu}
THREADS=${2:-2}
DATA=${DATA:-${LINTRACE_CIFAR10:-}}
[[ -n $DATA ]] || { echo "error: CIFAR-10 is needed (class folders ROOT/{train,test}/<class>/*.jpg, or a .tar.gz of them): set DATA or LINTRACE_CIFAR10" >&2; exit 2; }
OUT=${OUT:-target/bench-side-by-side}
PY=${PY:-/opt/bench-venv/bin/python}
[[ -x $PY ]] || PY=python3
BIN=${BIN:-target/release}
mkdir -p "$OUT"
export RAYON_NUM_THREADS=$THREADS
echo "== $(date -u +%F) $(uname -m), $(nproc) cores, device $DEVICE, $THREADS threads"
[[ $DEVICE == cuda ]] && nvidia-smi --query-gpu=name,driver_version --format=csv,noheader || true

echo "== lintrace-bench"
# shellcheck disable=SC2086
"$BIN/lintrace-bench" --data-dir "$DATA" --device "$DEVICE" --out "$OUT/runs" ${BENCH_ARGS:-} | tee "$OUT/lintrace.txt"
lt_train=$(awk '/^train:/ { for (i = 1; i <= NF; i++) if ($i == "images/s") print $(i - 1) }' "$OUT/lintrace.txt")
lt_all=$(awk '/^analyze: all analyzers/ { for (i = 1; i <= NF; i++) if ($i ~ /s\/checkpoint/) print $(i - 1) }' "$OUT/lintrace.txt" | head -1)

echo "== PyTorch ($("$PY" -c 'import torch; print(torch.__version__)' 2>/dev/null || echo 'not installed'))"
if "$PY" -c 'import torch' 2>/dev/null; then
  "$PY" scripts/bench/torch_train_cnn.py --device "$DEVICE" --threads "$THREADS" --batch 128 | tee "$OUT/torch_train.json"
  "$PY" scripts/bench/torch_analyze.py "$OUT/runs/bench" --device "$DEVICE" --threads "$THREADS" --mode together | tee "$OUT/torch_analyze.txt"
  pt_train=$("$PY" -c 'import json,sys; print(json.loads(open(sys.argv[1]).read().strip().splitlines()[-1])["images_per_s"])' "$OUT/torch_train.json")
  pt_all=$("$PY" - "$OUT/torch_analyze.txt" <<'PYEOF'
import json, sys
rows = [json.loads(l) for l in open(sys.argv[1]) if l.startswith("{")]
per = [r["all_together"] for r in rows if "all_together" in r]
print(sum(per) / len(per) if per else "nan")
PYEOF
)
  echo "== summary"
  printf 'train images/s: lintrace %s, PyTorch %s, ratio %s\n' "$lt_train" "$pt_train" \
    "$(awk -v a="$lt_train" -v b="$pt_train" 'BEGIN { printf "%.2f", a / b }')"
  printf 'analysis s/checkpoint (all nine): lintrace %s, PyTorch+numpy %s, speed-up %s\n' "$lt_all" "$pt_all" \
    "$(awk -v a="$lt_all" -v b="$pt_all" 'BEGIN { printf "%.2f", b / a }')"
else
  echo "SKIP: no torch in $PY (set PY to a python with torch, numpy and safetensors)"
fi
