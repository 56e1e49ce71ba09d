"""Limits under concurrency (issue 12): modelhost's rate limits and spending limit against
LiteLLM's proxy, on the same upstream, in one run.

Upstream for both: one simulator replica with zero model time, the replica of modelhost's public
deployment `admin/bench` (priced: --prompt-price and --completion-price USD per 1M tokens, the
same prices LiteLLM's model entries carry per token; the cost of one request is computed from
the replica's own token counts).

LiteLLM (its own venv, --litellm-python) is tried first with its PostgreSQL database (a fresh
--litellm-db on 127.0.0.1:5432, dropped after), which virtual keys need. Its start runs Prisma
migrations, and Prisma downloads its engine binaries from the internet; where that fails, the
error is recorded and LiteLLM runs without a database, with the limits it enforces in memory:
per model deployment, `rpm` (router strategy usage-based-routing-v2, cooldowns off) and
`max_budget` + `budget_duration` (the router's budget limiter), called with the master key
(--litellm-mode forces one mode).

1. Rate-limit exactness: a limit of N requests per minute on a fresh caller, then a burst of
   3N concurrent requests (each on its own connection, opened before any is sent); admitted
   = answers 200. modelhost: the limit on an API token (`POST /v1/api-tokens` with
   `rate_limits`) and on a user (`PUT /v1/users/{name}`); LiteLLM: a virtual key with
   `rpm_limit`, or a model deployment with `rpm`. A fresh caller per burst, so no window
   carries over (LiteLLM's deployment rpm counts per clock minute: no burst starts after
   second 50).
2. Budget hard cap: 200 concurrent requests from a caller whose limit is about a tenth of their
   cost. modelhost: a user with a spending limit calling the priced shared endpoint; recorded
   spend = `spent` of GET /v1/me/spending-limit once it has stopped changing. LiteLLM: a
   virtual key with `max_budget` (spend from `/key/info`), or a model deployment with
   `max_budget` (spend not readable without the database: the served cost, answers 200 x the
   cost of one request). Reported: spend / limit (<= 1.0: the cap held), and the status of one
   more request after the spend is in.
3. Admission overhead: --requests sequential requests (p50, p95) and the same number at 16
   clients (req/s, p50, p95), from a caller with no limits and from one with a rate limit and
   a spending limit that never bind, alternated over --rounds rounds (medians reported), with
   the CPU time per request of the gateway (and of Redis) from /proc; LiteLLM's callers
   without and with limits alongside.

Everything runs twice for modelhost: its limits in memory (one `modelhost serve`), then in Redis
(`MODELHOST_REDIS_URL`, a unique `MODELHOST_REDIS_KEY_PREFIX` whose keys are deleted at the end;
a second `modelhost serve` after the first has stopped: two on one database would both run the
control loops). LiteLLM runs during the first. Results go to bench/results/limits-<time>.json
and markdown tables to stdout.

    .venv/bin/python bench/limits.py                      # both peers, about 4 minutes
    .venv/bin/python bench/limits.py --peers modelhost --requests 1000 --rounds 5
    .venv/bin/python bench/limits.py --peers modelhost --redis-url ''   # memory only
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict
from decimal import Decimal
from pathlib import Path
from typing import Any

import httpx
import uvloop

from gateway import (
    LITELLM_KEY,
    TOKEN,
    Connection,
    LevelResult,
    Target,
    run_level,
    start,
    stop,
    wait_http,
)
from modelhost_server import (
    ROOT,
    auth_headers,
    deploy_and_wait,
    free_port,
    serve_command,
    serve_env,
)

MH_PATH = "/v1/openai/chat/completions"
MH_MODEL = "admin/bench"


# -- modelhost ---------------------------------------------------------------------------------
class Modelhost:
    """One `modelhost serve` with the public, priced deployment admin/bench, and the admin
    calls the benchmark needs (users, tokens, limits)."""

    def __init__(self, work: Path, args: argparse.Namespace, redis_url: str, prefix: str):
        self.work = work
        self.port = free_port()
        self.base = f"http://127.0.0.1:{self.port}"
        extra = {}
        if redis_url:
            extra = {"MODELHOST_REDIS_URL": redis_url, "MODELHOST_REDIS_KEY_PREFIX": prefix}
        data = work / "data"
        log = work / "modelhost.log"
        cmd = serve_command(self.port, data, "--gpus", "A100-80GB:1")
        self.proc = start(cmd, serve_env(TOKEN, **extra), log)
        wait_http(self.base + "/readyz", self.proc, log)
        body = {
            "model_name": "bench",
            "gpu": "A100-80GB",
            "engine": "simulator",
            "max_batch_size": 256,
            "engine_args": ["--ttft-ms", "0", "--tpot-ms", "0", "--prefill-ms-per-token", "0"],
            "public": True,
            "pricing": {
                "usd_per_1m_prompt_tokens": args.prompt_price,
                "usd_per_1m_completion_tokens": args.completion_price,
            },
        }
        self.deploy_id = deploy_and_wait(
            self.base, TOKEN, body, timeout_s=120, poll_s=0.2, label="modelhost", log=log
        )
        db = sqlite3.connect(data / "modelhost.db")
        try:
            [(port, pid)] = db.execute(
                "SELECT port, pid FROM replicas WHERE exited_at IS NULL AND deploy_id = ?",
                (self.deploy_id,),
            ).fetchall()
        finally:
            db.close()
        self.replica_port, self.replica_pid = int(port), int(pid)
        # The tokens of one benchmark request, as the replica counts them (both peers bill them).
        replica = Target("-", self.replica_port, "/v1/chat/completions", "-", MH_MODEL)
        _, probe = replica.request(False, args.max_tokens)
        r = httpx.post(
            f"http://127.0.0.1:{self.replica_port}/v1/chat/completions",
            content=probe,
            headers={"content-type": "application/json"},
            timeout=30,
        )
        r.raise_for_status()
        usage = r.json()["usage"]
        args.usage = (int(usage["prompt_tokens"]), int(usage["completion_tokens"]))
        self.users = 0
        # Redis's own CPU is on this request path too (when it runs on this machine).
        self.redis_pid: int | None = None
        if redis_url:
            import redis

            pid = int(redis.Redis.from_url(redis_url).info("server")["process_id"])
            self.redis_pid = pid if Path(f"/proc/{pid}/stat").exists() else None

    def call(self, method: str, path: str, token: str = TOKEN, **kw: Any) -> Any:
        r = httpx.request(method, self.base + path, headers=auth_headers(token), timeout=30, **kw)
        if r.status_code >= 300:
            raise RuntimeError(f"{method} {path}: {r.status_code} {r.text[:300]}")
        return r.json()

    def user(
        self, rpm: int | None = None, spend_usd: str | None = None, name: str = "u"
    ) -> tuple[str, str]:
        """A fresh user (optionally with a requests-per-minute limit and a spending limit);
        returns (username, token)."""
        self.users += 1
        username = f"{name}{self.users}"
        token = self.call("POST", "/v1/users", json={"username": username})["token"]
        if rpm is not None:
            self.call("PUT", f"/v1/users/{username}", json={"rate_limits": {"rpm": rpm}})
        if spend_usd is not None:
            self.call(
                "PUT", f"/v1/users/{username}/spending-limit", json={"usd_per_month": spend_usd}
            )
        return username, token

    def limited_token(self, user_token: str, rpm: int) -> str:
        self.users += 1
        body = {"name": f"burst{self.users}", "rate_limits": {"rpm": rpm}}
        return str(self.call("POST", "/v1/api-tokens", user_token, json=body)["token"])

    def spent(self, user_token: str) -> Decimal:
        return Decimal(self.call("GET", "/v1/me/spending-limit", user_token)["spent"])

    def target(self, name: str, token: str) -> Target:
        pids = [("replica", self.replica_pid), ("gateway", self.proc.pid)]
        if self.redis_pid is not None:
            pids.append(("redis", self.redis_pid))
        return Target(name, self.port, MH_PATH, token, MH_MODEL, tuple(pids))


# -- LiteLLM -----------------------------------------------------------------------------------
class LiteLLMUnavailable(RuntimeError):
    pass


def psql(sql: str) -> None:
    cmd = ["psql", "-h", "127.0.0.1", "-U", "postgres", "-v", "ON_ERROR_STOP=1", "-q", "-c", sql]
    subprocess.run(cmd, check=True)


class LiteLLM:
    """LiteLLM's proxy at the replica, priced per token like the shared endpoint.

    mode "db": with its PostgreSQL database (a fresh --litellm-db), whose virtual keys carry
    `rpm_limit` and `max_budget`; a fresh key per burst or budget run, spend from /key/info.
    mode "memory": no database, so no virtual keys; the limits LiteLLM enforces without one are
    the router's, per model deployment: `rpm` (strict with usage-based-routing-v2, counted per
    clock minute in the router's in-memory cache) and `max_budget` + `budget_duration` (the
    router's budget limiter, spend counted in memory as answers complete). A fresh model entry
    per burst or budget run, all called with the master key; spend is not readable without the
    database, so it is the served cost (answers 200 x the cost of one request)."""

    def __init__(self, work: Path, args: argparse.Namespace, replica_port: int, mode: str) -> None:
        self.mode = mode
        self.port = free_port()
        self.base = f"http://127.0.0.1:{self.port}"
        prompt = Decimal(args.prompt_price) / 1_000_000
        completion = Decimal(args.completion_price) / 1_000_000

        def entry(name: str, *extra: str) -> str:
            return "".join(
                [
                    f"  - model_name: {name}\n",
                    "    litellm_params:\n",
                    "      model: openai/admin/bench\n",
                    f"      api_base: http://127.0.0.1:{replica_port}/v1\n",
                    "      api_key: none\n",
                    f"      input_cost_per_token: {prompt:f}\n",
                    f"      output_cost_per_token: {completion:f}\n",
                    *(f"      {line}\n" for line in extra),
                ]
            )

        models = [entry("bench")]
        env = {
            **os.environ,
            "LITELLM_MASTER_KEY": LITELLM_KEY,
            # No fetch of the model cost map from the internet at start (there is none here).
            "LITELLM_LOCAL_MODEL_COST_MAP": "True",
        }
        env.pop("PYTHONPATH", None)
        general = [f"  master_key: {LITELLM_KEY}"]
        router = ["  num_retries: 0"]
        if mode == "db":
            db = args.litellm_db
            psql(f"DROP DATABASE IF EXISTS {db} WITH (FORCE)")
            psql(f"CREATE DATABASE {db}")
            env["DATABASE_URL"] = f"postgresql://postgres@127.0.0.1:5432/{db}"
            # Spend is written to the database in batches: every second (default 10).
            general.append("  proxy_batch_write_at: 1")
        else:
            models += [entry(f"bench-rpm{i}", f"rpm: {args.rpm}") for i in range(args.bursts)]
            models += [
                entry(f"bench-budget{i}", f"max_budget: {args.budget_usd}", "budget_duration: 30d")
                for i in range(args.budget_runs)
            ]
            models.append(
                entry(
                    "bench-limited", "rpm: 10000000", "max_budget: 1000000", "budget_duration: 30d"
                )
            )
            # Deployment rpm is enforced (429) by this strategy's pre-call check; cooldowns off,
            # so what refuses a request is the limit, not the router resting the deployment.
            router += ["  routing_strategy: usage-based-routing-v2", "  disable_cooldowns: true"]
        config = work / f"litellm-{mode}.yaml"
        config.write_text(
            "model_list:\n"
            + "".join(models)
            + "general_settings:\n"
            + "".join(line + "\n" for line in general)
            + "router_settings:\n"
            + "".join(line + "\n" for line in router)
            + "litellm_settings:\n  telemetry: false\n  num_retries: 0\n"
        )
        litellm = str(Path(args.litellm_python).parent / "litellm")
        cmd = [litellm, "--config", str(config), "--host", "127.0.0.1", "--port", str(self.port)]
        self.log = work / f"litellm-{mode}.log"
        self.proc = start(cmd, env, self.log)
        try:
            wait_http(
                f"{self.base}/health/liveliness",
                self.proc,
                self.log,
                headers=auth_headers(LITELLM_KEY),
            )
        except RuntimeError as exc:
            stop(self.proc)
            text = self.log.read_text(errors="replace")
            lines = [ln.strip() for ln in text.splitlines() if "rror" in ln and ln.strip()]
            raise LiteLLMUnavailable(f"{exc}: {' | '.join(lines[-3:])}") from exc
        self.keys = 0

    def key(self, **limits: Any) -> str:
        self.keys += 1
        body = {"key_alias": f"bench{self.keys}", "models": ["bench"], **limits}
        r = httpx.post(
            f"{self.base}/key/generate", json=body, headers=auth_headers(LITELLM_KEY), timeout=60
        )
        if r.status_code != 200:
            raise RuntimeError(f"litellm /key/generate: {r.status_code} {r.text[:300]}")
        return str(r.json()["key"])

    def key_spent(self, key: str) -> Decimal:
        r = httpx.get(
            f"{self.base}/key/info",
            params={"key": key},
            headers=auth_headers(LITELLM_KEY),
            timeout=30,
        )
        r.raise_for_status()
        return Decimal(str(r.json()["info"]["spend"] or 0))

    def target(self, name: str, key: str = LITELLM_KEY, model: str = "bench") -> Target:
        pids = (("gateway", self.proc.pid),)
        return Target(name, self.port, "/v1/chat/completions", key, model, pids)

    # The callers of each measurement, in either mode.
    def rate_target(self, i: int, rpm: int) -> Target:
        if self.mode == "db":
            return self.target("k", self.key(rpm_limit=rpm))
        return self.target("m", model=f"bench-rpm{i}")

    def budget_target(self, i: int, limit: Decimal) -> tuple[Target, Any]:
        """The caller, and how to read its spend (None: not readable)."""
        if self.mode == "db":
            key = self.key(max_budget=float(limit))
            return self.target("k", key), lambda: self.key_spent(key)
        return self.target("m", model=f"bench-budget{i}"), None

    def overhead_targets(self) -> list[Target]:
        if self.mode == "db":
            limited = self.key(rpm_limit=10_000_000, max_budget=1e6)
            return [
                self.target("litellm no limits", self.key()),
                self.target("litellm limits", limited),
            ]
        return [
            self.target("litellm no limits"),
            self.target("litellm limits", model="bench-limited"),
        ]


def start_litellm(
    work: Path, args: argparse.Namespace, replica_port: int, out: dict[str, Any]
) -> LiteLLM | None:
    """With its database when it starts with one, else in memory; what failed goes to `out`."""
    modes = ["db", "memory"] if args.litellm_mode == "auto" else [args.litellm_mode]
    for mode in modes:
        print(f"litellm: starting ({mode})", file=sys.stderr)
        try:
            lt = LiteLLM(work, args, replica_port, mode)
        except LiteLLMUnavailable as exc:
            print(f"litellm ({mode}) did not start: {exc}", file=sys.stderr)
            out["litellm_failed"][mode] = str(exc)
            if mode == "db":
                psql(f"DROP DATABASE IF EXISTS {args.litellm_db} WITH (FORCE)")
            continue
        out["litellm_mode"] = mode
        return lt
    return None


# -- the measurements --------------------------------------------------------------------------
async def burst(target: Target, n: int, max_tokens: int) -> dict[str, int]:
    """n concurrent requests, each on its own connection, all opened before any is sent;
    returns the count of each status."""
    head, body = target.request(False, max_tokens)
    conns = [Connection(target.port) for _ in range(n)]
    await asyncio.gather(*(c._open() for c in conns))

    async def one(conn: Connection) -> str:
        try:
            status, _ = await asyncio.wait_for(conn.post(head, body), 180)
            return str(status)
        except (OSError, ValueError, asyncio.IncompleteReadError, TimeoutError) as exc:
            return type(exc).__name__
        finally:
            conn.close()

    statuses = await asyncio.gather(*(one(c) for c in conns))
    counts: dict[str, int] = {}
    for s in statuses:
        counts[s] = counts.get(s, 0) + 1
    return dict(sorted(counts.items()))


async def settled(read: Any, min_wait_s: float = 1.0, timeout_s: float = 30.0) -> Decimal:
    """The value `read()` returns once two reads a second apart agree (after min_wait_s)."""
    await asyncio.sleep(min_wait_s)
    last = await asyncio.to_thread(read)
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        await asyncio.sleep(1.0)
        now = await asyncio.to_thread(read)
        if now == last:
            return Decimal(now)
        last = now
    return Decimal(last)


async def rate_bursts(
    peer: str,
    make_target: Any,
    args: argparse.Namespace,
    log: list[dict[str, Any]],
    clock_minute: bool = False,
) -> None:
    """--bursts bursts of 3N, each from a fresh caller that make_target(i) returns. With
    clock_minute (a limit counted per clock minute), a burst starts no later than second 50 of
    a minute, so none straddles two windows."""
    n = args.rpm
    for run in range(args.bursts):
        target = await asyncio.to_thread(make_target, run)
        if clock_minute and time.time() % 60 > 50:
            await asyncio.sleep(61 - time.time() % 60)
        started = time.time()
        counts = await burst(target, 3 * n, args.max_tokens)
        admitted = counts.get("200", 0)
        row = {
            "peer": peer,
            "run": run,
            "limit_rpm": n,
            "sent": 3 * n,
            "admitted": admitted,
            "admitted_over_limit": admitted / n,
            "statuses": counts,
            "burst_s": round(time.time() - started, 3),
        }
        log.append(row)
        print(
            f"  rate  {peer:24s} run {run}: {admitted}/{n} admitted {counts} "
            f"in {row['burst_s']:.2f} s",
            file=sys.stderr,
        )


async def budget_run(
    peer: str,
    target: Target,
    read_spent: Any,
    args: argparse.Namespace,
    log: list[dict[str, Any]],
    run: int,
) -> None:
    """--budget-requests concurrent requests from a caller whose limit is --budget-usd;
    read_spent() is its recorded spend (None: not readable, only the served cost is)."""
    limit = Decimal(args.budget_usd)
    cost = request_cost(args)
    started = time.time()
    counts = await burst(target, args.budget_requests, args.max_tokens)
    wall = time.time() - started
    served = counts.get("200", 0) * cost
    recorded = None if read_spent is None else await settled(read_spent, args.settle_s)
    # Once the spend is in: is the caller refused now (the limit enforced at all)?
    await asyncio.sleep(args.settle_s)
    after = await burst(target, 1, args.max_tokens)
    spent = served if recorded is None else recorded
    row = {
        "peer": peer,
        "run": run,
        "limit_usd": str(limit),
        "requests": args.budget_requests,
        "statuses": counts,
        "burst_s": round(wall, 3),
        "served_cost_usd": str(served),
        "recorded_spend_usd": None if recorded is None else str(recorded),
        "spent_over_limit": float(spent / limit),
        "served_over_limit": float(served / limit),
        "cost_if_all_served_usd": str(cost * args.budget_requests),
        "one_more_request_after": next(iter(after)),
    }
    log.append(row)
    print(
        f"  spend {peer:24s} run {run}: recorded {recorded} served {served} of {limit} "
        f"({float(spent / limit):.2f}x) {counts} in {wall:.2f} s; one more: {after}",
        file=sys.stderr,
    )


async def overhead(targets: list[Target], args: argparse.Namespace, log: list[LevelResult]) -> None:
    """Each target, --requests at 1 client and at 16, alternated over --rounds rounds."""
    for t in targets:  # warm-up: first-call costs (auth caches, connection pools) paid here
        await run_level(t, "plain", 4, 50, args.max_tokens)
    for repeat in range(args.rounds):
        for clients in (1, 16):
            for t in targets:
                r = await run_level(
                    t, "plain", clients, args.requests, args.max_tokens, dict(t.pids)
                )
                r.repeat = repeat
                log.append(r)
                print(
                    f"  overhead {t.name:24s} c={clients:2d}: {r.req_per_s:7.1f} req/s, "
                    f"p50 {r.p50_ms:6.2f} ms p95 {r.p95_ms:6.2f} ms ({r.errors} errors, "
                    f"load {os.getloadavg()[0]:.1f})",
                    file=sys.stderr,
                )


def request_cost(args: argparse.Namespace) -> Decimal:
    """What one benchmark request costs on both peers: its tokens (the replica's own counts,
    args.usage) at the deployment's prices."""
    prompt, completion = args.usage
    return (
        prompt * Decimal(args.prompt_price) + completion * Decimal(args.completion_price)
    ) / 1_000_000


