#!/usr/bin/env bash
# One entry point that installs what it needs, then runs:
#   ./dgan.sh demo [args]   the main job on the embedded default domain
#   ./dgan.sh test [args]   the test suite (fast tests; add -m slow for the slow ones)
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
case "$cmd" in
  test) exec "$VENV/bin/python" -m pytest "$@" ;;
  *) exec "$VENV/bin/dgan" "$cmd" "$@" ;;
esac
