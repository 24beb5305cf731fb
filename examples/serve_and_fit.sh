#!/usr/bin/env bash
# Host a model with `lmaas-tune serve`, then tune a prompt through it with `lmaas-tune fit --backend remote`.
# On two machines, run the first command on the model's host (with --host 0.0.0.0 and a token) and the
# fit anywhere that can reach it.
#
#   bash examples/serve_and_fit.sh                    # embedded SmolLM2, SST-2, 40 calls
#   MODEL=./some-model-dir BUDGET=200 bash examples/serve_and_fit.sh --seed 7
set -euo pipefail
MODEL=${MODEL:-smollm2-135m}
PORT=${PORT:-8765}
BUDGET=${BUDGET:-40}
URL="http://127.0.0.1:${PORT}"
# the token clients must send; the fit reads it from the same variable (--token-env)
export LMAAS_TUNE_TOKEN=${LMAAS_TUNE_TOKEN:-$(python -c 'import secrets; print(secrets.token_hex(16))')}

lmaas-tune serve --model "$MODEL" --port "$PORT" --token-env LMAAS_TUNE_TOKEN &
SERVER=$!
trap 'kill -INT "$SERVER" 2>/dev/null || true; wait "$SERVER" 2>/dev/null || true' EXIT

python - "$URL" "$SERVER" <<'PY'   # wait until the service answers (loading the model takes a while)
import os, sys, time, urllib.request
url, pid = sys.argv[1], int(sys.argv[2])
while True:
    try:
        urllib.request.urlopen(url + "/v1/health", timeout=2).read()
        break
    except OSError:
        os.kill(pid, 0)  # the server died: stop waiting
        time.sleep(1)
PY

lmaas-tune fit --task sst2 --preset cpu --budget "$BUDGET" --endpoint "$URL" --token-env LMAAS_TUNE_TOKEN "$@"
