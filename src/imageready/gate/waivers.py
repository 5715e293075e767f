"""Waivers: approved, expiring exceptions a case or a path may carry (docs/waivers.md)."""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any


class WaiverError(ValueError):
    """A waiver file that cannot be used; one line."""


@dataclass(frozen=True)
class Waiver:
    check: str
    reason: str
    approver: str
    expires: dt.datetime
    parameter: str = "*"  # "*" = any parameter of that check
    vm: str = "*"  # rg/name or "*"
    fingerprint: str = ""  # sensitive-data findings: waive one finding by its fingerprint
    #: IR-SCAN only: a path (glob) the scan could not read in full; waives that "not scanned"
    #: entry, never a finding or a failed case
    path: str = ""

    def expired(self, now: dt.datetime) -> bool:
        return now >= self.expires

    def matches(self, check_id: str, vm: str, parameter: str) -> bool:
        return (
            self.check == check_id
            and self.vm.lower() in ("*", vm.lower())
            and self.parameter in ("*", parameter)
        )

    def as_record(self) -> dict[str, str]:
        record = {
            "check": self.check,
            "parameter": self.parameter,
            "vm": self.vm,
            "reason": self.reason,
            "approver": self.approver,
            "expires": self.expires.isoformat(),
        }
        if self.fingerprint:
            record["fingerprint"] = self.fingerprint
        if self.path:
            record["path"] = self.path
        return record


def parse_expiry(value: object, where: str) -> dt.datetime:
    if isinstance(value, dt.datetime):
        moment = value
    elif isinstance(value, dt.date):
        # a date waives through the end of that day, UTC
        moment = dt.datetime.combine(value, dt.time.max)
    elif isinstance(value, str):
        try:
            moment = dt.datetime.fromisoformat(value.strip().replace("Z", "+00:00"))
        except ValueError:
            try:
                day = dt.date.fromisoformat(value.strip())
            except ValueError:
                raise WaiverError(f"{where}: expires {value!r} is not a date") from None
            moment = dt.datetime.combine(day, dt.time.max)
    else:
        raise WaiverError(f"{where}: expires is required (a date such as 2026-12-31)")
    return moment if moment.tzinfo else moment.replace(tzinfo=dt.UTC)


def load_waivers(path: Path) -> list[Waiver]:
    """Read a YAML (``.yaml``/``.yml``) or TOML (``.toml``) waiver file.

    Shape: a top-level ``waivers`` list of tables with ``check``, ``reason``, ``approver``,
    ``expires`` and optionally ``parameter``, ``vm``, ``fingerprint`` or (``IR-SCAN``) ``path``.
    """
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise WaiverError(f"--waivers {path}: cannot read: {exc.strerror}") from None
    except UnicodeDecodeError as exc:
        raise WaiverError(f"--waivers {path}: not UTF-8 text (byte {exc.start})") from None
    try:
        if path.suffix.lower() == ".toml":
            import tomllib

            data: Any = tomllib.loads(text)
        else:
            import yaml

            data = yaml.safe_load(text)
    except Exception as exc:  # yaml.YAMLError / tomllib.TOMLDecodeError: both one line
        first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise WaiverError(f"--waivers {path}: not valid {path.suffix or 'YAML'}: {first}") from None
    entries = data.get("waivers") if isinstance(data, dict) else None
    if not isinstance(entries, list):
        raise WaiverError(f"--waivers {path}: expected a top-level 'waivers' list")
    allowed = {"check", "parameter", "vm", "fingerprint", "path", "reason", "approver", "expires"}
    waivers = []
    for index, entry in enumerate(entries, 1):
        where = f"--waivers {path}: waiver {index}"
        if not isinstance(entry, dict):
            raise WaiverError(f"{where}: expected a table of keys")
        unknown = sorted(set(entry) - allowed)
        if unknown:
            raise WaiverError(f"{where}: unknown key(s) {', '.join(unknown)}")
        for key in ("check", "reason", "approver"):
            if not str(entry.get(key) or "").strip():
                raise WaiverError(f"{where}: '{key}' is required")
        path_glob = str(entry.get("path", "")).strip()
        if path_glob and (str(entry["check"]).strip() != "IR-SCAN" or entry.get("fingerprint")):
            raise WaiverError(f"{where}: 'path' is for check IR-SCAN alone, without a fingerprint")
        waivers.append(
            Waiver(
                check=str(entry["check"]).strip(),
                parameter=str(entry.get("parameter", "*")).strip() or "*",
                vm=str(entry.get("vm", "*")).strip() or "*",
                fingerprint=str(entry.get("fingerprint", "")).strip(),
                path=path_glob,
                reason=str(entry["reason"]).strip(),
                approver=str(entry["approver"]).strip(),
                expires=parse_expiry(entry.get("expires"), where),
            )
        )
    return waivers


@dataclass
class WaiverBook:
    """The waivers of a run and what happened to them."""

    waivers: list[Waiver] = field(default_factory=list)
    now: dt.datetime = field(default_factory=lambda: dt.datetime.now(dt.UTC))
    applied: list[tuple[str, Waiver]] = field(default_factory=list)  # (case id, waiver)

    def find(self, check_id: str, vm: str, parameter: str, *, fingerprint: str = "") -> Waiver | None:
        """The live waiver for a failed case (or, with ``fingerprint``, for one finding).
        Expired waivers never match; the run lists them loudly (``expired``)."""
        for waiver in self.waivers:
            if (
                waiver.fingerprint == fingerprint
                and not waiver.path
                and waiver.matches(check_id, vm, parameter)
                and not waiver.expired(self.now)
            ):
                return waiver
        return None

    def find_path(self, check_id: str, vm: str, path: str) -> Waiver | None:
        """The live waiver naming ``path`` (a glob: ``*`` within a component, ``**`` across)."""
        for waiver in self.waivers:
            if (
                waiver.path
                and waiver.matches(check_id, vm, "*")
                and not waiver.expired(self.now)
                and path_matches(waiver.path, path)
            ):
                return waiver
        return None

    def expired(self) -> list[Waiver]:
        return [w for w in self.waivers if w.expired(self.now)]


def facts_digest(document: Mapping[str, Any], paths: Iterable[Sequence[str | int]]) -> str:
    """SHA-256 over the values ``document`` ({"guest": ..., "azure": ...}) holds at ``paths``."""
    from imageready.facts.view import value_at

    pairs = sorted(
        (([*path], value_at(document, tuple(path))) for path in paths), key=lambda p: json.dumps(p[0])
    )
    body = json.dumps(pairs, sort_keys=True, default=str, separators=(",", ":"))
    return "sha256:" + hashlib.sha256(body.encode("utf-8")).hexdigest()


def path_matches(glob: str, path: str) -> bool:
    """``glob`` against ``path`` with either separator; Windows paths (a drive) case-insensitively."""
    norm_glob, norm_path = glob.replace("\\", "/"), path.replace("\\", "/")
    windows = re.match(r"^[A-Za-z]:/", norm_path) is not None
    pattern = "".join(
        ".*" if part == "**" else re.escape(part).replace("\\*", "[^/]*").replace("\\?", "[^/]")
        for part in re.split(r"(\*\*)", norm_glob)
    )
    return re.fullmatch(pattern, norm_path, re.IGNORECASE if windows else 0) is not None
