"""Runs llama-cpp-python's OpenAI-compatible server (`python -m llama_cpp.server ARGS`) with
llama.cpp's CPU weight repacking ("extra buffer types") turned off.

Why: on CPUs with AMX (seen on this project's CI machines), llama-cpp-python 0.3.36's
repacked-weight path segfaults in `llama_decode` on the first prompt longer than one token,
which kills the server mid-request. Repacking only speeds up inference; SmolLM2-135M does
not need it. Every argument is passed to the server unchanged.
"""

import runpy

import llama_cpp.llama_cpp as native

_default_params = native.llama_model_default_params


def _params_without_repacking():
    params = _default_params()
    if hasattr(params, "use_extra_bufts"):
        params.use_extra_bufts = False
    return params


native.llama_model_default_params = _params_without_repacking
runpy.run_module("llama_cpp.server", run_name="__main__", alter_sys=True)
