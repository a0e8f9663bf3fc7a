#!/usr/bin/env bash
# Installs lintrace's platform wheel (scripts/build-wheel.sh) into a fresh
# virtual environment, offline, and runs the README's main job with the
# installed commands in a temporary folder, then a query through
# `lintrace-analyze query` and the report through `lintrace-query`. Usage:
#
#     scripts/test-wheel.sh [WHEEL]      # default: the newest lintrace wheel in target/wheels
#
# Needs no network: the wheel declares no dependencies, and pip runs with
# --no-index. Also checks that `import lintrace` works without PyTorch and that
# what needs it fails with
# the message naming the `torch` extra, and that uninstalling removes the
# commands. Keeps the temporary folder when KEEP=1.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
py="${PYTHON:-python3}"
if [ $# -ge 1 ]; then
    wheel="$(cd "$(dirname "$1")" && pwd)/$(basename "$1")"
else
    wheels="${CARGO_TARGET_DIR:-$root/target}/wheels"
    wheel="$(ls -t "$wheels"/lintrace-*.whl 2>/dev/null | head -n 1 || true)"
    [ -n "$wheel" ] || { echo "error: no wheel in $wheels: run scripts/build-wheel.sh first" >&2; exit 1; }
fi
echo "wheel: $wheel"
case "$(basename "$wheel")" in
    *-py3-none-manylinux_*.whl) ;;
    *) echo "error: not a py3-none-manylinux wheel: $wheel" >&2; exit 1 ;;
esac

tmp="$(mktemp -d)"
if [ "${KEEP:-0}" = 1 ]; then echo "keeping $tmp"; else trap 'rm -rf "$tmp"' EXIT; fi
fail() { echo "FAIL: $*" >&2; exit 1; }

"$py" -m venv "$tmp/venv"
"$tmp/venv/bin/python" -m pip install --quiet --no-index --disable-pip-version-check "$wheel"
"$tmp/venv/bin/python" -m pip check

# Only the environment's bin/ and the system's: no cargo target folder,
# ~/.cargo/bin or other lintrace on PATH.
export PATH="$tmp/venv/bin:/usr/local/bin:/usr/bin:/bin"
for cmd in lintrace-train lintrace-analyze lintrace-query; do
    [ "$(command -v "$cmd")" = "$tmp/venv/bin/$cmd" ] || fail "$cmd is not the environment's (found: $(command -v "$cmd" || echo nothing))"
    "$cmd" --help > /dev/null || fail "$cmd --help"
done

# Without torch: the schedule and lintrace.tables import; what needs torch says how to get it.
"$tmp/venv/bin/python" -c 'import lintrace, lintrace.tables; assert lintrace.log_spaced_steps(10)[:3] == [0, 1, 2]' \
    || fail "import lintrace (schedule, tables) without torch"
msg="$("$tmp/venv/bin/python" -c 'import lintrace; lintrace.LogSpacedCheckpoints' 2>&1)" && fail "lintrace.LogSpacedCheckpoints worked without torch"
grep -q "lintrace\[torch\]" <<< "$msg" || fail "lintrace.LogSpacedCheckpoints without torch: $msg"

mkdir "$tmp/work"
cd "$tmp/work"
export OMP_NUM_THREADS="${OMP_NUM_THREADS:-1}"
# The README's main job, with the installed commands.
{ lintrace-train --dataset digits --epochs 20 --name digits-cnn --overwrite && lintrace-analyze runs/digits-cnn; } 2>&1 | tee main-job.log \
    || fail "the main job exited with status $?"
grep -q "; 0 failed" main-job.log || fail "lintrace-analyze: a checkpoint or analyzer failed (main-job.log)"
for f in runs/digits-cnn/run.json runs/digits-cnn/analysis/layer_metrics.parquet runs/digits-cnn/analysis/model_metrics.parquet; do
    [ -s "$f" ] || fail "$f missing"
done
ls runs/digits-cnn/checkpoints/step_*.safetensors > /dev/null || fail "no checkpoints"

# lintrace-analyze finds lintrace-query beside it (the environment's bin/).
lintrace-analyze query runs/digits-cnn "SELECT COUNT(*) AS n, COUNT(DISTINCT step) AS steps FROM layer_metrics" --out query.csv
n="$(tail -n 1 query.csv | cut -d, -f1)"
[ "${n:-0}" -gt 0 ] || fail "query: no rows in layer_metrics ($(cat query.csv))"
lintrace-query report runs/digits-cnn
[ -s runs/digits-cnn/report.html ] || fail "no report.html"

"$tmp/venv/bin/python" -m pip uninstall --quiet --yes lintrace
for cmd in lintrace-train lintrace-analyze lintrace-query; do
    [ ! -e "$tmp/venv/bin/$cmd" ] || fail "$cmd left behind by pip uninstall"
done
echo "OK: $(basename "$wheel"): main job, query ($(tr '\n' ' ' < query.csv)), report"
