#!/usr/bin/env bash
# BBT scoring speed on a GPU at the paper's sizes, and what 8000 calls would take.
#
#   bash benchmarks/gpu_check.sh
#
# Model: randomly initialised, RoBERTa-large-shaped (24 layers, hidden 1024; nothing downloaded).
# Workload: L=50 soft prompt, 32 train inputs of 35-59 tokens (mean 47), popsize 20. Prints calls/s
# of the reference-style baseline and of lmaas-tune's path, and the projected minutes for 8000
# calls (the paper's budget). Installs nothing when the interpreter already has torch and
# transformers (a GPU image); otherwise it sets up the project's own virtualenv (scripts/venv.sh).
# Without a GPU it runs the same on the CPU at a small size (2 layers, popsize 4), as a smoke test.
# Finishes in well under 5 minutes on one H100. COMPILE=1 also times the compiled layers (--compile),
# in bfloat16 only on a GPU so that the compilation fits the same 5 minutes (not yet tried on one).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
if ! "$PY" -c "import torch, transformers, numpy" 2>/dev/null; then
  . scripts/venv.sh ""
  PY=python
fi
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" HF_HUB_OFFLINE=1 PYTHONUNBUFFERED=1
"$PY" -c "import torch; print('torch', torch.__version__, 'cuda', torch.cuda.is_available(),
      torch.cuda.get_device_name(0) if torch.cuda.is_available() else '')"
out=${OUT:-benchmarks/results}
dtypes=(bfloat16 float32) extra=()
if [ "${COMPILE:-0}" = 1 ]; then dtypes=(bfloat16) extra=(--compile); fi
if "$PY" -c "import sys, torch; sys.exit(0 if torch.cuda.is_available() else 1)"; then
  timeout 280 "$PY" benchmarks/throughput.py --workloads roberta-large-shaped --device cuda \
    --dtypes "${dtypes[@]}" --popsize 20 --baseline-calls 20 --rounds 5 "${extra[@]}" --out "$out/gpu_check.json"
else
  echo "no CUDA device: a CPU smoke run at a small size (2 layers, popsize 4)"
  timeout 280 "$PY" benchmarks/throughput.py --workloads roberta-large-shaped --device cpu \
    --dtypes float32 --roberta-layers 2 --popsize 4 --baseline-calls 2 --rounds 1 "${extra[@]}" --out "$out/gpu_check_cpu.json"
fi
