#!/usr/bin/env bash
# tests/slurm/smoke.sh -- bring up a one-node Slurm cluster, run a 2-task job
# array plus a job that depends on it (afterok), check the outputs and order.
#
# Exit 0 on success, or with a "SKIP: slurm tests: <reason>" line when Slurm
# cannot be installed or started here (set SLURM_TEST_REQUIRED=1 to turn a
# failed start into a failure). Non-zero with a "FAIL: ..." line otherwise.
set -uo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
# shellcheck source-path=SCRIPTDIR source=cluster.sh
source "$here/cluster.sh"

now() { date +%s.%N; }
elapsed() { awk -v a="$1" -v b="$2" 'BEGIN { printf "%.1f", b - a }'; }

work=
trap slurm_exit_cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

fail() {
    echo "FAIL: slurm smoke: $*" >&2
    slurm_dump_logs 30
    exit 1
}

t0=$(now)
if ! slurm_install; then
    echo "SKIP: slurm tests: slurm could not be installed (see above)"
    exit 0
fi
t1=$(now)

work=$(mktemp -d "${TMPDIR:-/tmp}/slurm-smoke.XXXXXX") || fail "mktemp"
if ! slurm_start "$work/cluster"; then
    if [ "${SLURM_TEST_REQUIRED:-0}" = 1 ]; then fail "cluster did not start"; fi
    echo "SKIP: slurm tests: one-node cluster did not start (see above)"
    exit 0
fi
t2=$(now)
echo "slurm smoke: install/check $(elapsed "$t0" "$t1") s, start $(elapsed "$t1" "$t2") s ($(sinfo -h -o '%N %c CPUs %m MB'))"

out=$work/out
mkdir -p "$out"

# The array job, written like the generated train.sbatch: #SBATCH lines, the
# task picked by SLURM_ARRAY_TASK_ID, relative output path (relative to the
# submit directory, which is also the job's working directory).
cat >"$out/array.sbatch" <<'SB'
#!/usr/bin/env bash
#SBATCH --job-name=smoke-array
#SBATCH --array=0-1
#SBATCH --output=logs/array-%A_%a.out
#SBATCH --ntasks=1
#SBATCH --cpus-per-task=1
set -euo pipefail
i=${SLURM_ARRAY_TASK_ID:?not an array task}
date +%s.%N >"task_$i.start"
echo "task $i of job $SLURM_ARRAY_JOB_ID on $(hostname -s) in $PWD, SMOKE_TOKEN=${SMOKE_TOKEN:-unset}"
sleep 1
echo "${SMOKE_TOKEN:-unset}" >"task_$i.token"
date +%s.%N >"task_$i.done"
SB

cat >"$out/after.sbatch" <<'SB'
#!/usr/bin/env bash
#SBATCH --job-name=smoke-after
#SBATCH --output=logs/after-%j.out
set -euo pipefail
date +%s.%N >after.start
ls task_0.done task_1.done
echo "after: both tasks done" >after.done
SB

mkdir -p "$out/logs"
cd "$out" || fail "cd $out"
export SMOKE_TOKEN=propagated-$$          # default --export=ALL carries it into the job
arr=$(sbatch --parsable array.sbatch) || fail "sbatch array.sbatch: $arr"
arr=${arr%%;*}
dep=$(sbatch --parsable --dependency="afterok:$arr" after.sbatch) || fail "sbatch after.sbatch: $dep"
dep=${dep%%;*}
echo "slurm smoke: array job $arr, dependent job $dep"

t3=$(now)
slurm_wait_jobs -t "${SLURM_SMOKE_TIMEOUT:-120}" "$arr" "$dep" || fail "jobs did not finish in time"
t4=$(now)
echo "slurm smoke: jobs finished in $(elapsed "$t3" "$t4") s"
slurm_job_states "$arr" "$dep" | sed 's/^/  /'
slurm_jobs_ok "$arr" "$dep" || fail "some job did not complete with exit code 0"

for f in task_0.start task_0.done task_0.token task_1.start task_1.done task_1.token after.start after.done \
         "logs/array-${arr}_0.out" "logs/array-${arr}_1.out" "logs/after-$dep.out"; do
    [ -s "$f" ] || fail "missing output $out/$f"
done
for i in 0 1; do
    [ "$(cat "task_$i.token")" = "$SMOKE_TOKEN" ] || fail "environment not propagated to task $i: $(cat "task_$i.token")"
done
awk -v a="$(cat task_0.done)" -v b="$(cat task_1.done)" -v c="$(cat after.start)" \
    'BEGIN { exit !(c >= a && c >= b) }' || fail "dependent job started before the array tasks finished"

echo "PASS: slurm smoke (array of 2 + afterok dependency)"
