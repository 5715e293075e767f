"""ARM's request limits: token buckets per subscription and principal, as Azure documents them.

Microsoft, "Understand how Azure Resource Manager throttles requests" (section "Regional throttling
and token bucket algorithm"): per subscription, service principal and kind of operation a bucket
of 250 reads refilled at 25 a second, 200 writes and 200 deletes refilled at 10 a second; the
same per tenant for requests without a subscription; and a global subscription bucket 15 times
the principal's, shared by every principal. Each answer says what is left in
``x-ms-ratelimit-remaining-subscription-<kind>`` (``-tenant-<kind>``); an empty bucket answers
429 with ``Retry-After``. A scenario turns this off (``throttling: off``) or sets other numbers.
"""

from __future__ import annotations

import math
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

KINDS = ("reads", "writes", "deletes")
#: (bucket size, refill per second) per kind, from Microsoft's page
AZURE_LIMITS: dict[str, tuple[float, float]] = {"reads": (250, 25), "writes": (200, 10), "deletes": (200, 10)}
#: the global subscription bucket is this many times the principal's
GLOBAL_FACTOR = 15


class ThrottlingError(ValueError):
    """A scenario's ``throttling`` value that cannot be used."""


def request_kind(method: str) -> str:
    method = method.upper()
    if method in ("GET", "HEAD"):
        return "reads"
    return "deletes" if method == "DELETE" else "writes"


@dataclass(frozen=True)
class Limits:
    """(bucket, refill per second) per kind; ``enabled`` False turns throttling off."""

    enabled: bool = True
    reads: tuple[float, float] = AZURE_LIMITS["reads"]
    writes: tuple[float, float] = AZURE_LIMITS["writes"]
    deletes: tuple[float, float] = AZURE_LIMITS["deletes"]

    def of(self, kind: str) -> tuple[float, float]:
        found: tuple[float, float] = getattr(self, kind)
        return found


def parse_limits(value: Any, where: str = "throttling") -> Limits:
    """``azure`` (the default: Microsoft's numbers), ``off``, or a mapping of kinds to
    ``{bucket: N, refill: R}`` (kinds left out keep Azure's numbers)."""
    if value is None or value == "azure":
        return Limits()
    if value in ("off", False):
        return Limits(enabled=False)
    if not isinstance(value, Mapping):
        raise ThrottlingError(f"{where}: expected azure, off or a mapping of {', '.join(KINDS)}")
    found: dict[str, tuple[float, float]] = {}
    for kind, entry in value.items():
        if kind not in KINDS:
            raise ThrottlingError(f"{where}.{kind}: unknown kind (expected {', '.join(KINDS)})")
        if not isinstance(entry, Mapping) or set(entry) != {"bucket", "refill"}:
            raise ThrottlingError(f"{where}.{kind}: expected {{bucket: N, refill: PER_SECOND}}")
        bucket, refill = entry["bucket"], entry["refill"]
        for name, number in (("bucket", bucket), ("refill", refill)):
            if isinstance(number, bool) or not isinstance(number, int | float) or number <= 0:
                raise ThrottlingError(f"{where}.{kind}.{name}: expected a positive number, got {number!r}")
        found[kind] = (float(bucket), float(refill))
    return Limits(True, **found)


class Throttled(Exception):
    def __init__(self, kind: str, retry_after: int) -> None:
        super().__init__(kind)
        self.kind = kind
        self.retry_after = retry_after


class _Bucket:
    def __init__(self, size: float, refill: float, now: float) -> None:
        self.size, self.refill = size, refill
        self.tokens, self.stamp = size, now

    def level(self, now: float) -> float:
        self.tokens = min(self.size, self.tokens + (now - self.stamp) * self.refill)
        self.stamp = now
        return self.tokens

    def wait(self) -> int:
        """Whole seconds until one token is back (ARM's Retry-After is in seconds)."""
        return max(1, math.ceil((1 - self.tokens) / self.refill))


class Throttle:
    """Every bucket of one azsim; thread-safe."""

    def __init__(self, limits: Limits, clock: Callable[[], float] = time.monotonic) -> None:
        self.limits = limits
        self._clock = clock
        self._lock = threading.Lock()
        self._buckets: dict[tuple[str, ...], _Bucket] = {}

    def _bucket(self, key: tuple[str, ...], kind: str, factor: float, now: float) -> _Bucket:
        bucket = self._buckets.get(key)
        if bucket is None:
            size, refill = self.limits.of(kind)
            bucket = self._buckets[key] = _Bucket(size * factor, refill * factor, now)
        return bucket

    def take(self, method: str, subscription: str | None, principal: str) -> dict[str, str]:
        """Spend one token of the request's buckets and return the remaining-headers; raise
        :class:`Throttled` (nothing spent) when one of them is empty."""
        if not self.limits.enabled:
            return {}
        kind = request_kind(method)
        scope = "subscription" if subscription else "tenant"
        with self._lock:
            now = self._clock()
            buckets = [self._bucket((scope, subscription or "", principal, kind), kind, 1, now)]
            if subscription:
                buckets.append(self._bucket(("global", subscription, kind), kind, GLOBAL_FACTOR, now))
            for bucket in buckets:
                if bucket.level(now) < 1:
                    raise Throttled(kind, bucket.wait())
            for bucket in buckets:
                bucket.tokens -= 1
            left = min(int(bucket.tokens) for bucket in buckets)
        return {f"x-ms-ratelimit-remaining-{scope}-{kind}": str(left)}
