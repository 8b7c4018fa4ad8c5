#!/usr/bin/env bash
# Evaluate a SegVG checkpoint: Acc@0.5, Acc@0.75 and mean IoU, written as JSON next to the results.
#
#   bash test.sh                       the demo checkpoint of `bash train.sh` on the demo test split (per type too)
#   DATASET=gref_umd EVAL_SET=test EVAL_MODEL=ckpt/gref_umd/best_checkpoint.pth DATA_ROOT=data SPLIT_ROOT=data/split \
#       NPROC=4 bash test.sh           any checkpoint, ours or official, on any split
#
# Environment: EVAL_MODEL, EVAL_SET, DATASET, DATA_ROOT, SPLIT_ROOT, OUTPUT_DIR, NPROC, NNODES, NODE_RANK,
# MASTER_ADDR, MASTER_PORT, PYTHON. Extra arguments go to eval.py.
set -euo pipefail
cd "$(dirname "$0")"

source tools/launch.sh

ARGS=()
if [ -z "${DATASET:-}" ]; then
    OUTPUT_DIR=${OUTPUT_DIR:-outputs/demo}
    EVAL_MODEL=${EVAL_MODEL:-$OUTPUT_DIR/best_checkpoint.pth}
    if [ ! -f "$EVAL_MODEL" ]; then
        echo "no demo checkpoint at $EVAL_MODEL: run 'bash train.sh' first" >&2
        exit 1
    fi
    # The data location is recorded in the demo checkpoint; DATA_ROOT/SPLIT_ROOT override it.
    ARGS+=(--num_workers 0)
else
    : "${EVAL_MODEL:?EVAL_MODEL must name the checkpoint to evaluate}"
    OUTPUT_DIR=${OUTPUT_DIR:-outputs/$DATASET}
    ARGS+=(--dataset "$DATASET")
fi
[ -n "${DATA_ROOT:-}" ] && ARGS+=(--data_root "$DATA_ROOT")
[ -n "${SPLIT_ROOT:-}" ] && ARGS+=(--split_root "$SPLIT_ROOT")
launch eval.py --eval_model "$EVAL_MODEL" --eval_set "${EVAL_SET:-test}" --output_dir "$OUTPUT_DIR" "${ARGS[@]}" "$@"
