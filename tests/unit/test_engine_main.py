"""Pure parts of the engine process entry point (`python -m modelhost.engine`)."""

from __future__ import annotations

import importlib
from types import ModuleType

import pytest

from modelhost.engine import __main__ as entry
from modelhost.engine.args import parse
from modelhost.engine.server import StartupError
from modelhost.engine.simulator import SimulatorGenerator

COMMON = ["--port", "1", "--served-model-name", "m"]


def test_drain_timeout_is_taken_out_and_the_rest_goes_to_the_engine() -> None:
    args = parse(["--engine", "simulator", *COMMON, "--tpot-ms", "3", "--drain-timeout", "7.5"])
    rest, drain = entry.split_server_flags(args)
    assert drain == 7.5 and rest.extra == ("--tpot-ms", "3")
    rest, drain = entry.split_server_flags(parse(["--engine", "simulator", *COMMON]))
    assert drain == entry.DEFAULT_DRAIN_TIMEOUT_S and rest.extra == ()


def test_simulator_is_built_from_its_flags() -> None:
    gen = entry.build_generator(parse(["--engine", "simulator", *COMMON, "--context-length", "64"]))
    assert isinstance(gen, SimulatorGenerator) and gen.context_length == 64


@pytest.mark.parametrize(
    ("missing", "says"),
    [
        ("modelhost.engine.builtin", "not part of this installation"),
        ("torch", "needs the Python package 'torch'"),
    ],
)
def test_a_missing_builtin_engine_is_a_startup_error(
    monkeypatch: pytest.MonkeyPatch, missing: str, says: str
) -> None:
    def fail(name: str) -> ModuleType:
        raise ModuleNotFoundError(f"No module named {missing!r}", name=missing)

    monkeypatch.setattr(importlib, "import_module", fail)
    with pytest.raises(StartupError, match=says):
        entry.build_generator(parse(["--engine", "builtin", *COMMON]))


class _OwnError(Exception):
    pass


_OwnError.__module__ = "modelhost.engine.builtin.weights"


def test_fatal_reasons() -> None:
    assert entry.describe_failure(StartupError("weights not found at /x")) == (
        "weights not found at /x"
    )
    assert entry.describe_failure(_OwnError("no tokenizer in /m")) == "no tokenizer in /m"
    assert entry.describe_failure(KeyError("x")) == ("the engine failed to start: KeyError: 'x'")


def test_the_fatal_line_is_one_line(capsys: pytest.CaptureFixture[str]) -> None:
    assert entry._fatal("first\nsecond   third") == 3
    assert capsys.readouterr().err == "modelhost-fatal: first second third\n"
