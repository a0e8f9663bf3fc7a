# shellcheck shell=bash
# tests/slurm/cluster.sh -- bring up a throw-away ONE-NODE Slurm cluster on this
# machine (no systemd needed), for tests that submit sbatch scripts / job arrays.
#
# Meant to be `source`d. Nothing here calls `exit` or sets shell options; every
# function returns non-zero on failure and explains why on stderr.
#
#   slurm_install                    install slurmctld/slurmd/slurm-client/munge via apt if missing
#                                    (1: not root / no apt-get / apt failed; 0: ready)
#   slurm_start WORKDIR              write WORKDIR/etc/slurm.conf, start a private munged, slurmctld
#                                    and slurmd, export SLURM_CONF, wait until the node is idle
#   slurm_stop                       scancel what is left, then stop exactly the daemons
#                                    slurm_start started, and their job processes (idempotent)
#   slurm_wait_jobs [-t SECS] JOBID...
#                                    poll squeue until none of the jobs (array tasks included) is
#                                    pending/running/completing: 0 then, 1 on timeout (default
#                                    300 s), 2 on bad usage / squeue failing 10 times in a row.
#                                    It does not judge how the jobs ended: use slurm_jobs_ok.
#                                    (The timeout is an option, not a trailing number, because
#                                    a trailing number could just as well be a job id.)
#   slurm_job_states JOBID...        print "JOBID STATE EXITCODE" for each job / array task
#   slurm_jobs_ok JOBID...           0 iff every job / array task is COMPLETED with ExitCode=0:0
#   slurm_dump_logs [LINES]          tail daemon logs to stderr (for failure messages)
#
# Where finished jobs' states come from: there is no accounting (no slurmdbd), so
# `sacct` does not work. slurm.conf sets MinJobAge=300, so slurmctld keeps each
# finished job record for 5 minutes and `scontrol -o show job ID` reports its
# JobState and ExitCode (that is what slurm_job_states reads). As a durable
# record for post-mortems, JobCompType=jobcomp/filetxt also appends one line per
# finished job to $SLURM_TEST_DIR/log/jobcomp.txt. Job scripts writing marker
# files remain the most direct proof that the work itself ran.
#
# Environment knobs (all optional):
#   SLURM_TEST_CTLD_PORT / SLURM_TEST_SLURMD_PORT   ports (default 6817 / 6818)
#   SLURM_TEST_START_TIMEOUT   seconds slurm_start waits for an idle node (60)
#   SLURM_TEST_WAIT_TIMEOUT    default timeout of slurm_wait_jobs (300)
#   SLURM_TEST_KILL_INVALID_DEP=0   omit DependencyParameters=kill_invalid_depend
#                              (then a job whose afterok/aftercorr can never be
#                              met stays PENDING unless it was submitted with
#                              --kill-on-invalid-dep=yes, as on most real clusters)
# slurm_start exports SLURM_CONF (so sbatch/squeue/scontrol/sinfo find the
# cluster) and SLURM_TEST_DIR (the WORKDIR; slurm_stop uses it).
#
# Isolation: the cluster uses its own munged (own key and socket under WORKDIR,
# passed to Slurm with AuthInfo=socket=...), its own ports (SLURM_TEST_CTLD_PORT,
# default 6817, and SLURM_TEST_SLURMD_PORT, default 6818), and its own state,
# spool and log dirs under WORKDIR. /etc is not touched. Daemons run as root.

_slurm_log() { printf 'slurm: %s\n' "$*" >&2; }

_slurm_path() {
    case ":$PATH:" in *:/usr/sbin:*) ;; *) PATH="$PATH:/usr/sbin:/sbin" ;; esac
    export PATH
}

