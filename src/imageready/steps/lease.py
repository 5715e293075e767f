"""The lease: one tag on the VM, written with If-Match on the VM's etag, so two pipelines never act
on one VM at once. It carries the run id, the host and pid, who, and an expiry; it is renewed as
steps progress and released at the end. An expired lease, or one whose holder is a dead process on
this very host, is taken over loudly."""

from __future__ import annotations

import datetime as dt
import os
import socket
from dataclasses import dataclass

LEASE_TAG = "imageready-lease"


@dataclass(frozen=True)
class Lease:
    run_id: str
    host: str
    pid: int
    who: str
    until: dt.datetime

    def render(self) -> str:
        """The tag value (Azure allows 256 characters)."""
        until = self.until.astimezone(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
        text = f"run={self.run_id} host={self.host} pid={self.pid} until={until} by={self.who}"
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
        return f"run {self.run_id} by {self.who} on {self.host} (pid {self.pid}) until {until}"


def new_lease(run_id: str, who: str, ttl: dt.timedelta, now: dt.datetime | None = None) -> Lease:
    moment = now or dt.datetime.now(dt.UTC)
    short_who = "".join(ch for ch in who if ch.isalnum() or ch in "@._-")[:60] or "unknown"
    return Lease(run_id, socket.gethostname(), os.getpid(), short_who, moment + ttl)
