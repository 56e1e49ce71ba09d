"""The `modelhost` CLI (typer's CliRunner) against the real control-plane app on 127.0.0.1."""

from __future__ import annotations

import itertools
import re
import socket
import stat
from pathlib import Path
from typing import Any

import pytest

from modelhost import Client
from tests.cli_helpers import create_simulator, logged_in_env, printed_deploy_id, run
from tests.component._live_server import LiveServer
from tests.conftest import wait_until

_names = (f"cli-{i}" for i in itertools.count())


@pytest.fixture(scope="module")
def cli_env(live_server: LiveServer, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """A logged-in admin: stored login in a temp file, no env overrides."""
    return logged_in_env(live_server, tmp_path_factory)


def test_login_stores_a_private_file_and_whoami(cli_env: dict[str, Any]) -> None:
    path = Path(cli_env["MODELHOST_CLI_CONFIG"])
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    result = run(cli_env, "whoami")
    assert result.exit_code == 0, result.output
    assert "admin (admin)" in result.stdout and "(config)" in result.stdout


def test_login_with_a_bad_token_fails_and_stores_nothing(
    live_server: LiveServer, tmp_path: Path
) -> None:
    env = {"MODELHOST_CLI_CONFIG": str(tmp_path / "c.json"), "MODELHOST_TOKEN": None}
    result = run(env, "login", "--url", live_server.url, "--token", "mh_wrong")
    assert result.exit_code == 1
    assert "Error:" in result.stderr and "Traceback" not in result.output
    assert not (tmp_path / "c.json").exists()


def test_login_prompts_for_the_token(live_server: LiveServer, tmp_path: Path) -> None:
    env = {"MODELHOST_CLI_CONFIG": str(tmp_path / "c.json"), "MODELHOST_TOKEN": None}
    result = run(env, "login", "--url", live_server.url, input=live_server.admin_token + "\n")
    assert result.exit_code == 0, result.output
    assert live_server.admin_token not in result.stdout
    assert run(env, "logout").stdout.strip() == "Logged out."
    assert not (tmp_path / "c.json").exists()
    assert "not logged in" in run(env, "whoami").stderr


def test_login_reads_the_token_from_stdin_and_token_prints_it_for_scripts(
    live_server: LiveServer, tmp_path: Path
) -> None:
    env = {"MODELHOST_CLI_CONFIG": str(tmp_path / "c.json"), "MODELHOST_TOKEN": None}
    assert "not logged in" in run(env, "token").stderr
    result = run(
        env, "login", "--url", live_server.url, "--token-stdin", input=live_server.admin_token
    )
    assert result.exit_code == 0, result.output
    assert live_server.admin_token not in result.stdout
    printed = run(env, "token")
    assert printed.exit_code == 0 and printed.stdout == live_server.admin_token + "\n"
    both = run(env, "login", "--url", live_server.url, "--token", "x", "--token-stdin", input="y")
    assert both.exit_code == 1 and "not both" in both.stderr


def test_env_overrides_the_stored_login(cli_env: dict[str, Any], live_server: LiveServer) -> None:
    with Client(live_server.url, live_server.admin_token) as admin:
        token = admin.create_user("envuser").token
    result = run({**cli_env, "MODELHOST_TOKEN": token}, "whoami")
    assert result.exit_code == 0 and "envuser" in result.stdout and "from env" in result.stdout


def test_connection_refused_names_the_url(tmp_path: Path) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = {
        "MODELHOST_CLI_CONFIG": str(tmp_path / "c.json"),
        "MODELHOST_URL": f"http://127.0.0.1:{port}",
        "MODELHOST_TOKEN": "mh_x",
    }
    result = run(env, "deploy", "list")
    assert result.exit_code == 1
    assert f"http://127.0.0.1:{port}" in result.stderr and "Traceback" not in result.output


def test_users_and_tokens(cli_env: dict[str, Any], live_server: LiveServer, tmp_path: Path) -> None:
    result = run(cli_env, "users", "create", "dave", "--gpu-limit", "3")
    assert result.exit_code == 0, result.output
    dave_token = result.stdout.strip()
    assert dave_token.startswith("mh_") and "not shown again" in result.stderr
    listed = run(cli_env, "users", "list")
    assert re.search(r"dave\s+no\s+3", listed.stdout), listed.stdout

    dave = {
        "MODELHOST_CLI_CONFIG": str(tmp_path / "d.json"),
        "MODELHOST_TOKEN": dave_token,
        "MODELHOST_URL": live_server.url,
    }
    denied = run(dave, "users", "list")
    assert denied.exit_code == 1 and "403" not in denied.stderr and "Error:" in denied.stderr

    created = run(dave, "tokens", "create", "laptop")
    assert created.exit_code == 0, created.output
    new_token = created.stdout.strip()
    assert new_token.startswith("mh_")
    table = run(dave, "tokens", "list").stdout
    row = next(line for line in table.splitlines() if "laptop" in line)
    token_id = row.split()[0]
    assert new_token not in table
    stamp = r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d"
    assert re.search(rf"laptop\s+mh_\S*\s+{stamp}\s+-\s*$", row), row  # created, never used
    # dave's default token made these calls: its last use shows (recorded in the background).
    wait_until(
        lambda: re.search(
            rf"default\s+mh_\S*\s+{stamp}\s+{stamp}\s*$", run(dave, "tokens", "list").stdout, re.M
        ),
        timeout=10,
        what="LAST USED of the default token",
    )
    dup = run(dave, "tokens", "create", "laptop")
    assert dup.exit_code == 1 and "Error:" in dup.stderr

    assert run(dave, "tokens", "revoke", token_id).exit_code == 0
    gone = run({**dave, "MODELHOST_TOKEN": new_token}, "whoami")
    assert gone.exit_code == 1 and "check your token" in gone.stderr

    assert run(cli_env, "users", "delete", "dave").exit_code == 0
    assert "dave" not in run(cli_env, "users", "list").stdout


def test_models_and_gpus(cli_env: dict[str, Any]) -> None:
    models = run(cli_env, "models", "list")
    assert models.exit_code == 0 and "smollm2-135m-instruct" in models.stdout
    gpus = run(cli_env, "deploy", "gpus")
    assert gpus.exit_code == 0 and re.search(r"A100-80GB\s+\d+\s+4\s+2\.00", gpus.stdout)


def test_create_llm_errors_are_one_line_without_traceback(cli_env: dict[str, Any]) -> None:
    result = run(
        cli_env,
        "deploy",
        "create-llm",
        "--name",
        next(_names),
        "--gpu",
        "NOPE-1GB",
        "--engine",
        "simulator",
    )
    assert result.exit_code == 1
    assert "Error:" in result.stderr and "A100-80GB" in result.stderr
    assert "Traceback" not in result.output
    usage = run(cli_env, "deploy", "create-llm", "--name", "x", "--hf-token", "hf_x")
    assert usage.exit_code == 1 and "--hf-repo" in usage.stderr


def test_deploy_lifecycle(cli_env: dict[str, Any]) -> None:
    name = next(_names)
    created = create_simulator(
        cli_env, name, "--min-instances", "0", "--max-instances", "1", "--poll-interval", "0.1"
    )
    assert created.exit_code == 0, created.output
    dep_id = printed_deploy_id(created.stdout)
    # The first replica starts even at min_instances 0 (it proves the weights load).
    assert re.search(r"status: (ready|standby)", created.stdout), created.stdout
    assert f"modelhost chat admin/{name}" in created.stdout
    assert "/v1/openai/chat/completions" in created.stdout

    listed = run(cli_env, "deploy", "list", "--status", "standby,ready")
    assert re.search(rf"{dep_id}\s+admin/{name}\s+(ready|standby)", listed.stdout), listed.stdout
    assert dep_id not in run(cli_env, "deploy", "list", "--status", "errored").stdout

    info = run(cli_env, "deploy", "info", dep_id)
    assert info.exit_code == 0
    for key in (
        "deploy_id:",
        "status:",
        "instances:",
        "running:",
        "autoscaling:",
        "desired_replicas:",
        "settings:",
        "min_instances:",
        "config:",
        "engine:",
    ):
        assert key in info.stdout, key

    by_name = run(cli_env, "deploy", "info", f"admin/{name}")  # a full name works as well
    assert by_name.exit_code == 0 and dep_id in by_name.stdout, by_name.output
    unknown = run(cli_env, "deploy", "info", "admin/no-such-name")
    assert unknown.exit_code == 1 and "no deployment named admin/no-such-name" in unknown.stderr

    upd = run(cli_env, "deploy", "update", dep_id, "--max-instances", "2")
    assert upd.exit_code == 0 and "max_instances=2" in upd.stdout
    assert "nothing to update" in run(cli_env, "deploy", "update", dep_id).stderr

    assert "stopped" in run(cli_env, "deploy", "stop", dep_id).stdout
    assert run(cli_env, "deploy", "start", dep_id).exit_code == 0
    events = run(cli_env, "deploy", "events", dep_id)
    assert events.exit_code == 0 and "TIME" in events.stdout and len(events.stdout.splitlines()) > 2

    assert run(cli_env, "logs", dep_id).exit_code == 0
    assert run(cli_env, "logs", f"admin/{name}").exit_code == 0

    assert dep_id in run(cli_env, "deploy", "delete", f"admin/{name}").stdout
    missing = run(cli_env, "deploy", "info", "no-such-id")
    assert missing.exit_code == 1 and "Error:" in missing.stderr


def test_errored_deployment_prints_the_reason_and_exits_1(cli_env: dict[str, Any]) -> None:
    result = run(
        cli_env,
        "deploy",
        "create-llm",
        "--name",
        next(_names),
        "--engine",
        "builtin",
        "--local",
        "/nonexistent/model.gguf",
        "--poll-interval",
        "0.1",
        "--timeout",
        "120",
    )
    # The server may refuse a missing path up front (422) or fail the start (errored): either
    # way the user gets a reason and a failing exit code.
    assert result.exit_code == 1, result.output
    assert "Error:" in result.stderr and "Traceback" not in result.output
