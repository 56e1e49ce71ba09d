"""Rate-limit windows and the spending ledger in Redis, shared by every gateway process that
sets the same `MODELHOST_REDIS_URL` (the one adapter to Redis).

Each operation is one Lua script, so it is atomic in Redis however many processes call at once,
and the clock is Redis's own (`TIME`), so processes on hosts whose clocks differ still agree.
The rules are those of the in-memory versions (domain/rate_limits.py, domain/spending.py);
every key starts with the server's `redis_key_prefix`:

- a rate-limit key is two sorted sets: admitted requests (member: the request id, score: ms)
  and used tokens (member `<request id>:<tokens>`, with their running total in `<key>:sum`, so
  admission reads only the entries leaving the window), trimmed to the last 60 s and expiring
  with the window;
- a month's ledger is one hash `spend:<month>` with `<user>:g` (GPU cost, set from the
  database), `<user>:t` (token cost: seeded from the database once per month, then counted here);
  reservations are one hash per user (`resv:<user>`, request id -> cost) with a sorted set
  of their deadlines, so that a reservation of a gateway process that crashed is dropped once
  no request could still be running, instead of holding the user's money for good.
"""

from __future__ import annotations

import functools
from collections.abc import Awaitable, Callable, Mapping, Sequence
from typing import Any, TypeVar, cast

import redis.asyncio as aioredis
from redis.exceptions import RedisError

from modelhost.domain.rate_limits import WINDOW_S, Check, Decision, KeyState
from modelhost.domain.spending import Standing
from modelhost.errors import Unavailable

F = TypeVar("F", bound=Callable[..., Awaitable[Any]])

# A month's ledger outlives its month by this much (late settlements, invoices read the DB).
_MONTH_TTL_MS = 40 * 24 * 3600 * 1000

_NOW = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
"""

_ADMIT = (
    _NOW
    + """
local win = tonumber(ARGV[1])
local member = ARGV[2]
local n = #KEYS / 2
local counts, used = {}, {}
local admitted, retry = 1, 0
for i = 1, n do
  local rk, tk = KEYS[2 * i - 1], KEYS[2 * i]
  local rpm, tpm = tonumber(ARGV[2 * i + 1]), tonumber(ARGV[2 * i + 2])
  redis.call('ZREMRANGEBYSCORE', rk, '-inf', now - win)
  local c = redis.call('ZCARD', rk)
  -- The window's tokens as a running total (`<tk>:sum`): only entries leaving it are read.
  local gone = redis.call('ZRANGEBYSCORE', tk, '-inf', now - win)
  if #gone > 0 then
    local n_gone = 0
    for _, m in ipairs(gone) do n_gone = n_gone + tonumber(string.match(m, ':(%d+)$')) end
    redis.call('ZREMRANGEBYSCORE', tk, '-inf', now - win)
    redis.call('DECRBY', tk .. ':sum', n_gone)
  end
  local u = tonumber(redis.call('GET', tk .. ':sum') or '0')
  if u < 0 or redis.call('EXISTS', tk) == 0 then u = 0 end
  counts[i], used[i] = c, u
  if rpm >= 0 and c >= rpm then
    admitted = 0
    local oldest = redis.call('ZRANGE', rk, c - rpm, c - rpm, 'WITHSCORES')
    retry = math.max(retry, tonumber(oldest[2]) + win - now)
  end
  if tpm >= 0 and u >= tpm then
    admitted = 0
    local left = u
    local entries = redis.call('ZRANGE', tk, 0, -1, 'WITHSCORES')
    for j = 1, #entries, 2 do
      left = left - tonumber(string.match(entries[j], ':(%d+)$'))
      if left < tpm then
        retry = math.max(retry, tonumber(entries[j + 1]) + win - now)
        break
      end
    end
  end
end
if admitted == 1 then
  retry = 0
  for i = 1, n do
    redis.call('ZADD', KEYS[2 * i - 1], now, member)
    redis.call('PEXPIRE', KEYS[2 * i - 1], win)
    counts[i] = counts[i] + 1
  end
