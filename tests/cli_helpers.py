"""The `modelhost` CLI in tests (typer's CliRunner): a logged-in admin against a live server, a
command run with an environment, and the deploy id a command printed. Shared by the component
CLI tests and the e2e client tests."""

from __future__ import annotations

import re
from typing import Any

import pytest
from typer.testing import CliRunner, Result

from modelhost.cli.main import app
from tests.component._live_server import LiveServer


def logged_in_env(server: LiveServer, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """A logged-in admin: stored login in a temp file, no env overrides."""
    env: dict[str, Any] = {
        "MODELHOST_CLI_CONFIG": str(tmp_path_factory.mktemp("cli-cfg") / "config.json"),
        "MODELHOST_URL": None,
        "MODELHOST_TOKEN": None,
    }
    result = run(env, "login", "--url", server.url, "--token", server.admin_token)
    assert result.exit_code == 0, result.output
    return env


def run(env: dict[str, Any], *args: str, input: str | None = None) -> Result:
    return CliRunner().invoke(app, list(args), env=env, input=input)


def create_simulator(env: dict[str, Any], name: str, *options: str) -> Result:
    """`modelhost deploy create-llm --name NAME --engine simulator OPTIONS...`."""
    return run(env, "deploy", "create-llm", "--name", name, "--engine", "simulator", *options)


def printed_deploy_id(output: str) -> str:
    match = re.search(r"deploy id: (\S+)", output)
    assert match, output
    return match.group(1)