async def run_modelhost(
    label: str,
    work: Path,
    args: argparse.Namespace,
    redis_url: str,
    prefix: str,
    out: dict[str, Any],
    with_litellm: bool,
) -> None:
    print(f"{label}: starting", file=sys.stderr)
    mh = Modelhost(work, args, redis_url, prefix)
    lt: LiteLLM | None = None
    try:
        if with_litellm:
            lt = start_litellm(work, args, mh.replica_port, out)
        # Warm the gateway (and the replica) with a caller no limit applies to.
        _, warm = mh.user(name="warm")
        await run_level(mh.target("warm", warm), "plain", 4, 50, args.max_tokens)

        # 1. rate-limit bursts; every caller made first, then one wait for the directory poll
        tokens = [mh.limited_token(mh.user(name="tok")[1], args.rpm) for _ in range(args.bursts)]
        users = [mh.user(rpm=args.rpm, name="rpm")[1] for _ in range(args.bursts)]
        time.sleep(args.settle_s)
        rate = out["rate"]
        await rate_bursts(f"{label}, API token", lambda i: mh.target("t", tokens[i]), args, rate)
        await rate_bursts(f"{label}, user", lambda i: mh.target("u", users[i]), args, rate)
        if lt is not None:
            peer = "litellm, virtual key" if lt.mode == "db" else "litellm, model deployment"
            await rate_bursts(
                peer, lambda i: lt.rate_target(i, args.rpm), args, rate, lt.mode == "memory"
            )

        # 2. budget hard cap: a fresh user (key, model entry) per run
        spenders = [
            mh.user(spend_usd=args.budget_usd, name="spend")[1] for _ in range(args.budget_runs)
        ]
        time.sleep(args.settle_s)
        for run in range(args.budget_runs):
            token = spenders[run]
            await budget_run(
                label,
                mh.target("s", token),
                lambda token=token: mh.spent(token),
                args,
                out["budget"],
                run,
            )
        if lt is not None:
            for run in range(args.budget_runs):
                target, read = lt.budget_target(run, Decimal(args.budget_usd))
                peer = "litellm, virtual key" if lt.mode == "db" else "litellm, model deployment"
                await budget_run(peer, target, read, args, out["budget"], run)

        # 3. admission overhead: no limits vs limits that never bind
        _, free = mh.user(name="free")
        _, capped = mh.user(rpm=10_000_000, spend_usd="1000000", name="capped")
        time.sleep(args.settle_s)
        targets = [
            mh.target(f"{label}, no limits", free),
            mh.target(f"{label}, limits", capped),
        ]
        if lt is not None:
            targets += lt.overhead_targets()
        await overhead(targets, args, out["overhead"])
    finally:
        if lt is not None:
            stop(lt.proc)
            if lt.mode == "db":
                psql(f"DROP DATABASE IF EXISTS {args.litellm_db} WITH (FORCE)")
        stop(mh.proc)


