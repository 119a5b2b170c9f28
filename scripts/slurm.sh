# The Slurm executor of scripts/iterate.sh (sourced; README "Running on a Slurm cluster").
#
# Each stage the loop runs becomes Slurm jobs: a shardable stage (generate, judge, eval) a job
# array over `--shard k/n` followed by one `--merge` job, every other stage a single job. The
# driver (this shell) submits a stage, waits for it, and asks the store what it produced
# (`--cached-only`), so it needs only sbatch, squeue and scontrol, and the same store path on every
# node (CREAM_ARTIFACTS, on a shared file system). Before submitting anything it asks the store
# whether the artifact (or each shard) already exists: a rerun after a failure submits only what
# is missing. Jobs are submitted with --requeue and a USR1 signal before their time limit, which
# requeues them; training resumes from its last checkpoint ([train] checkpoint_every).
#
# Needs from iterate.sh: $bin (stage binaries), $cfg, $name, and cream-plan's slurm_opts_<stage>
# arrays and slurm_shards_<stage> counts.
# Env: CREAM_SLURM_LOGS (default slurm-logs/<pipeline name>, one file per job or array task),
#   CREAM_SLURM_POLL (seconds between squeue polls, default 1), CREAM_SLURM_REQUEUE_BEFORE
#   (seconds before the time limit at which a job requeues itself, default 300), and sbatch's own
#   SBATCH_* variables (a [slurm] key set in the config wins over them, as any sbatch option does).

for tool in sbatch squeue scontrol; do
    command -v "$tool" >/dev/null || { echo "executor=slurm: $tool is not on PATH (run on a Slurm login node)" >&2; exit 2; }
done
slurm_logs=$(realpath -m "${CREAM_SLURM_LOGS:-slurm-logs/$name}")
mkdir -p "$slurm_logs/jobs"
bin=$(realpath "$bin")
CREAM_ARTIFACTS=$(realpath -m "${CREAM_ARTIFACTS:-artifacts}")
export CREAM_ARTIFACTS
cfg=$(realpath "$cfg")
echo "== $name: executor slurm; store $CREAM_ARTIFACTS, logs $slurm_logs" >&2

# The artifact a stage command would produce, if the store has it: prints its path (status 0),
# or returns 3 when it is missing. Any other failure (bad input) stops the run with the stage's error.
slurm_cached() {
    local out rc=0
    out=$("$bin/$1" "${@:2}" --cached-only --quiet) || rc=$?
    case $rc in
        0) printf '%s\n' "$out" | tail -n 1 ;;
        3) return 3 ;;
        *) echo "iterate (slurm): $1 ${*:2} failed on the login node (status $rc)" >&2; exit 1 ;;
    esac
}

# Write the batch script of one stage command and print its path. An array task adds
# `--shard $SLURM_ARRAY_TASK_ID/N`. The stage runs in the background so the USR1 that Slurm sends
# before the time limit reaches the trap, which requeues the job.
slurm_script() {
    local exe=$1 shards=$2 script
    script="$slurm_logs/jobs/$exe-$(date +%Y%m%d-%H%M%S)-$RANDOM.sh"
    {
        echo '#!/usr/bin/env bash'
        echo "# cream: $exe of pipeline $name (written by scripts/slurm.sh)"
        echo 'set -uo pipefail'
        echo '[ -n "${SLURM_CPUS_PER_TASK:-}" ] && export RAYON_NUM_THREADS=$SLURM_CPUS_PER_TASK'
        printf 'export CREAM_ARTIFACTS=%q\n' "$CREAM_ARTIFACTS"
        printf 'cmd=(%q' "$bin/$exe"; printf ' %q' "${@:3}"; echo ')'
        if [ "$shards" -gt 1 ]; then echo "cmd+=(--shard \"\$SLURM_ARRAY_TASK_ID/$shards\")"; fi
        echo 'echo "cream: ${cmd[*]##*/} on $(hostname), job $SLURM_JOB_ID${SLURM_ARRAY_TASK_ID:+ task $SLURM_ARRAY_TASK_ID}, start $(date -u +%FT%TZ), restart ${SLURM_RESTART_COUNT:-0}" >&2'
        echo 'trap '\''echo "cream: time limit near: requeueing job $SLURM_JOB_ID (training resumes from its last checkpoint)" >&2; scontrol requeue "$SLURM_JOB_ID"'\'' USR1'
        echo '"${cmd[@]}" & child=$!'
        echo 'while true; do wait "$child"; rc=$?; kill -0 "$child" 2>/dev/null || break; done'
        echo 'exit "$rc"'
    } >"$script"
    chmod +x "$script"
    printf '%s\n' "$script"
}

