#!/usr/bin/env bash
# Install lmaas-tune into .venv and tune a prompt for SST-2 on the embedded model, offline, on the CPU.
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/venv.sh ""
lmaas-tune fit --task sst2 --preset cpu "$@"