end
local out = {admitted, retry}
for i = 1, n do
  out[#out + 1] = counts[i]
  out[#out + 1] = used[i]
end
return out
"""
)

_ADD_TOKENS = (
    _NOW
    + """
for i = 1, #KEYS do
  if redis.call('EXISTS', KEYS[i]) == 0 then redis.call('DEL', KEYS[i] .. ':sum') end
  redis.call('ZADD', KEYS[i], now, ARGV[2] .. ':' .. ARGV[3])
  redis.call('INCRBY', KEYS[i] .. ':sum', ARGV[3])
  redis.call('PEXPIRE', KEYS[i], ARGV[1])
  redis.call('PEXPIRE', KEYS[i] .. ':sum', ARGV[1])
end
return 1
"""
)

# KEYS: month hash, reservations hash, deadlines zset. ARGV: user, limit (-1: none), cost,
# request id, deadline ms from now, month ttl ms.
_RESERVE = (
    _NOW
    + """
local user, limit, cost = ARGV[1], tonumber(ARGV[2]), tonumber(ARGV[3])
local expired = redis.call('ZRANGEBYSCORE', KEYS[3], '-inf', now)
for _, id in ipairs(expired) do redis.call('HDEL', KEYS[2], id) end
redis.call('ZREMRANGEBYSCORE', KEYS[3], '-inf', now)
local reserved = 0
for _, v in ipairs(redis.call('HVALS', KEYS[2])) do reserved = reserved + tonumber(v) end
local g = tonumber(redis.call('HGET', KEYS[1], user .. ':g') or '0')
local t = tonumber(redis.call('HGET', KEYS[1], user .. ':t') or '0')
local spent = g + t
if limit >= 0 and (spent >= limit or spent + reserved + cost > limit) then
  return {0, g, t, reserved}
end
if cost > 0 then
  redis.call('HSET', KEYS[2], ARGV[4], cost)
  redis.call('ZADD', KEYS[3], now + tonumber(ARGV[5]), ARGV[4])
  redis.call('PEXPIRE', KEYS[2], tonumber(ARGV[5]))
  redis.call('PEXPIRE', KEYS[3], tonumber(ARGV[5]))
end
return {1, g, t, reserved + cost}
"""
)

# KEYS: month hash, reservations hash, deadlines zset. ARGV: user, request id, actual, ttl ms.
_SETTLE = """
redis.call('HDEL', KEYS[2], ARGV[2])
redis.call('ZREM', KEYS[3], ARGV[2])
local actual = tonumber(ARGV[3])
if actual > 0 then
  redis.call('HINCRBY', KEYS[1], ARGV[1] .. ':t', actual)
  redis.call('PEXPIRE', KEYS[1], ARGV[4])
end
return 1
"""

# KEYS: month hash. ARGV: ttl ms, then user, micros pairs. Once per month (the `seeded` field).
_SEED = """
if redis.call('HEXISTS', KEYS[1], 'seeded') == 1 then return 0 end
for i = 2, #ARGV, 2 do redis.call('HINCRBY', KEYS[1], ARGV[i] .. ':t', ARGV[i + 1]) end
redis.call('HSET', KEYS[1], 'seeded', 1)
redis.call('PEXPIRE', KEYS[1], ARGV[1])
return 1
"""

_STANDING = """
local g = tonumber(redis.call('HGET', KEYS[1], ARGV[1] .. ':g') or '0')
local t = tonumber(redis.call('HGET', KEYS[1], ARGV[1] .. ':t') or '0')
local reserved = 0
for _, v in ipairs(redis.call('HVALS', KEYS[2])) do reserved = reserved + tonumber(v) end
return {g, t, reserved}
"""


# Connections per process: requests beyond it wait for one (briefly) instead of failing.
MAX_CONNECTIONS = 64
POOL_WAIT_S = 5.0


def connect(url: str) -> aioredis.Redis:
    pool = aioredis.BlockingConnectionPool.from_url(
        url, decode_responses=True, max_connections=MAX_CONNECTIONS, timeout=POOL_WAIT_S
    )
    return aioredis.Redis(connection_pool=pool)


def _unreachable() -> Unavailable:
    # The limits cannot be checked: refuse rather than serve past them.
    return Unavailable(
        "the limits store (Redis) is unreachable; retry shortly",
        code="limits_unavailable",
        retry_after=1,
    )


def _guarded(fn: F) -> F:
    @functools.wraps(fn)
    async def call(*args: Any, **kwargs: Any) -> Any:
        try:
            return await fn(*args, **kwargs)
        except RedisError:
            raise _unreachable() from None

    return cast(F, call)


class RedisRateCounter:
    def __init__(self, client: aioredis.Redis, prefix: str) -> None:
        self._r = client
        self._prefix = prefix
        self._admit = client.register_script(_ADMIT)
        self._add = client.register_script(_ADD_TOKENS)

    @_guarded
    async def admit(self, checks: Sequence[Check], request_id: str) -> Decision:
        keys: list[str] = []
        args: list[Any] = [int(WINDOW_S * 1000), request_id]
        for c in checks:
            keys += [f"{self._prefix}rl:{c.key}:r", f"{self._prefix}rl:{c.key}:t"]
            args += [_or_none(c.limits.rpm), _or_none(c.limits.tpm)]
        out = cast(list[int], await self._admit(keys=keys, args=args))
        states = tuple(KeyState(int(out[i]), int(out[i + 1])) for i in range(2, len(out), 2))
        return Decision(bool(out[0]), int(out[1]) / 1000, states)

    @_guarded
    async def add_tokens(self, checks: Sequence[Check], request_id: str, tokens: int) -> None:
        if tokens <= 0 or not checks:
            return
        keys = [f"{self._prefix}rl:{c.key}:t" for c in checks]
        await self._add(keys=keys, args=[int(WINDOW_S * 1000), request_id, tokens])


def _or_none(value: int | None) -> int:
    return -1 if value is None else value


class RedisSpendBook:
    def __init__(self, client: aioredis.Redis, prefix: str, reservation_ttl_s: float) -> None:
        self._r = client
        self._prefix = prefix
        self._ttl_ms = int(reservation_ttl_s * 1000)
        self._reserve = client.register_script(_RESERVE)
        self._settle = client.register_script(_SETTLE)
        self._seed = client.register_script(_SEED)
        self._standing = client.register_script(_STANDING)

    def _month(self, month: str) -> str:
        return f"{self._prefix}spend:{month}"

    def _keys(self, user_id: int, month: str) -> list[str]:
        return [
            self._month(month),
            f"{self._prefix}resv:{user_id}",
            f"{self._prefix}resv-deadline:{user_id}",
        ]

    @_guarded
    async def seeded(self, month: str) -> bool:
        return bool(await self._r.hexists(self._month(month), "seeded"))

    @_guarded
    async def seed(self, month: str, tokens: Mapping[int, int]) -> None:
        args: list[Any] = [_MONTH_TTL_MS]
        for user_id, micros in tokens.items():
            args += [user_id, micros]
        await self._seed(keys=[self._month(month)], args=args)

    @_guarded
    async def set_gpu(self, month: str, gpu: Mapping[int, int]) -> None:
        if not gpu:
            return
        key = self._month(month)
        async with self._r.pipeline(transaction=True) as pipe:
            pipe.hset(key, mapping={f"{u}:g": micros for u, micros in gpu.items()})
            pipe.pexpire(key, _MONTH_TTL_MS)
            await pipe.execute()

    @_guarded
    async def standing(self, user_id: int, month: str) -> Standing:
        keys = self._keys(user_id, month)
        g, t, r = cast(list[int], await self._standing(keys=[keys[0], keys[1]], args=[user_id]))
        return Standing(int(g), int(t), int(r))

    @_guarded
    async def reserve(
        self, user_id: int, month: str, limit: int | None, cost: int, request_id: str
    ) -> bool:
        args: list[Any] = [user_id, -1 if limit is None else limit, cost, request_id, self._ttl_ms]
        out = cast(list[int], await self._reserve(keys=self._keys(user_id, month), args=args))
        return bool(out[0])

    @_guarded
    async def settle(
        self, user_id: int, month: str, request_id: str, reserved: int, actual: int
    ) -> None:
        args: list[Any] = [user_id, request_id, actual, _MONTH_TTL_MS]
        await self._settle(keys=self._keys(user_id, month), args=args)
