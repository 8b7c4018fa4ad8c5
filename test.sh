#!/usr/bin/env bash
# Evaluate a SegVG checkpoint: Acc@0.5, Acc@0.75 and mean IoU, written as JSON next to the results.
#
#   bash test.sh                       the demo checkpoint of `bash train.sh` on the demo test split (per type too)
#   DATASET=gref_umd EVAL_SET=val,test CHECKPOINT=ckpt/gref_umd/best_checkpoint.pth NPROC=4 bash test.sh
#                                      any checkpoint, ours or official, on any split(s)
#   EVAL_SETS=paper CHECKPOINT=outputs/mix/best_checkpoint.pth bash test.sh
#                                      one checkpoint on several datasets' splits (DATASET:SPLIT,...; "paper": the
#                                      nine splits of the paper's tables), the model loaded once, one table at the end
#
# Environment: CHECKPOINT (EVAL_MODEL is accepted too), EVAL_SET (default test), EVAL_SETS, DATASET, DATA_ROOT
# (default data/images with DATASET or EVAL_SETS), SPLIT_ROOT (default data/split with DATASET or EVAL_SETS),
# OUTPUT_DIR, NPROC, NNODES, NODE_RANK, MASTER_ADDR, MASTER_PORT, PYTHON. Extra arguments go to eval.py.
set -euo pipefail
cd "$(dirname "$0")"

source tools/launch.sh

CHECKPOINT=${CHECKPOINT:-${EVAL_MODEL:-}}
ARGS=()
SPLITS=(--eval_set "${EVAL_SET:-test}")
if [ -n "${EVAL_SETS:-}" ]; then
    : "${CHECKPOINT:?CHECKPOINT must name the checkpoint to evaluate}"
    OUTPUT_DIR=${OUTPUT_DIR:-$(dirname "$CHECKPOINT")}
    DATA_ROOT=${DATA_ROOT:-data/images}
    SPLIT_ROOT=${SPLIT_ROOT:-data/split}
    SPLITS=(--eval_sets "$EVAL_SETS")
elif [ -z "${DATASET:-}" ]; then
    OUTPUT_DIR=${OUTPUT_DIR:-outputs/demo}
    CHECKPOINT=${CHECKPOINT:-$OUTPUT_DIR/best_checkpoint.pth}
    if [ ! -f "$CHECKPOINT" ]; then
        echo "no demo checkpoint at $CHECKPOINT: run 'bash train.sh' first" >&2
        exit 1
    fi
    # The data location is recorded in the demo checkpoint; DATA_ROOT/SPLIT_ROOT override it.
    ARGS+=(--num_workers 0)
else
    : "${CHECKPOINT:?CHECKPOINT must name the checkpoint to evaluate}"
    OUTPUT_DIR=${OUTPUT_DIR:-outputs/$DATASET}
    DATA_ROOT=${DATA_ROOT:-data/images}
    SPLIT_ROOT=${SPLIT_ROOT:-data/split}
    ARGS+=(--dataset "$DATASET")
fi
[ -n "${DATA_ROOT:-}" ] && ARGS+=(--data_root "$DATA_ROOT")
[ -n "${SPLIT_ROOT:-}" ] && ARGS+=(--split_root "$SPLIT_ROOT")
launch eval.py --checkpoint "$CHECKPOINT" "${SPLITS[@]}" --output_dir "$OUTPUT_DIR" "${ARGS[@]}" "$@"
