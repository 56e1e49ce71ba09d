"""Engine flags modelhost owns: every spelling argparse would read as one of them is refused."""

from __future__ import annotations

from dataclasses import replace

import pytest
from cryptography.fernet import Fernet

from modelhost.domain.replicas import Device
from modelhost.engine.args import parse
from modelhost.engine.owned_flags import owned_flags, refused_engine_args
from modelhost.orchestrator.launch import launch_spec
from modelhost.runtimes import BuiltinRuntime, SimulatorRuntime
from modelhost.security.secretbox import SecretBox
from modelhost.store.tables import Deployment

REFUSED = [
    ["--host", "0.0.0.0"],
    ["--host=0.0.0.0"],
    ["--ho", "0.0.0.0"],  # argparse expands a unique prefix
    ["--ho=0.0.0.0"],
    ["--port", "80"],
    ["--device", "cuda"],
    ["--de=cuda"],
    ["--served-model-name", "bob/x"],
    ["--s", "bob/x"],  # --served-model-name is the only --s... flag of the engine's parser
    ["--max-batch-size", "1000"],
    ["--max-b", "1000"],
    ["--max", "4"],  # ambiguous: argparse refuses it, so the replica would never start
    ["--weights-local", "/etc"],
    ["--weights-hf-repo", "a/b"],
    ["--weights-hf-revision=x"],
    ["--adapter-dir", "/"],
    ["--max-active-adapters", "9999"],
    ["--preload-adapter", "a1"],
    ["--engine", "builtin"],
    ["--help"],
    ["-h"],
    ["-hx"],
    ["--dtype", "bfloat16", "--host", "::"],
]
ALLOWED = [
    ["--dtype", "bfloat16"],
    ["--context-length=512"],
    ["--ttft-ms", "5", "--tpot-ms", "1"],
    ["--drain-timeout", "3"],
    ["--seed", "-1"],
    ["--"],
    ["--hostname-resolution"],  # not a prefix of --host: argparse would not read it as --host
    [],
]


@pytest.mark.parametrize("args", REFUSED, ids=[" ".join(a) for a in REFUSED])
def test_owned_flags_are_refused_in_every_spelling(args: list[str]) -> None:
    refused = refused_engine_args(args)
    assert refused and all(a.startswith("-") for a in refused)


@pytest.mark.parametrize("args", REFUSED, ids=[" ".join(a) for a in REFUSED])
def test_what_is_refused_really_reaches_an_owned_setting(args: list[str]) -> None:
    """Cross-check with the engine's own parser: a refused spelling changes one of the common
    settings, or makes argparse exit (help, an ambiguous prefix)."""
    base = ["--engine", "simulator", "--port", "1", "--served-model-name", "a/m"]
    try:
        parsed = parse([*base, *args])
    except SystemExit:
        return
    assert replace(parsed, extra=()) != replace(parse(base), extra=())


@pytest.mark.parametrize("args", ALLOWED, ids=[" ".join(a) or "none" for a in ALLOWED])
def test_engine_flags_of_its_own_pass(args: list[str]) -> None:
    assert refused_engine_args(args) == []
    base = ["--engine", "simulator", "--port", "1", "--served-model-name", "a/m"]
    common = parse(base)
    with_args = parse([*base, *args])
    assert (with_args.host, with_args.port, with_args.served_model_name) == (
        common.host,
        common.port,
        common.served_model_name,
    )


def test_the_builtin_engines_flags_are_owned_on_auto_too() -> None:
    """`auto` may become either engine, so both engines' flags are refused there."""
    assert set(owned_flags()) <= set(owned_flags("auto"))
    assert refused_engine_args(["--max-batch-size", "9"], "auto") == ["--max-batch-size"]
    assert refused_engine_args(["--max-num-seqs", "9"], "auto") == ["--max-num-seqs"]
    assert refused_engine_args(["--max-num-seqs", "9"], "builtin") == []


@pytest.mark.parametrize("runtime", [BuiltinRuntime(), SimulatorRuntime()], ids=["builtin", "sim"])
def test_every_flag_modelhost_puts_on_the_command_line_is_owned(runtime: object) -> None:
    """If the orchestrator starts setting a new flag, it must be refused in engine_args too."""
    dep = Deployment(
        id="d1",
        model_name="m",
        config={
            "gpu": "CPU",
            "num_gpus": 1,
            "max_batch_size": 8,
            "engine": "builtin",
            "engine_args": [],
            "weights": {"hf": {"repo": "a/b", "revision": "main"}},
            "max_active_adapters": 4,
        },
        hf_token_enc=None,
    )
    spec = launch_spec(dep, "alice", {}, SecretBox(Fernet.generate_key()), "/ad", ["a1"])
    cmd = runtime.command(spec, 1234, [Device("CPU#0", "CPU", 0, True)])  # type: ignore[attr-defined]
    engine_argv = cmd[cmd.index("modelhost.engine") + 1 :]
    flags = {token.split("=")[0] for token in engine_argv if token.startswith("-")}
    assert flags and flags <= set(owned_flags()), flags - set(owned_flags())