def clean_redis(url: str, prefix: str) -> int:
    import redis

    client = redis.Redis.from_url(url)
    keys = list(client.scan_iter(match=f"{prefix}*", count=1000))
    if keys:
        client.delete(*keys)
    return len(keys)


# -- the report --------------------------------------------------------------------------------
def tables(out: dict[str, Any]) -> str:
    lines = [
        "**Rate limit**: admitted / N for a burst of 3N concurrent requests, per run",
        "",
        "| peer, limit on | N | admitted / N per run | statuses (all runs) |",
        "|---|---|---|---|",
    ]
    for p in dict.fromkeys(r["peer"] for r in out["rate"]):
        rows = [r for r in out["rate"] if r["peer"] == p]
        ratios = ", ".join(f"{r['admitted_over_limit']:.2f}" for r in rows)
        total: dict[str, int] = {}
        for r in rows:
            for k, v in r["statuses"].items():
                total[k] = total.get(k, 0) + v
        lines.append(f"| {p} | {rows[0]['limit_rpm']} | {ratios} | {total} |")
    lines += [
        "",
        "**Budget**: spend / limit after concurrent requests costing ~10x the limit "
        "(recorded spend where readable, else served cost)",
        "",
        "| peer | limit (USD) | requests | spend / limit per run | answered 200 per run |",
        "|---|---|---|---|---|",
    ]
    for p in dict.fromkeys(r["peer"] for r in out["budget"]):
        rows = [r for r in out["budget"] if r["peer"] == p]
        ratios = ", ".join(f"{r['spent_over_limit']:.2f}" for r in rows)
        ok = ", ".join(str(r["statuses"].get("200", 0)) for r in rows)
        lines.append(f"| {p} | {rows[0]['limit_usd']} | {rows[0]['requests']} | {ratios} | {ok} |")
    lines += [
        "",
        "**Admission overhead** (medians over rounds)",
        "",
        "| caller | 1 client: p50 / p95 (ms) | 16 clients: req/s | 16 clients: p50 / p95 (ms) "
        "| CPU µs/req, gateway (+ Redis): 1 / 16 clients | errors |",
        "|---|---|---|---|---|---|",
    ]

    def cpu(rs: list[LevelResult]) -> str:
        """The gateway's CPU per request, and Redis's where it was measured."""
        parts = []
        for name in ("gateway", "redis"):
            values = [r.cpu_us_per_req[name] for r in rs if name in r.cpu_us_per_req]
            if values:
                parts.append(f"{statistics.median(values):.0f}")
        return " + ".join(parts) or "-"

    by: dict[tuple[str, int], list[LevelResult]] = {}
    for r in out["overhead"]:
        by.setdefault((r.peer, r.clients), []).append(r)
    for name in dict.fromkeys(r.peer for r in out["overhead"]):
        seq, par = by.get((name, 1), []), by.get((name, 16), [])
        if not seq or not par:
            continue
        errors = sum(r.errors for r in seq + par)
        lines.append(
            f"| {name} | {statistics.median(r.p50_ms for r in seq):.2f} / "
            f"{statistics.median(r.p95_ms for r in seq):.2f} | "
            f"{statistics.median(r.req_per_s for r in par):.0f} | "
            f"{statistics.median(r.p50_ms for r in par):.2f} / "
            f"{statistics.median(r.p95_ms for r in par):.2f} | "
            f"{cpu(seq)} / {cpu(par)} | {errors} |"
        )
    if out["litellm_failed"]:
        lines += ["", "LiteLLM did not start: " + json.dumps(out["litellm_failed"])]
    return "\n".join(lines)


