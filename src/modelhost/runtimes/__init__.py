"""Runtimes: how to launch and probe each engine. `resolve()` maps a deployment's `engine`."""

from __future__ import annotations

from modelhost.runtimes.base import Runtime, RuntimeConfigError
from modelhost.runtimes.builtin import BuiltinRuntime
from modelhost.runtimes.simulator import SimulatorRuntime
from modelhost.runtimes.vllm import VllmRuntime

ENGINES = ("auto", "builtin", "simulator", "vllm")


class UnknownEngine(ValueError):
    def __init__(self, engine: str) -> None:
        super().__init__(f"unknown engine {engine!r}; known engines: {', '.join(ENGINES)}")
        self.engine = engine


def resolve(engine: str) -> Runtime:
    """The runtime for a resolved engine name (`LaunchSpec.engine`). `auto` is resolved before
    (`domain.deployments.resolve_engine`: vLLM on real GPUs when installed); here it means the
    builtin engine, which runs anywhere."""
    if engine in ("auto", "builtin"):
        return BuiltinRuntime()
    if engine == "simulator":
        return SimulatorRuntime()
    if engine == "vllm":
        return VllmRuntime()
    raise UnknownEngine(engine)


__all__ = [
    "ENGINES",
    "BuiltinRuntime",
    "Runtime",
    "RuntimeConfigError",
    "SimulatorRuntime",
    "UnknownEngine",
    "VllmRuntime",
    "resolve",
]
