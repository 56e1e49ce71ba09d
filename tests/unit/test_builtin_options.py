"""Engine-specific flags of the builtin engine."""

from __future__ import annotations

from pathlib import Path

import pytest

from modelhost.engine.builtin.options import BuiltinOptions, OptionsError, parse_options


def test_defaults() -> None:
    assert parse_options(()) == BuiltinOptions(cache_dir=parse_options(()).cache_dir)


def test_all_flags(tmp_path: Path) -> None:
    opts = parse_options(
        [
            "--dtype=float32",
            "--context-length",
            "2048",
            "--threads",
            "1",
            "--max-prefill-tokens",
            "128",
            "--kv-cache-gb",
            "0.5",
            "--seed",
            "7",
            "--cache-dir",
            str(tmp_path),
        ]
    )
    assert opts == BuiltinOptions(
        dtype="float32",
        context_length=2048,
        threads=1,
        max_prefill_tokens=128,
        kv_cache_gb=0.5,
        seed=7,
        cache_dir=tmp_path,
    )


def test_cache_dir_from_environment(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("MODELHOST_CACHE_DIR", str(tmp_path))
    assert parse_options(()).cache_dir == tmp_path


@pytest.mark.parametrize(
    ("argv", "needle"),
    [
        (["--dtype", "int3"], "--dtype"),
        (["--context-length", "4"], "--context-length"),
        (["--threads", "0"], "--threads"),
        (["--max-prefill-tokens", "1"], "--max-prefill-tokens"),
        (["--kv-cache-gb", "0"], "--kv-cache-gb"),
        (["--frobnicate"], "--frobnicate"),
        (["--threads", "many"], "--threads"),
    ],
)
def test_bad_flags_are_named(argv: list[str], needle: str) -> None:
    with pytest.raises(OptionsError, match=needle):
        parse_options(argv)
