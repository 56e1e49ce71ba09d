"""The Redis-backed counters shared by several gateway processes (Redis on 127.0.0.1:6379): two
real processes racing on one rate limit admit exactly N of 3N between them, and on one spending
ledger never reserve past the limit."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
import uuid
from pathlib import Path

import pytest

from tests.component.test_limits import REDIS_URL, needs_redis

pytestmark = needs_redis

ROOT = Path(__file__).resolve().parents[2]

_RATE = """
import asyncio, json, sys, uuid
from modelhost.domain.rate_limits import Check, RateLimits
from modelhost.gateway import redis_limits

async def main(url, prefix, n, attempts):
    client = redis_limits.connect(url)
    counter = redis_limits.RedisRateCounter(client, prefix)
    checks = [Check("d:shared:u:7", RateLimits(rpm=n))]
    decisions = await asyncio.gather(
        *(counter.admit(checks, uuid.uuid4().hex) for _ in range(attempts))
    )
    await client.aclose()
    print(json.dumps(sum(d.admitted for d in decisions)))

asyncio.run(main(sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])))
"""

_SPEND = """
import asyncio, json, random, sys, uuid
from modelhost.gateway import redis_limits

async def main(url, prefix, limit, attempts):
    client = redis_limits.connect(url)
    book = redis_limits.RedisSpendBook(client, prefix, 60)
    admitted = 0

    async def one():
        nonlocal admitted
        rid = uuid.uuid4().hex
        if await book.reserve(7, "2026-11", limit, 30, rid):
            admitted += 1
            await asyncio.sleep(random.random() / 100)
            await book.settle(7, "2026-11", rid, 30, 25)

    await asyncio.gather(*(one() for _ in range(attempts)))
    await client.aclose()
    print(json.dumps(admitted))

asyncio.run(main(sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])))
"""


def _race(script: str, *args: object) -> list[int]:
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src")}
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", textwrap.dedent(script), *map(str, args)],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=env,
        )
        for _ in range(2)
    ]
    out = []
    for p in procs:
        stdout, stderr = p.communicate(timeout=60)
        assert p.returncode == 0, stderr
        out.append(json.loads(stdout))
    return out


@pytest.mark.parametrize("n", [1, 10, 50])
def test_two_processes_admit_exactly_n_of_3n(n: int) -> None:
    prefix = f"t{uuid.uuid4().hex}:"
    admitted = _race(_RATE, REDIS_URL, prefix, n, 3 * n // 2 + 1)
    assert sum(admitted) == n


def test_two_processes_never_reserve_past_the_limit() -> None:
    import asyncio

    from modelhost.gateway import redis_limits

    prefix = f"t{uuid.uuid4().hex}:"
    limit = 1000
    admitted = _race(_SPEND, REDIS_URL, prefix, limit, 100)

    async def standing() -> tuple[int, int]:
        client = redis_limits.connect(REDIS_URL)
        got = await redis_limits.RedisSpendBook(client, prefix, 60).standing(7, "2026-11")
        await client.aclose()
        return got.token_micros, got.reserved_micros

    tokens, reserved = asyncio.run(standing())
    assert reserved == 0
    assert 0 < tokens == 25 * sum(admitted) <= limit
