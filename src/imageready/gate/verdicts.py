"""Verdict files: what a checks stage hands a later actions stage, and whether to trust it; the
policy digest they are bound to; the digest of the facts each case read."""

from __future__ import annotations

import dataclasses
import datetime as dt
import hashlib
import json
import os
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from imageready.gate.core import (
    OUTCOMES,
    VERDICT_SCHEMA,
    CaseRecord,
    VmGate,
    expected_digest,
    gate_blockers,
    gate_status,
)
from imageready.gate.waivers import WaiverBook
from imageready.target import VmRef

_POLICY_SUFFIXES = {".py", ".yaml", ".yml", ".json", ".toml", ".ps1", ".sh", ".txt", ".md"}


def policy_digest(paths: Iterable[Path], *, salt: str = "") -> str:
    """SHA-256 over the policy: ``salt`` (the harness version), then every file under the given
    directories (or the files), by relative path and content. Byte-identical policy gives the same
    digest on any machine."""
    hasher = hashlib.sha256()
    if salt:
        hasher.update(salt.encode("utf-8") + b"\0")
    # ordered by name, not absolute path: the same policy gives the same digest on any machine
    for base in sorted({Path(p) for p in paths}, key=lambda p: (p.name, str(p))):
        if base.is_file():
            files = [(base.name, base)]
        elif base.is_dir():
            files = sorted(
                (f.relative_to(base).as_posix(), f)
                for f in base.rglob("*")
                if f.is_file() and f.suffix in _POLICY_SUFFIXES and "__pycache__" not in f.parts
            )
        else:
            continue
        for rel, file in files:
            hasher.update(f"{base.name}/{rel}\0".encode())
            hasher.update(hashlib.sha256(file.read_bytes()).digest())
    return "sha256:" + hasher.hexdigest()


def facts_digest(document: Mapping[str, Any], paths: Iterable[Sequence[str | int]]) -> str:
    """SHA-256 over the values ``document`` ({"guest": ..., "azure": ...}) holds at ``paths``."""
    from imageready.facts.view import value_at

    pairs = sorted(
        (([*path], value_at(document, tuple(path))) for path in paths), key=lambda p: json.dumps(p[0])
    )
    body = json.dumps(pairs, sort_keys=True, default=str, separators=(",", ":"))
    return "sha256:" + hashlib.sha256(body.encode("utf-8")).hexdigest()


# --- verdict files ----------------------------------------------------------------------------


