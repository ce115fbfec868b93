#!/usr/bin/env bash
# Arize Phoenix (PyPI arize-phoenix), the OpenTelemetry backend the otlp sink is tested against.
#
#   scripts/phoenix.sh install   # venv + pip install arize-phoenix (pip caches the wheels)
#   scripts/phoenix.sh serve     # phoenix serve on 127.0.0.1:${PORT:-6006} (OTLP/HTTP at /v1/traces)
#   scripts/phoenix.sh python    # prints the venv's python
#
# The venv lives in $CALLBOARD_PHOENIX_VENV (default ~/.cache/callboard/venv-phoenix), where
# tests/phoenix.rs looks for it. Phoenix runs offline; its data goes to $PHOENIX_WORKING_DIR.
set -euo pipefail

VENV="${CALLBOARD_PHOENIX_VENV:-$HOME/.cache/callboard/venv-phoenix}"
PORT="${PORT:-6006}"

case "${1:-}" in
  install)
    python3 -m venv "$VENV"
    "$VENV/bin/pip" install --upgrade pip >/dev/null
    "$VENV/bin/pip" install arize-phoenix
    echo "installed: $VENV/bin/phoenix"
    ;;
  serve)
    export PHOENIX_PORT="$PORT" PHOENIX_HOST=127.0.0.1
    exec "$VENV/bin/phoenix" serve
    ;;
  python)
    echo "$VENV/bin/python"
    ;;
  *)
    sed -n '2,10p' "$0"
    exit 2
    ;;
esac
