"""Runtimes: how to launch and probe each engine. `resolve()` maps a deployment's `engine`."""

from __future__ import annotations

from modelhost.runtimes.base import Runtime, RuntimeConfigError
from modelhost.runtimes.builtin import BuiltinRuntime
from modelhost.runtimes.simulator import SimulatorRuntime

ENGINES = ("auto", "builtin", "simulator")


class UnknownEngine(ValueError):
    def __init__(self, engine: str) -> None:
        super().__init__(f"unknown engine {engine!r}; known engines: {', '.join(ENGINES)}")
        self.engine = engine


def resolve(engine: str) -> Runtime:
    """The runtime for a deployment's `engine`. `auto` is the builtin engine (vLLM on real
    GPUs once that runtime exists). Store `resolve(engine).name` in the LaunchSpec."""
    if engine in ("auto", "builtin"):
        return BuiltinRuntime()
    if engine == "simulator":
        return SimulatorRuntime()
    raise UnknownEngine(engine)


__all__ = [
    "ENGINES",
    "BuiltinRuntime",
    "Runtime",
    "RuntimeConfigError",
    "SimulatorRuntime",
    "UnknownEngine",
    "resolve",
]
