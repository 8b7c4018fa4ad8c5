# Sourced by train.sh and test.sh: `launch script.py args...` runs one process with plain python, or several
# with torchrun and a static rendezvous, from NPROC, NNODES, NODE_RANK, MASTER_ADDR, MASTER_PORT and PYTHON
# (TORCHRUN=1: torchrun even for one process, e.g. to exercise the process group on one GPU).
# MAX_RESTARTS=N: torchrun restarts the workers up to N times after one fails (they resume from
# checkpoint_latest.pth); RDZV_ENDPOINT=host:port: the c10d rendezvous instead of the static one, so that a node may
# leave and rejoin (RDZV_ID names the job, default segvg). Either runs torchrun even for one process.
# SIGTERM and SIGUSR1 sent to this shell (a scheduler's preemption notice, SLURM's --signal=B:USR1@120) are passed
# on to the Python processes -- under torchrun to its workers, since torchrun itself dies of SIGUSR1 -- which
# then save a checkpoint and exit with status 128 + the signal's number (train.py: docs/training.md).
PYTHON=${PYTHON:-python}
NPROC=${NPROC:-1}
NNODES=${NNODES:-1}

# CPU allocator (docs/performance.md): glibc gives large freed tensors back to the kernel and the next step faults
# them in again; glibc tunables that keep freed memory make full-size CPU steps ~13 % faster. Used on machines without
# an NVIDIA GPU unless SEGVG_ALLOCATOR=system (or GLIBC_TUNABLES is already set). jemalloc is not used: with the
# never-purge settings that make it fast, an 8-minute demo run grew to 24 GB.
if [ "${SEGVG_ALLOCATOR:-auto}" != system ] && [ -z "${GLIBC_TUNABLES:-}" ] && ! command -v nvidia-smi >/dev/null 2>&1
then
    export GLIBC_TUNABLES=glibc.malloc.mmap_max=0:glibc.malloc.trim_threshold=17179869184
    echo "CPU allocator: glibc keeping freed memory (GLIBC_TUNABLES=$GLIBC_TUNABLES; SEGVG_ALLOCATOR=system to" \
         "keep the defaults)" >&2
fi

launch() {
    local pid status
    if single_process; then
        "$PYTHON" "$@" &
    else
        local rendezvous=(--node_rank "${NODE_RANK:-0}" --master_addr "${MASTER_ADDR:-127.0.0.1}"
                          --master_port "${MASTER_PORT:-29500}")
        if [ -n "${RDZV_ENDPOINT:-}" ]; then
            rendezvous=(--rdzv_backend c10d --rdzv_endpoint "$RDZV_ENDPOINT" --rdzv_id "${RDZV_ID:-segvg}")
        fi
        "$PYTHON" -m torch.distributed.run --nproc_per_node "$NPROC" --nnodes "$NNODES" "${rendezvous[@]}" \
            --max_restarts "${MAX_RESTARTS:-0}" "$@" &
    fi
    pid=$!
    FORWARDED=""
    trap "forward_signal TERM $pid" TERM
    trap "forward_signal USR1 $pid" USR1
    # wait returns early when a trapped signal arrives: wait again until the process has ended.
    while true; do
        status=0
        wait "$pid" || status=$?
        kill -0 "$pid" 2>/dev/null || break
    done
    trap - TERM USR1
    # torchrun reports a worker that stopped on a forwarded signal as a failure (1); give the status plain python
    # gives, 128 + the signal's number, so that a requeue script sees a preemption either way.
    if [ -n "$FORWARDED" ] && [ "$status" -ne 0 ]; then
        status=$((128 + $(kill -l "$FORWARDED")))
    fi
    return "$status"
}

single_process() {
    [ "${TORCHRUN:-0}" != 1 ] && [ "$NPROC" -eq 1 ] && [ "$NNODES" -eq 1 ] && [ "${MAX_RESTARTS:-0}" -eq 0 ] &&
        [ -z "${RDZV_ENDPOINT:-}" ]
}

forward_signal() {
    FORWARDED=$1
    if single_process; then
        kill -"$1" "$2" 2>/dev/null || true
    else
        pkill -"$1" -P "$2" 2>/dev/null || true
    fi
}
