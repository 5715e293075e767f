"""The lease: one tag on the VM, written with If-Match on the VM's etag, so two pipelines never act
on one VM at once. It carries the run id, the host and pid, who, and an expiry; it is renewed as
steps progress and released at the end. An expired lease, or one whose holder is a dead process on
this very host, is taken over loudly.

A generalized VM takes no change at all, tags included, so the last write before ``generalize``
turns the lease *final*: it can be neither renewed nor released afterwards, its expiry covers what
its run still does (generalize, verify, and the capture it names in ``then``), and it binds another
run only while that work is pending (docs/actions.md, "After generalize")."""

from __future__ import annotations

import datetime as dt
import hashlib
import os
import socket
from dataclasses import dataclass

LEASE_TAG = "imageready-lease"
#: ``then=`` of a final lease whose run captures nothing
THEN_NOTHING = "none"


def capture_claim(artifact_id: str) -> str:
    """``then=`` of a final lease whose run captures ``artifact_id``: a short digest, so that the tag
    stays within Azure's 256 characters whatever the gallery and image names."""
    return "capture:" + hashlib.sha256(artifact_id.lower().encode()).hexdigest()[:12]


@dataclass(frozen=True)
class Lease:
    run_id: str
    host: str
    pid: int
    who: str
    until: dt.datetime
    #: a final lease (written just before generalize): ``none`` or ``capture:<digest>``; "" otherwise
    then: str = ""

    @property
    def final(self) -> bool:
        return bool(self.then)

    def render(self) -> str:
        """The tag value (Azure allows 256 characters; ``then`` goes first so it is never cut)."""
        until = self.until.astimezone(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
        then = f" then={self.then}" if self.then else ""
        text = f"run={self.run_id}{then} host={self.host} pid={self.pid} until={until} by={self.who}"
        return text[:256]

    @classmethod
    def parse(cls, value: str | None) -> Lease | None:
        if not value:
            return None
        fields = dict(part.split("=", 1) for part in value.split() if "=" in part)
        try:
            until = dt.datetime.strptime(fields["until"], "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=dt.UTC)
            return cls(
                fields["run"],
                fields.get("host", "?"),
                int(fields.get("pid", "0")),
                fields.get("by", "?"),
                until,
                fields.get("then", ""),
            )
        except (KeyError, ValueError):
            # unreadable: treat as held until someone looks (fail closed), never silently ignored
            return cls("unknown", "?", 0, value[:60], dt.datetime.max.replace(tzinfo=dt.UTC))

    def expired(self, now: dt.datetime) -> bool:
        return now >= self.until

    def holder_dead_here(self) -> bool:
        """The holder ran on this host and its process is gone (a crashed run of ours)."""
        if self.host != socket.gethostname() or self.pid <= 0:
            return False
        try:
            os.kill(self.pid, 0)
        except ProcessLookupError:
            return True
        except PermissionError:
            return False
        return False

    def describe(self) -> str:
        until = self.until.astimezone(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
        final = ""
        if self.then == THEN_NOTHING:
            final = " (final: generalizing, no capture)"
        elif self.then:
            final = f" (final: generalizing, then {self.then})"
        return f"run {self.run_id} by {self.who} on {self.host} (pid {self.pid}) until {until}{final}"


def new_lease(
    run_id: str, who: str, ttl: dt.timedelta, now: dt.datetime | None = None, *, then: str = ""
) -> Lease:
    moment = now or dt.datetime.now(dt.UTC)
    short_who = "".join(ch for ch in who if ch.isalnum() or ch in "@._-")[:60] or "unknown"
    return Lease(run_id, socket.gethostname(), os.getpid(), short_who, moment + ttl, then)
