"""The vllm engine: the runtime's command and environment, the launcher's vLLM command line,
the flags modelhost owns on vLLM, `auto`, quantization, and vLLM's fatal errors as reasons."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
from cryptography.fernet import Fernet

from modelhost.config import Settings
from modelhost.domain.deployment_config import DeploymentConfig
from modelhost.domain.deployments import quantization_error, resolve_engine
from modelhost.domain.replicas import VIRTUAL_DEVICES_ENV, Device, LaunchSpec
from modelhost.engine.builtin import weights as builtin_weights
from modelhost.engine.owned_flags import owned_flags, refusal_message, refused_engine_args
from modelhost.engine.vllm_launch import (
    VLLM_MODULE,
    Launch,
    LaunchError,
    build_parser,
    lora_rank,
    plan,
)
from modelhost.orchestrator.backends.local_process import exit_reason
from modelhost.orchestrator.launch import launch_spec
from modelhost.runtimes import RuntimeConfigError, VllmRuntime, resolve
from modelhost.runtimes.vllm import LAUNCHER_MODULE
from modelhost.security.secretbox import SecretBox
from modelhost.store.tables import Deployment

PY = sys.executable  # an executable interpreter standing in for vLLM's
CPU = [Device("CPU#0", "CPU", 0, True)]
VIRTUAL = [Device("A100-80GB#0", "A100-80GB", 0, True)]
REAL2 = [Device("cuda#2", "H100-80GB", 2, False), Device("cuda#3", "H100-80GB", 3, False)]


def spec(**kw: object) -> LaunchSpec:
    base: dict[str, object] = {
        "engine": "vllm",
        "served_model_name": "alice/llama",
        "max_batch_size": 32,
        "weights_hf_repo": "meta-llama/Llama-2-7b-chat-hf",
        "weights_hf_revision": "abc123",
        "engine_args": (
            "--adapter-dir",
            "/ad",
            "--max-active-adapters",
            "8",
            "--vllm-python",
            PY,
        ),
        "secret_env": {"HF_TOKEN": "hf_secret"},
        "gpu_type": "H100-80GB",
        "num_gpus": 2,
    }
    base.update(kw)
    return LaunchSpec(**base)  # type: ignore[arg-type]


def launcher_argv(cmd: list[str]) -> list[str]:
    assert cmd[:3] == [sys.executable, "-m", LAUNCHER_MODULE]
    return cmd[3:]


def planned(argv: list[str], environ: dict[str, str] | None = None, **kw: object) -> Launch:
    kw.setdefault("cpu_dtype", lambda: ("float32", "test: no native bf16"))
    kw.setdefault("usable_cores", lambda: 2)
    return plan(argv, environ or {}, **kw)  # type: ignore[arg-type]


def opt(argv: list[str], flag: str) -> str | None:
    """The value after the last `flag` in argv."""
    idx = [i for i, a in enumerate(argv) if a == flag]
    return argv[idx[-1] + 1] if idx else None


# --- the runtime ---------------------------------------------------------------------------


def test_resolve_vllm() -> None:
    rt = resolve("vllm")
    assert isinstance(rt, VllmRuntime)
    assert (rt.name, rt.health_path, rt.stats_path) == ("vllm", "/health", "/metrics")


def test_hf_repo_on_real_gpus_token_only_in_env() -> None:
    rt = VllmRuntime()
    cmd = rt.command(spec(), 41000, REAL2)
    argv = launcher_argv(cmd)
    assert "hf_secret" not in " ".join(cmd)
    env = rt.env(spec(), REAL2)
    assert env["HF_TOKEN"] == "hf_secret"
    assert env["CUDA_VISIBLE_DEVICES"] == "2,3"
    assert env["VLLM_ALLOW_RUNTIME_LORA_UPDATING"] == "True"
    assert env["HF_HUB_DISABLE_IMPLICIT_TOKEN"] == "1"

    launch = planned(argv)
    assert launch.python == PY
    a = launch.argv
    assert a[:2] == ["-m", VLLM_MODULE]
    assert (opt(a, "--host"), opt(a, "--port")) == ("127.0.0.1", "41000")
    assert opt(a, "--model") == "meta-llama/Llama-2-7b-chat-hf"
    assert opt(a, "--revision") == opt(a, "--tokenizer-revision") == "abc123"
    assert opt(a, "--served-model-name") == "alice/llama"
    assert opt(a, "--max-num-seqs") == "32"
    assert opt(a, "--tensor-parallel-size") == "2"
    assert "--dtype" not in a  # on GPUs vLLM's own auto
    assert "hf_secret" not in " ".join(a) and "hf_secret" not in json.dumps(launch.env)
    assert "VLLM_CPU_KVCACHE_SPACE" not in launch.env


def test_virtual_gpus_and_cpu_run_vllm_cpu_without_tensor_parallel() -> None:
    rt = VllmRuntime()
    for devices in (VIRTUAL, CPU):
        argv = launcher_argv(rt.command(spec(), 1, devices))
        assert opt(argv, "--device") == "cpu" and "--num-gpus" not in argv
        env = rt.env(spec(), devices)
        assert env["CUDA_VISIBLE_DEVICES"] == ""
        assert env[VIRTUAL_DEVICES_ENV] == devices[0].device_id
        launch = planned(argv)
        assert "--tensor-parallel-size" not in launch.argv
        assert launch.env["VLLM_CPU_KVCACHE_SPACE"] == "2"
        assert launch.env["VLLM_CPU_NUM_OF_RESERVED_CPU"] == "0"  # 2 cores: none reserved


def test_cpu_settings_from_the_deployment_or_the_operator() -> None:
    argv = launcher_argv(VllmRuntime().command(spec(), 1, CPU))
    big = planned(argv, usable_cores=lambda: 32)
    assert "VLLM_CPU_NUM_OF_RESERVED_CPU" not in big.env  # vLLM's default on larger hosts
    operator = {"VLLM_CPU_KVCACHE_SPACE": "6", "VLLM_CPU_NUM_OF_RESERVED_CPU": "1"}
    launch = planned(argv, operator)
    assert launch.env["VLLM_CPU_KVCACHE_SPACE"] == "6"
    assert "VLLM_CPU_NUM_OF_RESERVED_CPU" not in launch.env  # the operator's stays
    assert planned([*argv, "--kv-cache-gb", "2.5"]).env["VLLM_CPU_KVCACHE_SPACE"] == "3"
    gpu = planned([*launcher_argv(VllmRuntime().command(spec(), 1, REAL2)), "--kv-cache-gb", "1"])
    assert opt(gpu.argv, "--kv-cache-memory-bytes") == str(2**30)


def test_cpu_dtype_follows_the_builtin_engines_choice_unless_set() -> None:
    argv = launcher_argv(VllmRuntime().command(spec(), 1, CPU))
    assert opt(planned(argv).argv, "--dtype") == "float32"
    amx = planned(argv, cpu_dtype=lambda: ("bfloat16", "auto: AMX"))
    assert opt(amx.argv, "--dtype") == "bfloat16"
    assert any("bfloat16" in n for n in amx.notes)
    assert opt(planned([*argv, "--dtype", "float16"]).argv, "--dtype") == "float16"
    assert opt(planned([*argv, "--dtype", "auto"]).argv, "--dtype") == "float32"


def test_local_folder_is_loaded_as_it_is(tmp_path: Path) -> None:
    folder = tmp_path / "model"
    folder.mkdir()
    (folder / "config.json").write_text("{}")
    (folder / "model.safetensors").write_bytes(b"x")
    s = spec(weights_hf_repo=None, weights_hf_revision=None, weights_local=str(folder))
    argv = launcher_argv(VllmRuntime().command(s, 1, CPU))
    launch = planned(argv, {"MODELHOST_CACHE_DIR": str(tmp_path / "cache")})
    assert opt(launch.argv, "--model") == str(folder)
    assert "--revision" not in launch.argv
    assert launch.env["HF_HUB_CACHE"] == str(tmp_path / "cache" / "hf")


def test_gguf_goes_through_the_builtin_engines_converted_folder(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    gguf = tmp_path / "tiny.Q4_1.gguf"
    gguf.write_bytes(b"GGUF")
    cache = tmp_path / "cache"
    converted: list[Path] = []

    def fake_convert(path: Path, out: Path) -> None:
        out.mkdir(parents=True)
        (out / "config.json").write_text("{}")
        converted.append(path)

    monkeypatch.setattr(builtin_weights, "_convert", fake_convert)
    s = spec(weights_hf_repo=None, weights_hf_revision=None, weights_local=str(gguf))
    argv = launcher_argv(VllmRuntime().command(s, 1, CPU))
    environ = {"MODELHOST_CACHE_DIR": str(cache)}
    first = planned(argv, environ)
    expected = builtin_weights.gguf_cache_folder(gguf, cache)
    assert opt(first.argv, "--model") == str(expected)
    assert (expected / "config.json").exists()
    # The second start (and the builtin engine) reuses the same converted folder.
    assert opt(planned(argv, environ).argv, "--model") == str(expected)
    assert converted == [gguf]
    # --cache-dir (an admin's engine arg) moves the cache, like on the builtin engine.
    other = planned([*argv, "--cache-dir", str(tmp_path / "other")], environ)
    assert opt(other.argv, "--model") == str(
        builtin_weights.gguf_cache_folder(gguf, tmp_path / "other")
    )


def test_missing_local_weights_is_a_launch_error(tmp_path: Path) -> None:
    s = spec(weights_hf_repo=None, weights_local=str(tmp_path / "nope"))
    argv = launcher_argv(VllmRuntime().command(s, 1, CPU))
    with pytest.raises(LaunchError, match="does not exist"):
        planned(argv)


def test_adapters_become_lora_flags(tmp_path: Path) -> None:
    for name, rank in (("fr", 8), ("big", 40)):
        (tmp_path / name).mkdir()
        (tmp_path / name / "adapter_config.json").write_text(json.dumps({"r": rank}))
    args = ("--adapter-dir", str(tmp_path), "--max-active-adapters", "4", "--vllm-python", PY)
    argv = launcher_argv(VllmRuntime().command(spec(engine_args=args), 1, CPU))
    plain = planned(argv).argv
    assert "--enable-lora" in plain
    assert opt(plain, "--max-loras") == "4"
    assert opt(plain, "--max-lora-rank") == "16"
    assert "--lora-modules" not in plain
    preload = planned([*argv, "--preload-adapter", "fr", "--preload-adapter", "big"]).argv
    i = preload.index("--lora-modules")
    assert preload[i + 1 : i + 3] == [f"fr={tmp_path / 'fr'}", f"big={tmp_path / 'big'}"]
    assert opt(preload, "--max-lora-rank") == "64"  # holds the rank-40 adapter
    assert opt(planned([*argv, "--max-lora-rank", "128"]).argv, "--max-lora-rank") == "128"
    assert (lora_rank(0), lora_rank(17), lora_rank(320)) == (16, 32, 320)
    with pytest.raises(LaunchError, match="rank 1000"):
        lora_rank(1000)


def test_context_length_quantization_and_passthrough() -> None:
    argv = launcher_argv(VllmRuntime().command(spec(), 1, REAL2))
    extra = ["--quantization", "awq", "--context-length", "4096", "--enforce-eager", "--seed=3"]
    a = planned([*argv, *extra]).argv
    assert opt(a, "--max-model-len") == "4096"
    assert opt(a, "--quantization") == "awq"
    assert a[-2:] == ["--enforce-eager", "--seed=3"]  # the rest goes to vLLM as given
    assert "--context-length" not in a


def test_vllm_python_missing_is_a_clear_error() -> None:
    args = ("--adapter-dir", "/ad", "--max-active-adapters", "8")
    with pytest.raises(RuntimeConfigError, match="vLLM is not installed"):
        VllmRuntime().command(spec(engine_args=args), 1, CPU)
    bad = (*args, "--vllm-python", "/nonexistent/python")
    with pytest.raises(RuntimeConfigError, match="/nonexistent/python is not an executable"):
        VllmRuntime().command(spec(engine_args=bad), 1, CPU)
    with pytest.raises(LaunchError, match="vLLM is not installed"):
        plan(["--port", "1", "--served-model-name", "a/b", "--weights-hf-repo", "a/b"], {})
    with pytest.raises(RuntimeConfigError, match="needs weights"):
        VllmRuntime().command(spec(weights_hf_repo=None), 1, CPU)


def test_settings_vllm_python(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("MODELHOST_VLLM_PYTHON", str(tmp_path / "py"))
    assert Settings().vllm_python == tmp_path / "py"
    monkeypatch.setenv("MODELHOST_VLLM_PYTHON", "")
    assert Settings().vllm_python is None  # set empty: the vllm engine is off


# --- owned flags -----------------------------------------------------------------------------

VLLM_REFUSED = [
    ["--model", "x/y"],
    ["--model=x/y"],
    ["--model.foo", "1"],  # vLLM's dotted form still sets --model
    ["--served-model-name", "bob/x"],
    ["--max-num-seqs", "999"],
    ["--max_num_seqs", "999"],  # vLLM reads underscores as dashes
    ["--max-num", "999"],  # an abbreviation argparse expands
    ["--tensor-parallel-size", "8"],
    ["-tp", "8"],
    ["-tp8"],
    ["--pipeline-parallel-size", "2"],
    ["--enable-lora"],
    ["--max-loras", "900"],
    ["--quantization", "awq"],
    ["-q", "awq"],
    ["--host", "0.0.0.0"],
    ["--port", "80"],
    ["--uds", "/tmp/s"],
    ["--api-key", "k"],
    ["--trust-remote-code"],
    ["--download-dir", "/etc"],
    ["--config", "/etc/x.yaml"],
    ["--vllm-python", "/bin/sh"],
    ["--weights-local", "/etc"],
    ["--num-gpus", "8"],
    ["--lora-modules", "a=/etc"],
    ["--help"],
]
VLLM_ALLOWED = [
    ["--dtype", "float16"],
    ["--context-length", "4096"],
    ["--kv-cache-gb", "3"],
    ["--max-model-len", "4096"],
    ["--max-lora-rank", "64"],
    ["--enforce-eager"],
    ["--gpu-memory-utilization", "0.8"],
    ["--enable-prefix-caching"],
    ["--seed", "1"],
]


@pytest.mark.parametrize("args", VLLM_REFUSED, ids=[" ".join(a) for a in VLLM_REFUSED])
def test_vllm_owned_flags_are_refused(args: list[str]) -> None:
    assert refused_engine_args(args, "vllm")
    assert refused_engine_args(args, "auto")  # auto may become vllm


@pytest.mark.parametrize("args", VLLM_ALLOWED, ids=[" ".join(a) for a in VLLM_ALLOWED])
def test_vllm_flags_of_its_own_pass(args: list[str]) -> None:
    assert refused_engine_args(args, "vllm") == []


def test_refusal_names_the_flags_and_the_engine() -> None:
    message = refusal_message(["--max-num-seqs"], "vllm")
    assert "--max-num-seqs" in message and "on engine vllm" in message
    assert "--tensor-parallel-size" in message and "max_batch_size" in message


def test_every_flag_modelhost_puts_on_the_launcher_command_line_is_owned() -> None:
    dep = Deployment(
        id="d1",
        model_name="m",
        config={
            "gpu": "H100-80GB",
            "num_gpus": 2,
            "max_batch_size": 8,
            "engine": "vllm",
            "engine_args": [],
            "weights": {"hf": {"repo": "a/b", "revision": "main"}},
            "max_active_adapters": 4,
            "quantization": "awq",
        },
        hf_token_enc=None,
    )
    box = SecretBox(Fernet.generate_key())
    s = launch_spec(dep, "alice", {}, box, "/ad", ["a1"], vllm_python=PY)
    argv = launcher_argv(VllmRuntime().command(s, 1234, REAL2))
    flags = {token.split("=")[0] for token in argv if token.startswith("-")}
    assert flags <= set(owned_flags("vllm")), flags - set(owned_flags("vllm"))
    # And every vLLM flag the launcher sets is owned too, but for those it reads from the
    # deployment's engine_args itself (so they never reach vLLM twice).
    vllm_argv = planned(argv).argv
    own = {"--dtype", "--max-lora-rank", "--max-model-len"}
    vllm_flags = {t for t in vllm_argv if t.startswith("--")} - own
    assert vllm_flags <= set(owned_flags("vllm")), vllm_flags - set(owned_flags("vllm"))
    # The launcher's own parser reads every modelhost flag the runtime puts there.
    ns, rest = build_parser().parse_known_args(argv)
    assert rest == [] and ns.quantization == "awq" and ns.num_gpus == 2


# --- auto, launch specs and quantization -----------------------------------------------------


def _dep(engine: str, gpu: str = "H100-80GB", quantization: str | None = None) -> Deployment:
    config = DeploymentConfig(
        gpu=gpu, num_gpus=1, max_batch_size=8, engine=engine, quantization=quantization
    )
    raw = config.to_json() | {"weights": {"hf": {"repo": "a/b", "revision": "main"}}}
    return Deployment(id="d1", model_name="m", config=raw, hf_token_enc=None)


def test_auto_picks_vllm_on_real_gpus_when_installed() -> None:
    assert resolve_engine("auto", True, real_gpu=True, vllm_installed=True) == "vllm"
    assert resolve_engine("auto", True, real_gpu=True, vllm_installed=False) == "builtin"
    assert resolve_engine("auto", True, real_gpu=False, vllm_installed=True) == "builtin"
    assert resolve_engine("auto", False, real_gpu=True, vllm_installed=True) == "builtin"
    assert resolve_engine("vllm", True) == "vllm"

    box = SecretBox(Fernet.generate_key())
    real = {"H100-80GB"}
    on_real = launch_spec(_dep("auto"), "a", {}, box, "/ad", real_gpu_types=real, vllm_python=PY)
    assert on_real.engine == "vllm"
    assert on_real.engine_args[-2:] == ("--vllm-python", PY)
    virtual = launch_spec(_dep("auto", "A100-80GB"), "a", {}, box, "/ad", real_gpu_types=real)
    assert virtual.engine == "builtin" and "--vllm-python" not in virtual.engine_args
    explicit = launch_spec(_dep("vllm", "CPU"), "a", {}, box, "/ad", vllm_python=PY)
    assert explicit.engine == "vllm" and "--vllm-python" in explicit.engine_args


def test_quantization_is_stored_and_passed_to_the_launcher() -> None:
    config = DeploymentConfig(gpu="CPU", num_gpus=1, max_batch_size=8, engine="vllm")
    assert DeploymentConfig.from_json(config.to_json()) == config
    q = DeploymentConfig.from_json(config.to_json() | {"quantization": "gptq"})
    assert q.quantization == "gptq" and q.to_json()["quantization"] == "gptq"
    old = {k: v for k, v in config.to_json().items() if k != "quantization"}
    assert DeploymentConfig.from_json(old).quantization is None  # rows from before the field

    box = SecretBox(Fernet.generate_key())
    s = launch_spec(_dep("vllm", quantization="fp8"), "a", {}, box, "/ad", vllm_python=PY)
    args = list(s.engine_args)
    assert args[args.index("--quantization") + 1] == "fp8"


def test_quantization_needs_vllm() -> None:
    assert quantization_error("vllm", "awq") is None
    assert quantization_error("builtin", None) is None
    message = quantization_error("builtin", "awq")
    assert message and "quantization needs engine vllm" in message
    assert "method name" in (quantization_error("vllm", "AWQ; rm -rf") or "")


# --- vLLM's fatal errors as fail reasons ------------------------------------------------------

KV_TOO_SMALL = (
    "(EngineCore pid=9) ERROR ValueError: To serve at least one request with the model's max "
    "seq len (100000), (21.97 GiB KV cache is needed, which is larger than the available KV "
    "cache memory (2.0 GiB). Based on the available memory, the estimated maximum model length "
    "is 9320. Try increasing `gpu_memory_utilization` ..."
)


@pytest.mark.parametrize(
    ("tail", "expected"),
    [
        (
            [KV_TOO_SMALL, "RuntimeError: Engine core initialization failed."],
            "--context-length 9320",
        ),
        (
            ["torch.OutOfMemoryError: CUDA out of memory. Tried to allocate 2.00 GiB"],
            "out of GPU memory",
        ),
        (
            ["ValueError: Model architectures ['FooForCausalLM'] are not supported for now."],
            "architecture ['FooForCausalLM']",
        ),
        (
            ["api_server.py: error: unrecognized arguments: --bogus"],
            "vLLM refused its command line: unrecognized arguments: --bogus",
        ),
        (["ValueError: No available memory for the cache blocks. Try"], "KV cache"),
        (
            [
                "pydantic_core._pydantic_core.ValidationError: 1 validation error for ModelConfig",
                "  Value error, User-specified max_model_len (100000) is greater than the derived "
                "max_model_len (max_position_embeddings=8192.0 or model_max_length=None in "
                "model's config.json). To allow overriding ... [type=value_error, input_value=",
                "    For further information visit https://errors.pydantic.dev/2.14/v/value_error",
            ],
            "--context-length 100000 exceeds the model's maximum of 8192 tokens",
        ),
        (
            ["  Value error, Unknown dtype 'float8' [type=value_error, input_value=..."],
            "vLLM refused the configuration: Unknown dtype 'float8'",
        ),
    ],
)
def test_vllm_fatal_errors_become_reasons(tail: list[str], expected: str) -> None:
    reason = exit_reason(["some start-up line", *tail], 1, was_ready=False)
    assert expected in reason, reason


def test_the_launchers_own_fatal_line_wins() -> None:
    lines = ["modelhost-fatal: vLLM is not installed: x", "CUDA out of memory"]
    assert exit_reason(lines, 3, was_ready=False) == "vLLM is not installed: x"
