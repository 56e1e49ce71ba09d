"""The SDK and the CLI with a real replica process: chat, and the logs the local backend writes
(each line timed by its stamps). The rest of the SDK and CLI is tested in the component tier,
against replicas run in-process (tests/component/test_client.py, test_cli.py)."""

from __future__ import annotations

import itertools
import re
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from modelhost import Client
from tests.cli_helpers import create_simulator, logged_in_env, printed_deploy_id, run
from tests.component._live_server import LiveServer, modelhost_server

pytestmark = pytest.mark.e2e

_names = (f"e2e-client-{i}" for i in itertools.count())


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveServer]:
    with modelhost_server(tmp_path_factory.mktemp("mh-clients"), real_engines=True) as live:
        yield live


@pytest.fixture(scope="module")
def alice(server: LiveServer) -> Iterator[Client]:
    with Client(server.url, server.admin_token) as admin:
        created = admin.create_user("alice", gpu_limit=2)
    with Client(server.url, created.token) as c:
        yield c


@pytest.fixture(scope="module")
def cli_env(server: LiveServer, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """A logged-in admin: stored login in a temp file, no env overrides."""
    return logged_in_env(server, tmp_path_factory)


def test_running_simulator_replica_chat_and_logs(alice: Client, tmp_path: Path) -> None:
    """A real replica (the simulator engine) end to end through the SDK."""
    started = datetime.now(UTC)
    dep = alice.create_llm(
        next(_names),
        engine="simulator",
        settings={"min_instances": 1, "max_instances": 1},
    )
    try:
        dep = alice.wait_until_settled(dep.deploy_id, timeout=120, poll_interval=0.2)
        assert dep.status == "ready", (dep, alice.events(dep.deploy_id))
        assert dep.instances.running == 1

        deltas = list(
            alice.chat_stream(dep.full_name, [{"role": "user", "content": "hello"}], max_tokens=8)
        )
        text = "".join(d.content for d in deltas)
        assert text and any(d.finish_reason for d in deltas)

        reply = alice.openai().chat.completions.create(
            model=dep.full_name, messages=[{"role": "user", "content": "hi"}], max_tokens=4
        )
        assert reply.choices[0].message.content

        stream = alice.follow_logs(dep.deploy_id)
        first = next(stream)
        stream.close()
        assert first.replica and isinstance(first.line, str) and first.ts is not None
        assert alice.logs(dep.deploy_id, limit=5)
        # Every line carries the time it was written, in order, from this test's run.
        entries = alice.logs(dep.deploy_id, limit=500)
        assert entries[0].line.startswith("[modelhost] starting replica")
        times = [e.ts for e in entries]
        assert all(ts is not None and started <= ts <= datetime.now(UTC) for ts in times), times
        assert times == sorted(times)  # type: ignore[type-var]
    finally:
        alice.delete_deployment(dep.deploy_id)


def test_chat_and_logs_with_a_running_replica(cli_env: dict[str, Any]) -> None:
    name = next(_names)
    created = create_simulator(
        cli_env, name, "--min-instances", "1", "--poll-interval", "0.2", "--timeout", "120"
    )
    assert created.exit_code == 0, created.output
    dep_id = printed_deploy_id(created.stdout)
    try:
        assert "status: ready" in created.stdout
        one = run(cli_env, "chat", f"admin/{name}", "--message", "hi", "--max-tokens", "5")
        assert one.exit_code == 0, one.output
        assert one.stdout.strip()

        repl = run(
            cli_env,
            "chat",
            f"admin/{name}",
            "--system",
            "be brief",
            "--max-tokens",
            "3",
            input="hello\n/reset\nagain\n/exit\n",
        )
        assert repl.exit_code == 0, repl.output
        assert repl.stdout.count("> ") >= 3

        bad = run(cli_env, "chat", "admin/no-such-model", "--message", "hi")
        assert bad.exit_code == 1 and "Error:" in bad.stderr

        logs = run(cli_env, "logs", dep_id, "--limit", "3")
        assert logs.exit_code == 0 and 0 < len(logs.stdout.splitlines()) <= 3
        # `time [replica] line`, the time coming from the server.
        for line in logs.stdout.splitlines():
            assert re.match(r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d \[\S+\] ", line), line
    finally:
        run(cli_env, "deploy", "delete", dep_id)