slurm_install() {
    _slurm_path
    local missing=() c
    for c in sbatch squeue sinfo scontrol slurmctld slurmd munged mungekey; do
        command -v "$c" >/dev/null 2>&1 || missing+=("$c")
    done
    [ "${#missing[@]}" -eq 0 ] && return 0
    _slurm_log "missing: ${missing[*]}; installing with apt-get"
    if [ "$(id -u)" -ne 0 ]; then _slurm_log "not root: cannot apt-get install"; return 1; fi
    if ! command -v apt-get >/dev/null 2>&1; then _slurm_log "no apt-get"; return 1; fi
    local log
    log=$(mktemp "${TMPDIR:-/tmp}/slurm-apt.XXXXXX") || return 1
    # policy-rc.d-less machines would try to start the packaged services; the
    # env var below is harmless where there is no init system anyway.
    if ! { apt-get update -q &&
           DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends \
               slurmctld slurmd slurm-client munge; } >"$log" 2>&1; then
        _slurm_log "apt-get failed; last lines of $log:"
        tail -n 15 "$log" >&2
        return 1
    fi
    rm -f "$log"
    for c in sbatch squeue sinfo scontrol slurmctld slurmd munged mungekey; do
        command -v "$c" >/dev/null 2>&1 || { _slurm_log "still missing after install: $c"; return 1; }
    done
    return 0
}

# true if something accepts TCP connections on 127.0.0.1:$1
_slurm_port_busy() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

# true if process $1 exists, is not a zombie, and its comm is $2. (Where PID 1
# does not reap orphans, as in this sandbox, dead daemons linger as zombies.)
_slurm_alive() {
    [ -r "/proc/$1/stat" ] || return 1
    [ "$(cat "/proc/$1/comm" 2>/dev/null)" = "$2" ] || return 1
    [ "$(sed 's/.*) //' "/proc/$1/stat" 2>/dev/null | cut -d' ' -f1)" != Z ]
}

# pid from file $1 if that process is alive and its comm is $2
_slurm_live_pid() {
    local pid
    [ -s "$1" ] || return 1
    pid=$(tr -dc '0-9' <"$1")
    [ -n "$pid" ] && _slurm_alive "$pid" "$2" || return 1
    printf '%s\n' "$pid"
}

