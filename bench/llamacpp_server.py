"""Run llama-cpp-python's OpenAI server (`python -m llama_cpp.server`) for bench/engine.py.

Same server, one change: llama.cpp's "extra buffer types" (weight repacking, and the AMX int8
kernels on CPUs that have AMX) are off unless --extra-bufts is given. On this machine's
Sapphire Rapids CPU under KVM, a native build segfaults in llama_decode as soon as a prompt of
more than one token is evaluated with them on (see docs/performance.md); without them it serves
normally. llama-cpp-python has no flag for it, hence this wrapper.

Run with the bench venv's python:  /work/bench-venv/bin/python bench/llamacpp_server.py --model X
"""

from __future__ import annotations

import runpy
import sys


def main() -> None:
    extra_bufts = "--extra-bufts" in sys.argv
    sys.argv = [a for a in sys.argv if a != "--extra-bufts"]
    from llama_cpp import llama_cpp

    default_params = llama_cpp.llama_model_default_params

    def patched() -> object:
        params = default_params()
        params.use_extra_bufts = extra_bufts
        return params

    llama_cpp.llama_model_default_params = patched
    sys.argv[0] = "llama_cpp.server"
    runpy.run_module("llama_cpp.server", run_name="__main__", alter_sys=True)


if __name__ == "__main__":
    main()