def verdict_document(
    gate: VmGate,
    *,
    vm_id: str | None,
    policy: str,
    harness_version: str,
    operator: Mapping[str, str],
    change_ticket: str | None,
    waivers: WaiverBook,
    run_id: str = "",
    now: dt.datetime | None = None,
    guest_identity: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """The verdict record of one VM after its checks: the whole expected case set and each
    case's outcome, from which ``green``, ``status`` and ``blockers`` are derived (a reader
    recomputes them: ``verdict_inconsistency``). ``guest_identity``: how the guest proved it is
    the VM (vmId seen, read from IMDS or SMBIOS, endpoint, host key or certificate)."""
    moment = (now or dt.datetime.now(dt.UTC)).astimezone(dt.UTC)
    cases = sorted(gate.cases.values(), key=lambda c: c.case_id)
    return {
        "schema": VERDICT_SCHEMA,
        "kind": "imageready-verdict",
        "vm": gate.vm.key,
        "resource_id": gate.vm.id,
        "vm_id": vm_id,
        "green": gate.status == "green",
        "status": gate.status,
        "blockers": gate.blockers(),
        "expected_cases": [c.case_id for c in cases],
        "expected_digest": expected_digest(c.case_id for c in cases),
        "checks": [asdict(c) for c in cases],
        "missing_modules": list(gate.missing_modules),
        "missing_functions": list(gate.missing_functions),
        "waivers_applied": [
            {"case": case_id, **w.as_record()} for case_id, w in waivers.applied if case_id in gate.cases
        ],
        "policy_digest": policy,
        "harness_version": harness_version,
        "operator": dict(operator),
        "change_ticket": change_ticket,
        "run_id": run_id,
        "created_at": moment.isoformat().replace("+00:00", "Z"),
        "guest_identity": dict(guest_identity or {}),
    }


def verdict_filename(vm: VmRef) -> str:
    safe = f"{vm.resource_group}__{vm.name}".replace("/", "_")
    return f"verdict-{safe}.json"


def write_verdict(directory: Path, document: Mapping[str, Any]) -> Path:
    """Write atomically (a reader never sees half a verdict), signed with the pipeline's verdict
    key when there is one (``imageready.signing``)."""
    from imageready.signing import sign_verdict

    document = sign_verdict(document)
    directory.mkdir(parents=True, exist_ok=True)
    vm = document["vm"]
    rg, _, name = str(vm).partition("/")
    target = directory / verdict_filename(VmRef(str(document.get("resource_id", "")), rg, name))
    tmp = target.with_suffix(f".tmp{os.getpid()}")
    tmp.write_text(json.dumps(document, indent=2, sort_keys=True) + "\n", encoding="utf-8")
    tmp.replace(target)
    return target


class VerdictError(ValueError):
    """A --verdict file or directory that cannot be read at all; one line."""


def load_verdicts(paths: Iterable[Path]) -> dict[str, tuple[Path, dict[str, Any]]]:
    """Verdict documents by lower-cased resource id, from files or directories of files."""
    found: dict[str, tuple[Path, dict[str, Any]]] = {}
    for path in paths:
        files = sorted(path.glob("verdict-*.json")) if path.is_dir() else [path]
        if not files:
            raise VerdictError(f"--verdict {path}: no verdict-*.json files in this directory")
        for file in files:
            try:
                document = json.loads(file.read_text(encoding="utf-8"))
            except OSError as exc:
                raise VerdictError(f"--verdict {file}: cannot read: {exc.strerror}") from None
            except UnicodeDecodeError as exc:
                raise VerdictError(f"--verdict {file}: not UTF-8 text (byte {exc.start})") from None
            except json.JSONDecodeError as exc:
                raise VerdictError(f"--verdict {file}: not JSON ({exc.msg}, line {exc.lineno})") from None
            if not isinstance(document, dict) or document.get("kind") != "imageready-verdict":
                raise VerdictError(f"--verdict {file}: not an imageready verdict file")
            resource = str(document.get("resource_id", "")).lower()
            earlier = found.get(resource)
            if earlier is not None and earlier[0].resolve() != file.resolve():
                # which one would win is an accident of file names (an old green over a new red)
                raise VerdictError(
                    f"--verdict: two verdicts for {document.get('resource_id')}: {earlier[0]} and "
                    f"{file}; pass the one this stage is to use"
                )
            found[resource] = (file, document)
    return found


@dataclass(frozen=True)
class VerdictDecision:
    accepted: bool
    reason: str  # why accepted or refused, one line
    source: str = ""


_CASE_FIELDS = {f.name for f in dataclasses.fields(CaseRecord)}


def verdict_inconsistency(document: Mapping[str, Any]) -> str | None:
    """Why the verdict's derived fields disagree with its own cases (None when they agree).

    Green, status and blockers are recomputed from the case list; the case list must be exactly
    the expected set it names, and that set must match its digest."""
    raw_cases = document.get("checks")
    expected = document.get("expected_cases")
    if not isinstance(raw_cases, list) or not isinstance(expected, list):
        return "it lacks its case list or its expected case set"
    cases: list[CaseRecord] = []
    for raw in raw_cases:
        if not isinstance(raw, dict) or not {"case_id", "outcome"} <= raw.keys():
            return "a case entry lacks case_id or outcome"
        if raw["outcome"] not in OUTCOMES:
            return f"case {raw['case_id']} has an unknown outcome {raw['outcome']!r}"
        cases.append(CaseRecord(**{k: v for k, v in raw.items() if k in _CASE_FIELDS}))
    ids = [c.case_id for c in cases]
    if len(set(ids)) != len(ids):
        return "a case appears twice"
    if set(ids) != {str(e) for e in expected}:
        extra = sorted(set(ids) - {str(e) for e in expected})
        missing = sorted({str(e) for e in expected} - set(ids))
        return f"its cases are not its expected set (unexpected {extra[:3]}, missing {missing[:3]})"
    if document.get("expected_digest") != expected_digest(ids):
        return "its expected_digest does not match its expected case set"
    modules = [str(m) for m in document.get("missing_modules") or []]
    functions = [str(f) for f in document.get("missing_functions") or []]
    status = gate_status(cases, modules, functions)
    if document.get("status") != status or document.get("green") is not (status == "green"):
        return (
            f"it says status {document.get('status')!r}, green {document.get('green')!r}, but its own "
            f"cases make it {status!r}"
        )
    if list(document.get("blockers") or []) != gate_blockers(cases, modules, functions):
        return "its blockers do not match its cases"
    return None


def judge_verdict(
    document: Mapping[str, Any],
    *,
    source: Path,
    vm: VmRef,
    live_vm_id: str | None,
    policy: str,
    harness_version: str,
    max_age: dt.timedelta,
    expected: Iterable[str] | None,
    now: dt.datetime | None = None,
    key: bytes | None = None,
    accept_unsigned: bool = False,
) -> VerdictDecision:
    """Accept a verdict only if it is signed with the pipeline's verdict ``key`` (unsigned only
    with ``accept_unsigned``), consistent, green, complete, fresh, for this very VM, from this
    policy and harness version, and covers exactly the case set this run expects of the VM
    (``expected``; None only when resuming a VM whose guest is already generalized, so that
    its checks can no longer be enumerated)."""
    from imageready.signing import check as check_signature

    moment = now or dt.datetime.now(dt.UTC)
    where = str(source)

    def refuse(why: str) -> VerdictDecision:
        return VerdictDecision(False, f"verdict {where} refused: {why}", where)

    if document.get("schema") != VERDICT_SCHEMA:
        return refuse(f"schema {document.get('schema')!r}, expected {VERDICT_SCHEMA}")
    # first: nothing else a verdict says can be trusted before its signature is
    unsigned = check_signature(document, key, accept_unsigned=accept_unsigned)
    if unsigned is not None:
        return refuse(unsigned)
    if str(document.get("resource_id", "")).lower() != vm.id.lower():
        return refuse(f"it is for {document.get('resource_id')}, not {vm.id}")
    inconsistent = verdict_inconsistency(document)
    if inconsistent is not None:
        return refuse(f"its derived fields disagree with its cases: {inconsistent}")
    if document.get("green") is not True or document.get("status") != "green":
        blockers = document.get("blockers") or []
        first = f" ({blockers[0]}{' ...' if len(blockers) > 1 else ''})" if blockers else ""
        return refuse(f"it is not green{first}")
    try:
        created = dt.datetime.fromisoformat(str(document["created_at"]).replace("Z", "+00:00"))
    except (KeyError, ValueError):
        return refuse("it has no valid created_at time")
    if created.tzinfo is None:
        return refuse(f"created_at {document['created_at']} has no UTC offset")
    age = moment - created
    if age > max_age:
        return refuse(f"stale: created {_human(age)} ago, the limit is {_human(max_age)}")
    if age < -dt.timedelta(minutes=5):
        return refuse(f"created_at {document['created_at']} lies in the future")
    if not live_vm_id:
        return refuse("the VM's vmId could not be read from Azure to compare")
    if str(document.get("vm_id") or "").lower() != live_vm_id.lower():
        return refuse(
            f"it was made for vmId {document.get('vm_id')}, but {vm.key} now has vmId {live_vm_id} "
            "(the VM was recreated)"
        )
    if document.get("policy_digest") != policy:
        return refuse(
            f"policy digest {document.get('policy_digest')} differs from this run's {policy} "
            "(checks or rules changed since)"
        )
    if document.get("harness_version") != harness_version:
        return refuse(
            f"it was made by imageready {document.get('harness_version')}, this is {harness_version}"
        )
    if expected is not None:
        now_expected = set(expected)
        theirs = {str(c) for c in document.get("expected_cases") or []}
        if theirs != now_expected:
            new = sorted(now_expected - theirs)
            gone = sorted(theirs - now_expected)
            parts = []
            if new:
                parts.append(f"{len(new)} case(s) it does not cover, e.g. {new[0]}")
            if gone:
                parts.append(f"{len(gone)} case(s) this run no longer expects, e.g. {gone[0]}")
            return refuse(
                "it does not cover the checks this run expects of the VM now ("
                + "; ".join(parts)
                + "): the VM or its facts changed since, run the checks again"
            )
    return VerdictDecision(True, f"verdict {where} accepted (green, {_human(age)} old)", where)


def _human(delta: dt.timedelta) -> str:
    seconds = int(abs(delta.total_seconds()))
    if seconds >= 2 * 3600:
        return f"{seconds / 3600:.1f} h"
    if seconds >= 120:
        return f"{seconds // 60} min"
    return f"{seconds} s"


def parse_duration(text: str) -> dt.timedelta:
    """``24h``, ``90m``, ``3600s``, ``2d`` or a bare number of hours."""
    value = text.strip().lower()
    units = {"s": 1, "m": 60, "h": 3600, "d": 86400}
    try:
        if value and value[-1] in units:
            return dt.timedelta(seconds=float(value[:-1]) * units[value[-1]])
        return dt.timedelta(hours=float(value))
    except ValueError:
        raise ValueError(f"{text!r} is not a duration (e.g. 24h, 90m, 3600s)") from None