slurm_start() {
    local w=${1:?usage: slurm_start WORKDIR}
    _slurm_path
    if [ -n "${SLURM_TEST_DIR:-}" ] && _slurm_live_pid "$SLURM_TEST_DIR/run/slurmctld.pid" slurmctld >/dev/null; then
        _slurm_log "a cluster started from $SLURM_TEST_DIR is still running; slurm_stop first"
        return 1
    fi
    mkdir -p "$w" || return 1
    w=$(cd "$w" && pwd -P) || return 1
    local ctld_port=${SLURM_TEST_CTLD_PORT:-6817} slurmd_port=${SLURM_TEST_SLURMD_PORT:-6818} p
    for p in "$ctld_port" "$slurmd_port"; do
        if _slurm_port_busy "$p"; then
            _slurm_log "port $p is already in use (another slurm?); set SLURM_TEST_CTLD_PORT/SLURM_TEST_SLURMD_PORT"
            return 1
        fi
    done
    mkdir -p "$w/etc" "$w/state" "$w/spool" "$w/log" "$w/run" "$w/munge" || return 1
    chmod 755 "$w/munge"   # munged wants o+x on the socket dir
    SLURM_TEST_DIR=$w
    export SLURM_TEST_DIR

    # --- munge: private key, socket, pid and log under $w/munge ---------------
    local key=$w/munge/munge.key sock=$w/munge/munge.socket
    if [ ! -s "$key" ]; then
        if command -v mungekey >/dev/null 2>&1; then
            mungekey --create --keyfile="$key" >/dev/null 2>&1 ||
                dd if=/dev/urandom of="$key" bs=1024 count=1 status=none || return 1
        else
            dd if=/dev/urandom of="$key" bs=1024 count=1 status=none || return 1
        fi
        chmod 400 "$key"
    fi
    # --force: run as root and accept the permissions of /tmp-style parents.
    if ! munged --force --key-file="$key" --socket="$sock" \
            --pid-file="$w/munge/munged.pid" --log-file="$w/munge/munged.log" \
            --seed-file="$w/munge/munged.seed" 2>"$w/log/munged.stderr"; then
        _slurm_log "munged failed to start:"; cat "$w/log/munged.stderr" "$w/munge/munged.log" >&2 2>/dev/null
        return 1
    fi
    if ! munge -n -S "$sock" | unmunge -S "$sock" >/dev/null 2>&1; then
        _slurm_log "munge round-trip failed"; slurm_dump_logs 40; return 1
    fi

    # --- slurm.conf -------------------------------------------------------------
    local node line cpus boards sockets cores threads mem
    node=$(hostname -s) || return 1
    line=$(slurmd -C 2>/dev/null | head -n 1)
    cpus=$(sed -n 's/.* CPUs=\([0-9]*\).*/\1/p' <<<"$line")
    boards=$(sed -n 's/.* Boards=\([0-9]*\).*/\1/p' <<<"$line")
    sockets=$(sed -n 's/.* SocketsPerBoard=\([0-9]*\).*/\1/p' <<<"$line")
    cores=$(sed -n 's/.* CoresPerSocket=\([0-9]*\).*/\1/p' <<<"$line")
    threads=$(sed -n 's/.* ThreadsPerCore=\([0-9]*\).*/\1/p' <<<"$line")
    mem=$(sed -n 's/.* RealMemory=\([0-9]*\).*/\1/p' <<<"$line")
    if [ -z "$cpus" ] || [ -z "$sockets" ] || [ -z "$cores" ] || [ -z "$threads" ] || [ -z "$mem" ]; then
        cpus=$(nproc) boards=1 sockets=1 cores=$cpus threads=1
        mem=$(awk '/^MemTotal:/ {print int($2/1024)}' /proc/meminfo)
    fi
    # Advertise a little less memory than the node has: a node whose configured
    # RealMemory exceeds what slurmd measures is drained ("Low RealMemory").
    local hw="CPUs=$cpus Boards=${boards:-1} SocketsPerBoard=$sockets CoresPerSocket=$cores ThreadsPerCore=$threads RealMemory=$((mem * 95 / 100))"

    # Cancel jobs whose dependency can never be met (afterok on a failed job)
    # instead of leaving them PENDING (DependencyNeverSatisfied) forever.
    # SLURM_TEST_KILL_INVALID_DEP=0 leaves that out, like most real clusters,
    # e.g. to check that scripts pass --kill-on-invalid-dep=yes themselves.
    local kid=
    if [ "${SLURM_TEST_KILL_INVALID_DEP:-1}" != 0 ]; then
        kid="# cancel jobs whose dependency can never be met (default: pending forever)
DependencyParameters=kill_invalid_depend
"
    fi

    cat >"$w/etc/slurm.conf" <<CONF
# generated by tests/slurm/cluster.sh for a throw-away one-node test cluster
ClusterName=lintracetest
SlurmctldHost=$node(127.0.0.1)
SlurmctldPort=$ctld_port
SlurmdPort=$slurmd_port
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
CredType=cred/munge
AuthInfo=socket=$sock
StateSaveLocation=$w/state
SlurmdSpoolDir=$w/spool
SlurmctldPidFile=$w/run/slurmctld.pid
SlurmdPidFile=$w/run/slurmd.pid
SlurmctldLogFile=$w/log/slurmctld.log
SlurmdLogFile=$w/log/slurmd.log
SlurmctldDebug=info
SlurmdDebug=info
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
JobCompType=jobcomp/filetxt
JobCompLoc=$w/log/jobcomp.txt
MpiDefault=none
SwitchType=switch/none
SchedulerType=sched/backfill
$kid# reject at submit time what this node can never run (e.g. too many CPUs)
# instead of leaving it PENDING (PartitionConfig) forever
EnforcePartLimits=ALL
MailProg=/bin/true
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
ReturnToService=2
# keep finished job records 5 min so scontrol can report state and exit code
MinJobAge=300
KillWait=5
InactiveLimit=0
SlurmctldTimeout=30
SlurmdTimeout=30
NodeName=$node NodeAddr=127.0.0.1 $hw State=UNKNOWN
PartitionName=debug Nodes=$node Default=YES MaxTime=INFINITE State=UP
CONF
    SLURM_CONF=$w/etc/slurm.conf
    export SLURM_CONF

    # --- daemons -----------------------------------------------------------------
    if ! slurmctld -f "$SLURM_CONF" -i 2>"$w/log/slurmctld.stderr"; then
        _slurm_log "slurmctld failed to start"; slurm_dump_logs 40; slurm_stop; return 1
    fi
    if ! slurmd -f "$SLURM_CONF" -N "$node" 2>"$w/log/slurmd.stderr"; then
        _slurm_log "slurmd failed to start"; slurm_dump_logs 40; slurm_stop; return 1
    fi

    local deadline=$((SECONDS + ${SLURM_TEST_START_TIMEOUT:-60})) state=
    while [ "$SECONDS" -lt "$deadline" ]; do
        state=$(sinfo -h -N -n "$node" -o '%T' 2>/dev/null | head -n 1)
        case "$state" in
            idle) return 0 ;;
            drain*|down*|fail*) # ReturnToService=2 should clear this; try once explicitly
                scontrol update NodeName="$node" State=RESUME >/dev/null 2>&1 ;;
        esac
        if ! _slurm_live_pid "$w/run/slurmctld.pid" slurmctld >/dev/null ||
           ! _slurm_live_pid "$w/run/slurmd.pid" slurmd >/dev/null; then
            sleep 1  # pid files may lag the fork by a moment
            if ! _slurm_live_pid "$w/run/slurmctld.pid" slurmctld >/dev/null ||
               ! _slurm_live_pid "$w/run/slurmd.pid" slurmd >/dev/null; then
                _slurm_log "a slurm daemon died during start-up"; slurm_dump_logs 40; slurm_stop; return 1
            fi
        fi
        sleep 0.5
    done
    _slurm_log "node $node not idle after ${SLURM_TEST_START_TIMEOUT:-60}s (state: ${state:-unknown})"
    sinfo -N -l >&2 2>/dev/null
    scontrol show node "$node" >&2 2>/dev/null
    slurm_dump_logs 40
    slurm_stop
    return 1
}

