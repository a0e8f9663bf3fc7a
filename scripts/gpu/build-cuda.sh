#!/usr/bin/env bash
# Build lintrace with `--features cuda` (this checkout, no clone) and optionally
# pack the binaries for a GPU machine that has no Rust. See scripts/gpu/README.md.
set -euo pipefail

usage() {
  cat <<'EOF'
Usage: scripts/gpu/build-cuda.sh [OPTIONS] [-- EXTRA_CARGO_ARGS...]

Run from the project root. Builds this checkout with
    cargo build --release --features cuda --bins
into a separate target dir, so the CPU build in target/release is untouched.

CUDA toolkit (--toolkit auto, the default):
  * system   used when CUDA_HOME is set (with bin/nvcc) or nvcc is on PATH.
  * wheels   otherwise: NVIDIA's CUDA 13.0 wheels from PyPI (exact versions
             below) are downloaded with pip and unpacked into a prefix that
             serves as CUDA_HOME (nvcc, cicc, headers, libraries with
             unversioned .so links, lib64 -> lib). No wheel ships the driver's
             libcuda.so, so a link-time stub is built (lib/stubs/libcuda.so,
             soname libcuda.so.1, every entry point returns
             CUDA_ERROR_NO_DEVICE). The stub is only linked against, never
             packed: on the GPU machine the driver's libcuda.so.1 is loaded.
             Needs python3 with pip, gcc and unzip, and network access to PyPI.

Options:
  --target-dir DIR     cargo target dir (default target/cuda; env CUDA_TARGET_DIR)
  --toolkit MODE       auto | system | wheels (default auto; env CUDA_TOOLKIT)
  --prefix DIR         where the wheels are unpacked (default
                       ${XDG_CACHE_HOME:-~/.cache}/lintrace/cuda-13.0; env CUDA_PREFIX)
  --wheels DIR         where the wheels are downloaded (default PREFIX/wheels; env CUDA_WHEELS)
  --compute-cap N      GPU compute capability without the dot (default 90 = H100/H200;
                       80 A100, 86 RTX 30xx/A40, 89 L4/L40/RTX 40xx, 120 RTX 50xx;
                       env CUDA_COMPUTE_CAP). The kernels are compiled for that one
                       architecture (sm_90a for 90): they do not run on other GPUs.
  --glibc-compat       relink the binaries so hypot/hypotf bind to hypot@GLIBC_2.2.5
                       (glibc 2.35 gave them a new symbol version): then the
                       binaries need glibc 2.34 at most, for GPU machines whose glibc
                       is older than this one's. Off by default.
  --cudnn              build --features cudnn (implies cuda): convolutions and
                       max pooling run as cuDNN 9 calls with cached plans
                       (src/nn/ops/cudnn.rs), and the binaries then need
                       libcudnn.so.9 at run time (e.g. PyTorch's
                       nvidia-cudnn-cu13 package). Off by default until it is
                       measured on a GPU (BENCHMARKS.md, "GPU")
  --pack [DIR]         after building, strip and xz the binaries into DIR (default
                       .gpu, added to .git/info/exclude) with SHA256SUMS and BUILD-INFO.
                       Unpack and check them there with scripts/gpu/gpu-check.sh.
  --steps "LIST"       run only these steps, in this order (default: toolkit stub
                       build relink check pack; relink only with --glibc-compat,
                       pack only with --pack). E.g. --steps "pack" --pack to repack.
  -j, --jobs N         cargo build jobs (default: cargo's)
  --no-locked          let cargo update Cargo.lock (default: --locked, as CI builds)
  --nice N             run the heavy commands under nice -n N (default 10; env NICE)
  -h, --help           this text

Environment passed through: CUDAFORGE_THREADS (parallel nvcc processes while
candle's kernels compile; default ceil(cores/2)), CARGO_HOME, RUSTFLAGS.

The wheels (CUDA 13.0.x only: PTX from a newer nvcc can be refused by a
driver that supports only CUDA 13.0, i.e. driver 580):
  nvidia-cuda-nvcc==13.0.88 nvidia-nvvm==13.0.88 nvidia-cuda-crt==13.0.88
  nvidia-cuda-runtime==13.0.88 nvidia-cuda-cccl==13.0.85
  nvidia-cuda-nvrtc==13.0.88 nvidia-cublas==13.0.0.19 nvidia-curand==10.4.0.35
  and, with --cudnn, nvidia-cudnn-cu13==9.28.1.4 (only libcudnn.so.9 is unpacked:
  it is linked against; any cuDNN 9 serves at run time)

Examples:
  scripts/gpu/build-cuda.sh --pack                 # build + pack into .gpu/
  CUDA_HOME=/usr/local/cuda-12.4 scripts/gpu/build-cuda.sh --compute-cap 80
  scripts/gpu/build-cuda.sh --steps pack --pack    # repack an earlier build

A first build takes long: about 97 minutes on 2 cores (about 36 of them in
nvcc compiling candle's kernels); later builds reuse the target dir.
EOF
}

# ----------------------------------------------------------------- options
ROOT=$PWD
TARGET_DIR=${CUDA_TARGET_DIR:-target/cuda}
TOOLKIT=${CUDA_TOOLKIT:-auto}
PREFIX=${CUDA_PREFIX:-${XDG_CACHE_HOME:-$HOME/.cache}/lintrace/cuda-13.0}
WHEELS=${CUDA_WHEELS:-}
COMPUTE_CAP=${CUDA_COMPUTE_CAP:-90}
GLIBC_COMPAT=0
PACK=0
PACK_DIR=.gpu
STEPS=""
JOBS=""
NICE=${NICE:-10}
EXTRA_CARGO=()
LOCKED=(--locked)
FEATURES=cuda

while (($#)); do
  case $1 in
    -h|--help) usage; exit 0 ;;
    --target-dir) TARGET_DIR=${2:?--target-dir needs a value}; shift 2 ;;
    --target-dir=*) TARGET_DIR=${1#*=}; shift ;;
    --toolkit) TOOLKIT=${2:?--toolkit needs a value}; shift 2 ;;
    --toolkit=*) TOOLKIT=${1#*=}; shift ;;
    --prefix) PREFIX=${2:?--prefix needs a value}; shift 2 ;;
    --prefix=*) PREFIX=${1#*=}; shift ;;
    --wheels) WHEELS=${2:?--wheels needs a value}; shift 2 ;;
    --wheels=*) WHEELS=${1#*=}; shift ;;
    --compute-cap) COMPUTE_CAP=${2:?--compute-cap needs a value}; shift 2 ;;
    --compute-cap=*) COMPUTE_CAP=${1#*=}; shift ;;
    --glibc-compat) GLIBC_COMPAT=1; shift ;;
    --cudnn) FEATURES=cudnn; shift ;;
    --pack)
      PACK=1
      if [[ ${2:-} != "" && ${2:-} != -* ]]; then PACK_DIR=$2; shift; fi
      shift ;;
    --pack=*) PACK=1; PACK_DIR=${1#*=}; shift ;;
    --steps) STEPS=${2:?--steps needs a value}; shift 2 ;;
    --steps=*) STEPS=${1#*=}; shift ;;
    -j|--jobs) JOBS=${2:?--jobs needs a value}; shift 2 ;;
    --jobs=*) JOBS=${1#*=}; shift ;;
    --no-locked) LOCKED=(); shift ;;
    --nice) NICE=${2:?--nice needs a value}; shift 2 ;;
    --nice=*) NICE=${1#*=}; shift ;;
    --) shift; EXTRA_CARGO=("$@"); break ;;
    *) printf 'build-cuda: unknown option %s (see --help)\n' "$1" >&2; exit 2 ;;
  esac
