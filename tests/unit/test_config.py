"""Settings precedence: init kwargs (flags) > MODELHOST_* env > TOML file > defaults."""

from __future__ import annotations

from pathlib import Path

import pytest

from modelhost.config import Settings


def test_precedence_and_catalog_from_toml(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    toml = tmp_path / "mh.toml"
    toml.write_text(
        'port = 9001\ngpus = "A100-80GB:2"\ncpu_slots = 3\n'
        '[[catalog]]\nname = "tiny"\nlocal_path = "/models/tiny.gguf"\n'
    )
    monkeypatch.setenv("MODELHOST_CONFIG", str(toml))
    monkeypatch.setenv("MODELHOST_CPU_SLOTS", "5")
    s = Settings(gpus="H100-80GB:1")
    assert s.port == 9001  # from the file
    assert s.cpu_slots == 5  # env beats the file
    assert s.gpus == "H100-80GB:1"  # the flag beats both
    assert [c.name for c in s.catalog] == ["tiny"]


def test_database_urls(tmp_path: Path) -> None:
    assert Settings(data_dir=tmp_path).sqlalchemy_url == f"sqlite:///{tmp_path}/modelhost.db"
    pg = Settings(database_url="postgresql://u@h/db").sqlalchemy_url
    assert pg == "postgresql+psycopg://u@h/db"


def test_prices() -> None:
    s = Settings(gpu_prices="A100-80GB=2.5,CPU=0")
    assert s.price_per_hour("A100-80GB") == 2.5 and s.price_per_hour("L4-24GB") == 0.0
