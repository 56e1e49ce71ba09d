"""Runtimes: the engine command line and environment for one replica."""

from __future__ import annotations

import sys

import pytest

from modelhost.domain.replicas import VIRTUAL_DEVICES_ENV, Device, LaunchSpec
from modelhost.engine.args import parse
from modelhost.runtimes import (
    BuiltinRuntime,
    RuntimeConfigError,
    SimulatorRuntime,
    UnknownEngine,
    resolve,
)

VIRTUAL = [Device("A100-80GB#2", "A100-80GB", 2, True), Device("A100-80GB#3", "A100-80GB", 3, True)]
REAL = [Device("cuda#1", "H100-80GB", 1, False)]


def launch(**kw: object) -> LaunchSpec:
    base: dict[str, object] = {
        "engine": "builtin",
        "served_model_name": "alice/llama",
        "max_batch_size": 64,
        "weights_hf_repo": "meta-llama/Llama-2-7b-chat-hf",
        "weights_hf_revision": "main",
        "engine_args": ("--dtype", "bfloat16"),
        "secret_env": {"HF_TOKEN": "hf_secret"},
        "gpu_type": "A100-80GB",
        "num_gpus": 2,
    }
    base.update(kw)
    return LaunchSpec(**base)  # type: ignore[arg-type]


def test_resolve() -> None:
    assert resolve("auto").name == "builtin"
    assert resolve("builtin").name == "builtin"
    assert resolve("simulator").name == "simulator"
    assert resolve("vllm").name == "vllm"
    with pytest.raises(UnknownEngine, match="known engines: auto, builtin, simulator, vllm"):
        resolve("vllm-nightly")


def test_builtin_command_round_trips_through_the_engine_parser() -> None:
    spec = launch()
    cmd = BuiltinRuntime().command(spec, 45678, VIRTUAL)
    assert cmd[:3] == [sys.executable, "-m", "modelhost.engine"]
    args = parse(cmd[3:])
    assert (args.engine, args.host, args.port) == ("builtin", "127.0.0.1", 45678)
    assert (args.served_model_name, args.max_batch_size) == ("alice/llama", 64)
    assert (args.weights_hf_repo, args.weights_hf_revision) == (spec.weights_hf_repo, "main")
    assert args.device == "cpu"  # virtual GPUs run the engine on the CPU
    assert args.extra == ("--dtype", "bfloat16")
    assert "hf_secret" not in " ".join(cmd)  # secrets never on the command line
    assert "hf_secret" not in repr(spec)


def test_real_gpus_get_cuda_and_their_indexes() -> None:
    rt = BuiltinRuntime()
    assert parse(rt.command(launch(), 1, REAL)[3:]).device == "cuda"
    env = rt.env(launch(), REAL)
    assert env["CUDA_VISIBLE_DEVICES"] == "1"
    assert VIRTUAL_DEVICES_ENV not in env


def test_env_carries_devices_and_secrets() -> None:
    env = BuiltinRuntime().env(launch(), VIRTUAL)
    assert env["CUDA_VISIBLE_DEVICES"] == ""
    assert env[VIRTUAL_DEVICES_ENV] == "A100-80GB#2,A100-80GB#3"
    assert env["HF_TOKEN"] == "hf_secret"
    assert env["PYTHONUNBUFFERED"] == "1"


def test_builtin_needs_weights_simulator_does_not() -> None:
    bare = launch(weights_hf_repo=None, weights_hf_revision=None, engine="simulator")
    with pytest.raises(RuntimeConfigError, match="needs weights"):
        BuiltinRuntime().command(bare, 1, VIRTUAL)
    cmd = SimulatorRuntime().command(bare, 2, [Device("cpu#0", "CPU", 0, True)])
    args = parse(cmd[3:])
    assert (args.engine, args.port, args.weights_hf_repo) == ("simulator", 2, None)


def test_local_weights_flag() -> None:
    cmd = BuiltinRuntime().command(launch(weights_hf_repo=None, weights_local="/m/x.gguf"), 1, REAL)
    assert parse(cmd[3:]).weights_local == "/m/x.gguf"
