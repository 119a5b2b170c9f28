#!/usr/bin/env bash
# A throwaway single-node Slurm cluster for the tests (recipe: ../shared/docs/slurm-local.md).
# Usage:
#   scripts/slurm-local.sh install      install Debian's Slurm daemons and clients if missing (root)
#   scripts/slurm-local.sh start DIR    start slurmctld + slurmd with all state in DIR (created);
#                                       prints `export SLURM_CONF=DIR/slurm.conf` for eval
#   scripts/slurm-local.sh stop DIR     cancel every job, stop both daemons, remove DIR
# No systemd, no munge daemon (auth/none), no accounting database; one node named after this
# host with all its CPUs, one partition `debug`. Ports: SLURM_LOCAL_PORT and SLURM_LOCAL_PORT+1
# (default 6817, 6818).
set -euo pipefail

cmd=${1:-}
case $cmd in
    install)
        if command -v slurmctld >/dev/null && command -v slurmd >/dev/null && command -v sbatch >/dev/null; then
            exit 0
        fi
        if [ "$(id -u)" != 0 ]; then
            echo "slurm-local: Slurm is not installed and this is not root; install the Debian packages" \
                "slurmctld slurmd slurm-client (apt-get install -y --no-install-recommends ...)" >&2
            exit 1
        fi
        export DEBIAN_FRONTEND=noninteractive
        apt-get install -y --no-install-recommends slurmctld slurmd slurm-client >/dev/null 2>&1 || {
            apt-get update >/dev/null
            apt-get install -y --no-install-recommends slurmctld slurmd slurm-client >/dev/null
        }
        ;;
    start)
        d=${2:?usage: slurm-local.sh start DIR}
        mkdir -p "$d/state" "$d/spool" "$d/log"
        d=$(realpath "$d")
        host=$(hostname -s)
        ncpu=$(nproc)
        mem=$(($(free -m | awk '/^Mem:/{print $2}') - 1024))
        port=${SLURM_LOCAL_PORT:-6817}
        cat >"$d/slurm.conf" <<CONF
ClusterName=cream-test
SlurmctldHost=${host}(127.0.0.1)
SlurmctldPort=${port}
SlurmdPort=$((port + 1))
SlurmUser=root
SlurmdUser=root
AuthType=auth/none
CredType=cred/none
MpiDefault=none
SwitchType=switch/none
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
JobCompType=jobcomp/filetxt
JobCompLoc=${d}/log/jobcomp.txt
SelectType=select/cons_tres
SelectTypeParameters=CR_CPU
ReturnToService=2
MinJobAge=3600
DependencyParameters=kill_invalid_depend
MailProg=/bin/true
StateSaveLocation=${d}/state
SlurmdSpoolDir=${d}/spool
SlurmctldPidFile=${d}/slurmctld.pid
SlurmdPidFile=${d}/slurmd.pid
SlurmctldLogFile=${d}/log/slurmctld.log
SlurmdLogFile=${d}/log/slurmd.log
NodeName=${host} NodeAddr=127.0.0.1 CPUs=${ncpu} RealMemory=${mem} State=UNKNOWN
PartitionName=debug Nodes=${host} Default=YES MaxTime=INFINITE State=UP
CONF
        export SLURM_CONF="$d/slurm.conf"
        # setsid: the daemons outlive this script and leave the caller's process group alone.
        setsid slurmctld -D -i >"$d/log/slurmctld.out" 2>&1 </dev/null &
        echo $! >"$d/ctld.pid"
        setsid slurmd -D >"$d/log/slurmd.out" 2>&1 </dev/null &
        echo $! >"$d/slurmd.pid.own"
        for _ in $(seq 1 120); do
            [ "$(sinfo -h -n "$host" -o %t 2>/dev/null)" = idle ] && break
            sleep 0.25
        done
        if [ "$(sinfo -h -n "$host" -o %t 2>/dev/null)" != idle ]; then
            echo "slurm-local: the node did not come up; see $d/log" >&2
            "$0" stop "$d" --keep || true
            exit 1
        fi
        echo "export SLURM_CONF=$d/slurm.conf"
        ;;
    stop)
        d=${2:?usage: slurm-local.sh stop DIR [--keep]}
        [ -f "$d/slurm.conf" ] || exit 0
        export SLURM_CONF="$d/slurm.conf"
        scancel --user="$(id -un)" 2>/dev/null || true
        for _ in $(seq 1 50); do [ -z "$(squeue -h -o %i 2>/dev/null)" ] && break; sleep 0.2; done
        for f in "$d/slurmd.pid.own" "$d/ctld.pid"; do
            [ -f "$f" ] && kill -TERM "$(cat "$f")" 2>/dev/null || true
        done
        for f in "$d/slurmd.pid.own" "$d/ctld.pid"; do
            [ -f "$f" ] || continue
            for _ in $(seq 1 50); do kill -0 "$(cat "$f")" 2>/dev/null || break; sleep 0.1; done
        done
        [ "${3:-}" = --keep ] || rm -rf "$d"
        ;;
    *)
        echo "usage: slurm-local.sh install | start DIR | stop DIR" >&2
        exit 2
        ;;
esac