done

log() { printf '\n=== %s  %s\n' "$(date +%H:%M:%S)" "$*"; }
info() { printf '  %s\n' "$*"; }
die() { printf '\nbuild-cuda: error: %s\n' "$*" >&2; exit 1; }
need() { # need CMD HINT
  command -v "$1" >/dev/null 2>&1 || die "'$1' is not installed or not on PATH: $2"
}
abspath() { case $1 in /*) printf '%s\n' "$1" ;; *) printf '%s\n' "$ROOT/$1" ;; esac; }

if ! { [[ -f $ROOT/Cargo.toml ]] && grep -q '^name = "lintrace"' "$ROOT/Cargo.toml"; }; then
  die "run this from the lintrace project root (the folder with its Cargo.toml)"
fi
[[ $COMPUTE_CAP =~ ^[0-9]+$ ]] || die "--compute-cap must be digits, e.g. 90 (got '$COMPUTE_CAP')"
[[ $NICE =~ ^-?[0-9]+$ ]] || die "--nice must be a number (got '$NICE')"
case $TOOLKIT in auto|system|wheels) ;; *) die "--toolkit must be auto, system or wheels (got '$TOOLKIT')" ;; esac
TARGET_DIR=$(abspath "$TARGET_DIR")
PREFIX=$(abspath "$PREFIX")
PACK_DIR=$(abspath "$PACK_DIR")
WHEELS=$(abspath "${WHEELS:-$PREFIX/wheels}")
if [[ -z $STEPS ]]; then
  STEPS="toolkit stub build"
  ((GLIBC_COMPAT)) && STEPS+=" relink"
  STEPS+=" check"
  ((PACK)) && STEPS+=" pack"
fi
for s in $STEPS; do
  case $s in toolkit|stub|build|relink|check|pack) ;; *) die "unknown step '$s' (toolkit stub build relink check pack)" ;; esac
done
want() { [[ " $STEPS " == *" $1 "* ]]; }

# Binaries: train and analyze are required, the others are packed when built.
REQUIRED_BINS=(lintrace-train lintrace-analyze)
ALL_BINS=()
for f in "$ROOT"/src/bin/*.rs; do f=${f##*/}; ALL_BINS+=("${f%.rs}"); done
# lintrace-query (queries, figures, report; its own crate, no GPU code) is
# built with them: the GPU check compares tables through `lintrace-analyze query`.
ALL_BINS+=(lintrace-query)
# Cargo arguments that select binary $1 with its package's features.
bin_args() { if [[ $1 == lintrace-query ]]; then echo "-p lintrace-query --bin $1"; else echo "-p lintrace --features $FEATURES --bin $1"; fi; }

