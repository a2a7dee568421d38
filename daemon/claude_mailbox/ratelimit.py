"""Token buckets by key: per sender (a looping agent cannot flood a peer), and, in limits.py, per
connection peer and one global bucket (rotating the claimed sender name does not help)."""

from __future__ import annotations

import time

from claude_mailbox.errors import RateLimited

_MAX_TRACKED_SENDERS = 100_000


class RateLimiter:
    def __init__(
        self,
        per_minute: int,
        message: str = "{key!r} is sending faster than {limit} messages a minute",
        *,
        window_seconds: float = 60.0,
    ) -> None:
        """`per_minute` tokens per `window_seconds` (a minute unless told otherwise)."""
        self.message = message  # "{key}" and "{limit}" are filled in
        self.capacity = float(per_minute)
        self.refill_per_second = per_minute / window_seconds
        self._buckets: dict[str, tuple[float, float]] = {}  # sender -> (tokens, updated at)

    def take(self, sender: str) -> None:
        """Spend one token for `sender` or raise RateLimited saying when to retry."""
        now = time.monotonic()
        tokens, updated = self._buckets.get(sender, (self.capacity, now))
        tokens = min(self.capacity, tokens + (now - updated) * self.refill_per_second)
        if tokens < 1.0:
            retry_after = (1.0 - tokens) / self.refill_per_second
            self._buckets[sender] = (tokens, now)
            raise RateLimited(
                self.message.format(key=sender, limit=int(self.capacity)) + f"; retry in {retry_after:.1f} s",
                retry_after=retry_after,
            )
        if len(self._buckets) >= _MAX_TRACKED_SENDERS and sender not in self._buckets:
            self._forget_full_buckets(now)
        self._buckets[sender] = (tokens - 1.0, now)

    def _forget_full_buckets(self, now: float) -> None:
        """Bound memory: a bucket that has refilled completely carries no information."""
        full_after = self.capacity / self.refill_per_second
        self._buckets = {s: v for s, v in self._buckets.items() if now - v[1] < full_after}