slurm_stop() {
    local w=${SLURM_TEST_DIR:-}
    [ -n "$w" ] || return 0
    local name file pid conf=$w/etc/slurm.conf
    # 1. cancel whatever is still queued or running, so that no job outlives
    #    the cluster, and give the steps a few seconds to go
    if _slurm_live_pid "$w/run/slurmctld.pid" slurmctld >/dev/null; then
        local left
        left=$(SLURM_CONF=$conf squeue -h -o '%A' 2>/dev/null)
        if [ -n "$left" ]; then
            # shellcheck disable=SC2086
            SLURM_CONF=$conf scancel $left 2>/dev/null
            for _ in $(seq 1 25); do
                [ -z "$(SLURM_CONF=$conf squeue -h -t PENDING,RUNNING,COMPLETING,SUSPENDED,CONFIGURING -o '%A' 2>/dev/null)" ] && break
                sleep 0.2
            done
        fi
    fi
    # 2. the daemons, one at a time: slurmd, slurmctld, then munged
    for name in slurmd slurmctld munged; do
        case $name in
            munged) file=$w/munge/munged.pid ;;
            *) file=$w/run/$name.pid ;;
        esac
        pid=$(_slurm_live_pid "$file" "$name") || continue
        kill -TERM "$pid" 2>/dev/null
        for _ in $(seq 1 50); do
            _slurm_alive "$pid" "$name" || break
            sleep 0.2
        done
        if _slurm_alive "$pid" "$name"; then
            _slurm_log "$name ($pid) ignored SIGTERM for 10s; SIGKILL"
            kill -KILL "$pid" 2>/dev/null
        fi
    done
    # 3. leftovers of this cluster only: slurmstepd processes (they inherit
    #    slurmd's environment, SLURM_CONF=$conf) and job processes (SLURM_JOB_ID
    #    set and SLURM_CONF=$conf)
    local d env
    for d in /proc/[0-9]*; do
        pid=${d#/proc/}
        [ "$pid" = "$$" ] || [ "$pid" = "${BASHPID:-$$}" ] && continue
        env=$( { tr '\0' '\n' <"$d/environ"; } 2>/dev/null ) || continue
        grep -qxF "SLURM_CONF=$conf" <<<"$env" || continue
        if [ "$(cat "$d/comm" 2>/dev/null)" = slurmstepd ] || grep -q '^SLURM_JOB_ID=' <<<"$env"; then
            kill -KILL "$pid" 2>/dev/null
        fi
    done
    return 0
}

