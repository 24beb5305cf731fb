#!/usr/bin/env bash
# Wall time of the README's main command (`lmaas-tune fit --task sst2 --preset cpu`) at an older
# commit and at the working tree, back to back in one shell on this machine, and their ratio.
#
#   bash benchmarks/fit_speedup.sh [BEFORE_REF]      # default: 07af502, the commit before the fast path
#
# Both run from source with the same interpreter and packages (the active virtualenv; run
# `. scripts/venv.sh ""` first if there is none), the same embedded model (already converted in
# the cache, so neither pays the one-time conversion), offline, and each in a fresh run directory.
# The time is the whole command: loading, 400 calls, and scoring the tuned and manual prompts.
set -euo pipefail
cd "$(dirname "$0")/.."
before=${1:-07af502}
work=$(mktemp -d)
trap 'git worktree remove --force "$work/before" >/dev/null 2>&1 || true; rm -rf "$work"' EXIT
git worktree add --detach -q "$work/before" "$before"
export HF_HUB_OFFLINE=1
python -c "from lmaas_tune.backends.local import LocalBackend; LocalBackend.load()" >/dev/null 2>&1  # warm the cache

run() {  # label, source tree
  local t0 t1
  t0=$(date +%s.%N)
  # from inside the tree: `python -m` puts the working directory first on the path
  (cd "$2" && PYTHONPATH="$2" python -m lmaas_tune fit --task sst2 --preset cpu --quiet -o "$work/run-$1" | tail -n 3)
  (cd "$2" && PYTHONPATH="$2" python -c "import lmaas_tune, sys; print('  ran', lmaas_tune.__file__)")
  t1=$(date +%s.%N)
  python -c "print(f'$1: {$t1 - $t0:.1f} s')" | tee -a "$work/times"
}
run before "$work/before"
run after "$PWD"
python - "$work/times" <<'PY'
import sys
t = dict(line.split(": ") for line in open(sys.argv[1]).read().split("\n") if line)
b, a = float(t["before"][:-2]), float(t["after"][:-2])
print(f"speed-up of the main command: {b / a:.2f}x ({b:.0f} s -> {a:.0f} s)")
PY
