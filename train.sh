#!/usr/bin/env bash
# Train SegVG, then evaluate the best checkpoint.
#
#   bash train.sh                      the built-in demo: generates the synthetic "easy" dataset if missing, trains a
#                                      small SegVG from scratch (tools/demo_flags.txt) for 1,100 steps or DEMO_MINUTES
#                                      (default 9) of training, whichever runs out first, evaluates it on the demo test
#                                      split (Acc@0.5 overall and per expression type), writes overlays and curves.
#   DATASET=unc DETR_MODEL=checkpoints/detr-r101-unc.pth NPROC=8 bash train.sh
#                                      the paper's recipe on a real dataset (docs/training.md), then the evaluation
#                                      of its best checkpoint on the dataset's test splits.
#
# Environment: DATASET (a built-in dataset or the name of a JSONL one, docs/custom_data.md; several, comma-separated,
# train on their union: docs/training.md), DATA_ROOT (default
# data/images), SPLIT_ROOT (default data/split), DETR_MODEL, PRETRAINED (a checkpoint to fine-tune from: train.py
# --pretrained), OUTPUT_DIR (default outputs/<dataset>), DEMO_MINUTES, NPROC (processes per node, default 1), NNODES,
# NODE_RANK, MASTER_ADDR, MASTER_PORT (multi-node rendezvous), PYTHON. Extra arguments go to train.py and override the
# flags below. Runs continue from OUTPUT_DIR/checkpoint_latest.pth when it exists (--auto_resume): a preempted or
# requeued job runs the same command again; delete OUTPUT_DIR to start over.
set -euo pipefail
cd "$(dirname "$0")"

source tools/launch.sh

PRETRAINED_FLAG=()
[ -n "${PRETRAINED:-}" ] && PRETRAINED_FLAG=(--pretrained "$PRETRAINED")

if [ -z "${DATASET:-}" ]; then
    DATA_ROOT=${DATA_ROOT:-data/demo}
    SPLIT_ROOT=${SPLIT_ROOT:-$DATA_ROOT/split}
    OUTPUT_DIR=${OUTPUT_DIR:-outputs/demo}
    DEMO_MINUTES=${DEMO_MINUTES:-9}
    if [ ! -f "$SPLIT_ROOT/demo/demo_test.pth" ]; then
        "$PYTHON" -m datasets.demo --out "$DATA_ROOT" --level easy --seed 0
    fi
    launch train.py @tools/demo_flags.txt --data_root "$DATA_ROOT" --split_root "$SPLIT_ROOT" \
        --output_dir "$OUTPUT_DIR" --minutes "$DEMO_MINUTES" --auto_resume "${PRETRAINED_FLAG[@]}" "$@"
    launch eval.py --checkpoint "$OUTPUT_DIR/best_checkpoint.pth" --eval_set test --output_dir "$OUTPUT_DIR" \
        --num_workers 0 --save_predictions "$OUTPUT_DIR/predictions_test.jsonl" --visualize 6
    "$PYTHON" tools/plot_log.py "$OUTPUT_DIR/log.txt"
    echo "bash train.sh (demo) finished in ${SECONDS} s; results in $OUTPUT_DIR"
    exit 0
fi

DATA_ROOT=${DATA_ROOT:-data/images}
SPLIT_ROOT=${SPLIT_ROOT:-data/split}
OUTPUT_DIR=${OUTPUT_DIR:-outputs/${DATASET//,/+}}
DETR_FLAG=()
if [ -n "${DETR_MODEL:-}" ]; then
    DETR_FLAG=(--detr_model "$DETR_MODEL")
elif [ -z "${PRETRAINED:-}" ]; then
    echo "warning: neither DETR_MODEL nor PRETRAINED is set, the visual branch starts from random weights" >&2
fi
# The original recipe (docs/original.md, "Training recipe"): 8 GPUs x 8, AdamW, lr 1e-4 (1e-5 for the backbones),
# 90 epochs, lr drop at 60, backbones frozen for 10 epochs, clip 0.1, scale/translate/crop augmentation; the model is
# train.py's default (ResNet-101, 40 tokens), or PRETRAINED's.
launch train.py --dataset "$DATASET" --data_root "$DATA_ROOT" --split_root "$SPLIT_ROOT" --output_dir "$OUTPUT_DIR" \
    "${DETR_FLAG[@]}" --batch_size 8 \
    --lr 1e-4 --lr_bert 1e-5 --lr_visu_cnn 1e-5 --lr_visu_tra 1e-5 --epochs 90 --lr_drop 60 --freeze_epochs 10 \
    --clip_max_norm 0.1 --aug_scale --aug_translate --aug_crop --num_workers 8 --auto_resume \
    "${PRETRAINED_FLAG[@]}" "$@"

# The splits each dataset reports (gref has no test split: its val is the reported one; a JSONL dataset: those of
# val and test that it has), evaluated in one eval.py call (the model loaded once); a mix: every dataset's.
splits_of() {
    case "$1" in
        unc|unc+) echo val testA testB ;;
        gref) echo val ;;
        gref_umd|referit|flickr) echo val test ;;
        *) for split in val test; do
               [ -f "$SPLIT_ROOT/$1/$1_$split.jsonl" ] && echo "$split"
           done ;;
    esac
}
EVAL_SETS=()
IFS=, read -r -a NAMES <<< "$DATASET"
for name in "${NAMES[@]}"; do
    for split in $(splits_of "$name"); do
        EVAL_SETS+=("$name:$split")
    done
done
if [ "${#EVAL_SETS[@]}" -gt 0 ]; then
    launch eval.py --checkpoint "$OUTPUT_DIR/best_checkpoint.pth" --eval_sets "$(IFS=,; echo "${EVAL_SETS[*]}")" \
        --output_dir "$OUTPUT_DIR" --data_root "$DATA_ROOT" --split_root "$SPLIT_ROOT"
fi