slurm_dump_logs() {
    local n=${1:-40} f w=${SLURM_TEST_DIR:-}
    [ -n "$w" ] || return 0
    for f in "$w"/log/*.stderr "$w"/log/slurmctld.log "$w"/log/slurmd.log "$w"/munge/munged.log "$w"/log/jobcomp.txt; do
        [ -s "$f" ] || continue
        printf '==== %s (last %s lines) ====\n' "$f" "$n" >&2
        tail -n "$n" "$f" >&2
    done
}

# normalise "123", "123;cluster", "123_4" to the job id part slurm commands take
_slurm_jid() { local j=${1%%;*}; printf '%s\n' "$j"; }

slurm_wait_jobs() {
    local timeout=${SLURM_TEST_WAIT_TIMEOUT:-300}
    local ids=()
    while [ $# -gt 0 ]; do
        case $1 in
            -t|--timeout) timeout=${2:?slurm_wait_jobs: -t needs seconds}; shift 2 ;;
            --timeout=*) timeout=${1#*=}; shift ;;
            *) ids+=("$(_slurm_jid "$1")"); shift ;;
        esac
    done
    if [ "${#ids[@]}" -eq 0 ]; then _slurm_log "usage: slurm_wait_jobs [-t SECS] JOBID..."; return 2; fi
    local deadline=$((SECONDS + timeout)) out='' live='' fails=0
    while :; do
        # %A: job id (an array task's own id), %F: array job id, %i: 123_4 form.
        # No -j: squeue -j errors out for ids that were already purged.
        if out=$(squeue -h -t PENDING,RUNNING,SUSPENDED,COMPLETING,CONFIGURING,REQUEUED,RESIZING,SIGNALING,STAGE_OUT \
                        -o '%A %F %i' 2>&1); then
            fails=0
            live=$(awk -v ids=" ${ids[*]} " '{
                    split($3, t, "_");
                    if (index(ids, " " $1 " ") || index(ids, " " $2 " ") || index(ids, " " $3 " ") || index(ids, " " t[1] " ")) print $3
                }' <<<"$out")
            [ -z "$live" ] && return 0
        else
            fails=$((fails + 1))
            if [ "$fails" -ge 10 ]; then _slurm_log "squeue keeps failing: $out"; return 2; fi
        fi
        if [ "$SECONDS" -ge "$deadline" ]; then
            _slurm_log "timeout after ${timeout}s; still queued/running: $(tr '\n' ' ' <<<"$live")"
            squeue >&2 2>/dev/null
            return 1
        fi
        sleep 1
    done
}

slurm_job_states() {
    local j rc=0 recs
    for j in "$@"; do
        j=$(_slurm_jid "$j")
        if ! recs=$(scontrol -o show job "$j" 2>&1); then
            printf '%s UNKNOWN ?\n' "$j"; rc=1; continue
        fi
        awk '{
            id=""; arr=""; task=""; st=""; ec="";
            for (i = 1; i <= NF; i++) {
                split($i, kv, "=");
                if (kv[1] == "JobId") id = kv[2];
                else if (kv[1] == "ArrayJobId") arr = kv[2];
                else if (kv[1] == "ArrayTaskId") task = kv[2];
                else if (kv[1] == "JobState") st = kv[2];
                else if (kv[1] == "ExitCode") ec = kv[2];
            }
            if (id == "") next;
            printf "%s %s %s\n", (task != "" ? arr "_" task : id), st, ec
        }' <<<"$recs"
    done
    return "$rc"
}

slurm_jobs_ok() {
    local states bad
    states=$(slurm_job_states "$@") || { _slurm_log "unknown job(s):"; printf '%s\n' "$states" >&2; return 1; }
    bad=$(awk '$2 != "COMPLETED" || $3 != "0:0"' <<<"$states")
    if [ -n "$bad" ] || [ -z "$states" ]; then
        _slurm_log "jobs not COMPLETED 0:0:"; printf '%s\n' "${bad:-<no records>}" >&2
        return 1
    fi
    return 0
}

# slurm_exit_cleanup -- an EXIT trap for test scripts: stops the cluster and
# removes the script's scratch folder $work if it succeeded (keeps it, and
# says where, if it failed), then exits with the script's status.
slurm_exit_cleanup() {
    local rc=$?
    slurm_stop
    if [ -n "${work:-}" ]; then
        if [ "$rc" -eq 0 ]; then rm -rf "$work"; else echo "kept for inspection: $work" >&2; fi
    fi
    exit "$rc"
}
