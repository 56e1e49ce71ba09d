"""A start with an incompatible dependency fails with one line naming it (requirements.py).

The incompatible version is real metadata: a `*.dist-info` folder placed ahead of
site-packages on PYTHONPATH, which is what importlib.metadata (and pip) read, the way a
package installed over another's pin looks.
"""

from __future__ import annotations

import os
import subprocess
import sys
from importlib import metadata
from pathlib import Path

import pytest

from modelhost.engine.args import FATAL_EXIT_CODE, FATAL_PREFIX

pytestmark = pytest.mark.e2e
SRC = Path(__file__).resolve().parents[2] / "src"


def shadow(tmp_path: Path, name: str, version: str) -> dict[str, str]:
    folder = tmp_path / f"{name.replace('-', '_')}-{version}.dist-info"
    folder.mkdir()
    (folder / "METADATA").write_text(
        f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n", encoding="utf-8"
    )
    return {**os.environ, "PYTHONPATH": os.pathsep.join([str(tmp_path), str(SRC)])}


def test_builtin_engine_refuses_a_downgraded_hub_client_with_one_line(tmp_path: Path) -> None:
    env = shadow(tmp_path, "huggingface-hub", "0.36.0")  # what lorax-client's pin installs
    proc = subprocess.run(
        [sys.executable, "-m", "modelhost.engine", "--engine", "builtin", "--port", "0",
         "--served-model-name", "m", "--weights-local", str(tmp_path)],
        env=env, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert proc.returncode == FATAL_EXIT_CODE, proc.stderr
    fatal = [line for line in proc.stderr.splitlines() if line.startswith(FATAL_PREFIX)]
    assert len(fatal) == 1, proc.stderr
    transformers = metadata.version("transformers")
    assert f"huggingface-hub 0.36.0 is installed, but transformers {transformers} needs" in fatal[0]
    assert "pip install 'huggingface-hub" in fatal[0]


def test_serve_refuses_an_old_dependency_before_it_starts(tmp_path: Path) -> None:
    env = shadow(tmp_path, "httpx", "0.20.0")
    proc = subprocess.run(
        [sys.executable, "-m", "modelhost.cli.main", "serve", "--data-dir", str(tmp_path / "d"),
         "--port", "0"],
        env=env, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert proc.returncode == 1, proc.stderr
    assert proc.stderr.strip().splitlines() == [
        "modelhost cannot start: httpx 0.20.0 is installed, but modelhost needs httpx>=0.27: "
        "pip install 'httpx>=0.27'"
    ]
    assert not (tmp_path / "d").exists()  # nothing was started or written
