#!/usr/bin/env bash
# Install lmaas-tune with its test extras into .venv and run the test suite, offline.
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/venv.sh test
status=0
python -m pytest -q -p no:cacheprovider "$@" || status=$?
if [ "$status" -eq 5 ]; then
  echo "pytest collected no tests: failing" >&2
  exit 1
fi
exit "$status"
