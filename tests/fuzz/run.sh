#!/usr/bin/env bash
# Bounded fuzzing of the checkpoint, probe and spec loaders (tests/it/robustness/fuzz.rs)
# and of the metric properties (analyzers/tests/properties.rs), outside CI's
# default path. Usage: tests/fuzz/run.sh [CASES] [SECONDS]
# Record what it finds in tests/fuzz/FINDINGS.md.
set -euo pipefail
cd "$(dirname "$0")/../.."
cases=${1:-20000}
seconds=${2:-900}
export PROPTEST_CASES=$cases
# Debug build: overflow checks are on, so an unchecked size computation
# shows up as a panic.
timeout "$seconds" cargo test --test it robustness::fuzz -- --test-threads 2
timeout "$seconds" cargo test -p lintrace-analyzers --test properties random_inputs -- --test-threads 2
