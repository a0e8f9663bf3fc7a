#!/usr/bin/env bash
# Runs the Python package's tests (python/tests) with a real PyTorch.
# Installs what they need if missing (pytest, polars, transformers,
# accelerate, lightning; torch and safetensors must be there or are
# installed too), then runs pytest. The tests that run lintrace need the
# debug binaries: `cargo build --locked --bin lintrace-train --bin lintrace-analyze`
# (or LINTRACE_BIN_DIR=folder); without them those tests are skipped.
# CI does not run this script (torch is too big for CI).
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
py="${PYTHON:-python3}"
need=()
for mod in torch:torch safetensors:safetensors pytest:pytest polars:polars transformers:transformers accelerate:accelerate lightning:lightning; do
    "$py" -c "import importlib.util, sys; sys.exit(importlib.util.find_spec('${mod%%:*}') is None)" || need+=("${mod##*:}")
done
if [ ${#need[@]} -gt 0 ]; then
    echo "installing: ${need[*]}"
    "$py" -m pip install --quiet "${need[@]}"
fi
export PYTHONPATH="$here${PYTHONPATH:+:$PYTHONPATH}"
export OMP_NUM_THREADS="${OMP_NUM_THREADS:-1}"
cd "$here"
exec "$py" -m pytest -q "$@" tests
