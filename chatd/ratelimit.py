"""
Token buckets, driven by the time the caller passes in (no clock of their
own), so tests check exact refill behaviour without sleeping.
"""

from __future__ import annotations


class TokenBucket:
    """
    ``rate`` tokens a second, at most ``burst`` saved up; it starts full.
    Each allowed action takes one token.
    """

    __slots__ = ("rate", "burst", "tokens", "updated")

    def __init__(self, rate: float, burst: float, now: float) -> None:
        if rate <= 0 or burst < 1:
            raise ValueError("a bucket needs rate > 0 and burst >= 1")
        self.rate = rate
        self.burst = float(burst)
        self.tokens = float(burst)
        self.updated = now

    def _refill(self, now: float) -> None:
        elapsed = now - self.updated
        if elapsed > 0:
            self.tokens = min(self.burst, self.tokens + elapsed * self.rate)
            self.updated = now

    def take(self, now: float) -> float:
        """
        Take a token: 0.0 if one was there, else the seconds until one will
        be (nothing is taken then).
        """
        self._refill(now)
        if self.tokens >= 1:
            self.tokens -= 1
            return 0.0
        return (1 - self.tokens) / self.rate

    def charge(self, tokens: float, now: float) -> None:
        """Take ``tokens`` whether or not they are there (a cost known only
        afterwards): the bucket may go below empty, and refills from there."""
        self._refill(now)
        self.tokens -= tokens

    def full(self, now: float) -> bool:
        """Whether the bucket has refilled completely (it can be forgotten)."""
        self._refill(now)
        return self.tokens >= self.burst
