"""The gate: per-VM verdict from check outcomes, fail closed.

Pure logic, no pytest: the plugin feeds it what was expected and what happened; the gate says
whether a VM's actions may run, and why not. Verdict files carry a green gate from a checks stage
to a later actions stage.

Rules (``docs/gate.md``): a VM's gate opens only when every expected check case of that VM ended
``passed``, ``waived`` or ``not_applicable`` (the plugin decides "not applicable", only from the
check's OS and its ``requires=``: ``imageready.applicability``). Anything else — failed, error,
xfailed, xpassed, skipped for any other reason, deselected, not collected, not run — keeps it shut.
One VM's gate never depends on another's.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import hashlib
import hmac
import json
import os
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

from imageready.target import VmRef

GREEN_OUTCOMES = frozenset({"passed", "waived", "not_applicable"})
OUTCOMES = GREEN_OUTCOMES | {
    "failed",
    "error",
    "skipped",
    "xfailed",
    "xpassed",
    "deselected",
    "not_run",
}
VERDICT_SCHEMA = 2

GateStatus = Literal["green", "red", "incomplete", "absent"]


@dataclass
class CaseRecord:
    """One check case of one VM, as the gate and every report see it."""

    case_id: str  # the pytest node id without any xdist group suffix
    check_id: str
    title: str
    severity: str
    vm: str  # rg/name
    parameter: str  # what the case examines ("AD-Domain-Services"), "" if only the VM
    outcome: str = "not_run"
    message: str = ""  # one redacted line
    category: str = ""  # for errors: a categories.Category, as its wire string ("timeout", ...)
    waiver: dict[str, str] | None = None
    doc: str = ""
    evidence: list[str] = field(default_factory=list)  # redacted one-line summaries
    #: the facts the check read (paths from the document's root, as JSON lists) and a digest of
    #: their values: a later actions stage re-runs the case when the digest no longer holds
    facts_read: list[list[str | int]] = field(default_factory=list)
    facts_digest: str = ""

    @property
    def green(self) -> bool:
        return self.outcome in GREEN_OUTCOMES


@dataclass
class VmGate:
    """What the gate knows about one VM in this run."""

    vm: VmRef
    #: every check case the whole policy generates for this VM (collected before any selection),
    #: with its outcome; the expected set is exactly these keys
    cases: dict[str, CaseRecord] = field(default_factory=dict)
    #: check modules under the policy directory that this run did not collect at all
    missing_modules: list[str] = field(default_factory=list)
    #: check functions (``@pytest.mark.check``) of collected modules that produced no case
    missing_functions: list[str] = field(default_factory=list)

    def expect(self, record: CaseRecord) -> None:
        self.cases.setdefault(record.case_id, record)

    def record(self, case_id: str, **changes: Any) -> None:
        case = self.cases[case_id]
        for key, value in changes.items():
            setattr(case, key, value)

    @property
    def status(self) -> GateStatus:
        return gate_status(self.cases.values(), self.missing_modules, self.missing_functions)

    def blockers(self) -> list[str]:
        """Why the gate is shut, one line per blocking case, module or function (empty when green)."""
        return gate_blockers(self.cases.values(), self.missing_modules, self.missing_functions)


#: outcomes of a case this run did not judge (it was left out or never got to run)
UNJUDGED = frozenset({"deselected", "not_run"})
RED_OUTCOMES = OUTCOMES - GREEN_OUTCOMES - UNJUDGED


def gate_status(
    cases: Iterable[CaseRecord], missing_modules: Iterable[str] = (), missing_functions: Iterable[str] = ()
) -> GateStatus:
    """green: every expected case judged green and nothing of the policy left out; red: a case
    judged red; absent: no case judged at all; incomplete: anything else."""
    outcomes = [case.outcome for case in cases]
    if any(outcome not in GREEN_OUTCOMES | UNJUDGED for outcome in outcomes):
        return "red"
    if not any(outcome not in UNJUDGED for outcome in outcomes):
        return "absent"
    if list(missing_modules) or list(missing_functions) or any(o not in GREEN_OUTCOMES for o in outcomes):
        return "incomplete"
    return "green"


def gate_blockers(
    cases: Iterable[CaseRecord], missing_modules: Iterable[str] = (), missing_functions: Iterable[str] = ()
) -> list[str]:
    lines = [
        f"{c.case_id}: {describe_outcome(c)}" for c in sorted(cases, key=lambda c: c.case_id) if not c.green
    ]
    lines += [f"{m}: not collected in this run" for m in missing_modules]
    lines += [
        f"{f}: a check that produced no case (its name does not match python_functions?)"
        for f in missing_functions
    ]
    return lines


def expected_digest(case_ids: Iterable[str]) -> str:
    """SHA-256 over the sorted expected case ids: two runs expect the same cases iff equal."""
    hasher = hashlib.sha256()
    for case_id in sorted(set(case_ids)):
        hasher.update(case_id.encode("utf-8") + b"\n")
    return "sha256:" + hasher.hexdigest()


def describe_outcome(case: CaseRecord) -> str:
    words = {
        "failed": "failed",
        "error": "errored",
        "skipped": "skipped",
        "xfailed": "marked xfail (a check may not be expected to fail)",
        "xpassed": "marked xfail (a check may not be expected to fail)",
        "deselected": "deselected (left out by the command line: a node id or path subset, -k, -m, "
        "--deselect)",
        "not_run": "did not run",
    }
    text = words.get(case.outcome, case.outcome)
    return f"{text}: {case.message}" if case.message and case.outcome != "deselected" else text


# --- waivers ----------------------------------------------------------------------------------


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


# --- policy digest ----------------------------------------------------------------------------

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


# --- resuming an interrupted run ----------------------------------------------------------------

#: step tags the actions write on the VM: ``imageready-step-<step>`` = ``done run=R at=T``
#: (``started run=R at=T`` before an irreversible guest step)
STEP_TAG = "imageready-step-"


#: a step tag's signature field: `` sig=`` and 32 hex digits, always the tag's last word
_TAG_SIG = " sig="
_TAG_SIG_LEN = 32
TAG_MAX = 256  # Azure's limit for a tag value


def _tag_target(model: Mapping[str, Any]) -> str:
    """What a step tag is bound to: the VM's vmId and its OS disk (a swapped or restored OS disk
    keeps the VM's tags, not their meaning)."""
    props = model.get("properties") or {}
    os_disk = ((props.get("storageProfile") or {}).get("osDisk") or {}).get("managedDisk") or {}
    return f"{props.get('vmId', '')}\n{str(os_disk.get('id', '')).lower()}"