# CUDA 13.0.x only: PTX from a newer nvcc may be refused by driver 580 (CUDA 13.0).
WHEEL_SPECS=(
  nvidia-cuda-nvcc==13.0.88      # nvcc, ptxas, fatbinary, nvlink, cudafe++
  nvidia-nvvm==13.0.88           # cicc, libnvvm, libdevice (nvcc needs them)
  nvidia-cuda-crt==13.0.88       # include/crt/*
  nvidia-cuda-runtime==13.0.88   # cuda_runtime.h, cuda.h, libcudart.so.13
  nvidia-cuda-cccl==13.0.85      # include/cccl (nvcc's -isystem)
  nvidia-cuda-nvrtc==13.0.88     # libnvrtc.so.13 (linked by cudarc)
  nvidia-cublas==13.0.0.19       # libcublas.so.13, libcublasLt.so.13 (linked)
  nvidia-curand==10.4.0.35       # libcurand.so.10 (linked); CUDA 13.0's cuRAND
)
# cuDNN: only its small dispatcher libcudnn.so.9 is unpacked (linked against);
# the engines (~900 MB) are loaded from the GPU machine's own cuDNN 9.
CUDNN_WHEEL=nvidia-cudnn-cu13==9.28.1.4
[[ $FEATURES == cudnn ]] && WHEEL_SPECS+=("$CUDNN_WHEEL")
UNVERSIONED_LIBS=(libcudart.so.13 libcublas.so.13 libcublasLt.so.13 libcurand.so.10 libnvrtc.so.13 libnvvm.so.4)

# ----------------------------------------------------------------- toolkit choice
MODE=""
CUDA_HOME_USED=""
choose_toolkit() {
  [[ -n $MODE ]] && return 0
  local sys_home=""
  if [[ -n ${CUDA_HOME:-} && -x ${CUDA_HOME}/bin/nvcc ]]; then
    sys_home=$CUDA_HOME
  elif [[ -n ${CUDA_PATH:-} && -x ${CUDA_PATH}/bin/nvcc ]]; then
    sys_home=$CUDA_PATH
  elif command -v nvcc >/dev/null 2>&1; then
    sys_home=$(cd "$(dirname "$(readlink -f "$(command -v nvcc)")")/.." && pwd)
  fi
  if [[ -n ${CUDA_HOME:-} && -z $sys_home && $TOOLKIT != wheels ]]; then
    die "CUDA_HOME=$CUDA_HOME has no bin/nvcc (unset it to build from the CUDA 13.0 wheels)"
  fi
  case $TOOLKIT in
    system) [[ -n $sys_home ]] || die "--toolkit system: no nvcc on PATH and no CUDA_HOME"; MODE=system ;;
    wheels) MODE=wheels ;;
    auto) if [[ -n $sys_home ]]; then MODE=system; else MODE=wheels; fi ;;
  esac
  if [[ $MODE == system ]]; then CUDA_HOME_USED=$sys_home; else CUDA_HOME_USED=$PREFIX/cuda; fi
}

