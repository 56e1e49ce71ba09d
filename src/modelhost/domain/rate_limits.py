"""Rate limits: requests and tokens per minute, counted over a sliding 60-second window.

A limit applies to one *key* (a caller on a deployment, a user, an API token). A request is
admitted when, on every key it counts against, fewer than `rpm` requests were admitted in the
last 60 s and fewer than `tpm` tokens were used; admitting it counts it on every key at once
(all or nothing: a request refused by one key is counted on none). Tokens are known only when
the answer is complete, so they are added then (`add_tokens`) and bound the next requests: a
request is admitted while the window's tokens are under `tpm`, as OpenAI's own limits read.

`WindowCounter` is the in-memory implementation (one gateway process); the Redis one
(gateway/redis_limits.py) runs the same rules in one Lua script, so that several gateway
processes share the counts. Times are seconds on an injected clock.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

WINDOW_S = 60.0


@dataclass(frozen=True)
class RateLimits:
    """Requests and tokens per minute; None: no limit of that kind."""

    rpm: int | None = None
    tpm: int | None = None

    @property
    def any(self) -> bool:
        return self.rpm is not None or self.tpm is not None

    @classmethod
    def from_json(cls, raw: object) -> RateLimits | None:
        """The stored `{"rpm", "tpm"}` (absent, null or empty: None)."""
        if not isinstance(raw, Mapping):
            return None
        rpm, tpm = raw.get("rpm"), raw.get("tpm")
        limits = cls(int(rpm) if rpm is not None else None, int(tpm) if tpm is not None else None)
        return limits if limits.any else None

    def to_json(self) -> dict[str, int | None]:
        return {"rpm": self.rpm, "tpm": self.tpm}


def validate_limits(raw: Any) -> RateLimits | None:
    """A request's `rate_limits` body: null or `{"rpm": int >= 1 | null, "tpm": ...}`. Raises
    ValueError (with the field) for anything else."""
    if raw is None:
        return None
    if not isinstance(raw, Mapping):
        raise ValueError("rate_limits must be an object {rpm, tpm} or null")
    unknown = set(raw) - {"rpm", "tpm"}
    if unknown:
        raise ValueError(f"rate_limits has unknown fields: {', '.join(sorted(unknown))}")
    values: dict[str, int | None] = {}
    for name in ("rpm", "tpm"):
        value = raw.get(name)
        if value is not None and (isinstance(value, bool) or not isinstance(value, int)):
            raise ValueError(f"rate_limits.{name} must be an integer or null")
        if value is not None and value < 1:
            raise ValueError(f"rate_limits.{name} must be at least 1")
        values[name] = value
    limits = RateLimits(values["rpm"], values["tpm"])
    return limits if limits.any else None


@dataclass(frozen=True)
class Check:
    """One key a request counts against, with the limits that apply there."""

    key: str
    limits: RateLimits


@dataclass(frozen=True)
class KeyState:
    """A key's window as admission saw it (after counting the request, when admitted)."""

    requests: int
    tokens: int


@dataclass(frozen=True)
class Decision:
    admitted: bool
    # When the refused request could be admitted (seconds); 0 when admitted.
    retry_after_s: float
    # Per check, in the order given.
    states: tuple[KeyState, ...]

    def headers(self, checks: Sequence[Check]) -> dict[str, str]:
        """The `x-ratelimit-*` headers: for requests and for tokens, the tightest limit that
        applies (least remaining). Empty when no check limits that kind. (A refusal's
        Retry-After is `retry_after_s`, sent with the error.)"""
        out: dict[str, str] = {}
        pairs = list(zip(checks, self.states, strict=True))
        requests = [(c.limits.rpm, s.requests) for c, s in pairs]
        tokens = [(c.limits.tpm, s.tokens) for c, s in pairs]
        for kind, counts in (("requests", requests), ("tokens", tokens)):
            limited = [(limit - used, limit) for limit, used in counts if limit is not None]
            if limited:
                remaining, limit = min(limited)
                out[f"x-ratelimit-limit-{kind}"] = str(limit)
                out[f"x-ratelimit-remaining-{kind}"] = str(max(0, remaining))
        return out


@dataclass
class _Window:
    requests: deque[float] = field(default_factory=deque)
    tokens: deque[tuple[float, int]] = field(default_factory=deque)
    token_sum: int = 0

    def expire(self, now: float) -> None:
        cutoff = now - WINDOW_S
        while self.requests and self.requests[0] <= cutoff:
            self.requests.popleft()
        while self.tokens and self.tokens[0][0] <= cutoff:
            self.token_sum -= self.tokens.popleft()[1]

    def tokens_free_at(self, tpm: int) -> float:
        """When enough used tokens leave the window for the sum to be under `tpm`."""
        left = self.token_sum
        for at, n in self.tokens:
            left -= n
            if left < tpm:
                return at + WINDOW_S
        return 0.0


class WindowCounter:
    """Sliding-window counts in memory. Not thread-safe: the gateway calls it on its event
    loop only."""

    def __init__(self) -> None:
        self._windows: dict[str, _Window] = {}
        self._swept_at = 0.0

    def _window(self, key: str, now: float) -> _Window:
        w = self._windows.get(key)
        if w is None:
            w = self._windows[key] = _Window()
        w.expire(now)
        return w

    def admit(self, checks: Sequence[Check], now: float) -> Decision:
        windows = [self._window(c.key, now) for c in checks]
        admitted, retry = True, 0.0
        for c, w in zip(checks, windows, strict=True):
            rpm, tpm = c.limits.rpm, c.limits.tpm
            if rpm is not None and len(w.requests) >= rpm:
                # The oldest of the last `rpm` requests leaves the window first.
                admitted = False
                retry = max(retry, w.requests[len(w.requests) - rpm] + WINDOW_S - now)
            if tpm is not None and w.token_sum >= tpm:
                admitted = False
                retry = max(retry, w.tokens_free_at(tpm) - now)
        if admitted:
            for w in windows:
                w.requests.append(now)
        states = tuple(KeyState(len(w.requests), w.token_sum) for w in windows)
        self._forget_idle(now)
        return Decision(admitted, max(0.0, retry), states)

    def add_tokens(self, checks: Sequence[Check], tokens: int, now: float) -> None:
        if tokens <= 0:
            return
        for c in checks:
            w = self._window(c.key, now)
            w.tokens.append((now, tokens))
            w.token_sum += tokens

    def _forget_idle(self, now: float) -> None:
        """Bounded memory: once a window's length, drop the keys with nothing in theirs."""
        if now - self._swept_at < WINDOW_S:
            return
        self._swept_at = now
        idle = []
        for key, w in self._windows.items():
            w.expire(now)
            if not w.requests and not w.tokens:
                idle.append(key)
        for key in idle:
            del self._windows[key]
