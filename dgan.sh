#!/usr/bin/env bash
# One entry point that installs what it needs, then runs:
#   ./dgan.sh demo [args]   the main job: the whole loop in a local Label Studio (installs it into .venv-ls)
#   ./dgan.sh test [args]   the whole test suite: fast tests + end-to-end tests against a real
#                           Label Studio 1.23.2 (installed into .venv-ls) and Redis;
#                           `./dgan.sh test -m "not slow"` runs only the fast ones
#   ./dgan.sh <any dgan subcommand> [args]
set -euo pipefail
cd "$(dirname "$0")"
PY=${PYTHON:-python3.11}
command -v "$PY" >/dev/null 2>&1 || PY=python3
VENV=${DGAN_VENV:-.venv}
STAMP="$VENV/.installed-$(cat pyproject.toml | sha1sum | cut -c1-12)"
if [ ! -f "$STAMP" ]; then
  echo "setting up $VENV (torch 2.13.0 CPU, the package and its extras) ..." >&2
  [ -x "$VENV/bin/python" ] || "$PY" -m venv "$VENV"
  "$VENV/bin/pip" install -q --upgrade pip 2>&1 | grep -v "is ignored" >&2 || true
  # torch first, pinned: any other version pulls multi-GB CUDA builds.
  "$VENV/bin/pip" install -q "torch==2.13.0" 2>&1 | grep -v "is ignored" >&2 || true
  "$VENV/bin/pip" install -q -e ".[dev]" 2>&1 | grep -v "is ignored" >&2 || true
  "$VENV/bin/python" -c "import torch, model, ls_backend" || { echo "installation failed" >&2; exit 1; }
  touch "$STAMP"
fi
cmd=${1:-demo}
shift || true
install_label_studio() {
  # Label Studio is an application the backend talks to, not a library: it gets its own venv.
  if [ ! -x .venv-ls/bin/label-studio ]; then
    echo "installing label-studio==1.23.2 into .venv-ls (about 2.5 min) ..." >&2
    "$PY" -m venv .venv-ls
    for try in 1 2 3; do                     # a package index that drops a connection fails the install
      .venv-ls/bin/pip install -q "label-studio==1.23.2" 2>&1 | grep -v "is ignored" >&2 || true
      [ -x .venv-ls/bin/label-studio ] && break
      echo "label-studio installation try $try failed; trying again" >&2; sleep 5
    done
    [ -x .venv-ls/bin/label-studio ] || { echo "label-studio installation failed" >&2; exit 1; }
  fi
}
ensure_redis() {
  # The backend and end-to-end tests talk to a real Redis: start one if none answers on 6379.
  if ! (command -v redis-cli >/dev/null && redis-cli -h 127.0.0.1 -p 6379 ping 2>/dev/null | grep -q PONG); then
    command -v redis-server >/dev/null || { echo "Redis is needed: install redis-server (apt-get install redis-server)" >&2; exit 1; }
    echo "starting redis-server on 127.0.0.1:6379 ..." >&2
    redis-server --daemonize yes --bind 127.0.0.1 --port 6379 --save "" --appendonly no --dir /tmp \
      --logfile /tmp/dgan-redis.log
    for _ in $(seq 50); do redis-cli -h 127.0.0.1 -p 6379 ping 2>/dev/null | grep -q PONG && break; sleep 0.2; done
  fi
}
case "$cmd" in
  demo) install_label_studio; exec "$VENV/bin/dgan" demo "$@" ;;
  test)
    ensure_redis
    if [ "$#" -eq 0 ]; then
      install_label_studio
      exec "$VENV/bin/python" -m pytest -m "slow or not slow" -q --durations=20
    fi
    exec "$VENV/bin/python" -m pytest "$@" ;;
  *) exec "$VENV/bin/dgan" "$cmd" "$@" ;;
esac