async def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--peers", default="modelhost,litellm")
    parser.add_argument("--redis-url", default="redis://127.0.0.1:6379/0", help="'' to skip")
    parser.add_argument("--rpm", type=int, default=20, help="N: each burst is 3N")
    parser.add_argument("--bursts", type=int, default=5)
    parser.add_argument("--budget-usd", default="0.32", help="spending limit / max_budget")
    parser.add_argument("--budget-requests", type=int, default=200)
    parser.add_argument("--budget-runs", type=int, default=3)
    parser.add_argument("--prompt-price", default="10", help="USD per 1M prompt tokens")
    parser.add_argument("--completion-price", default="1000", help="USD per 1M completion tokens")
    parser.add_argument("--max-tokens", type=int, default=16)
    parser.add_argument("--requests", type=int, default=300, help="per caller, level and round")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--settle-s", type=float, default=2.0, help="waits for directory polls")
    parser.add_argument("--litellm-python", default="/work/litellm-venv/bin/python")
    parser.add_argument(
        "--litellm-mode",
        choices=("auto", "db", "memory"),
        default="auto",
        help="auto: with its database (virtual keys) when it starts with one, else in memory",
    )
    parser.add_argument("--litellm-db", default="litellm_bench")
    parser.add_argument("--label", default="")
    parser.add_argument("--out", default=None)
    args = parser.parse_args()
    peers = args.peers.split(",")
    stamp = time.strftime("%Y%m%d-%H%M%S")
    # Server logs are for debugging a run, not results: keep them out of the repository.
    work = Path(tempfile.mkdtemp(prefix=f"bench-limits-{stamp}-"))
    out: dict[str, Any] = {
        "rate": [],
        "budget": [],
        "overhead": [],
        "litellm_mode": None,
        "litellm_failed": {},
    }
    started = time.monotonic()
    (work / "memory").mkdir()
    await run_modelhost("modelhost, memory", work / "memory", args, "", "", out, "litellm" in peers)
    if args.redis_url:
        prefix = f"bench-limits-{stamp}-{os.getpid()}:"
        (work / "redis").mkdir()
        try:
            await run_modelhost(
                "modelhost, Redis", work / "redis", args, args.redis_url, prefix, out, False
            )
        finally:
            print(f"redis: deleted {clean_redis(args.redis_url, prefix)} keys", file=sys.stderr)
    report = {
        "benchmark": "limits under concurrency (issue 12)",
        "time": stamp,
        "label": args.label,
        "args": vars(args),
        "request_cost_usd": str(request_cost(args)),
        "cpus": os.cpu_count(),
        "load_average": os.getloadavg(),
        "wall_s": round(time.monotonic() - started, 1),
        "litellm_mode": out["litellm_mode"],
        "litellm_failed": out["litellm_failed"],
        "rate": out["rate"],
        "budget": out["budget"],
        "overhead": [asdict(r) for r in out["overhead"]],
    }
    path = Path(args.out) if args.out else ROOT / "bench" / "results" / f"limits-{stamp}.json"
    path.write_text(json.dumps(report, indent=2))
    print(tables(out))
    print(f"results: {path} (server logs: {work}; {report['wall_s']} s)")


def _terminate(signum: int, frame: Any) -> None:
    raise SystemExit(f"stopped by signal {signum}")  # unwinds, so the servers are stopped


if __name__ == "__main__":
    signal.signal(signal.SIGTERM, _terminate)
    uvloop.run(main())
