"""Throttling of failed authentications per client address, in memory and bounded.

Each address has a bucket of `burst` failures that refills one failure per `refill_s`. With the
bucket empty, a request from that address whose token is not known to be good is answered 429
without being checked, so a guesser learns nothing until the bucket refills. A token that
authenticated successfully (from any address) within `known_ttl_s` is known to be good and is
never throttled: a client whose own token works keeps working next to a guesser behind the
same address. A valid token that has not been used recently is treated like a guess while its
address is throttled; telling it apart would require checking it, which is the answer a
guesser wants.
"""

from __future__ import annotations

import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass

MAX_CLIENTS = 10_000
MAX_KNOWN_TOKENS = 10_000
KNOWN_TTL_S = 3600.0


@dataclass
class _Bucket:
    failures_left: float
    at: float


class AuthThrottle:
    def __init__(
        self,
        burst: int,
        refill_s: float,
        *,
        max_clients: int = MAX_CLIENTS,
        max_known: int = MAX_KNOWN_TOKENS,
        known_ttl_s: float = KNOWN_TTL_S,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.burst = burst
        self.refill_s = refill_s
        self._max_clients = max_clients
        self._max_known = max_known
        self._known_ttl_s = known_ttl_s
        self._clock = clock
        self._lock = threading.Lock()
        self._clients: OrderedDict[str, _Bucket] = OrderedDict()
        self._known: OrderedDict[str, float] = OrderedDict()

    @property
    def enabled(self) -> bool:
        return self.burst > 0

    def retry_after(self, address: str, token_digest: str) -> float | None:
        """Seconds until `address` may try an unknown token again, or None if it may now."""
        if not self.enabled:
            return None
        with self._lock:
            now = self._clock()
            expires = self._known.get(token_digest)
            if expires is not None and expires > now:
                return None
            bucket = self._refilled(address, now)
            if bucket is None or bucket.failures_left >= 1:
                return None
            return (1 - bucket.failures_left) * self.refill_s

    def failed(self, address: str) -> None:
        if not self.enabled:
            return
        with self._lock:
            now = self._clock()
            bucket = self._refilled(address, now) or _Bucket(float(self.burst), now)
            bucket.failures_left = max(0.0, bucket.failures_left - 1)
            self._clients[address] = bucket
            self._clients.move_to_end(address)
            while len(self._clients) > self._max_clients:
                # The least recently failing address goes first: it is the closest to full.
                self._clients.popitem(last=False)

    def succeeded(self, token_digest: str) -> None:
        if not self.enabled:
            return
        with self._lock:
            self._known[token_digest] = self._clock() + self._known_ttl_s
            self._known.move_to_end(token_digest)
            while len(self._known) > self._max_known:
                self._known.popitem(last=False)

    def _refilled(self, address: str, now: float) -> _Bucket | None:
        bucket = self._clients.get(address)
        if bucket is None:
            return None
        bucket.failures_left = min(
            float(self.burst), bucket.failures_left + (now - bucket.at) / self.refill_s
        )
        bucket.at = now
        if bucket.failures_left >= self.burst:
            # Full again: nothing to remember about this address.
            del self._clients[address]
            return None
        return bucket