# Submit a batch script; prints the job id. $1: job name; $2: array spec or ""; $3: the stage
# whose [slurm] options apply; $4: the script.
slurm_submit() {
    local jobname=$1 array=$2 stage=$3 script=$4 opts out
    local -n opts_ref="slurm_opts_$stage"
    opts=("${opts_ref[@]}")
    if [ -n "$array" ]; then
        out="$slurm_logs/%x-%A_%a.out"
        opts+=("--array=$array")
    else
        out="$slurm_logs/%x-%j.out"
    fi
    sbatch --parsable --job-name="$jobname" --output="$out" --open-mode=append --requeue \
        --signal="B:USR1@${CREAM_SLURM_REQUEUE_BEFORE:-300}" "${opts[@]}" "$script" | cut -d';' -f1
}

# Wait until no task of job $1 is pending, running or being requeued.
slurm_wait() {
    local states
    while true; do
        states=$(squeue -h -t all -j "$1" -o '%T' 2>/dev/null) || states=
        grep -qvE '^(COMPLETED|FAILED|CANCELLED|TIMEOUT|OUT_OF_MEMORY|NODE_FAIL|BOOT_FAIL|DEADLINE|PREEMPTED)$' <<<"$states" || break
        sleep "${CREAM_SLURM_POLL:-1}"
    done
}

# Say why task $3 (or the job, when $3 is empty) of job $2 of stage command $1 did not produce its
# artifact, with its state and log file, then stop the run.
slurm_failed() {
    local what=$1 job=$2 task=$3 jobname=$4 line state code log
    if [ -n "$task" ]; then
        line=$(scontrol show job -o "${job}_$task" 2>/dev/null | head -n 1)
        log="$slurm_logs/${jobname}-${job}_$task.out"
    else
        line=$(scontrol show job -o "$job" 2>/dev/null | head -n 1)
        log="$slurm_logs/${jobname}-$job.out"
    fi
    state=$(grep -o 'JobState=[A-Z_]*' <<<"$line" | cut -d= -f2)
    code=$(grep -o ' ExitCode=[0-9:]*' <<<"$line" | cut -d= -f2)
    {
        echo "iterate (slurm): $what: job ${job}${task:+_$task} ended ${state:-(no longer known to Slurm)}${code:+ (exit code $code)} without its artifact."
        echo "  log: $log"
        if [ -f "$log" ]; then echo "  last lines of the log:"; tail -n 5 "$log" | sed 's/^/    /'; fi
        echo "  Rerun the same command to resubmit only what is missing (finished work is kept)."
    } >&2
    exit 1
}

# One stage command as one job (or none, if its artifact exists): prints the artifact path.
slurm_run() {
    local stage=${1#cream-} path job jobname=$1
    if path=$(slurm_cached "$@"); then printf '%s\n' "$path"; return; fi
    job=$(slurm_submit "$jobname" "" "$stage" "$(slurm_script "$1" 1 "${@:2}")")
    echo "   $stage: job $job" >&2
    slurm_wait "$job"
    path=$(slurm_cached "$@") || slurm_failed "$stage" "$job" "" "$jobname"
    printf '%s\n' "$path"
}

# A shardable stage command: an array over the missing shards, then one merge job; prints the
# merged artifact (identical to an unsharded run's).
slurm_run_sharded() {
    local stage=${1#cream-} path n job k missing=() shard_paths=() jobname=$1
    local -n n_ref="slurm_shards_$stage"
    n=$n_ref
    if [ "$n" -le 1 ]; then slurm_run "$@"; return; fi
    if path=$(slurm_cached "$@"); then printf '%s\n' "$path"; return; fi
    for ((k = 0; k < n; k++)); do
        slurm_cached "$@" --shard "$k/$n" >/dev/null || missing+=("$k")
    done
    if [ "${#missing[@]}" -gt 0 ]; then
        local array
        array=$(IFS=,; echo "${missing[*]}")
        job=$(slurm_submit "$jobname" "$array" "$stage" "$(slurm_script "$1" "$n" "${@:2}")")
        echo "   $stage: array job $job, shards ${array} of $n" >&2
        slurm_wait "$job"
    fi
    for ((k = 0; k < n; k++)); do
        path=$(slurm_cached "$@" --shard "$k/$n") || slurm_failed "$stage shard $k/$n" "$job" "$k" "$jobname"
        shard_paths+=("$path")
    done
    jobname="$1-merge"
    job=$(slurm_submit "$jobname" "" "$stage" "$(slurm_script "$1" 1 "${@:2}" --merge "${shard_paths[@]}")")
    echo "   $stage: merge job $job" >&2
    slurm_wait "$job"
    path=$(slurm_cached "$@") || slurm_failed "$stage merge" "$job" "" "$jobname"
    printf '%s\n' "$path"
}
