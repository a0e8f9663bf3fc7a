#!/usr/bin/env bash
# Builds lintrace's platform wheel: the release binaries lintrace-train,
# lintrace-analyze and lintrace-query as the wheel's scripts (pip puts them
# on the environment's PATH, as ruff's and uv's wheels do) plus the Python
# package python/lintrace. Usage:
#
#     scripts/build-wheel.sh [OUT_DIR]        # default: target/wheels
#
# Steps: check that the versions agree (Cargo.toml, src/query/Cargo.toml,
# python/pyproject.toml, python/lintrace/__init__.py); build the three
# binaries with `cargo build --release --locked`; build the pure wheel of python/ with
# setuptools; add the stripped binaries and the licences of what they embed
# (scripts/wheel_platform.py); then `auditwheel repair --plat auto`, which
# checks that the binaries need only libraries every manylinux system has
# and sets the manylinux tag they allow (the newest glibc symbol they use
# decides it), and `auditwheel show` on the result.
#
# setuptools and auditwheel are installed from PyPI into a virtual
# environment under the cargo target folder (the only download). Binaries
# built on a newer glibc get a newer manylinux tag; build on an old one
# (e.g. in a manylinux container) for a wider one.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"
py="${PYTHON:-python3}"

target="$(cargo metadata --format-version 1 --no-deps --locked | "$py" -c 'import json, sys; print(json.load(sys.stdin)["target_directory"])')"
out="${1:-$target/wheels}"
mkdir -p "$out"
out="$(cd "$out" && pwd)"
work="$target/wheel-build"

# One version everywhere.
version_of() { sed -n "s/^$2 *= *\"\([^\"]*\)\".*/\1/p" "$1" | head -n 1; }
version="$(version_of Cargo.toml version)"
for f in src/query/Cargo.toml:version python/pyproject.toml:version python/lintrace/__init__.py:__version__; do
    v="$(version_of "${f%%:*}" "${f##*:}")"
    if [ "$v" != "$version" ]; then
        echo "error: ${f%%:*} has version '$v', Cargo.toml has '$version'" >&2
        exit 1
    fi
done

echo "== cargo build --release (lintrace-train, lintrace-analyze, lintrace-query)"
# One cargo call: lintrace-query's dependencies (polars) enable features of
# crates lintrace shares, so a call per package would build lintrace twice.
cargo build --release --locked -p lintrace -p lintrace-query \
    --bin lintrace-train --bin lintrace-analyze --bin lintrace-query

echo "== build tools ($work/tools)"
if [ ! -x "$work/tools/bin/auditwheel" ]; then
    rm -rf "$work/tools"
    "$py" -m venv "$work/tools"
    "$work/tools/bin/python" -m pip install --quiet --disable-pip-version-check "setuptools>=77" "auditwheel>=6.1"
fi
tools="$work/tools/bin"

echo "== staging ($work/stage)"
rm -rf "$work/stage"
mkdir -p "$work/stage/src" "$work/stage/bin" "$work/stage/pure" "$work/stage/platform"
# The package is built from a copy so that setuptools' build/ and
# *.egg-info/ do not land in python/.
cp python/pyproject.toml python/README.md python/LICENSE-MIT python/LICENSE-APACHE "$work/stage/src/"
cp -r python/lintrace "$work/stage/src/"
find "$work/stage/src" -name __pycache__ -prune -exec rm -rf {} +
for b in lintrace-train lintrace-analyze lintrace-query; do
    # Symbols stripped (release builds have no debug info): about a fifth
    # smaller; panics still print their message and location.
    if command -v strip > /dev/null; then
        strip -o "$work/stage/bin/$b" "$target/release/$b"
    else
        echo "warning: no strip (binutils): the binaries keep their symbols" >&2
        cp "$target/release/$b" "$work/stage/bin/$b"
    fi
done

echo "== wheel"
"$tools/python" -m pip wheel --quiet --disable-pip-version-check --no-deps --no-build-isolation \
    -w "$work/stage/pure" "$work/stage/src"
arch="$(uname -m)"
"$tools/python" scripts/wheel_platform.py "$work/stage/pure"/lintrace-"$version"-py3-none-any.whl \
    "$work/stage/platform" --platform "linux_$arch" \
    --script "$work/stage/bin/lintrace-train" \
    --script "$work/stage/bin/lintrace-analyze" \
    --script "$work/stage/bin/lintrace-query" \
    --license third-party/digits-LICENSE=fixtures/digits/LICENSE \
    --license third-party/digits-README.md=fixtures/digits/README.md \
    --license third-party/corpus-SOURCES.txt=fixtures/corpus/SOURCES.txt \
    --license third-party/DejaVuSans-LICENSE.txt=src/query/src/plot/fonts/DejaVuSans-LICENSE.txt
# No library is grafted (the binaries link only glibc, libm and libgcc_s),
# so nothing needs patching: --patcher none.
rm -f "$out"/lintrace-"$version"-*.whl
"$tools/auditwheel" repair --plat auto --patcher none -w "$out" "$work/stage/platform"/lintrace-"$version"-py3-none-linux_"$arch".whl
wheel="$(ls "$out"/lintrace-"$version"-*manylinux*.whl)"
"$tools/auditwheel" show "$wheel"
echo "wheel: $wheel ($(du -h "$wheel" | cut -f1))"
