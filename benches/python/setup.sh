#!/usr/bin/env bash
# Makes the virtualenv the load harness drives the Python OpenAI Agents SDK from.
# Usage: benches/python/setup.sh            (idempotent; prints the venv's python)
# CALLBOARD_AGENTS_VENV overrides the location (default ~/.cache/callboard/venv-agents).
set -euo pipefail
VENV="${CALLBOARD_AGENTS_VENV:-$HOME/.cache/callboard/venv-agents}"
VERSION="0.24.0"
PY="${PYTHON:-python3}"
if [ ! -x "$VENV/bin/python" ]; then
  mkdir -p "$(dirname "$VENV")"
  "$PY" -m venv "$VENV"
fi
if ! "$VENV/bin/python" -c "import agents, sys; from importlib.metadata import version; sys.exit(0 if version('openai-agents') == '$VERSION' else 1)" 2>/dev/null; then
  "$VENV/bin/python" -m pip install --quiet --disable-pip-version-check "openai-agents==$VERSION"
fi
echo "$VENV/bin/python"
