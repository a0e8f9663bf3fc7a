#!/usr/bin/env bash
# lintrace on a GPU: correctness (GPU analysis vs CPU analysis, metric by
# metric), the README main job, and speed next to PyTorch. Made for a GPU
# machine with no Rust and no network. See scripts/gpu/README.md.
set -uo pipefail   # no -e: a failed check is recorded and the others still run

usage() {
  cat <<'EOF'
Usage: bash scripts/gpu/gpu-check.sh      (from the project root)

Binaries: .gpu/lintrace-{train,analyze,bench}.xz with SHA256SUMS, as packed by
scripts/gpu/build-cuda.sh --pack (unpacked into $WORK/bin and checksummed),
or BIN_DIR=/path/to/unpacked/binaries.

Steps, each under `timeout $STEP_TIMEOUT`:
  unpack, libraries   unpack + sha256; put the CUDA 13 libraries the binaries
                      need (ldd) on LD_LIBRARY_PATH: CUDA_LIB_DIRS, then
                      /usr/local/cuda*/targets/x86_64-linux/lib, then the
                      nvidia-* packages of $TORCH_VENV
  driver              nvidia-smi; the driver must be >= 580 for CUDA 13.0 PTX
  train-NET           short runs on $DEVICE of each of NETS: cnn and resnet
                      (resnet20) on digits, modadd (the modular-addition
                      transformer, p = 23) and gpt (gpt-char-tiny on the
                      embedded Shakespeare corpus)
  analyze-DEVICE/cpu  every analyzer on $DEVICE, and on the CPU for a copy of the run
  analyzers-coverage  every analyzer of --list wrote rows (over both runs)
  compare-*           layer_metrics and model_metrics of the two analyses joined
                      row by row; the worst difference of each metric against
                      its tolerance (below); NULL = NULL is equal
  readme-train/-analyze  the README's main job with --device $DEVICE, timed
  bench-*             lintrace-bench on CIFAR-10 (needs DATA=), the PyTorch
                      peers scripts/bench/torch_train_cnn.py and torch_analyze.py
                      (run when present), side by side, with ratios; then each
                      of BENCH_MODELS trained by lintrace-bench and by
                      torch_train_cnn.py (fp32; bf16 for torch too)
Each check prints one line `PASS|FAIL|SKIP name: detail` in the summary at the
end. Exit status 0 when no check failed (SKIPs allowed), 1 when one failed
(a failed unpack ends the script there), 2 for a usage error.

Environment (defaults in brackets):
  DEVICE        cuda | cpu [cuda]; cpu is a dry run of everything on a machine
                without GPU (the "device" analysis is then a second CPU analysis)
  BIN_DIR       unpacked binaries to use instead of .gpu/ []
  PKG           packed binaries [.gpu]
  WORK          scratch folder, wiped first [/tmp/lintrace-gpu-check]
  STEP_TIMEOUT  seconds per command [240]
  TOTAL_TIMEOUT seconds for all commands together: a command gets at most what is
                left, and none starts with under 15 s left [540]
  TORCH_VENV    Python with torch for the peers and for finding CUDA libraries
                [/opt/torch/.venv]
  CUDA_LIB_DIRS extra colon-separated folders searched first for CUDA libraries []
  TRAIN_STEPS   steps of the short CNN [60]
  DATA          CIFAR-10 image folder or .tar.gz for lintrace-bench [] (SKIP without)
  BENCH_STEPS   timed training steps of lintrace-bench and torch_train_cnn.py [30]
  BENCH_TIMEOUT seconds for lintrace-bench [STEP_TIMEOUT]
  TORCH_THREADS CPU threads of the torch peers [nproc]
  PYWHEELS      wheels of numpy/safetensors to install offline when the torch venv
                lacks them (torch_analyze.py needs both) [$PKG/wheels]
  CHECKS        subset of: train analyze compare readme bench [all of them]
  NETS          runs of train/analyze/compare [cnn resnet modadd gpt]
  BENCH_CNN     1: the default-CNN benchmarks (training, analysis, convolution
                kernels, torch_analyze.py) [1]
  BENCH_KERNELS 1: with BENCH_CNN, also time its convolutions alone [1]
  BENCH_LT_ARGS extra arguments of the default-CNN lintrace-bench, e.g.
                --no-per-analyzer []
  BENCH_MODELS  models timed in training next to PyTorch, besides the default
                CNN [gpt-char-small vit-tiny] (vit-tiny needs DATA)
  TOL_CONT      absolute-or-relative tolerance of continuous metrics [1e-4]
  TOL_COUNT     tolerance of counts (n_units, n_rows, ...) [1e-9]
  FLIPS         near-tie prediction/sign flips allowed in discrete metrics [1]
  TOL_<metric>  absolute-or-relative tolerance for one metric, e.g. TOL_effective_rank=1e-3
  RESULTS_DIR   where to copy summary.txt, the comparisons and logs.tar.gz
                [$OUT when set]

Tolerance classes (a difference passes if it is within the class's bound):
  continuous   |d| <= TOL_CONT or |d| <= TOL_CONT * max(|a|,|b|): loss, delta_loss,
               nonlinearity, mean_unit_r2, linearity_score, cka_*, weights, effective_rank, ...
  count        |d| <= TOL_COUNT: n_units, n_units_varying, n_rows, n_features,
               linear_prefix_depth
  accuracy     |d| <= FLIPS/N + TOL_COUNT (N = n_probe or n_samples of the row):
               accuracy, agreement, prefix_/suffix_agreement, *_accuracy
  information  one flipped prediction moves a plug-in entropy by <= (log2 N + 2)/N:
               i_f_y, i_f_y_given_s, mu_bits, prefix_/suffix_mu_bits: 2 entropies;
               mu: 4 entropies (times FLIPS)
               mu_mm: as mu
  cell flip    n_cells_nonempty: 2*FLIPS (a flipped prediction empties one cell, fills one)
  unit flip    frac_always_on/off, frac_switching: FLIPS/n_units (one unit changes class)
  sign flip    frac_active, pattern_entropy: continuous, or one z > 0 flip:
               FLIPS/(N*n_units), pattern_entropy (log2 N + 2)/(N*n_units)
EOF
}
case ${1:-} in -h|--help) usage; exit 0 ;; "") ;; *) echo "gpu-check: no arguments expected (see --help)" >&2; exit 2 ;; esac