# Exported environment for nvcc, cudaforge (candle-kernels' build script) and the linker.
cuda_env() {
  [[ -n ${_CUDA_ENV_SET:-} ]] && return 0
  _CUDA_ENV_SET=1
  choose_toolkit
  export CUDA_HOME=$CUDA_HOME_USED CUDA_PATH=$CUDA_HOME_USED CUDA_ROOT=$CUDA_HOME_USED
  export PATH=$CUDA_HOME/bin:$PATH
  local libdir=$CUDA_HOME/lib64
  [[ -d $libdir ]] || libdir=$CUDA_HOME/lib
  [[ -d $CUDA_HOME/targets/x86_64-linux/lib ]] && libdir=$CUDA_HOME/targets/x86_64-linux/lib
  export LIBRARY_PATH=$libdir${LIBRARY_PATH:+:$LIBRARY_PATH}
  # No driver on this machine: link against a stub libcuda.so.
  if ! ldconfig -p 2>/dev/null | grep -q 'libcuda\.so '; then
    local stubs
    for stubs in "$libdir/stubs" "$CUDA_HOME/lib64/stubs" "$CUDA_HOME/lib/stubs"; do
      if [[ -e $stubs/libcuda.so ]]; then export LIBRARY_PATH=$LIBRARY_PATH:$stubs; break; fi
    done
  fi
  export CUDA_COMPUTE_CAP=$COMPUTE_CAP
  export CARGO_TARGET_DIR=$TARGET_DIR
  [[ -n ${CUDAFORGE_THREADS:-} ]] && export CUDAFORGE_THREADS
  return 0
}

nvcc_version() { nvcc --version 2>/dev/null | grep -oE 'release [0-9]+\.[0-9]+' | awk '{print $2}'; }