def sign_step_tag(body: str, name: str, model: Mapping[str, Any], key: bytes | None) -> str:
    """The value of step tag ``name``: ``body`` (cut to fit), signed with the pipeline's verdict
    key when there is one (HMAC over the VM's vmId, its OS disk, the step and the body)."""
    if key is None:
        return body[:TAG_MAX]
    body = body[: TAG_MAX - len(_TAG_SIG) - _TAG_SIG_LEN]
    return f"{body}{_TAG_SIG}{_tag_mac(body, name, model, key)}"


def _tag_mac(body: str, name: str, model: Mapping[str, Any], key: bytes) -> str:
    mac = hmac.new(key, f"{_tag_target(model)}\n{name}\n{body}".encode(), hashlib.sha256)
    return mac.hexdigest()[:_TAG_SIG_LEN]


def step_tag_problem(value: str, name: str, model: Mapping[str, Any], key: bytes | None) -> str | None:
    """Why step tag ``value`` cannot be trusted (None when it can). Without a key nothing can be
    checked (docs/threat-model.md); with one, the tag must carry this VM's and OS disk's
    signature: one written by hand, by a run without the key or before an OS disk swap has not."""
    if key is None:
        return None
    body, found, sig = value.rpartition(_TAG_SIG)
    if not found:
        return "it is not signed with this pipeline's verdict key"
    if not hmac.compare_digest(_tag_mac(body, name, model, key), sig.strip()):
        return "its signature does not match this VM, its OS disk and the tag's content"
    return None


def parse_step_tag(value: str | None) -> dict[str, str]:
    """``{"state": "done", "run": R, "at": T}`` from a step tag value ({} when absent)."""
    if not value:
        return {}
    state, _, rest = value.partition(" ")
    fields = dict(part.split("=", 1) for part in rest.split() if "=" in part)
    return {"state": state, **fields}


@dataclass(frozen=True)
class Resume:
    """A VM mid-way through an earlier run's actions (its guest step started or done)."""

    run_id: str
    tag: str
    accepted: bool
    reason: str
    #: the case set of the resumed run's verdict (what it judged green)
    expected: tuple[str, ...] = ()
