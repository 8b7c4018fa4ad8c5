#!/usr/bin/env bash
# The GPU acceptance run (docs/gpu_check.md): environment, correctness on CUDA, parity case A on CUDA, the real
# launcher (torchrun + NCCL, SIGTERM and resume, test.sh), speed and memory of the full model; about 5 minutes, no
# download. --dry_run runs the same parts on the CPU at tiny sizes (CI); --only PART,... reruns chosen parts.
#
#   bash tools/gpu_check.sh OUT_DIR
#   bash tools/gpu_check.sh --dry_run OUT_DIR
#   bash tools/gpu_check.sh --only parity,speed OUT_DIR
set -euo pipefail
cd "$(dirname "$0")/.."
exec "${PYTHON:-python}" tools/gpu_check.py "$@"