ROOT=$(pwd)
DEVICE=${DEVICE:-cuda}
PKG=${PKG:-$ROOT/.gpu}
WORK=${WORK:-/tmp/lintrace-gpu-check}
STEP_TIMEOUT=${STEP_TIMEOUT:-240}
TOTAL_TIMEOUT=${TOTAL_TIMEOUT:-540}
TORCH_VENV=${TORCH_VENV:-/opt/torch/.venv}
TRAIN_STEPS=${TRAIN_STEPS:-60}
DATA=${DATA:-}
BENCH_STEPS=${BENCH_STEPS:-30}
BENCH_TIMEOUT=${BENCH_TIMEOUT:-$STEP_TIMEOUT}
TORCH_THREADS=${TORCH_THREADS:-$(nproc 2>/dev/null || echo 2)}
PYWHEELS=${PYWHEELS:-$PKG/wheels}
CHECKS=${CHECKS:-train analyze compare readme bench}
BENCH_CNN=${BENCH_CNN:-1}
BENCH_KERNELS=${BENCH_KERNELS:-1}
read -r -a BENCH_MODEL_LIST <<< "${BENCH_MODELS-gpt-char-small vit-tiny}"
export TOL_CONT=${TOL_CONT:-1e-4} TOL_COUNT=${TOL_COUNT:-1e-9} FLIPS=${FLIPS:-1}
RESULTS_DIR=${RESULTS_DIR:-${OUT:-}}
case $DEVICE in cuda|cpu) ;; *) echo "gpu-check: DEVICE must be cuda or cpu (got '$DEVICE')" >&2; exit 2 ;; esac
[[ $PKG == /* ]] || PKG=$ROOT/$PKG

BIN=$WORK/bin
LOGS=$WORK/logs
RESULTS=()
FAILED=0
T_START=$(date +%s)
hdr() { printf '\n===== %s  [%s s]\n' "$*" "$(($(date +%s) - T_START))"; }
result() { # result PASS|FAIL|SKIP NAME DETAIL
  RESULTS+=("$(printf '%s %s: %s' "$1" "$2" "$3")")
  printf '>>> %s %s: %s\n' "$1" "$2" "$3"
  [[ $1 == FAIL ]] && FAILED=1
  return 0
}
want() { [[ " $CHECKS " == *" $1 "* ]]; }
# budget SECONDS: that, or less when TOTAL_TIMEOUT runs out (0: nothing left)
budget() {
  local left=$((T_START + TOTAL_TIMEOUT - $(date +%s)))
  if ((left < 15)); then echo 0; elif (($1 < left)); then echo "$1"; else echo "$left"; fi
}
now() { date +%s.%N; }
secs() { awk -v a="$1" -v b="$2" 'BEGIN { printf "%.1f", b - a }'; }

# run_step NAME CMD...: runs under timeout, output to $LOGS/NAME.log, shows its
# tail; sets STEP_RC, STEP_S (seconds) and STEP_WHY (a short failure reason).
STEP_RC=0 STEP_S=0 STEP_WHY=""
run_step() {
  local name=$1; shift
  local to=$STEP_TIMEOUT
  if [[ $name == bench-lintrace ]]; then to=$BENCH_TIMEOUT; fi
  to=$(budget "$to")
  printf '\n--- %s: %s\n' "$name" "$*"
  if ((to == 0)); then
    STEP_RC=124 STEP_S=0 STEP_WHY="not started: TOTAL_TIMEOUT=$TOTAL_TIMEOUT s used up"
    echo "    $STEP_WHY"
    return $STEP_RC
  fi
  local t0; t0=$(now)
  timeout -k 10 "$to" "$@" > "$LOGS/$name.log" 2>&1
  STEP_RC=$?
  STEP_S=$(secs "$t0" "$(now)")
  if ((STEP_RC != 0)) && (($(wc -l < "$LOGS/$name.log") > 12)); then
    grep -m 5 -iE 'error|panick' "$LOGS/$name.log" | sed 's/^/    /'
    echo "    ..."
  fi
  tail -n 12 "$LOGS/$name.log" | sed 's/^/    /'
  STEP_WHY=""
  if ((STEP_RC == 124 || STEP_RC == 137)); then
    STEP_WHY="timed out after ${to} s (log $LOGS/$name.log)"
  elif ((STEP_RC != 0)); then
    local e; e=$(grep -m1 -iE 'error|panicked' "$LOGS/$name.log" | cut -c1-200)
    STEP_WHY="exit $STEP_RC after $STEP_S s${e:+: $e} (log $LOGS/$name.log)"
  fi
  echo "    [$name: exit $STEP_RC, $STEP_S s]"
  return $STEP_RC
}

finish() {
  hdr "summary"
  local total=$(($(date +%s) - T_START))
  {
    echo "lintrace gpu-check, DEVICE=$DEVICE, $(date -u +%FT%TZ), $(hostname 2>/dev/null)"
    [[ -f $PKG/BUILD-INFO && -z ${BIN_DIR:-} ]] && head -3 "$PKG/BUILD-INFO" | sed 's/^/build: /'
    timeout 30 nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader 2>/dev/null | sed 's/^/GPU: /'
    printf '%s\n' "${RESULTS[@]}"
    echo "total: $total s$( ((total > 480)) && echo ' (over the 8-minute target)')"
    echo "overall: $( ((FAILED)) && echo FAIL || echo PASS)"
  } | tee "$WORK/summary.txt"
  if [[ -n $RESULTS_DIR ]]; then
    mkdir -p "$RESULTS_DIR"
    cp "$WORK/summary.txt" "$RESULTS_DIR/summary.txt"
    for f in "$WORK"/compare-*-layer_metrics.txt "$WORK"/compare-*-model_metrics.txt "$WORK"/bench.txt; do
      [[ -f $f ]] && cp "$f" "$RESULTS_DIR/"
    done
    tar -C "$WORK" -czf "$RESULTS_DIR/logs.tar.gz" logs 2>/dev/null
    echo "(copied summary.txt, comparisons and logs.tar.gz to $RESULTS_DIR)"
  fi
  exit "$FAILED"
}

# ================================================================ start
# wipe WORK only when this script made it (its marker), or it is empty
if [[ -d $WORK && ! -f $WORK/.lintrace-gpu-check && -n $(ls -A "$WORK" 2>/dev/null) ]]; then
  echo "gpu-check: WORK=$WORK exists and was not made by this script: choose another WORK" >&2; exit 2
fi
rm -rf "$WORK"; mkdir -p "$BIN" "$LOGS" "$WORK/cache"; touch "$WORK/.lintrace-gpu-check"
export LINTRACE_CACHE=$WORK/cache     # the linear surrogate's cache; not ~/.cache
export RUST_BACKTRACE=0               # stripped binaries: the error line is what helps
export CUDA_CACHE_MAXSIZE=${CUDA_CACHE_MAXSIZE:-4294967296}  # keep the PTX JIT result between processes
PY=""
if [[ -x $TORCH_VENV/bin/python ]]; then PY=$TORCH_VENV/bin/python; else PY=$(command -v python3 || true); fi
hdr "lintrace gpu-check: DEVICE=$DEVICE, project $ROOT, scratch $WORK"
echo "checks: $CHECKS; STEP_TIMEOUT=$STEP_TIMEOUT TOTAL_TIMEOUT=$TOTAL_TIMEOUT; TOL_CONT=$TOL_CONT TOL_COUNT=$TOL_COUNT FLIPS=$FLIPS; python: ${PY:-none}"

# ---------------------------------------------------------------- unpack
if [[ -n ${BIN_DIR:-} ]]; then
  hdr "binaries: BIN_DIR=$BIN_DIR"
  BIN=$(cd "$BIN_DIR" 2>/dev/null && pwd) || { echo "BIN_DIR=$BIN_DIR does not exist"; result FAIL unpack "BIN_DIR=$BIN_DIR does not exist"; finish; }
  for b in lintrace-train lintrace-analyze; do
    [[ -x $BIN/$b ]] || { result FAIL unpack "$BIN/$b missing"; finish; }
  done
  result PASS unpack "using $BIN (no unpacking)"
else
  hdr "unpack $PKG -> $BIN"
  if [[ ! -d $PKG ]]; then
    echo "no $PKG: run from the project root after scripts/gpu/build-cuda.sh --pack (and carry .gpu), or set BIN_DIR"
    result FAIL unpack "no $PKG"; finish
  fi
  [[ -f $PKG/BUILD-INFO ]] && cat "$PKG/BUILD-INFO"
  ok=1 n=0
  for f in "$PKG"/*.xz; do
    [[ -e $f ]] || continue
    b=$(basename "$f" .xz)
    if command -v xz >/dev/null; then xz -dc "$f" > "$BIN/$b" || ok=0
    elif [[ -n $PY ]]; then "$PY" -c 'import lzma,shutil,sys; shutil.copyfileobj(lzma.open(sys.argv[1]), open(sys.argv[2],"wb"))' "$f" "$BIN/$b" || ok=0
    else echo "neither xz nor python to unpack $f"; ok=0; fi
    chmod +x "$BIN/$b"; n=$((n + 1))
  done
  for b in lintrace-train lintrace-analyze; do [[ -s $BIN/$b ]] || { echo "missing $PKG/$b.xz"; ok=0; }; done
  sums="not checked (no SHA256SUMS)"
  if [[ -f $PKG/SHA256SUMS ]]; then
    if command -v sha256sum >/dev/null; then
      if (cd "$BIN" && sha256sum -c "$PKG/SHA256SUMS"); then sums="sha256 ok"; else sums="CHECKSUM MISMATCH"; ok=0; fi
    else sums="not checked (no sha256sum)"; fi
  fi
  if ((ok)); then result PASS unpack "$n binaries from $PKG, $sums"
  else result FAIL unpack "$n binaries from $PKG, $sums"; finish; fi
fi
T=$BIN/lintrace-train A=$BIN/lintrace-analyze B=$BIN/lintrace-bench

# ---------------------------------------------------------------- libraries
hdr "libraries"
# candle links cudarc with dynamic-linking: the CUDA libraries are NEEDED entries, so ldd names them
missing_libs() { # libraries ldd cannot resolve, over the binaries
  local b
  for b in "$T" "$A" "$B"; do [[ -x $b ]] && ldd "$b" 2>/dev/null | awk '/=> not found/ {print $1}'; done | sort -u
}
mapfile -t MISSING < <(missing_libs)
echo "unresolved before search: ${MISSING[*]:-none}"
if ((${#MISSING[@]})); then
  SEARCH=()
  IFS=: read -r -a extra <<< "${CUDA_LIB_DIRS:-}"
  for d in "${extra[@]}"; do [[ -n $d ]] && SEARCH+=("$d"); done
  for d in /usr/local/cuda-13.0/targets/x86_64-linux/lib /usr/local/cuda-13*/targets/x86_64-linux/lib \
           /usr/local/cuda/targets/x86_64-linux/lib /usr/local/cuda/lib64 /usr/local/cuda-13*/lib64; do
    [[ -d $d ]] && SEARCH+=("$d")
  done
  # the torch venv's nvidia-* packages (CUDA 13 wheels: nvidia/cu13/lib)
  if [[ -d $TORCH_VENV ]]; then
    while IFS= read -r d; do SEARCH+=("$d"); done < <(find "$TORCH_VENV" -path '*/nvidia/*' \
      \( -name 'libcudart.so.*' -o -name 'libcublas*.so.*' -o -name 'libcurand.so.*' -o -name 'libnvrtc.so.*' -o -name 'libcudnn.so.*' \) \
      -not -path '*/stubs/*' -printf '%h\n' 2>/dev/null | sort -u)
  fi
  # the driver's libcuda.so.1, where containers mount it
  for d in /usr/local/nvidia/lib64 /usr/local/nvidia/lib /usr/lib/x86_64-linux-gnu /usr/lib64; do [[ -d $d ]] && SEARCH+=("$d"); done
  echo "search order:"; printf '  %s\n' "${SEARCH[@]}"
  LIBDIRS=()
  for l in "${MISSING[@]}"; do
    p=""
    for d in "${SEARCH[@]}"; do [[ $d != */stubs* && -e $d/$l ]] && { p=$d/$l; break; }; done
    if [[ -n $p ]]; then
      echo "  $l: $p"
      d=$(dirname "$p"); [[ " ${LIBDIRS[*]} " == *" $d "* ]] || LIBDIRS+=("$d")
    else
      echo "  $l: NOT FOUND"
    fi
  done
  if ((${#LIBDIRS[@]})); then
    LD_LIBRARY_PATH=$(IFS=:; echo "${LIBDIRS[*]}")${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}
    export LD_LIBRARY_PATH
  fi
fi
echo "LD_LIBRARY_PATH=${LD_LIBRARY_PATH:-}"
for b in "$T" "$A" "$B"; do
  [[ -x $b ]] || continue
  echo "--- ldd $(basename "$b")"
  ldd "$b" 2>&1 | tee -a "$LOGS/ldd.txt" | sed 's/^/  /'
done
mapfile -t STILL < <(missing_libs)
if ((${#STILL[@]})); then
  result FAIL libraries "unresolved: ${STILL[*]} (set CUDA_LIB_DIRS or TORCH_VENV)"
elif grep -q 'version .* not found' "$LOGS/ldd.txt" 2>/dev/null; then
  result FAIL libraries "symbol versions missing: $(grep -m1 'version .* not found' "$LOGS/ldd.txt")"
else
  cudart=$(ldd "$A" | awk '/libcudart/ {print $3}')
  result PASS libraries "every library resolves${cudart:+; libcudart: $cudart}"
fi

# ---------------------------------------------------------------- diagnostics
hdr "machine"
uname -srm
# shellcheck disable=SC1091
(. /etc/os-release 2>/dev/null && echo "$PRETTY_NAME")
echo "glibc: $(ldd --version 2>&1 | head -1)"
echo "CPUs: $(nproc 2>/dev/null)  memory: $(awk '/MemTotal/ {printf "%.0f GiB", $2/1048576}' /proc/meminfo 2>/dev/null)"
"$A" --version 2>&1 | sed 's/^/analyze: /'
"$T" --version 2>&1 | sed 's/^/train: /'
if command -v nvidia-smi >/dev/null; then
  timeout 30 nvidia-smi 2>&1 | head -12
  timeout 30 nvidia-smi --query-gpu=name,driver_version,compute_cap,memory.total,memory.used --format=csv 2>&1
fi
if [[ $DEVICE == cuda ]]; then
  drv=$(timeout 30 nvidia-smi --query-gpu=driver_version --format=csv,noheader 2>/dev/null | head -1)
  cc=$(timeout 30 nvidia-smi --query-gpu=compute_cap --format=csv,noheader 2>/dev/null | head -1)
  built_cc=$(grep -oE 'CUDA_COMPUTE_CAP=[0-9]+' "$PKG/BUILD-INFO" 2>/dev/null | cut -d= -f2)
  if [[ -z $drv ]]; then
    result FAIL driver "nvidia-smi gives no driver version (no GPU visible?)"
  elif [[ ! ${drv%%.*} =~ ^[0-9]+$ ]]; then
    result FAIL driver "nvidia-smi gives driver version '$drv'"
  elif ((${drv%%.*} < 580)); then
    result FAIL driver "driver $drv < 580: it cannot load PTX from CUDA 13.0's nvcc (rebuild against an older CUDA toolkit)"
  elif [[ -n $built_cc && -n $cc && ${cc/./} != "$built_cc" ]]; then
    result FAIL driver "driver $drv ok, but the GPU is compute capability $cc and the kernels were built for $built_cc (rebuild with --compute-cap ${cc/./})"
  else
    result PASS driver "driver $drv, compute capability ${cc:-?}${built_cc:+, kernels built for $built_cc}"
  fi
else
  result SKIP driver "DEVICE=cpu dry run"
fi

# ---------------------------------------------------------------- analyzers
"$A" --list > "$LOGS/analyzers.txt" 2>&1
mapfile -t ANALYZERS < <(awk '/^[a-z_]+ v[0-9]+:/ {print $1}' "$LOGS/analyzers.txt")
echo "analyzers (--list): ${ANALYZERS[*]:-none}"

RUNS=$WORK/runs RUNS_CPU=$WORK/runs-cpu
mkdir -p "$RUNS" "$RUNS_CPU"
q() { # q DIR OUT.csv SQL
  local to; to=$(budget "$STEP_TIMEOUT")
  ((to > 0)) || { echo "query not started: TOTAL_TIMEOUT used up" >> "$LOGS/queries.log"; return 124; }
  echo "--- query $1: $3" >> "$LOGS/queries.log"
  timeout -k 10 "$to" "$A" query "$1" "$3" --out "$2" >> "$LOGS/queries.log" 2>&1
}

# ---------------------------------------------------------------- (a) train
# Short runs, each trained on $DEVICE: a CNN and a ResNet (BatchNorm, residual
# blocks, residual_linear_fit) on digits; the modular-addition transformer
# (attention heads, sublayer fits, the one-hot linear surrogate); a
# character-level GPT (next-token prediction at every position, feature-space
# Grams, the bigram surrogate on 131,072 held-out tokens).
declare -A NET_ARGS=(
  [cnn]="--model cnn --conv 16,M --dense 32 --dataset digits"
  [resnet]="--model resnet20 --probe-size 128 --dataset digits"
  [modadd]="--model modadd --dataset modular-addition --modulus 23 --optimizer adamw --lr 0.003 --weight-decay 1 --batch-size 128 --probe-size 256"
  [gpt]="--model gpt-char-tiny --activation gelu --dataset text --optimizer adamw --lr 0.003 --batch-size 64 --probe-size 1024"
)
read -r -a NETS <<< "${NETS:-cnn resnet modadd gpt}"
TRAINED=()
if want train; then
  hdr "train short runs on $DEVICE: ${NETS[*]}"
  for net in "${NETS[@]}"; do
    [[ -n ${NET_ARGS[$net]:-} ]] || { result FAIL "train-$net" "unknown net '$net' in NETS (known: ${!NET_ARGS[*]})"; continue; }
    # shellcheck disable=SC2086  # NET_ARGS holds words
    if run_step "train-$net-$DEVICE" "$T" ${NET_ARGS[$net]} --steps "$TRAIN_STEPS" \
         --seed 0 --device "$DEVICE" --out "$RUNS" --name "$net" --overwrite --quiet; then
      line=$(grep -m1 '^trained' "$LOGS/train-$net-$DEVICE.log")
      ck=$(grep -oE '[0-9]+ checkpoints' <<< "$line")
      loss=""
      if q "$RUNS/$net" "$WORK/trainlog-$net.csv" "SELECT step, loss FROM train_log ORDER BY step DESC LIMIT 1"; then
        loss=$(tail -1 "$WORK/trainlog-$net.csv" | cut -d, -f2)
      fi
      if [[ -n $loss ]] && awk -v l="$loss" 'BEGIN { exit !(l == l + 0 && l > 0 && l < 10) }'; then
        result PASS "train-$net-$DEVICE" "$TRAIN_STEPS steps, ${ck:-? checkpoints}, final train loss $loss, $STEP_S s$([[ $DEVICE == cuda && $net == cnn ]] && echo ' (includes the first CUDA use: PTX JIT)')"
        TRAINED+=("$net")
      else
        result FAIL "train-$net-$DEVICE" "trained but the final train loss is '${loss:-unreadable}' (log $LOGS/queries.log)"
      fi
    else
      result FAIL "train-$net-$DEVICE" "$STEP_WHY"
    fi
  done
fi

# ---------------------------------------------------------------- (b) analyse on both
ANALYZED=()
if want analyze; then
  hdr "analyse the runs with every analyzer: --device $DEVICE, and copies with --device cpu"
  for net in "${TRAINED[@]}"; do
    cp -r "$RUNS/$net" "$RUNS_CPU/$net"
    ok=0
    if run_step "analyze-$net-on-$DEVICE" "$A" "$RUNS/$net" --device "$DEVICE" --quiet; then
      result PASS "analyze-$net-on-$DEVICE" "$(grep -m1 '^analysed' "$LOGS/analyze-$net-on-$DEVICE.log" | cut -c1-160)"; ok=$((ok + 1))
    else result FAIL "analyze-$net-on-$DEVICE" "$STEP_WHY"; fi
    if run_step "analyze-$net-copy-on-cpu" "$A" "$RUNS_CPU/$net" --device cpu --quiet; then
      result PASS "analyze-$net-copy-on-cpu" "$(grep -m1 '^analysed' "$LOGS/analyze-$net-copy-on-cpu.log" | cut -c1-160)"; ok=$((ok + 1))
    else result FAIL "analyze-$net-copy-on-cpu" "$STEP_WHY"; fi
    ((ok == 2)) && ANALYZED+=("$net")
  done
  ((${#TRAINED[@]})) || result SKIP "analyze-on-$DEVICE" "no trained run (train failed or not selected)"
fi

# ---------------------------------------------------------------- (c) compare
# compare_tables KIND REF.csv DEV.csv: join on every column but `value`; print
# one line per metric (worst |diff|, its tolerance) and a final "SUMMARY" line.
# Exit 0 when every row is within tolerance and no row is missing on either side.
compare_tables() {
  awk -F, -v kind="$1" '
    function abs(x) { return x < 0 ? -x : x }
    function log2(x) { return log(x) / log(2) }
    function cls(m) {
      if (("TOL_" m) in ENVIRON) return "override"
      if (m ~ /^(n_units|n_units_varying|n_rows|n_features|linear_prefix_depth)$/) return "count"
      if (m == "mu_mm") return "info4"
      if (m == "n_cells_nonempty") return "cellflip"
      if (m ~ /^(accuracy|agreement|prefix_agreement|suffix_agreement|surrogate_accuracy|network_accuracy|surrogate_train_accuracy|surrogate_probe_accuracy)$/) return "accuracy"
      if (m ~ /^(i_f_y|i_f_y_given_s|mu_bits|prefix_mu_bits|suffix_mu_bits)$/) return "info2"
      if (m == "mu") return "info4"
      if (m ~ /^(frac_always_on|frac_always_off|frac_switching)$/) return "unitflip"
      if (m == "frac_active") return "signflip"
      if (m == "pattern_entropy") return "entropyflip"
      return "continuous"
    }
    # bound(class, a, b, N, units): the largest |a - b| accepted
    function bound(c, a, b, N, u,   mx, t, s) {
      mx = abs(a) > abs(b) ? abs(a) : abs(b)
      if (c == "override") { t = ENVIRON["TOL_" cur_metric] + 0; return t > t * mx ? t : t * mx }
      t = tc > tc * mx ? tc : tc * mx
      if (c == "continuous") return t
      if (c == "count") return tn
      if (N <= 0) return t
      if (c == "accuracy") return flips / N + tn
      if (c == "info2") return flips * 2 * (log2(N) + 2) / N + tn
      if (c == "info4") return flips * 4 * (log2(N) + 2) / N + tn
      if (c == "cellflip") return 2 * flips + tn
      if (u <= 0) return t
      if (c == "unitflip") return flips / u + tn
      if (c == "signflip") { s = flips / (N * u) + tn; return s > t ? s : t }
      if (c == "entropyflip") { s = flips * (log2(N) + 2) / (N * u) + tn; return s > t ? s : t }
      return t
    }
    BEGIN { tc = ENVIRON["TOL_CONT"] + 0; tn = ENVIRON["TOL_COUNT"] + 0; flips = ENVIRON["FLIPS"] + 0; bad = 0 }
    FNR == 1 {
      f++
      if (f == 1) { header = $0; for (i = 1; i <= NF; i++) col[$i] = i; nf = NF }
      else if ($0 != header) { print "FAIL: the two tables have different columns: " header " vs " $0; hdrbad = 1 }
      next
    }
    {
      if (NF != nf) { print "FAIL: unexpected field count in " FILENAME ": " $0; bad = 1; next }
      key = ""
      for (i = 1; i <= NF; i++) if (i != col["value"]) key = key (key == "" ? "" : ",") $i
      if (f == 1) {
        if (key in ref) { dup++; if (dup <= 3) print "duplicate row in the reference: " key }
        ref[key] = $col["value"]; rkey[++nr] = key
        if ($col["analyzer"] == "unit_linear_fit" && $col["metric"] == "n_units")
          units[$col["step"] "," $col["tap"]] = $col["value"]
      } else {
        if (key in dev) { dup++; if (dup <= 3) print "duplicate row on the device: " key }
        dev[key] = $col["value"]; dkey[++nd] = key
      }
    }
    END {
      if (hdrbad) exit 1
      if (nr == 0) { print "FAIL: no rows in the reference table"; exit 1 }
      nidx = ("n_probe" in col) ? col["n_probe"] : col["n_samples"]
      # a key holds the columns without `value`: pos[] maps column numbers to key fields
      j = 0
      for (i = 1; i <= nf; i++) if (i != col["value"]) { j++; pos[i] = j }
      for (k = 1; k <= nr; k++) {
        key = rkey[k]; split(key, v, ",")
        m = v[pos[col["metric"]]]; an = v[pos[col["analyzer"]]]; name = an "/" m
        cur_metric = m
        N = v[pos[nidx]] + 0
        u = ("tap" in col) ? units[v[pos[col["step"]]] "," v[pos[col["tap"]]]] + 0 : 0
        where = "step " v[pos[col["step"]]] (("tap" in col) ? " tap " v[pos[col["tap"]]] : "") (("surrogate" in col && v[pos[col["surrogate"]]] != "") ? " surrogate " v[pos[col["surrogate"]]] : "") (("ref_step" in col && v[pos[col["ref_step"]]] != "") ? " ref_step " v[pos[col["ref_step"]]] : "")
        rows[name]++
        if (!(name in cl)) { cl[name] = cls(m); worst[name] = -1; ratio[name] = 0 }
        if (!(key in dev)) { miss[name]++; nmiss++; if (nmiss <= 5) print "  missing on the device: " key; continue }
        a = ref[key]; b = dev[key]
        if (a == "" && b == "") { nulls[name]++; continue }
        if (a == "" || b == "") { nullbad[name]++; nnullbad++; if (nnullbad <= 5) print "  NULL on one side only: " key " (cpu " (a == "" ? "NULL" : a) ", device " (b == "" ? "NULL" : b) ")"; continue }
        d = abs(a - b); t = bound(cl[name], a + 0, b + 0, N, u)
        r = (t > 0) ? d / t : (d > 0 ? 1e300 : 0)
        if (worst[name] < 0 || r > ratio[name]) { ratio[name] = r; worst[name] = d; tolat[name] = t; at[name] = where " (cpu " a ", device " b ")" }
        if (d > t) over[name]++
      }
      for (k = 1; k <= nd; k++) if (!(dkey[k] in ref)) { extra++; if (extra <= 5) print "  only on the device: " dkey[k] }
      nm = 0; nover = 0; total = 0; worstname = ""; worstratio = -1
      for (name in rows) {
        nm++; total += rows[name]
        status = (over[name] || miss[name] || nullbad[name]) ? "OVER" : "ok"
        if (status == "OVER") nover++
        if (ratio[name] > worstratio) { worstratio = ratio[name]; worstname = name }
        line = sprintf("%-4s %-42s %-11s rows %5d", status, name, cl[name], rows[name])
        if (nulls[name]) line = line sprintf(" (null=null %d)", nulls[name])
        if (worst[name] >= 0) line = line sprintf("  max|diff| %.3g  tol %.3g  at %s", worst[name], tolat[name], at[name])
        else line = line "  (no values compared)"
        if (over[name]) line = line sprintf("  %d over", over[name])
        if (miss[name]) line = line sprintf("  %d missing on the device", miss[name])
        if (nullbad[name]) line = line sprintf("  %d null on one side", nullbad[name])
        print line | "sort -k2"
      }
      close("sort -k2")
      bad = bad || nover > 0 || extra > 0 || dup > 0
      printf "SUMMARY %d rows, %d metrics, %d over tolerance, %d only on the device, %d duplicates; closest to its tolerance: %s (diff/tol %.3g)\n", total, nm, nover, extra + 0, dup + 0, worstname, worstratio
      exit bad
    }' "$2" "$3"
}

if want compare; then
  hdr "compare the $DEVICE analysis with the cpu analysis"
  if ((${#ANALYZED[@]})); then
    # analyzers coverage: every registered analyzer wrote rows on the device,
    # over both runs (residual_linear_fit has rows for the ResNet only)
    : > "$WORK/analyzers-got.txt"
    for net in "${ANALYZED[@]}"; do
      for table in layer_metrics model_metrics; do
        q "$RUNS/$net" "$WORK/analyzers-$net-$table.csv" "SELECT DISTINCT analyzer FROM $table" \
          && tail -n +2 "$WORK/analyzers-$net-$table.csv" >> "$WORK/analyzers-got.txt"
      done
    done
    mapfile -t got < <(sort -u "$WORK/analyzers-got.txt")
    lacking=()
    for a in "${ANALYZERS[@]}"; do
      # residual_linear_fit writes rows for ResNets only
      [[ $a == residual_linear_fit && " ${ANALYZED[*]} " != *" resnet "* ]] && continue
      [[ " ${got[*]} " == *" $a "* ]] || lacking+=("$a")
    done
    if ((${#ANALYZERS[@]} == 0)); then result FAIL analyzers-coverage "lintrace-analyze --list printed no analyzers"
    elif ((${#got[@]} == 0)); then result FAIL analyzers-coverage "query failed (log $LOGS/queries.log)"
    elif ((${#lacking[@]})); then result FAIL analyzers-coverage "no rows on $DEVICE from: ${lacking[*]} (runs: ${ANALYZED[*]})"
    else result PASS analyzers-coverage "all ${#ANALYZERS[@]} analyzers wrote rows on $DEVICE (runs: ${ANALYZED[*]})"; fi
    declare -A SQL=(
      [layer_metrics]="SELECT step, tap, layer_name, analyzer, metric, ref_step, n_probe, value FROM layer_metrics ORDER BY step, tap, layer_name, analyzer, metric, ref_step"
      [model_metrics]="SELECT step, analyzer, metric, surrogate, split, n_samples, value FROM model_metrics ORDER BY step, analyzer, metric, surrogate"
    )
    for net in "${ANALYZED[@]}"; do
    for table in layer_metrics model_metrics; do
      name=compare-$net-$table
      if q "$RUNS_CPU/$net" "$WORK/$net-$table-ref-cpu.csv" "${SQL[$table]}" && q "$RUNS/$net" "$WORK/$net-$table-dev-$DEVICE.csv" "${SQL[$table]}"; then
        echo "--- $net $table: cpu vs $DEVICE ($(($(wc -l < "$WORK/$net-$table-ref-cpu.csv") - 1)) vs $(($(wc -l < "$WORK/$net-$table-dev-$DEVICE.csv") - 1)) rows)"
        compare_tables "$table" "$WORK/$net-$table-ref-cpu.csv" "$WORK/$net-$table-dev-$DEVICE.csv" > "$WORK/$name.txt" 2>&1
        rc=$?
        sed 's/^/  /' "$WORK/$name.txt"
        s=$(grep -m1 '^SUMMARY' "$WORK/$name.txt" | sed 's/^SUMMARY //')
        if ((rc == 0)) && [[ -n $s ]]; then result PASS "$name" "cpu vs $DEVICE: $s"
        else result FAIL "$name" "cpu vs $DEVICE: ${s:-$(head -1 "$WORK/$name.txt")} (see $WORK/$name.txt)"; fi
      else
        result FAIL "$name" "query failed (log $LOGS/queries.log)"
      fi
    done
    done
  else
    result SKIP compare "no pair of analyses (analyze failed or not selected)"
  fi
fi

# ---------------------------------------------------------------- (e) README main job
# shellcheck disable=SC2016  # the script expands its own arguments
IN_DIR='cd "$1" && shift && exec "$@"'   # bash -c "$IN_DIR" _ DIR CMD...: run CMD in DIR
README_RUN=""
if want readme; then
  hdr "the README main job with --device $DEVICE (in $WORK)"
  # as the README runs it, from a folder whose runs/ it writes
  if run_step readme-train bash -c "$IN_DIR" _ "$WORK" \
       "$T" --dataset digits --epochs 20 --name digits-cnn --overwrite --device "$DEVICE"; then
    result PASS readme-train "$(grep -m1 '^trained' "$LOGS/readme-train.log" | sed -E 's/ → .*//' | cut -c1-140); wall $STEP_S s"
    README_RUN=$WORK/runs/digits-cnn
    if run_step readme-analyze bash -c "$IN_DIR" _ "$WORK" \
         "$A" runs/digits-cnn --device "$DEVICE"; then
      result PASS readme-analyze "$(grep -m1 '^analysed' "$LOGS/readme-analyze.log" | cut -c1-140); wall $STEP_S s"
    else
      result FAIL readme-analyze "$STEP_WHY"
    fi
  else
    result FAIL readme-train "$STEP_WHY"
  fi
fi

# ---------------------------------------------------------------- (d) benchmarks
if want bench; then
  hdr "benchmarks: lintrace next to PyTorch on $DEVICE"
  : > "$WORK/bench.txt"
  bench_note() { echo "$*" | tee -a "$WORK/bench.txt"; }
  TORCH_OK=0 TORCH_WHY=""
  if [[ -z $PY ]]; then TORCH_WHY="no python"
  elif ! "$PY" -c 'import torch' >/dev/null 2>&1; then TORCH_WHY="no torch in $PY"
  elif [[ $DEVICE == cuda ]] && ! "$PY" -c 'import sys, torch; sys.exit(not torch.cuda.is_available())' >/dev/null 2>&1; then
    TORCH_WHY="torch in $PY sees no CUDA device"
  else TORCH_OK=1; fi
  ((TORCH_OK)) && bench_note "torch: $("$PY" -c 'import torch; print(torch.__version__, "cuda", torch.version.cuda)' 2>&1)"
  # no network there: numpy/safetensors for torch_analyze.py come from carried wheels
  # (pip download --only-binary=:all: --python-version 3.12 --platform manylinux2014_x86_64 \
  #   numpy safetensors -d .gpu/wheels), installed into $WORK/pylib
  install_py_wheels() {
    [[ -d $PYWHEELS ]] || return 1
    echo "installing numpy/safetensors from $PYWHEELS into $WORK/pylib"
    "$PY" -m pip install --quiet --no-index --find-links "$PYWHEELS" --target "$WORK/pylib" numpy safetensors \
      > "$LOGS/pip-wheels.log" 2>&1 || { tail -3 "$LOGS/pip-wheels.log"; return 1; }
    export PYTHONPATH=$WORK/pylib${PYTHONPATH:+:$PYTHONPATH}
    "$PY" -c 'import numpy, safetensors' >/dev/null 2>&1
  }
  TT=$ROOT/scripts/bench/torch_train_cnn.py TA=$ROOT/scripts/bench/torch_analyze.py
  json_get() { "$PY" -c 'import json, sys
key = sys.argv[2].split(".")
for line in open(sys.argv[1]):
    line = line.strip()
    if not line.startswith("{"): continue
    try: d = json.loads(line)
    except ValueError: continue
    for k in key:
        d = d.get(k) if isinstance(d, dict) else None
    if d is not None: print(d)' "$1" "$2" 2>/dev/null | tail -1; }

  if ((BENCH_CNN)); then
  # d1. lintrace-bench (CIFAR-10)
  LT_IPS="" LT_SPC="" BENCH_RUN=""
  if [[ ! -x $B ]]; then
    result SKIP bench-lintrace "no lintrace-bench binary"
  elif [[ -z $DATA ]]; then
    result SKIP bench-lintrace "DATA not set (CIFAR-10 as an image folder or .tar.gz, e.g. cifar10-jpeg.tar.gz, 19 MB)"
  elif [[ ! -e $DATA ]]; then
    result FAIL bench-lintrace "DATA=$DATA does not exist"
  elif [[ $DEVICE != cpu ]] && ! grep -q -- '--device' <<< "$("$B" --help 2>&1)"; then
    result SKIP bench-lintrace "this lintrace-bench has no --device flag: it would time the CPU, not the GPU"
  else
    dev_args=()
    if grep -q -- '--device' <<< "$("$B" --help 2>&1)"; then dev_args=(--device "$DEVICE"); fi
    # shellcheck disable=SC2086  # BENCH_LT_ARGS holds words
    if run_step bench-lintrace "$B" --data-dir "$DATA" --steps "$BENCH_STEPS" --out "$WORK/bench-runs" "${dev_args[@]}" ${BENCH_LT_ARGS:-}; then
      LT_IPS=$(grep -m1 '^train:' "$LOGS/bench-lintrace.log" | grep -oE '[0-9.]+ images/s' | awk '{print $1}')
      LT_SPC=$(grep -m1 '^analyze: all analyzers' "$LOGS/bench-lintrace.log" | grep -oE '[0-9.]+ s/checkpoint' | awk '{print $1}')
      BENCH_RUN=$WORK/bench-runs/bench
      grep -E '^(train|analyze):' "$LOGS/bench-lintrace.log" >> "$WORK/bench.txt"
      result PASS bench-lintrace "train ${LT_IPS:-?} images/s (default CNN, batch 128); all analyzers ${LT_SPC:-?} s/checkpoint (probe 2048); ${dev_args[*]:-device not selectable: CPU}"
    else
      result FAIL bench-lintrace "$STEP_WHY"
    fi
    # Training again with TF32 convolutions and products (PyTorch's default
    # uses TF32 for its cuDNN convolutions).
    LT_IPS_TF32=""
    if [[ $DEVICE == cuda ]] && grep -q -- '--tf32' <<< "$("$B" --help 2>&1)"; then
      if run_step bench-lintrace-tf32 "$B" --data-dir "$DATA" --steps "$BENCH_STEPS" --out "$WORK/bench-runs-tf32" "${dev_args[@]}" --tf32 --no-analysis; then
        LT_IPS_TF32=$(grep -m1 '^train:' "$LOGS/bench-lintrace-tf32.log" | grep -oE '[0-9.]+ images/s' | awk '{print $1}')
        grep -E '^train:' "$LOGS/bench-lintrace-tf32.log" | sed 's/^/tf32 /' >> "$WORK/bench.txt"
        result PASS bench-lintrace-tf32 "train ${LT_IPS_TF32:-?} images/s with --tf32"
      else
        result FAIL bench-lintrace-tf32 "$STEP_WHY"
      fi
    fi
  fi

  # d1b. the default CNN's convolutions and max pool, forward and
  # forward+backward, on each path the build has (cuDNN ops of
  # src/nn/ops/cudnn.rs, then candle's), each checked against the CPU build
  # (values and gradients; "check ... FAIL" fails the step), in strict fp32
  # and with --tf32. Then one training step split into its phases.
  if ((!BENCH_KERNELS)); then
    result SKIP bench-conv "BENCH_KERNELS=0"
  elif [[ -x $B ]] && grep -q -- '--kernels' <<< "$("$B" --help 2>&1)"; then
    for v in fp32 tf32; do
      targs=(); [[ $v == tf32 ]] && targs=(--tf32)
      if run_step "bench-conv-$v" "$B" --kernels --device "$DEVICE" --batch-size 128 "${targs[@]}"; then
        grep -E '^(conv|max-pool|check)' "$LOGS/bench-conv-$v.log" | sed "s/^/kernels $v: /" >> "$WORK/bench.txt"
        if grep -q '^check .* FAIL$' "$LOGS/bench-conv-$v.log"; then
          result FAIL "bench-conv-$v" "$(grep -m1 '^check .* FAIL$' "$LOGS/bench-conv-$v.log")"
        else
          result PASS "bench-conv-$v" "$(grep -c '^check .* ok$' "$LOGS/bench-conv-$v.log") checks ok; $(grep -m1 -E '^conv 32->64' "$LOGS/bench-conv-$v.log" | sed 's/, batch 128//')"
        fi
      else
        result FAIL "bench-conv-$v" "$STEP_WHY"
      fi
      if grep -q -- '--phases' <<< "$("$B" --help 2>&1)"; then
        if run_step "bench-phases-$v" "$B" --phases --device "$DEVICE" --batch-size 128 --steps "$BENCH_STEPS" "${targs[@]}"; then
          grep -E '^(phases|steps)' "$LOGS/bench-phases-$v.log" | sed "s/^/training step $v: /" >> "$WORK/bench.txt"
          result PASS "bench-phases-$v" "$(grep -E '^(phases|steps)' "$LOGS/bench-phases-$v.log" | tr '\n' ' ')"
        else
          result FAIL "bench-phases-$v" "$STEP_WHY"
        fi
      fi
    done
  else
    result SKIP bench-conv "no lintrace-bench with --kernels"
  fi

  # d2. torch_train_cnn.py (synthetic CIFAR-shaped data), with lintrace's number beside it
  if [[ ! -f $TT ]]; then
    result SKIP bench-torch-train "scripts/bench/torch_train_cnn.py not present"
  elif ((!TORCH_OK)); then
    result SKIP bench-torch-train "$TORCH_WHY"
  else
    cmp=()
    if [[ -n $LT_IPS ]]; then echo "{\"images_per_s\": $LT_IPS}" > "$WORK/lintrace-train.json"; cmp=(--compare-json "$WORK/lintrace-train.json"); fi
    # fp32 = PyTorch's defaults (TF32 convolutions on a GPU), fp32-strict =
    # no TF32 anywhere (as lintrace without --tf32), bf16 = autocast.
    dtypes=(fp32); [[ $DEVICE == cuda ]] && dtypes+=(fp32-strict bf16)
    for dt in "${dtypes[@]}"; do
      targs=(--dtype "$dt")
      [[ $dt == fp32-strict ]] && targs=(--dtype fp32 --tf32 off)
      if run_step "bench-torch-train-$dt" "$PY" "$TT" --device "$DEVICE" --batch 128 --steps "$BENCH_STEPS" \
           "${targs[@]}" --threads "$TORCH_THREADS" "${cmp[@]}"; then
        ips=$(json_get "$LOGS/bench-torch-train-$dt.log" images_per_s | awk '{ printf "%.1f", $1 }')
        grep '^{' "$LOGS/bench-torch-train-$dt.log" | tail -1 >> "$WORK/bench.txt"
        if [[ -n $LT_IPS && -n $ips ]]; then
          tf=""; [[ -n ${LT_IPS_TF32:-} ]] && tf=", lintrace --tf32 $LT_IPS_TF32 images/s: $(awk -v a="$LT_IPS_TF32" -v b="$ips" 'BEGIN { printf "%.3f", a / b }')"
          result PASS "bench-torch-train-$dt" "torch $ips images/s, lintrace $LT_IPS images/s (fp32): lintrace/torch = $(awk -v a="$LT_IPS" -v b="$ips" 'BEGIN { printf "%.3f", a / b }')$tf"
        else
          result PASS "bench-torch-train-$dt" "torch ${ips:-?} images/s (default CNN, batch 128, $BENCH_STEPS steps); no lintrace number to compare (lintrace-bench skipped)"
        fi
      else
        result FAIL "bench-torch-train-$dt" "$STEP_WHY"
      fi
    done
  fi

  # d3. torch_analyze.py next to lintrace-analyze, on the same run folder
  if [[ ! -f $TA ]]; then
    result SKIP bench-torch-analyze "scripts/bench/torch_analyze.py not present"
  elif ((!TORCH_OK)); then
    result SKIP bench-torch-analyze "$TORCH_WHY"
  elif ! "$PY" -c 'import numpy, safetensors' >/dev/null 2>&1 && ! install_py_wheels; then
    result SKIP bench-torch-analyze "$PY lacks numpy or safetensors (torch_analyze.py needs both; carry wheels in $PYWHEELS)"
  else
    # CIFAR-10: the bench run (steps 0 and last, probe 2048, mu on 10,000 inputs) vs lintrace-bench
    if [[ -n $BENCH_RUN && -n $LT_SPC ]]; then
      if run_step bench-torch-analyze-cifar "$PY" "$TA" "$BENCH_RUN" --device "$DEVICE" --threads "$TORCH_THREADS" --mode together; then
        ts=$(json_get "$LOGS/bench-torch-analyze-cifar.log" summary.seconds_per_checkpoint_together | awk '{ printf "%.2f", $1 }')
        grep '"summary"' "$LOGS/bench-torch-analyze-cifar.log" | tail -1 >> "$WORK/bench.txt"
        result PASS bench-torch-analyze-cifar "all analyzers per checkpoint: lintrace $LT_SPC s, torch ${ts:-?} s: torch/lintrace time = $(awk -v a="$LT_SPC" -v b="${ts:-0}" 'BEGIN { if (a > 0 && b > 0) printf "%.3f", b / a; else printf "?" }') (>1: lintrace faster)"
      else
        result FAIL bench-torch-analyze-cifar "$STEP_WHY"
      fi
    fi
    # digits: the README run, every checkpoint, lintrace again with --force (warm: no JIT) vs torch
    if [[ -n $README_RUN && -d $README_RUN ]]; then
      nsteps=$(find "$README_RUN/checkpoints" -name 'step_*.safetensors' | wc -l)
      if run_step bench-lintrace-analyze-digits "$A" "$README_RUN" --device "$DEVICE" --force --quiet; then
        lts=$STEP_S
        if run_step bench-torch-analyze-digits "$PY" "$TA" "$README_RUN" --steps all --device "$DEVICE" \
             --threads "$TORCH_THREADS" --mode together --mu-samples 359; then
          tt=$(json_get "$LOGS/bench-torch-analyze-digits.log" summary.seconds_total_together | awk '{ printf "%.1f", $1 }')
          tsu=$(json_get "$LOGS/bench-torch-analyze-digits.log" summary.setup_seconds | awk '{ printf "%.1f", $1 }')
          grep '"summary"' "$LOGS/bench-torch-analyze-digits.log" | tail -1 >> "$WORK/bench.txt"
          bench_note "digits README run, $nsteps checkpoints, all analyzers: lintrace-analyze --force $lts s (whole command), torch_analyze.py ${tt:-?} s (+ setup ${tsu:-?} s, + python/torch start)"
          result PASS bench-analyze-digits "$nsteps checkpoints, all analyzers: lintrace $lts s (whole command) vs torch ${tt:-?} s analysing (+ ${tsu:-?} s setup, mu on 359 inputs): torch/lintrace time = $(awk -v a="$lts" -v b="${tt:-0}" 'BEGIN { if (a > 0 && b > 0) printf "%.3f", b / a; else printf "?" }') (>1: lintrace faster)"
        else
          result FAIL bench-analyze-digits "torch_analyze.py: $STEP_WHY"
        fi
      else
        result FAIL bench-analyze-digits "lintrace-analyze --force: $STEP_WHY"
      fi
    else
      result SKIP bench-analyze-digits "no README run (readme check failed or not selected)"
    fi
  fi
  fi  # BENCH_CNN

  # d4. transformers: lintrace-bench and torch_train_cnn.py on the same model
  for m in "${BENCH_MODEL_LIST[@]}"; do
    case $m in
      gpt-char-*) bargs=(--batch-size 64 --no-analysis); unit=tokens; tbatch=64 ;;
      *) bargs=(--batch-size 128 --no-analysis --data-dir "$DATA"); unit=images; tbatch=128 ;;
    esac
    if [[ ! -x $B ]]; then result SKIP "bench-$m" "no lintrace-bench binary"; continue; fi
    if [[ $unit == images && -z $DATA ]]; then result SKIP "bench-$m" "DATA not set (CIFAR-10)"; continue; fi
    lt=""
    if run_step "bench-$m-lintrace" "$B" --model "$m" --activation gelu --steps "$BENCH_STEPS" \
         --out "$WORK/bench-$m" --device "$DEVICE" "${bargs[@]}"; then
      lt=$(grep -m1 '^train:' "$LOGS/bench-$m-lintrace.log" | grep -oE "[0-9.]+ $unit/s" | awk '{print $1}')
      lf=$(grep -m1 '^forward:' "$LOGS/bench-$m-lintrace.log" | grep -oE "[0-9.]+ $unit/s" | awk '{print $1}')
      grep -E '^(train|forward):' "$LOGS/bench-$m-lintrace.log" | sed "s/^/$m lintrace /" >> "$WORK/bench.txt"
    else
      result FAIL "bench-$m" "lintrace-bench: $STEP_WHY"; continue
    fi
    if [[ ! -f $TT ]] || ((!TORCH_OK)); then result PASS "bench-$m" "lintrace ${lt:-?} $unit/s training, ${lf:-?} forward; no torch peer (${TORCH_WHY:-no torch_train_cnn.py})"; continue; fi
    line="lintrace ${lt:-?} $unit/s (forward ${lf:-?})"
    dts=(fp32); [[ $DEVICE == cuda ]] && dts+=(bf16)
    for dt in "${dts[@]}"; do
      for mode in train forward; do
        [[ $mode == forward && $dt == bf16 ]] && continue
        fwd=(); [[ $mode == forward ]] && fwd=(--forward)
        if run_step "bench-$m-torch-$mode-$dt" "$PY" "$TT" --model "$m" --device "$DEVICE" --batch "$tbatch" \
             --steps "$BENCH_STEPS" --dtype "$dt" --threads "$TORCH_THREADS" "${fwd[@]}"; then
          key=images_per_s; [[ $unit == tokens ]] && key=tokens_per_s
          r=$(json_get "$LOGS/bench-$m-torch-$mode-$dt.log" "$key" | awk '{ printf "%.1f", $1 }')
          grep '^{' "$LOGS/bench-$m-torch-$mode-$dt.log" | tail -1 >> "$WORK/bench.txt"
          mine=$lt; [[ $mode == forward ]] && mine=$lf
          ratio=$(awk -v a="${mine:-0}" -v b="${r:-0}" 'BEGIN { if (a > 0 && b > 0) printf "%.3f", a / b; else printf "?" }')
          line="$line; torch $mode $dt ${r:-?} (lintrace/torch $ratio)"
        else
          line="$line; torch $mode $dt failed"
        fi
      done
    done
    result PASS "bench-$m" "$line"
  done

fi

finish
