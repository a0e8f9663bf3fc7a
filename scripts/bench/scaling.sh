#!/usr/bin/env bash
# How analysis time and peak memory scale (BENCHMARKS.md, "Scaling"): with
# the number of checkpoints, the probe size and the network's width. Each
# point is one `lintrace-analyze` process (all the analyzers, --force),
# timed with /usr/bin/time (wall seconds, peak resident memory).
#
#   scripts/bench/scaling.sh            # from the project root, after cargo build --release
#
# Environment: DATA (CIFAR-10 folder or .tar.gz, default
# $LINTRACE_CIFAR10; required), OUT (default target/bench-scaling),
# BIN (default target/release), THREADS (default 2).
set -euo pipefail
DATA=${DATA:-${LINTRACE_CIFAR10:-}}
[[ -n $DATA ]] || { echo "error: CIFAR-10 is needed (class folders ROOT/{train,test}/<class>/*.jpg, or a .tar.gz of them): set DATA or LINTRACE_CIFAR10" >&2; exit 2; }
OUT=${OUT:-target/bench-scaling}
BIN=${BIN:-target/release}
export RAYON_NUM_THREADS=${THREADS:-2}
rm -rf "$OUT"; mkdir -p "$OUT"
# keep_first DIR K: keep the first K checkpoints of a run (and only their
# hashes in run.json, so the analyzer does not report the others missing)
keep_first() {
  ls "$1/checkpoints" | sort | tail -n +$(($2 + 1)) | while read -r f; do rm "$1/checkpoints/$f"; done
  python3 - "$1" <<'PYEOF'
import json, os, sys
d = sys.argv[1]
m = json.load(open(os.path.join(d, "run.json")))
kept = {str(int(f[5:13])) for f in os.listdir(os.path.join(d, "checkpoints"))}
m["checkpoint_sha256"] = {k: v for k, v in m.get("checkpoint_sha256", {}).items() if k in kept}
json.dump(m, open(os.path.join(d, "run.json"), "w"))
PYEOF
}
train() { # name probe conv dense
  "$BIN/lintrace-train" --dataset image-folder --data-dir "$DATA" --model cnn --conv "$3" --dense "$4" \
    --steps 8 --ckpt-every 1 --ckpt-per-decade 0 --batch-size 64 --probe-size "$2" --seed 0 \
    --out "$OUT/runs" --name "$1" --overwrite --quiet
}
point=0
analyze() { # label run-dir
  local secs kb
  point=$((point + 1))
  /usr/bin/time -o "$OUT/time-$point.txt" -f '%e %M' "$BIN/lintrace-analyze" "$2" --force --quiet --device cpu > "$OUT/analyze-$point.log" 2>&1
  read -r secs kb < "$OUT/time-$point.txt"
  printf '| %s | %s | %.1f | %d |\n' "$1" "$(ls "$2/checkpoints" | wc -l)" "$secs" "$((kb / 1024))"
}
# the linear surrogate for mu is fitted once per dataset and cached: not timed
train warmup 256 16,M 32
"$BIN/lintrace-analyze" "$OUT/runs/warmup" --quiet --analyzers mu > /dev/null 2>&1 || true

echo '| point | checkpoints | wall s | peak MiB |'
echo '|---|---:|---:|---:|'
train base 512 32,64,M,64,M 128
for k in 1 2 4 8; do
  d=$OUT/ckpts-$k; rm -rf "$d"; cp -r "$OUT/runs/base" "$d"
  rm -rf "$d/analysis"
  keep_first "$d" "$k"  # step 0 and the first k-1 later checkpoints
  analyze "default CNN, probe 512, $k checkpoints" "$d"
done
for n in 256 512 1024 2048; do
  train "probe-$n" "$n" 32,64,M,64,M 128
  d=$OUT/runs/probe-$n; keep_first "$d" 2
  analyze "default CNN, probe $n, 2 checkpoints" "$d"
done
for w in "8,16,M,16,M 32" "16,32,M,32,M 64" "32,64,M,64,M 128" "64,128,M,128,M 256"; do
  read -r conv dense <<< "$w"
  name=width-${conv//,/-}
  train "$name" 512 "$conv" "$dense"
  d=$OUT/runs/$name; keep_first "$d" 2
  analyze "conv $conv, dense $dense, probe 512, 2 checkpoints" "$d"
done
