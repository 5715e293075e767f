"""What a scan found, as the reports show it: redacted findings (the guest sent no secret, only
its shape and a keyed fingerprint), what the guest could not read or left out, whether the
chosen action removes each of them, and which unread paths waivers cover.
"""

from __future__ import annotations

import re
from collections.abc import Collection, Mapping
from dataclasses import dataclass, field
from pathlib import PurePosixPath
from typing import Any, Literal

from imageready.gate import Waiver, WaiverBook
from imageready.redact import one_line, redact
from imageready.text import printable

#: the check id of the sensitive-data scan (waivers name it)
SCAN_CHECK_ID = "IR-SCAN"
Action = Literal["waagent-deprovision+user", "sysprep", "none"]


@dataclass(frozen=True)
class DeprovisionContext:
    """What the chosen action will remove, from the facts (see :meth:`from_facts`)."""

    action: Action
    provisioned_user: str | None = None
    regenerate_host_keys: bool = False
    delete_root_password: bool = False
    #: the provisioned user's home (default /home/USER)
    provisioned_home: str | None = None
    #: waagent.conf Lib.Dir and Extension.LogDir
    lib_dir: str = "/var/lib/waagent"
    ext_log_dir: str = "/var/log/azure"

    @classmethod
    def from_facts(cls, facts: Mapping[str, Any], admin_user: str | None) -> DeprovisionContext:
        """Linux: ``waagent -deprovision+user`` as configured in ``/etc/waagent.conf``; it
        deletes the user only when ``ovf-env.xml`` is there. Windows: our sysprep step."""
        if facts.get("os_family") == "Windows":
            return cls(action="sysprep")
        conf = (facts.get("waagent") or {}).get("conf") or {}

        def yes(name: str) -> bool:
            return str(conf.get(name, "n")).strip().lower() in ("y", "yes", "true", "1")

        user = admin_user if facts.get("ovf_env_present") else None
        home = next(
            (u.get("home") for u in facts.get("users") or [] if user and u.get("name") == user),
            None,
        )
        return cls(
            action="waagent-deprovision+user",
            provisioned_user=user,
            regenerate_host_keys=yes("Provisioning.RegenerateSshHostKeyPair"),
            delete_root_password=yes("Provisioning.DeleteRootPassword"),
            provisioned_home=home,
            lib_dir=str(conf.get("Lib.Dir") or "/var/lib/waagent"),
            ext_log_dir=str(conf.get("Extension.LogDir") or "/var/log/azure"),
        )

    def removal(self, path: str, detail: str = "") -> str:
        """Why the action removes ``path`` ("" when it persists into the image)."""
        if self.action == "sysprep":
            lower = path.lower().replace("/", "\\")
            if re.match(r"^[a-z]:\\windows\\panther(\\|$)", lower):
                return "our sysprep step deletes C:\\Windows\\Panther"
            if re.match(r"^[a-z]:\\windows\\system32\\sysprep\\unattend\.xml$", lower):
                return "our sysprep step deletes Sysprep\\unattend.xml"
            return ""
        if self.action != "waagent-deprovision+user":
            return ""
        posix = PurePosixPath(path)
        for directory in (self.lib_dir, self.ext_log_dir):
            if posix.is_relative_to(directory):
                return f"waagent deletes {directory}"
        if path in ("/root/.bash_history", "/var/log/waagent.log"):
            return f"waagent deletes {path}"
        if self.regenerate_host_keys and re.match(r"^/etc/ssh/ssh_host_[^/]*key[^/]*$", path):
            return "waagent deletes SSH host keys (Provisioning.RegenerateSshHostKeyPair=y)"
        account = detail.removeprefix("account=") if detail.startswith("account=") else None
        if path == "/etc/shadow" and account is not None:
            if account == "root" and self.delete_root_password:
                return "waagent locks root (Provisioning.DeleteRootPassword=y)"
            if self.provisioned_user and account == self.provisioned_user:
                return f"waagent deletes the provisioned user {account}"
        if self.provisioned_user:
            home = self.provisioned_home or f"/home/{self.provisioned_user}"
            if posix.is_relative_to(home):
                return f"waagent deletes the provisioned user's home {home}"
        return ""


@dataclass(frozen=True)
class Finding:
    """One redacted finding. ``prefix`` is at most 4 characters; ``fingerprint`` is a keyed
    HMAC of the value (waive a finding by it)."""

    rule_id: str
    path: str
    line: int | None
    length: int | None
    prefix: str
    fingerprint: str
    removed_by_action: bool
    removal_note: str
    detail: str

    def summary(self) -> str:
        """One redacted line for reports."""
        where = self.path if self.line is None else f"{self.path}:{self.line}"
        shape = [f"len={self.length}"] if self.length is not None else []
        if self.prefix:
            shape.append(f"starts {self.prefix!r}")
        if self.detail:
            shape.append(self.detail)
        fate = f"removed: {self.removal_note}" if self.removed_by_action else "persists in image"
        line = f"[{self.rule_id}] {where} ({', '.join([*shape, f'fp {self.fingerprint}'])}) {fate}"
        return printable(line)  # a file name is the guest's: a line break in it stays one line


