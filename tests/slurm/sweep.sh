#!/usr/bin/env bash
# tests/slurm/sweep.sh [BIN_DIR] -- the Slurm path of a sweep, for real:
# bring up a one-node cluster (cluster.sh), emit the job scripts of a
# two-run sweep with `lintrace-train sweep --emit slurm`, submit them and
# check that both runs trained, both were analysed and the sweep table lists
# them. BIN_DIR holds lintrace-train and lintrace-analyze (default:
# target/debug, where `cargo test` leaves them).
#
# Exit 0 on success, or after a "SKIP: slurm tests: <reason>" line when Slurm
# cannot be installed or started here. SLURM_TEST_REQUIRED=1 (which .ci/run
# sets, and tests/it/sweeps/slurm.rs sets under CI=true) makes either a failure.
# Non-zero with a "FAIL: ..." line otherwise.
set -uo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
repo=$(cd "$here/../.." && pwd)
bin=$(cd "${1:-$repo/target/debug}" && pwd) || { echo "FAIL: slurm sweep: no binary folder ${1:-}" >&2; exit 1; }
# shellcheck source-path=SCRIPTDIR source=cluster.sh
source "$here/cluster.sh"

work=
trap slurm_exit_cleanup EXIT

fail() {
    echo "FAIL: slurm sweep: $*" >&2
    slurm_dump_logs 30
    for f in "$work"/sweeps/*/logs/*; do [ -f "$f" ] && { echo "== $f" >&2; tail -n 20 "$f" >&2; }; done
    exit 1
}

for b in lintrace-train lintrace-analyze; do
    [ -x "$bin/$b" ] || { echo "FAIL: slurm sweep: $bin/$b not built" >&2; exit 1; }
done
skip() {
    if [ "${SLURM_TEST_REQUIRED:-0}" = 1 ]; then fail "$* (SLURM_TEST_REQUIRED=1: this is a failure, not a skip)"; fi
    echo "SKIP: slurm tests: $*"
    exit 0
}
if ! slurm_install; then
    skip "slurm could not be installed (needs root and Debian's slurm-wlm)"
fi
work=$(mktemp -d "${TMPDIR:-/tmp}/lintrace-slurm.XXXXXX") || fail "mktemp"
if ! slurm_start "$work/cluster"; then
    skip "one-node cluster did not start"
fi
export LINTRACE_CACHE="$work/cache"

cat >"$work/two.toml" <<'TOML'
name = "two"
[base]
model = "mlp"
width = 16
depth = 2
dataset = "sinusoid-2d"
n_train = 256
n_test = 128
steps = 20
batch_size = 32
probe_size = 64
[grid]
lr = [0.05, 0.1]
[slurm]
cpus_per_task = 1
analyze_args = ["--analyzers", "performance,activation_regime"]
TOML

"$bin/lintrace-train" sweep "$work/two.toml" --out "$work/sweeps" --emit slurm || fail "--emit slurm failed"
dir="$work/sweeps/two"
ids=$("$dir/slurm/submit.sh") || fail "submit.sh failed"
echo "slurm sweep: submitted $ids"
train=$(sed -n 's/.*train=\([0-9]*\).*/\1/p' <<<"$ids")
analyze=$(sed -n 's/.*analyze=\([0-9]*\).*/\1/p' <<<"$ids")
collect=$(sed -n 's/.*collect=\([0-9]*\).*/\1/p' <<<"$ids")
[ -n "$train" ] && [ -n "$analyze" ] && [ -n "$collect" ] || fail "could not read job ids from '$ids'"
slurm_wait_jobs -t "${SLURM_TEST_WAIT_TIMEOUT:-600}" "$train" "$analyze" "$collect" || fail "jobs did not finish in time"
slurm_job_states "$train" "$analyze" "$collect"
slurm_jobs_ok "$train" "$analyze" "$collect" || fail "a job did not complete"

for run in two__lr-0.05 two__lr-0.1; do
    grep -q '"status": "finished"' "$dir/$run/run.json" || fail "$run did not finish"
    for t in layer_metrics model_metrics runs; do
        [ -s "$dir/$run/analysis/$t.parquet" ] || fail "$run: analysis/$t.parquet missing"
    done
done
[ -s "$dir/runs.parquet" ] || fail "the sweep table runs.parquet is missing"
"$bin/lintrace-analyze" query "$dir" "SELECT status, COUNT(*) AS n, MIN(final_step) AS s FROM runs GROUP BY status" --out "$work/summary.csv" || fail "query failed"
cat "$work/summary.csv"
grep -qx 'finished,2,20' "$work/summary.csv" || fail "the sweep table does not list both runs as finished at step 20"
echo "PASS: slurm sweep: 2 runs trained, analysed and collected through Slurm job arrays"