# ----------------------------------------------------------------- steps
wheel_file() { # spec -> path of the downloaded wheel, or nothing
  local name=${1%%==*} ver=${1##*==} f
  for f in "$WHEELS/${name//-/_}-${ver}-"*.whl; do [[ -e $f ]] && { printf '%s\n' "$f"; return 0; }; done
  return 0
}

step_toolkit() {
  choose_toolkit
  if [[ $MODE == system ]]; then
    log "toolkit: system CUDA at $CUDA_HOME_USED"
    cuda_env
    local v; v=$(nvcc_version)
    info "nvcc $v ($(command -v nvcc))"
    info "the kernels' PTX needs a driver that supports CUDA ${v:-?} or newer"
    [[ -e $CUDA_HOME/include/cuda_runtime.h ]] || die "$CUDA_HOME/include/cuda_runtime.h missing: incomplete toolkit"
    return 0
  fi
  log "toolkit: CUDA 13.0 wheels -> $PREFIX (CUDA_HOME=$PREFIX/cuda)"
  need python3 "install Python 3 (e.g. apt-get install python3 python3-pip)"
  python3 -m pip --version >/dev/null 2>&1 || die "pip is missing: install it (apt-get install python3-pip, or python3 -m ensurepip)"
  need unzip "install it (apt-get install unzip)"
  need gcc "install it (apt-get install gcc): nvcc needs a host compiler"
  need g++ "install it (apt-get install g++): nvcc needs a host C++ compiler"
  local stamp=$PREFIX/.wheels-unpacked
  if [[ -x $PREFIX/cuda/bin/nvcc && -f $stamp && $(cat "$stamp") == "${WHEEL_SPECS[*]}" ]]; then
    info "already unpacked (remove $PREFIX to redo)"
  else
    info "downloading wheels -> $WHEELS"
    mkdir -p "$WHEELS"
    local s missing=()
    for s in "${WHEEL_SPECS[@]}"; do [[ -n $(wheel_file "$s") ]] || missing+=("$s"); done
    if ((${#missing[@]})); then
      nice -n "$NICE" python3 -m pip download --no-deps --only-binary=:all: \
        --platform manylinux2014_x86_64 --platform manylinux_2_17_x86_64 \
        --platform manylinux_2_27_x86_64 --platform manylinux_2_28_x86_64 \
        --python-version 3.11 -d "$WHEELS" "${missing[@]}" \
        || die "pip download failed (network access to PyPI needed; or put the wheels in $WHEELS)"
    fi
    for s in "${WHEEL_SPECS[@]}"; do
      local f; f=$(wheel_file "$s"); [[ -n $f ]] || die "wheel $s missing after download"
      info "$s  $(basename "$f")"
    done
    info "unpacking"
    rm -rf "$PREFIX/root" "$PREFIX/cuda" "$stamp"; mkdir -p "$PREFIX/root"
    for s in "${WHEEL_SPECS[@]}"; do
      if [[ $s == "$CUDNN_WHEEL" ]]; then
        nice -n "$NICE" unzip -q -o "$(wheel_file "$s")" 'nvidia/cudnn/lib/libcudnn.so.9' -d "$PREFIX/root"
      else
        nice -n "$NICE" unzip -q -o "$(wheel_file "$s")" 'nvidia/*' -d "$PREFIX/root"
      fi
    done
    [[ -d $PREFIX/root/nvidia/cu13 ]] || die "the wheels did not unpack to nvidia/cu13 (layout changed?)"
    chmod +x "$PREFIX"/root/nvidia/cu13/bin/* "$PREFIX"/root/nvidia/cu13/nvvm/bin/* 2>/dev/null || true
    # not needed: nvblas, the .alt nvrtc builds
    rm -f "$PREFIX"/root/nvidia/cu13/lib/{libnvblas*,libnvrtc.alt*,libnvrtc-builtins.alt*}
    ln -s root/nvidia/cu13 "$PREFIX/cuda"
    ln -s lib "$PREFIX/cuda/lib64"
    mkdir -p "$PREFIX/cuda/lib/stubs"
    local l
    for l in "${UNVERSIONED_LIBS[@]}"; do
      [[ -e $PREFIX/cuda/lib/$l ]] || die "$l not in the wheels"
      ln -sf "$l" "$PREFIX/cuda/lib/${l%%.so.*}.so"
    done
    if [[ $FEATURES == cudnn ]]; then
      [[ -e $PREFIX/root/nvidia/cudnn/lib/libcudnn.so.9 ]] || die "libcudnn.so.9 not in the cuDNN wheel"
      ln -sf ../../cudnn/lib/libcudnn.so.9 "$PREFIX/cuda/lib/libcudnn.so.9"
      ln -sf libcudnn.so.9 "$PREFIX/cuda/lib/libcudnn.so"
    fi
    [[ -e $PREFIX/cuda/include/cuda_runtime.h && -e $PREFIX/cuda/include/crt/host_config.h ]] \
      || die "cuda_runtime.h or crt/ headers missing"
    [[ -x $PREFIX/cuda/nvvm/bin/cicc ]] || die "cicc missing (nvidia-nvvm wheel)"
    printf '%s' "${WHEEL_SPECS[*]}" > "$stamp"
  fi
  cuda_env
  info "nvcc $(nvcc_version) at $(command -v nvcc)"
  # nvcc works end to end: PTX and an object (ptxas, fatbinary, host gcc)
  local t arch=$COMPUTE_CAP
  ((COMPUTE_CAP >= 90)) && arch=${COMPUTE_CAP}a
  t=$(mktemp -d)
  printf '#include <cuda_fp16.h>\n#include <cuda_bf16.h>\nextern "C" __global__ void k(float *x) { x[threadIdx.x] = __half2float(__float2half(1.f)); }\n' > "$t/k.cu"
  nvcc "-gencode=arch=compute_$arch,code=sm_$arch" --ptx -std=c++17 -o "$t/k.ptx" "$t/k.cu" \
    || die "nvcc cannot compile PTX for compute_${arch}"
  nvcc "-gencode=arch=compute_$arch,code=sm_$arch" -c -Xcompiler -fPIC -o "$t/k.o" "$t/k.cu" \
    || die "nvcc cannot compile an object for sm_${arch}"
  info "nvcc ok: $(grep -m1 '^\.version' "$t/k.ptx") $(grep -m1 '^\.target' "$t/k.ptx")"
  rm -rf "$t"
}

step_stub() {
  choose_toolkit
  if [[ $MODE == system ]]; then
    log "stub: system toolkit, nothing to do"
    return 0
  fi
  log "stub libcuda.so -> $PREFIX/cuda/lib/stubs (link time only, never packed)"
  need gcc "install it (apt-get install gcc)"
  need cargo "install Rust (https://rustup.rs)"
  cuda_env
  # cudarc's sources (its driver bindings list the entry points it may call)
  (cd "$ROOT" && cargo fetch -q "${LOCKED[@]}") || die "cargo fetch failed"
  local t ver dir
  t=$(mktemp -d)
  # driver entry points: cuda.h as preprocessed (so cuFoo -> cuFoo_v2 etc.) ...
  echo '#include <cuda.h>' | gcc -E -P -I "$CUDA_HOME/include" - \
    | grep -oE '\bcu[A-Z][A-Za-z0-9_]*[[:space:]]*\(' | tr -d ' \t(' > "$t/names"
  sort -u "$t/names" > "$PREFIX/cuda-h-driver-symbols.txt"
  # ... and every name cudarc's driver bindings may call (superset over versions)
  ver=$(awk '/^name = "cudarc"/{getline; gsub(/"/,"",$3); print $3}' "$ROOT/Cargo.lock")
  dir=""
  for d in "${CARGO_HOME:-$HOME/.cargo}"/registry/src/*/"cudarc-$ver"; do [[ -d $d ]] && { dir=$d; break; }; done
  if [[ -n $dir && -f $dir/src/driver/sys/mod.rs ]]; then
    grep -oE 'pub unsafe fn cu[A-Za-z0-9_]+' "$dir/src/driver/sys/mod.rs" | awk '{print $4}' >> "$t/names"
  else
    info "warning: cudarc ${ver:-?} sources not found; stub from cuda.h only"
  fi
  sort -u "$t/names" > "$t/all"
  { echo '/* link-time stand-in for the driver libcuda.so.1; never shipped. */'
    while read -r n; do echo "int $n(void) { return 100; /* CUDA_ERROR_NO_DEVICE */ }"; done < "$t/all"
  } > "$t/stub.c"
  gcc -shared -fPIC -O0 -Wl,-soname,libcuda.so.1 -o "$CUDA_HOME/lib/stubs/libcuda.so" "$t/stub.c"
  # for running the binaries here only (--help, a CPU step), never packed
  mkdir -p "$PREFIX/stub-runtime"
  ln -sf "$CUDA_HOME/lib/stubs/libcuda.so" "$PREFIX/stub-runtime/libcuda.so.1"
  info "$(wc -l < "$t/all") entry points"
  rm -rf "$t"
  # the stubs folder is on LIBRARY_PATH only when no driver is installed
  if ! ldconfig -p 2>/dev/null | grep -q 'libcuda\.so '; then
    [[ :$LIBRARY_PATH: == *":$CUDA_HOME/lib/stubs:"* ]] || export LIBRARY_PATH=$LIBRARY_PATH:$CUDA_HOME/lib/stubs
  fi
}

step_build() {
  log "cargo build --release --features $FEATURES --bins (target dir $TARGET_DIR)"
  need cargo "install Rust (https://rustup.rs)"
  need gcc "install it (apt-get install gcc): the kernels' host code and the linker need it"
  cuda_env
  command -v nvcc >/dev/null || die "nvcc not found under $CUDA_HOME/bin (run the toolkit step first)"
  info "CUDA_HOME=$CUDA_HOME  nvcc $(nvcc_version)  CUDA_COMPUTE_CAP=$CUDA_COMPUTE_CAP"
  info "LIBRARY_PATH=$LIBRARY_PATH"
  local args=(build --release "${LOCKED[@]}" --features "$FEATURES" --bins)
  [[ -n $JOBS ]] && args+=(-j "$JOBS")
  args+=("${EXTRA_CARGO[@]}")
  info "cargo ${args[*]}"
  local t0=$SECONDS
  (cd "$ROOT" && nice -n "$NICE" cargo "${args[@]}")
  local qargs=(build --release "${LOCKED[@]}" -p lintrace-query)
  [[ -n $JOBS ]] && qargs+=(-j "$JOBS")
  info "cargo ${qargs[*]} ${EXTRA_CARGO[*]}"
  (cd "$ROOT" && nice -n "$NICE" cargo "${qargs[@]}" "${EXTRA_CARGO[@]}")
  info "build took $((SECONDS - t0)) s"
  mkdir -p "$TARGET_DIR"
  echo "$((SECONDS - t0))" >> "$TARGET_DIR/cuda-build-seconds"
}

step_relink() {
  log "relink the binaries with hypot@GLIBC_2.2.5 (needs glibc 2.34 at most)"
  need gcc "install it (apt-get install gcc)"
  cuda_env
  local d=$TARGET_DIR/glibc-compat
  mkdir -p "$d"
  cat > "$d/hypot-compat.c" <<'C'
/* Bind hypot/hypotf to their pre-2.35 glibc versions (same function, the
 * old symbol version), so the binaries need GLIBC_2.34 at most. */
double lintrace_hypot_glibc225(double, double);
float lintrace_hypotf_glibc225(float, float);
__asm__(".symver lintrace_hypot_glibc225,hypot@GLIBC_2.2.5");
__asm__(".symver lintrace_hypotf_glibc225,hypotf@GLIBC_2.2.5");
double hypot(double x, double y) { return lintrace_hypot_glibc225(x, y); }
float hypotf(float x, float y) { return lintrace_hypotf_glibc225(x, y); }
C
  gcc -O2 -fPIC -c -o "$d/hypot-compat.o" "$d/hypot-compat.c"
  local b t0=$SECONDS
  for b in "${ALL_BINS[@]}"; do
    info "cargo rustc --bin $b"
    # shellcheck disable=SC2046 # bin_args is meant to split into words
    (cd "$ROOT" && nice -n "$NICE" cargo rustc --release "${LOCKED[@]}" $(bin_args "$b") "${EXTRA_CARGO[@]}" \
      -- -C link-arg="$d/hypot-compat.o")
  done
  info "relink took $((SECONDS - t0)) s"
}

# glibc version the binary needs (highest GLIBC_x.y it references)
glibc_needed() { objdump -T "$1" 2>/dev/null | grep -oE 'GLIBC_[0-9.]+' | sort -uV | tail -1; }

step_check() {
  log "check the binaries in $TARGET_DIR/release"
  cuda_env
  local rt="$CUDA_HOME/lib64:$CUDA_HOME/lib"
  [[ -d $CUDA_HOME/targets/x86_64-linux/lib ]] && rt="$CUDA_HOME/targets/x86_64-linux/lib:$rt"
  # without a driver, --help needs some libcuda.so.1 to load: the stub
  if ! ldconfig -p 2>/dev/null | grep -q 'libcuda\.so\.1 '; then
    local s=""
    if [[ -e $PREFIX/stub-runtime/libcuda.so.1 && $MODE == wheels ]]; then s=$PREFIX/stub-runtime
    else
      for c in "$CUDA_HOME/lib64/stubs" "$CUDA_HOME/targets/x86_64-linux/lib/stubs" "$CUDA_HOME/lib/stubs"; do
        if [[ -e $c/libcuda.so ]]; then
          s=$TARGET_DIR/stub-runtime; mkdir -p "$s"; ln -sf "$c/libcuda.so" "$s/libcuda.so.1"; break
        fi
      done
    fi
    [[ -n $s ]] && rt="$rt:$s" && info "no driver here: the stub libcuda.so.1 stands in for --help"
  fi
  local b bin
  for b in "${REQUIRED_BINS[@]}"; do [[ -x $TARGET_DIR/release/$b ]] || die "$TARGET_DIR/release/$b not built"; done
  for b in "${ALL_BINS[@]}"; do
    bin=$TARGET_DIR/release/$b
    [[ -x $bin ]] || { info "($b not built)"; continue; }
    echo "--- $b: $(du -h "$bin" | cut -f1)"
    if command -v objdump >/dev/null; then
      info "NEEDED: $(objdump -p "$bin" | awk '/NEEDED/{printf "%s ", $2}')"
      info "highest GLIBC: $(glibc_needed "$bin")  GLIBCXX: $(objdump -T "$bin" | grep -oE 'GLIBCXX_[0-9.]+' | sort -uV | tail -1)"
      if ((GLIBC_COMPAT)) && [[ $(printf '%s\n' "$(glibc_needed "$bin")" GLIBC_2.34 | sort -V | tail -1) != GLIBC_2.34 ]]; then
        die "$b needs $(glibc_needed "$bin") despite --glibc-compat: the relink step did not take"
      fi
      # every driver function bound at load must exist in the toolkit's cuda.h
      if [[ -f $PREFIX/cuda-h-driver-symbols.txt && $MODE == wheels ]]; then
        local used missing
        used=$(objdump -T "$bin" | awk '$3=="*UND*" && $NF ~ /^cu[A-Z]/ {print $NF}' | sort -u)
        missing=$(comm -23 <(echo "$used") "$PREFIX/cuda-h-driver-symbols.txt")
        info "driver functions bound: $(echo "$used" | grep -c .); not in CUDA 13.0's cuda.h: ${missing:-none}"
        [[ -z $missing ]] || die "$b binds driver functions that driver 580 (CUDA 13.0) lacks: $missing"
      fi
    fi
    info "ldd:"
    LD_LIBRARY_PATH=$rt ldd "$bin" | sed 's/^/    /'
    if LD_LIBRARY_PATH=$rt ldd "$bin" | grep -q 'not found'; then die "$b: unresolved libraries"; fi
  done
  LD_LIBRARY_PATH=$rt "$TARGET_DIR/release/lintrace-analyze" --version
  LD_LIBRARY_PATH=$rt "$TARGET_DIR/release/lintrace-analyze" --help >/dev/null
  info "lintrace-analyze --help runs"
  local w; w=$(mktemp -d)
  LD_LIBRARY_PATH=$rt "$TARGET_DIR/release/lintrace-train" --model mlp --dataset digits --steps 3 \
    --device cpu --quiet --out "$w" --name cpu-check >/dev/null
  info "lintrace-train --device cpu trains here"
  if ! nvidia-smi -L >/dev/null 2>&1; then
    if LD_LIBRARY_PATH=$rt "$TARGET_DIR/release/lintrace-train" --model mlp --dataset digits --steps 3 \
         --device cuda --quiet --out "$w" --name cuda-check > "$w/cuda.log" 2>&1; then
      info "unexpected: --device cuda succeeded without a GPU"
    else
      info "--device cuda without a GPU fails cleanly: $(grep -m1 -i 'error' "$w/cuda.log" || head -1 "$w/cuda.log")"
    fi
  else
    LD_LIBRARY_PATH=$rt "$TARGET_DIR/release/lintrace-train" --model mlp --dataset digits --steps 3 \
      --device cuda --quiet --out "$w" --name cuda-check >/dev/null
    info "lintrace-train --device cuda trains on this machine's GPU"
  fi
  rm -rf "$w"
}

step_pack() {
  log "pack -> $PACK_DIR"
  need xz "install it (apt-get install xz-utils)"
  need strip "install binutils (apt-get install binutils)"
  need sha256sum "install coreutils"
  cuda_env
  local b t
  for b in "${REQUIRED_BINS[@]}"; do [[ -x $TARGET_DIR/release/$b ]] || die "$TARGET_DIR/release/$b not built"; done
  mkdir -p "$PACK_DIR"
  # keep the packed binaries out of git (they travel by `carry`, not as files of the tree)
  if [[ $PACK_DIR == "$ROOT"/* ]] && git -C "$ROOT" rev-parse --git-dir >/dev/null 2>&1; then
    local ex rel=/${PACK_DIR#"$ROOT"/}/
    ex=$(git -C "$ROOT" rev-parse --git-path info/exclude)
    [[ $ex == /* ]] || ex=$ROOT/$ex
    mkdir -p "$(dirname "$ex")"; touch "$ex"
    grep -qxF "$rel" "$ex" || { echo "$rel" >> "$ex"; info "added $rel to $ex"; }
  fi
  t=$(mktemp -d)
  rm -f "$PACK_DIR"/*.xz "$PACK_DIR/SHA256SUMS" "$PACK_DIR/BUILD-INFO"
  local packed=()
  for b in "${ALL_BINS[@]}"; do
    [[ -x $TARGET_DIR/release/$b ]] || continue
    strip --strip-all -o "$t/$b" "$TARGET_DIR/release/$b"
    (cd "$t" && sha256sum "$b") >> "$PACK_DIR/SHA256SUMS"
    nice -n "$NICE" xz -T1 -9 -c "$t/$b" > "$PACK_DIR/$b.xz"
    info "$b: stripped $(du -h "$t/$b" | cut -f1), xz $(du -h "$PACK_DIR/$b.xz" | cut -f1)"
    packed+=("$b")
  done
  {
    echo "lintrace commit: $(git -C "$ROOT" rev-parse HEAD 2>/dev/null || echo '?')$(git -C "$ROOT" diff --quiet HEAD 2>/dev/null || echo ' (+ uncommitted changes)')"
    echo "version: $("$TARGET_DIR/release/lintrace-train" --version 2>/dev/null || echo '?')"
    # shellcheck disable=SC1091
    echo "built: $(date -u +%FT%TZ) on $(uname -m) $( (. /etc/os-release && echo "$PRETTY_NAME") 2>/dev/null), $(rustc --version 2>/dev/null || echo 'rustc ?')"
    echo "features: $FEATURES; toolkit: $MODE ($CUDA_HOME); nvcc $(nvcc_version); CUDA_COMPUTE_CAP=$COMPUTE_CAP"
    [[ $MODE == wheels ]] && echo "wheels: ${WHEEL_SPECS[*]}"
    echo "glibc-compat relink: $([[ $GLIBC_COMPAT == 1 ]] && echo yes || echo no)"
    echo "cargo build seconds, each run on this target dir: $(if [[ -f $TARGET_DIR/cuda-build-seconds ]]; then tr '\n' ' ' < "$TARGET_DIR/cuda-build-seconds"; else echo '?'; fi)"
    for b in "${packed[@]}"; do
      if command -v objdump >/dev/null; then
        echo "$b NEEDED: $(objdump -p "$t/$b" | awk '/NEEDED/{printf "%s ", $2}')| highest $(glibc_needed "$t/$b")"
      fi
    done
  } > "$PACK_DIR/BUILD-INFO"
  rm -rf "$t"
  cat "$PACK_DIR/BUILD-INFO"
  info "total: $(du -ch "$PACK_DIR"/*.xz | tail -1 | cut -f1) in $PACK_DIR"
  info "on the GPU machine, from the project root: bash scripts/gpu/gpu-check.sh"
}

log "lintrace CUDA build: steps '$STEPS' in $ROOT"
for s in toolkit stub build relink check pack; do
  want "$s" || continue
  "step_$s"
done
log "done"
