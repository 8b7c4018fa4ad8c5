# Sourced by train.sh and test.sh: `launch script.py args...` runs one process with plain python, or several
# with torchrun and a static rendezvous, from NPROC, NNODES, NODE_RANK, MASTER_ADDR, MASTER_PORT and PYTHON.
PYTHON=${PYTHON:-python}
NPROC=${NPROC:-1}
NNODES=${NNODES:-1}

launch() {
    if [ "$NPROC" -eq 1 ] && [ "$NNODES" -eq 1 ]; then
        "$PYTHON" "$@"
    else
        torchrun --nproc_per_node "$NPROC" --nnodes "$NNODES" --node_rank "${NODE_RANK:-0}" \
            --master_addr "${MASTER_ADDR:-127.0.0.1}" --master_port "${MASTER_PORT:-29500}" "$@"
    fi
}