@dataclass(frozen=True)
class NotScanned:
    """A file or directory the guest could not read in full, and why (size bound, permission,
    I/O error, encoding, an archive past its bound, a mount hiding it, a listing error)."""

    path: str
    reason: str
    removal_note: str = ""  # the action removes it: it never reaches the image

    def summary(self) -> str:
        fate = f"removed: {self.removal_note}" if self.removal_note else "would persist unread"
        return f"NOT SCANNED {self.path}: {self.reason} ({fate})"


@dataclass(frozen=True)
class Excluded:
    """A mount point the scan left out because the file system under it is not in the image."""

    path: str
    reason: str

    def summary(self) -> str:
        return f"excluded {self.path}: {self.reason}"


@dataclass
class ScanResult:
    """What a scan found. ``complete`` False means the guest stopped early (deadline, error):
    an incomplete scan is never evidence that a guest is clean. ``not_scanned`` lists what the
    guest could not read in full (``not_scanned_total`` counts all, listed or not); any entry
    that persists into the image leaves the scan incomplete unless a waiver names its path."""

    os_type: str
    findings: list[Finding] = field(default_factory=list)
    complete: bool = False
    stats: dict[str, Any] = field(default_factory=dict)
    errors: list[str] = field(default_factory=list)
    not_scanned: list[NotScanned] = field(default_factory=list)
    not_scanned_total: int = 0
    excluded: list[Excluded] = field(default_factory=list)

    def for_rule(self, rule_id: str) -> list[Finding]:
        return [f for f in self.findings if f.rule_id == rule_id]

    def blocking(self, waived: Collection[str] = ()) -> list[Finding]:
        """Findings that persist into the image and are not waived by fingerprint."""
        return [f for f in self.findings if not f.removed_by_action and f.fingerprint not in waived]

    def coverage(self, waivers: WaiverBook | None, vm: str) -> Coverage:
        """What keeps this scan from being complete: unread paths no waiver names."""
        blocking: list[NotScanned] = []
        waived: list[tuple[NotScanned, Waiver]] = []
        for entry in self.not_scanned:
            if entry.removal_note:
                continue
            waiver = waivers.find_path(SCAN_CHECK_ID, vm, entry.path) if waivers is not None else None
            if waiver is None:
                blocking.append(entry)
            else:
                waived.append((entry, waiver))
        unlisted = max(0, self.not_scanned_total - len(self.not_scanned))
        return Coverage(blocking, waived, unlisted)


@dataclass(frozen=True)
class Coverage:
    """Unread paths that keep a scan incomplete, those waived by path, and how many more the
    guest counted but did not list (those can be neither shown nor waived: incomplete)."""

    blocking: list[NotScanned]
    waived: list[tuple[NotScanned, Waiver]]
    unlisted: int = 0

    @property
    def complete(self) -> bool:
        return not self.blocking and not self.unlisted

    def reason(self, shown: int = 5) -> str:
        """One line: what was not read, for an error message."""
        items = [f"{e.path} ({e.reason})" for e in self.blocking[:shown]]
        more = len(self.blocking) - shown + self.unlisted
        tail = f" and {more} more" if more > 0 else ""
        return f"{len(self.blocking) + self.unlisted} path(s) not scanned: {'; '.join(items)}{tail}"


def parse_scan_output(
    document: Mapping[str, Any],
    os_type: str,
    context: DeprovisionContext,
    *,
    stderr: str = "",
    stats: dict[str, Any] | None = None,
) -> ScanResult:
    """The guest's JSON document as a :class:`ScanResult` (removal computed here)."""
    findings = []
    for raw in document.get("findings") or []:
        path, detail = str(raw.get("path", "")), str(raw.get("detail", ""))
        note = context.removal(path, detail)
        findings.append(
            Finding(
                rule_id=str(raw.get("rule", "")),
                path=path,
                line=raw.get("line"),
                length=raw.get("length"),
                prefix=str(raw.get("prefix", ""))[:4],
                fingerprint=str(raw.get("fp", "")),
                removed_by_action=bool(note),
                removal_note=note,
                detail=detail,
            )
        )
    merged = dict(stats or {})
    merged.update(document.get("stats") or {})
    first = [ln.removeprefix("RUN_FIRST ") for ln in stderr.splitlines() if ln.startswith("RUN_FIRST ")]
    if first:
        exits = [ln for ln in first if re.fullmatch(r"RUN_FIRST_EXIT \d+", ln)]
        merged["run_first_exit"] = int(exits[-1].split()[1]) if exits else None
        merged["run_first_lines"] = [redact(ln) for ln in first if ln not in exits]
    complete = document.get("complete") is True and document.get("schema") == 1
    errors = [one_line(str(e)) for e in document.get("errors") or []]
    unread = []
    for raw in document.get("not_scanned") or []:
        path = str(raw.get("path", ""))
        unread.append(NotScanned(path, one_line(str(raw.get("reason", ""))), context.removal(path)))
    total = document.get("not_scanned_total")
    excluded = [
        Excluded(str(e.get("path", "")), one_line(str(e.get("reason", ""))))
        for e in document.get("excluded") or []
    ]
    return ScanResult(
        os_type, findings, complete, merged, errors, unread,
        total if isinstance(total, int) and total >= len(unread) else len(unread), excluded,
    )  # fmt: skip
