"""Pacing ARM requests by what Azure says is left, so a large fleet is not answered with 429s.

Azure Resource Manager throttles each subscription and principal with token buckets, one per kind
of operation (reads, writes, deletes), and reports on every answer how many requests are left:
``x-ms-ratelimit-remaining-subscription-reads`` (``-writes``, ``-deletes``; the tenant's and the
resource provider's likewise). An empty bucket answers 429 with ``Retry-After``
(learn.microsoft.com/azure/azure-resource-manager/management/request-limits-and-throttling).

:class:`ArmPacer` mirrors each bucket on this side: it takes what the last answer reported, refills
it at the rate Azure documents, and makes a request wait for a token once the mirror is down to
a reserve, instead of sending it into an empty bucket. A 429 empties the mirror, halves the refill
rate assumed (a bucket that refills slower than documented, e.g. a trial subscription's) and holds
every request of that kind until its ``Retry-After`` has passed (azure-core's retry policy then
retries the one that was refused). Until an answer carries the header, nothing waits.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass

#: the HTTP methods ARM counts as each kind of request
KIND_OF_METHOD = {"GET": "reads", "HEAD": "reads", "DELETE": "deletes"}
#: refill per second of the subscription buckets, as Microsoft documents them (reads 250 + 25/s,
#: writes 200 + 10/s, deletes 200 + 10/s per subscription, principal and region)
DOCUMENTED_REFILL = {"reads": 25.0, "writes": 10.0, "deletes": 10.0}
#: the remaining-headers read, most specific scope first (the lowest one decides)
HEADER_SCOPES = ("subscription", "tenant")
#: tokens kept in reserve: requests already on their way when an answer reported the count
RESERVE = 8


def request_kind(method: str) -> str:
    return KIND_OF_METHOD.get(method.upper(), "writes")


@dataclass
class _Bucket:
    refill: float
    tokens: float = float("inf")  # unknown until an answer reports it
    stamp: float = 0.0
    blocked_until: float = 0.0


class ArmPacer:
    """Client-side mirror of ARM's buckets for one subscription and principal; thread-safe."""

    def __init__(
        self,
        refill: Mapping[str, float] | None = None,
        *,
        reserve: int = RESERVE,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        rates = {**DOCUMENTED_REFILL, **(refill or {})}
        self._buckets = {kind: _Bucket(rate) for kind, rate in rates.items()}
        self._reserve = reserve
        self._clock = clock
        self._sleep = sleep
        self._lock = threading.Lock()
        #: how often requests waited, and for how long in all (for progress and benchmarks)
        self.waits = 0
        self.waited = 0.0
        self.throttled = 0

    def _refill(self, bucket: _Bucket, now: float) -> None:
        if bucket.tokens != float("inf"):
            bucket.tokens += (now - bucket.stamp) * bucket.refill
        bucket.stamp = now

    def before(self, method: str) -> None:
        """Take a token for a request, waiting while the mirror holds no more than the reserve."""
        bucket = self._buckets[request_kind(method)]
        while True:
            with self._lock:
                now = self._clock()
                self._refill(bucket, now)
                wait = bucket.blocked_until - now
                if wait <= 0 and bucket.tokens > self._reserve:
                    bucket.tokens -= 1
                    return
                if wait <= 0:
                    wait = (self._reserve + 1 - bucket.tokens) / bucket.refill
                    bucket.tokens -= 1  # this request's token, claimed now: the next one waits longer
                    self.waits += 1
                    self.waited += wait
                    claimed = True
                else:
                    claimed = False
            self._sleep(wait)
            if claimed:
                return

    def after(self, method: str, status: int, headers: Mapping[str, str]) -> None:
        """Read what an answer says is left (and a 429's Retry-After)."""
        kind = request_kind(method)
        bucket = self._buckets[kind]
        reported = []
        for scope in HEADER_SCOPES:
            value = headers.get(f"x-ms-ratelimit-remaining-{scope}-{kind}")
            if value is not None and value.strip().isdigit():
                reported.append(int(value))
        with self._lock:
            now = self._clock()
            self._refill(bucket, now)
            if reported:
                bucket.tokens = min(bucket.tokens, float(min(reported)))
            if status == 429:
                self.throttled += 1
                bucket.tokens = min(bucket.tokens, 0.0)
                # refused although the mirror had tokens: the bucket refills slower than assumed
                bucket.refill = max(1.0, bucket.refill / 2)
                retry_after = _seconds(headers.get("Retry-After"))
                bucket.blocked_until = max(bucket.blocked_until, now + retry_after)


def _seconds(value: str | None) -> float:
    """Retry-After in seconds (ARM sends whole seconds); 1 when absent or unreadable."""
    try:
        return max(0.0, float(value)) if value is not None else 1.0
    except ValueError:
        return 1.0
