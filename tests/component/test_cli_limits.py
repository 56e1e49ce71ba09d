"""`modelhost spending-limit`, `users update`, `tokens create --rpm` and the deploy rate-limit
and pricing flags (typer's CliRunner) against the real app on 127.0.0.1."""

from __future__ import annotations

import itertools
import re
from pathlib import Path
from typing import Any

import pytest

from tests.cli_helpers import create_simulator, logged_in_env, printed_deploy_id, run
from tests.component._live_server import LiveServer

_names = (f"clim-{i}" for i in itertools.count())


@pytest.fixture(scope="module")
def cli_env(live_server: LiveServer, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """A logged-in admin."""
    return logged_in_env(live_server, tmp_path_factory)


def _user_env(
    cli_env: dict[str, Any], live_server: LiveServer, tmp_path: Path, username: str
) -> dict[str, Any]:
    """A new user, its token in the environment (no stored login)."""
    created = run(cli_env, "users", "create", username)
    assert created.exit_code == 0, created.output
    return {
        "MODELHOST_CLI_CONFIG": str(tmp_path / f"{username}.json"),
        "MODELHOST_URL": live_server.url,
        "MODELHOST_TOKEN": created.stdout.strip(),
    }


def _field(output: str, key: str) -> str:
    match = re.search(rf"^\s*{re.escape(key)}:\s+(.*)$", output, re.MULTILINE)
    assert match, output
    return match.group(1).strip()


def test_own_spending_limit_show_set_and_remove(
    cli_env: dict[str, Any], live_server: LiveServer, tmp_path: Path
) -> None:
    env = _user_env(cli_env, live_server, tmp_path, "cl-ann")
    shown = run(env, "spending-limit")  # `show` is the default
    assert shown.exit_code == 0, shown.output
    assert "Your spending limit" in shown.stdout
    assert _field(shown.stdout, "enforced") == "no limit"
    assert _field(shown.stdout, "status") == "ok"

    result = run(env, "spending-limit", "set", "50", "--alert-at", "0.5,0.8")
    assert result.exit_code == 0, result.output
    assert _field(result.stdout, "limit") == "50.000000 USD a month"
    assert _field(result.stdout, "enforced") == "50.000000 USD"
    assert _field(result.stdout, "alerts at") == "50% 80%"

    shown = run(env, "spending-limit", "show")
    assert _field(shown.stdout, "remaining") == "50.000000 USD"
    assert _field(shown.stdout, "spent") == "0.000000 USD (0.0%)"

    result = run(env, "spending-limit", "set", "$12.50", "--alert-at", "90%")
    assert result.exit_code == 0, result.output
    assert _field(result.stdout, "limit") == "12.500000 USD a month"
    assert _field(result.stdout, "alerts at") == "90%"

    removed = run(env, "spending-limit", "set", "none")
    assert removed.exit_code == 0, removed.output
    assert _field(removed.stdout, "limit") == "none"
    assert _field(removed.stdout, "alerts at") == "90%"

    for args, message in (
        (("set",), "give an amount"),
        (("set", "lots"), "amount of USD"),
        (("set", "--", "-5"), "non-negative"),
        (("set", "5", "--cap", "10"), "--cap needs --user"),
        (("set", "5", "--alert-at", "2"), "alert_at"),
    ):
        bad = run(env, "spending-limit", *args)
        assert bad.exit_code != 0, (args, bad.output)
        assert message in bad.stderr, (args, bad.stderr)
        assert "Traceback" not in bad.output


def test_admin_cap_refuses_a_higher_limit(
    cli_env: dict[str, Any], live_server: LiveServer, tmp_path: Path
) -> None:
    env = _user_env(cli_env, live_server, tmp_path, "cl-ben")
    capped = run(cli_env, "spending-limit", "set", "--user", "cl-ben", "--cap", "20")
    assert capped.exit_code == 0, capped.output
    assert "cl-ben's spending limit" in capped.stdout
    assert _field(capped.stdout, "admin cap") == "20.000000 USD"
    assert _field(capped.stdout, "enforced") == "20.000000 USD"

    over = run(env, "spending-limit", "set", "25")
    assert over.exit_code == 1
    assert "over_spending_cap" in over.stderr and "20.000000" in over.stderr
    assert "Traceback" not in over.output
    assert run(env, "spending-limit", "set", "none").exit_code == 1

    ok = run(env, "spending-limit", "set", "10")
    assert ok.exit_code == 0, ok.output
    assert _field(ok.stdout, "enforced") == "10.000000 USD"

    shown = run(cli_env, "spending-limit", "show", "--user", "cl-ben")
    assert _field(shown.stdout, "limit") == "10.000000 USD a month"
    assert _field(shown.stdout, "admin cap") == "20.000000 USD"

    # The admin sets the user's own limit; then lifts the cap.
    both = run(cli_env, "spending-limit", "set", "15", "--user", "cl-ben", "--cap", "none")
    assert both.exit_code == 0, both.output
    assert _field(both.stdout, "admin cap") == "none"
    assert _field(both.stdout, "enforced") == "15.000000 USD"

    assert "give an amount" in run(cli_env, "spending-limit", "set", "--user", "cl-ben").stderr
    denied = run(env, "spending-limit", "show", "--user", "cl-ben")
    assert denied.exit_code == 1 and "Error:" in denied.stderr


def test_a_reached_limit_refuses_a_deployment_with_a_hint(
    cli_env: dict[str, Any], live_server: LiveServer, tmp_path: Path
) -> None:
    env = _user_env(cli_env, live_server, tmp_path, "cl-cat")
    zero = run(env, "spending-limit", "set", "0")
    assert zero.exit_code == 0, zero.output
    assert "reached" in _field(zero.stdout, "status")
    refused = run(
        env, "deploy", "create-llm", "--name", next(_names), "--engine", "simulator", "--no-wait"
    )
    assert refused.exit_code == 1, refused.output
    assert "spending_limit_reached" in refused.stderr
    assert "modelhost spending-limit" in refused.stderr
    assert "Traceback" not in refused.output


def test_users_update_rate_limits_and_gpu_limit(
    cli_env: dict[str, Any], live_server: LiveServer, tmp_path: Path
) -> None:
    _user_env(cli_env, live_server, tmp_path, "cl-dan")
    result = run(cli_env, "users", "update", "cl-dan", "--rpm", "5")
    assert result.exit_code == 0, result.output
    assert "rate limits 5 rpm" in result.stdout
    # --tpm alone keeps the rpm limit.
    result = run(cli_env, "users", "update", "cl-dan", "--tpm", "1000", "--gpu-limit", "3")
    assert result.exit_code == 0, result.output
    assert "GPU limit 3" in result.stdout and "5 rpm, 1000 tpm" in result.stdout
    listed = run(cli_env, "users", "list")
    assert "RATE LIMITS" in listed.stdout
    row = next(line for line in listed.stdout.splitlines() if "cl-dan" in line)
    assert re.search(r"cl-dan\s+no\s+3\s", row) and row.rstrip().endswith("5 rpm, 1000 tpm"), row

    result = run(cli_env, "users", "update", "cl-dan", "--no-rate-limits", "--tpm", "50")
    assert "rate limits 50 tpm" in result.stdout, result.output
    result = run(cli_env, "users", "update", "cl-dan", "--no-rate-limits")
    assert "rate limits -" in result.stdout, result.output

    assert "nothing to update" in run(cli_env, "users", "update", "cl-dan").stderr
    bad = run(cli_env, "users", "update", "cl-dan", "--rpm", "0")
    assert bad.exit_code == 1 and "Error:" in bad.stderr
    missing = run(cli_env, "users", "update", "nobody-at-all", "--gpu-limit", "1")
    assert missing.exit_code == 1 and "Error:" in missing.stderr


def test_tokens_create_with_rate_limits(
    cli_env: dict[str, Any], live_server: LiveServer, tmp_path: Path
) -> None:
    env = _user_env(cli_env, live_server, tmp_path, "cl-eve")
    created = run(env, "tokens", "create", "ci", "--rpm", "2", "--tpm", "500")
    assert created.exit_code == 0, created.output
    assert created.stdout.strip().startswith("mh_")
    assert "limited to 2 rpm, 500 tpm" in created.stderr
    plain = run(env, "tokens", "create", "plain")
    assert plain.exit_code == 0 and "limited" not in plain.stderr
    listed = run(env, "tokens", "list")
    assert "RATE LIMITS" in listed.stdout
    rows = {line.split()[1]: line.rstrip() for line in listed.stdout.splitlines()[1:]}
    assert rows["ci"].endswith("2 rpm, 500 tpm") and rows["plain"].endswith(" -"), rows


def test_deploy_rate_limits_and_pricing(cli_env: dict[str, Any]) -> None:
    name = next(_names)
    created = create_simulator(
        cli_env,
        name,
        "--min-instances",
        "0",
        "--public",
        "--rpm",
        "10",
        "--price-prompt",
        "0.2",
        "--price-completion",
        "0.4",
        "--no-wait",
    )
    assert created.exit_code == 0, created.output
    dep_id = printed_deploy_id(created.stdout)
    try:
        info = run(cli_env, "deploy", "info", dep_id)
        assert info.exit_code == 0, info.output
        assert re.search(r"usd_per_1m_prompt_tokens:\s+0\.2", info.stdout), info.stdout
        assert re.search(r"usd_per_1m_completion_tokens:\s+0\.4", info.stdout), info.stdout
        assert re.search(r"rpm:\s+10", info.stdout), info.stdout

        upd = run(cli_env, "deploy", "update", dep_id, "--tpm", "500")
        assert upd.exit_code == 0, upd.output
        assert "rate_limits=10 rpm, 500 tpm" in upd.stdout
        # One price alone keeps the other.
        upd = run(cli_env, "deploy", "update", dep_id, "--price-prompt", "1")
        assert upd.exit_code == 0, upd.output
        assert re.search(r"pricing=1(\.0+)? USD/1M prompt, 0\.4\d* USD/1M completion", upd.stdout)

        upd = run(cli_env, "deploy", "update", dep_id, "--no-pricing", "--no-rate-limits")
        assert upd.exit_code == 0, upd.output
        assert "rate_limits=-" in upd.stdout and "pricing=-" in upd.stdout

        bad = run(cli_env, "deploy", "update", dep_id, "--price-prompt", "cheap")
        assert bad.exit_code == 1 and "amount of USD" in bad.stderr
    finally:
        assert run(cli_env, "deploy", "delete", dep_id).exit_code == 0
