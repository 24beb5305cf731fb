#!/usr/bin/env bash
# Install lmaas-tune into .venv and tune a prompt for SST-2 on the embedded model, offline, on the CPU.
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/venv.sh ""
# p0 = the embeddings of an instruction (docs/method.md, "Black-Box Tuning"); drop --prompt-init for the paper's zeros
lmaas-tune fit --task sst2 --preset cpu --prompt-init $'Is the following movie review positive or negative?\n' "$@"
