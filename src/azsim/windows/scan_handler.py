"""The Windows model's answer to imageready's sensitive-data scan (``scripts/scan_windows.ps1``).

The handler recognises the scan by what it asks for (``HMACSHA256`` and
``EnumerateFileSystemInfos``), decodes the configuration the engine embedded in the script
(``$ConfigBase64``: rules, compiled path patterns, the HMAC key) and applies it to the model's
volumes, files and registry as the script does on Windows, step by step: the disks and where
Azure attached them (the resource disk is LUN 1 of the first synthetic SCSI controller), each
volume's mount points (drive letters and folders), a walk of every volume not on the resource
disk, location rules by path (junctions and symbolic links followed for them), content rules on
the text of every file (binary by content, not by extension; UTF-16 decoded; gzip and zip
expanded up to a bound), values masked and fingerprinted here, never returned in clear. What the
script could not read is listed as not scanned with its reason. The model has no event log.
Machine certificates live where Windows keeps them, in the registry (``CERT_STORE_KEY``), one
subkey per thumbprint; a ``KeyProvInfo`` value stands for the private-key link (``HasPrivateKey``)
and a ``Subject`` value for the subject.

Register it with ``azsim.windows.powershell.register_handler(ScanScript())`` (or list
``HANDLERS`` in ``default_handlers``).

One module of a little over 500 lines, on purpose: it is the model's side of one script
(``scan_windows.ps1``, itself one file of some 570 lines), read next to it step by step, and every
step works on the one scan's state (``_Scan``: the rules, the findings, what was not scanned).
Split by step, each part would need that state and the script's order from the other.
"""

from __future__ import annotations

import base64
import binascii
import gzip
import hashlib
import hmac
import io
import json
import re
import time
import zipfile
from typing import Any

from azsim.windows import catalog
from azsim.windows.powershell import PsError, ScriptCall, ScriptHandler, ScriptResult, ScriptView

SYSTEM_DRIVE = "C:"
#: where Windows keeps the LocalMachine certificate stores: one subkey per certificate thumbprint
CERT_STORE_KEY = "HKLM\\SOFTWARE\\Microsoft\\SystemCertificates\\{store}\\Certificates"
#: Windows' own component store and caches: the script does not walk them
SKIPPED_DIRS = tuple(
    f"{SYSTEM_DRIVE}\\{d}".lower()
    for d in (
        "Windows\\WinSxS", "Windows\\servicing", "Windows\\Installer", "Windows\\assembly",
        "Windows\\Microsoft.NET", "Windows\\System32\\DriverStore", "Windows\\SoftwareDistribution",
        "System Volume Information",
    )
)  # fmt: skip
KEY_LINE = re.compile(
    r"^[ \t\"'+]*(?:([A-Za-z0-9+/=]+)|[A-Za-z-]+: [^\"']*)?[ \t\"',+;]*(?:\\n)?[ \t\"',+;]*\r?$"
)
ESCAPED_BREAK = re.compile(r"(\\+r)?\\+n|\\+u000[aAdD]|\\+r")
ESCAPED_CHAR = {"\\/": "/", "\\u002b": "+", "\\u002B": "+", "\\u003d": "=", "\\u003D": "="}
HEAD = 8192
_SYSDRIVE_RE = re.escape(SYSTEM_DRIVE)


class ScanConfigError(ValueError):
    """The script's embedded configuration is missing or unreadable."""


def embedded_config(view: ScriptView) -> dict[str, Any]:
    """The configuration the engine put into ``$ConfigBase64 = '...'``."""
    match = re.search(r"\$ConfigBase64\s*=\s*'([A-Za-z0-9+/=]+)'", view.code)
    if match is None:
        raise ScanConfigError("the scan script carries no configuration ($ConfigBase64)")
    try:
        config = json.loads(base64.b64decode(match.group(1), validate=True))
    except (binascii.Error, ValueError) as exc:
        raise ScanConfigError(f"the scan configuration is not base64 JSON: {exc}") from None
    if not isinstance(config, dict) or config.get("schema") != 1:
        raise ScanConfigError("the scan configuration has an unknown schema")
    return config


def disks_of(machine: Any) -> list[dict[str, Any]]:
    """The disks as Windows reports them (Win32_DiskDrive with its controller's VMBus instance):
    Azure attaches the OS disk at LUN 0 and the resource disk at LUN 1 of the first synthetic SCSI
    controller of a generation 2 VM, data disks to the next controller."""
    disks: list[dict[str, Any]] = []
    roles = [v.get("disk", "data") for v in machine.state.volumes] or ["os"]
    data_lun = 0
    for role in ("os", "resource", *(["data"] if "data" in roles else [])):
        if role not in roles:
            continue
        if role == "data":
            controller, lun = catalog.SCSI_CONTROLLER_1, data_lun
            data_lun += 1
        else:
            controller, lun = catalog.SCSI_CONTROLLER_0, 0 if role == "os" else 1
        parent = f"VMBUS\\{catalog.VMBUS_STORAGE_CLASS}\\{controller}".upper()
        disks.append({"number": len(disks), "role": role, "parent": parent, "lun": lun})
    return disks


def resource_proof(disk: dict[str, Any]) -> str:
    """Why the script takes ``disk`` for Azure's resource disk ("" when it does not): its
    controller's VMBus instance and LUN, as WALinuxAgent's 66-azure-storage.rules identify it."""
    parent = str(disk["parent"]).lower()
    if "{00000000-0001-" in parent:
        return f"VMBus device {parent.rsplit(chr(92), 1)[-1]}"
    if catalog.SCSI_CONTROLLER_0.lower() in parent and disk["lun"] == 1:
        return f"LUN 1 of SCSI controller {catalog.SCSI_CONTROLLER_0}"
    return ""


def _unescape(text: str) -> str:
    if "\\" not in text:
        return text
    text = ESCAPED_BREAK.sub("\n", text)
    for escaped, plain in ESCAPED_CHAR.items():
        text = text.replace(escaped, plain)
    return text


def sniff(head: bytes) -> str:
    """text, utf-16-le/-be, utf-32, binary, gzip or zip: by content, never by extension."""
    if head.startswith(b"\x1f\x8b\x08"):
        return "gzip"
    if head.startswith(b"PK\x03\x04"):
        return "zip"
    if head.startswith((b"\xff\xfe\x00\x00", b"\x00\x00\xfe\xff")):
        return "utf-32"
    if head.startswith(b"\xff\xfe"):
        return "utf-16-le"
    if head.startswith(b"\xfe\xff"):
        return "utf-16-be"
    if b"\0" not in head:
        return "text"
    sample = head[: len(head) // 2 * 2][:4096]
    if len(sample) >= 8:
        odd, even = sample[1::2], sample[0::2]
        if odd.count(0) >= len(odd) * 0.9 and even.count(0) < len(even) * 0.1:
            return "utf-16-le"
        if even.count(0) >= len(even) * 0.9 and odd.count(0) < len(odd) * 0.1:
            return "utf-16-be"
    return "binary"


class _Scan:
    """One scan of one machine, following scan_windows.ps1 step by step."""

    def __init__(self, config: dict[str, Any]) -> None:
        self.key = bytes.fromhex(config["key"])
        self.max_size = int(config["max_file_size"])
        self.max_expanded = int(config.get("max_expanded") or 256 * 1024 * 1024)
        self.limit = int(config.get("not_scanned_limit") or 500)
        self.examples: list[str] = list(config.get("examples") or [])
        self.rules: list[dict[str, Any]] = config["rules"]
        for rule in self.rules:
            flags = re.IGNORECASE if rule.get("ignore_case") else 0
            rule["rx"] = re.compile(rule["pattern"], flags) if rule.get("pattern") else None
            ignore = rule.get("ignore_values")
            rule["ignore_rx"] = re.compile(f"^({ignore})$", re.IGNORECASE) if ignore else None
            exclude = rule.get("exclude_re")
            rule["excl_rx"] = _path_rx(exclude) if exclude else None
        self.grep_rules = [r for r in self.rules if r["mode"] == "grep" and not r.get("multiline")]
        self.wide_rules = [r for r in self.rules if r["mode"] == "grep" and r.get("multiline")]
        self.globs = [
            (g, _path_rx(g["path_re"]), _path_rx(g["dir_re"]) if g.get("dir_re") else None)
            for g in config.get("globs") or []
        ]
        ancestors = [g["ancestors_re"] for g in config.get("globs") or [] if g.get("ancestors_re")]
        self.ancestors = _path_rx("|".join(f"({a})" for a in ancestors)) if ancestors else None
        self.providers: list[dict[str, Any]] = list(config.get("providers") or [])
        self.findings: dict[tuple[str, str, Any, str], dict[str, Any]] = {}
        self.not_scanned: dict[str, str] = {}
        self.not_scanned_total = 0
        self.excluded: list[dict[str, str]] = []
        self.stats: dict[str, Any] = {
            "engine": "azsim-windows-model", "files": 0, "dirs": 0, "bytes": 0,
            "content_files": 0, "content_bytes": 0, "skipped_large": 0, "skipped_large_paths": [],
            "excluded_paths": [], "suppressed_examples": 0, "suppressed_package_files": 0,
            "candidate_lines": 0, "volumes": [], "symlinks_resolved": 0,
        }  # fmt: skip

    def add(
        self, rule: dict[str, Any], path: str, line: int | None, value: bytes, *,
        shown: bool = True, detail: str = "", length: int | None = None,
    ) -> None:  # fmt: skip
        fingerprint = hmac.new(self.key, value, hashlib.sha256).hexdigest()[:16]
        prefix = value[:4].decode("utf-8", "replace") if shown and len(value) >= 12 else ""
        item = {
            "rule": rule["id"], "path": path, "line": line,
            "length": len(value) if length is None else length, "prefix": prefix,
            "fp": fingerprint, "detail": detail,
        }  # fmt: skip
        self.findings.setdefault((rule["id"], path, line, fingerprint), item)

    def skip(self, path: str, reason: str) -> None:
        if path in self.not_scanned:
            return
        self.not_scanned_total += 1
        if len(self.not_scanned) < self.limit:
            self.not_scanned[path] = reason

    def accept(self, rule: dict[str, Any], value: str) -> bool:
        if rule["ignore_rx"] is not None and rule["ignore_rx"].match(value):
            return False
        if any(example in value for example in self.examples):
            self.stats["suppressed_examples"] += 1
            return False
        if rule.get("decode") == "unattend-password":
            try:
                text = base64.b64decode(value, validate=True).decode("utf-16-le")
            except (binascii.Error, ValueError):
                return False
            return text.endswith("Password") and len(text) > len("Password")
        if rule.get("decode") == "basic-auth":
            try:
                text = base64.b64decode(value, validate=True).decode("utf-8")
            except (binascii.Error, ValueError):
                return False
            user, colon, password = text.partition(":")
            return bool(colon and user and password) and text.isprintable()
        return True

    def block_body(self, lines: list[str], index: int, rest: str, end: str) -> str | None:
        rest = _unescape(rest)
        if end in rest:
            parts = rest[: rest.index(end)].split("\n")
        else:
            parts = rest.split("\n")
            for line in lines[index + 1 : index + 401]:
                line = _unescape(line)
                if end in line:
                    parts.extend(line[: line.index(end)].split("\n"))
                    break
                if not all(KEY_LINE.match(p) for p in line.split("\n")):
                    return None
                parts.extend(line.split("\n"))
            else:
                return None
        body = []
        for part in parts:
            match = KEY_LINE.match(part)
            if match is None:
                return None
            body.append(match.group(1) or "")
        value = "".join(body)
        return value if len(value) >= 64 else None

    def report(self, rule: dict[str, Any], path: str, number: int, value: str, match: re.Match[str]) -> None:
        if not self.accept(rule, value):
            return
        detail = ""
        if rule.get("detail_group"):
            detail = f"{rule['detail_label']}={match.group(rule['detail_group'])}"
        self.add(rule, path, number, value.encode("utf-8"), detail=detail)

    def lines(self, rules: list[dict[str, Any]], path: str, lines: list[str]) -> None:
        for index, line in enumerate(lines):
            for rule in rules:
                for match in rule["rx"].finditer(line):
                    value = _secret(match, rule)
                    if rule.get("block_end"):
                        body = self.block_body(lines, index, line[match.end() :], rule["block_end"])
                        if body is None:
                            continue
                        value = body
                    self.report(rule, path, index + 1, value, match)

    def wide(self, path: str, lines: list[str]) -> None:
        """Multi-line rules: line breaks read as spaces."""
        text = " ".join(line.rstrip("\r") for line in lines)
        starts, offset = [], 0
        for line in lines:
            starts.append(offset)
            offset += len(line.rstrip("\r")) + 1
        for rule in self.wide_rules:
            for match in rule["rx"].finditer(text):
                number = sum(1 for start in starts if start <= match.start())
                self.report(rule, path, number, _secret(match, rule), match)

    def path_rules(self, path: str) -> list[dict[str, Any]]:
        name = path.rsplit("\\", 1)[-1]
        directory = path.rsplit("\\", 1)[0]
        hits = []
        for glob, path_rx, dir_rx in self.globs:
            rule = self.rules[glob["rule"]]
            if dir_rx is not None:
                ancestors = _ancestors(directory) if glob.get("recursive") else [directory]
                matched = any(dir_rx.match(d) for d in ancestors)
            elif glob.get("name") is not None:
                matched = name.lower() == glob["name"].lower() and bool(path_rx.match(path))
            else:
                matched = bool(re.match(glob["name_re"], name, re.I)) and bool(path_rx.match(path))
            if matched and (rule["excl_rx"] is None or not rule["excl_rx"].match(path)):
                hits.append(rule)
        return hits

    def locate(self, path: str, data: bytes, size: int, detail: str = "") -> None:
        """Location rules (and rules scoped to paths) on one file, by the path it is seen at."""
        for rule in self.path_rules(path):
            if rule["mode"] == "presence":
                if not size:
                    continue
                digest = hashlib.sha256(data).hexdigest() if size <= self.max_size else f"size:{size}"
                material = f"location\0{rule['id']}\0{path}\0{digest}".encode()
                self.add(rule, path, None, material, shown=False, length=size, detail=detail)
            elif size <= self.max_size:
                text = self.text(path, data, report=False)
                if text is not None:
                    self.lines([rule], path, re.split(r"\r?\n", text))

    def text(self, path: str, data: bytes, *, report: bool = True) -> str | None:
        """The file's text (None for binary files and what cannot be read)."""
        kind = sniff(data[:HEAD])
        if kind == "utf-32":
            if report:
                self.skip(path, "unsupported encoding (UTF-32 text)")
            return None
        if kind in ("binary", "gzip", "zip"):
            return None
        encoding = "utf-8" if kind == "text" else kind
        return data.decode(encoding, "replace").lstrip("\ufeff")

    def content(self, path: str, data: bytes) -> None:
        """Every content rule on the file's text; gzip and zip expanded up to max_expanded."""
        kind = sniff(data[:HEAD])
        lower = path.lower()
        if kind == "gzip" or (kind == "zip" and lower.endswith(".zip")):
            self.archive(path, data, kind)
            return
        if lower.endswith((".xz", ".txz", ".bz2", ".tbz", ".tbz2")) and kind == "binary":
            self.skip(path, "compressed (xz or bzip2): Windows PowerShell has no decoder for it")
            return
        text = self.text(path, data)
        if text is None:
            return
        self.stats["content_files"] += 1
        self.stats["content_bytes"] += len(data)
        lines = re.split(r"\r?\n", text)
        self.stats["candidate_lines"] += len(lines)
        self.lines(self.grep_rules, path, lines)
        if self.wide_rules:
            self.wide(path, lines)

    def archive(self, path: str, data: bytes, kind: str) -> None:
        try:
            if kind == "gzip":
                with gzip.GzipFile(fileobj=io.BytesIO(data)) as stream:
                    expanded = stream.read(self.max_expanded + 1)
                if len(expanded) > self.max_expanded:
                    self.skip(path, f"expands beyond the {self.max_expanded} bytes bound")
                elif expanded[257:262] == b"ustar":
                    self.skip(path, "tar archive: Windows PowerShell has no reader for it")
                else:
                    self.content(path, expanded)
                return
            with zipfile.ZipFile(io.BytesIO(data)) as archive:
                budget = self.max_expanded
                for entry in archive.infolist():
                    if entry.is_dir():
                        continue
                    member = f"{path}!\\{entry.filename.replace('/', chr(92))}"
                    if entry.file_size > budget:
                        self.skip(path, f"expands beyond the {self.max_expanded} bytes bound")
                        return
                    budget -= entry.file_size
                    inner = archive.read(entry)
                    if sniff(inner[:HEAD]) in ("gzip", "zip"):
                        self.skip(member, "an archive inside an archive")
                    else:
                        self.content(member, inner)
        except (OSError, EOFError, zipfile.BadZipFile) as exc:
            if re.search(r"\.(gz|tgz|zip)$", path, re.IGNORECASE):  # else: binary after all
                self.skip(path, f"cannot decompress ({type(exc).__name__})")

    def file(self, path: str, machine: Any, seen_as: str | None = None, detail: str = "") -> None:
        attrs = machine.files.attrs(path)
        shown = seen_as or path
        if attrs.get("unreadable"):
            if seen_as is None:
                self.stats["files"] += 1
            # as the script's Get-Why words the exception reading it throws
            error = str(attrs["unreadable"])
            self.skip(
                shown,
                "permission denied" if error == "UnauthorizedAccessException" else f"I/O error: {error}",
            )
            return
        data = machine.files.data(path) or b""
        size = int(attrs.get("size", len(data)))
        if seen_as is not None:  # through a link: location rules only (content is read at the target)
            self.locate(seen_as, data, size, detail)
            return
        self.stats["files"] += 1
        self.stats["bytes"] += size
        self.locate(path, data, size)
        if size > self.max_size:
            self.stats["skipped_large"] += 1
            self.skip(path, f"larger than the {self.max_size} bytes bound ({size} bytes)")
            return
        if data:
            self.content(path, data)

    def registry(self, registry: Any) -> None:
        """Registry values and certificate stores, as the script's providers read them."""
        for provider in self.providers:
            rule = self.rules[provider["rule"]]
            if provider.get("registry"):
                value = registry.get(provider["registry"], provider["value"])
                if value:
                    path = f"{provider['registry']}\\{provider['value']}"
                    self.add(rule, path, None, str(value).encode("utf-8"), shown=False)
            elif provider.get("certstore"):
                location, _, store = str(provider["certstore"]).partition("\\")
                if location.lower() != "localmachine":
                    continue
                key = CERT_STORE_KEY.format(store=store)
                for thumbprint in registry.subkeys(key):
                    if not registry.get(f"{key}\\{thumbprint}", "KeyProvInfo"):
                        continue  # HasPrivateKey is false
                    path = f"Cert:\\{provider['certstore']}\\{thumbprint}"
                    material = f"location\0{rule['id']}\0{path}\0{thumbprint}".encode()
                    subject = registry.get(f"{key}\\{thumbprint}", "Subject") or ""
                    self.add(rule, path, None, material, shown=False, detail=f"subject={subject}")

    def walk(self, machine: Any) -> None:
        """Every volume not on the resource disk, by its mount point; folder mounts inside a
        volume are walked as their own volumes; links followed for location rules only."""
        volumes = machine.state.volumes or [{"mount": SYSTEM_DRIVE, "disk": "os", "label": ""}]
        disks = {d["role"]: d for d in disks_of(machine)}
        mounts = sorted((v["mount"] for v in volumes), key=len, reverse=True)
        for volume in volumes:
            mount = volume["mount"]
            disk = disks.get(volume.get("disk", "data"), {"number": -1, "parent": "", "lun": -1})
            proof = resource_proof(disk) if disk["number"] >= 0 else ""
            root = mount + "\\" if len(mount) == 2 else mount
            self.stats["volumes"].append(
                {"mount": root, "disk": disk["number"], "label": volume.get("label", "")}
            )
            if proof:
                why = f"the Azure resource disk (disk {disk['number']}, {proof}): not part of the image"
                self.excluded.append({"path": root, "reason": why})
                continue
            for path in machine.files.files_under(mount):
                lower = path.lower()
                owner = next(m for m in mounts if lower.startswith(m.lower() + "\\"))
                if owner.lower() != mount.lower() or lower.startswith(tuple(d + "\\" for d in SKIPPED_DIRS)):
                    continue  # on another volume mounted in a folder of this one, or Windows' own
                link = machine.files.attrs(path).get("link")
                if link:
                    self.follow(path, str(link), machine)
                    continue
                self.file(path, machine)
        self.stats["excluded_paths"] = [e["path"] for e in self.excluded]

    def follow(self, link: str, target: str, machine: Any) -> None:
        """A junction or symbolic link: location rules see the files through it."""
        if machine.files.is_file(target):
            if self.path_rules(link):
                self.stats["symlinks_resolved"] += 1
                self.file(target, machine, seen_as=link, detail=f"symlink to {target}")
            return
        if self.ancestors is None or not self.ancestors.match(link):
            return
        self.stats["symlinks_resolved"] += 1
        for path in machine.files.files_under(target):
            self.file(
                path, machine, seen_as=link + path[len(target) :], detail=f"via symlink {link} -> {target}"
            )

    def document(self, started: float) -> dict[str, Any]:
        self.stats["elapsed"] = round(time.monotonic() - started, 3)
        self.stats["skipped_large_paths"] = [
            p for p, r in self.not_scanned.items() if r.startswith("larger than")
        ][:20]
        findings = sorted(self.findings.values(), key=lambda f: (f["rule"], f["path"], f["line"] or 0))
        return {
            "schema": 1, "complete": True, "findings": findings, "stats": self.stats, "errors": [],
            "not_scanned": [{"path": p, "reason": r} for p, r in self.not_scanned.items()],
            "not_scanned_total": self.not_scanned_total, "excluded": self.excluded,
        }  # fmt: skip


def _secret(match: re.Match[str], rule: dict[str, Any]) -> str:
    groups = rule.get("group") or 0
    if isinstance(groups, list):
        return next((match.group(g) for g in groups if match.group(g) is not None), "")
    return match.group(groups) or ""


def _path_rx(pattern: str) -> re.Pattern[str]:
    return re.compile(pattern.replace("@SYSDRIVE@", _SYSDRIVE_RE), re.IGNORECASE)


def _ancestors(directory: str) -> list[str]:
    parts = directory.split("\\")
    return ["\\".join(parts[:i]) for i in range(1, len(parts) + 1)]


class ScanScript:
    """Answers scan_windows.ps1 from the model's volumes, files and registry."""

    name = "scan"

    def matches(self, view: ScriptView) -> bool:
        return view.asks_all("HMACSHA256", "EnumerateFileSystemInfos")

    def run(self, call: ScriptCall) -> ScriptResult:
        started = time.monotonic()
        try:
            scan = _Scan(embedded_config(call.view))
        except (ScanConfigError, KeyError, re.error) as exc:
            return ScriptResult(errors=[PsError(str(exc), "InvalidData", "ScanConfig")], exit_code=1)
        machine = call.machine
        if not call.sleep(machine.state.scan_seconds):  # the walk of a large disk
            return ScriptResult(
                exit_code=1, errors=[PsError("The pipeline has been stopped.", "OperationStopped", "Scan")]
            )
        with machine.lock:
            scan.walk(machine)
            scan.registry(machine.registry)
        call.write_stderr(f"PROGRESS phase=done files={scan.stats['files']} elapsed=0.0s\n")
        return ScriptResult(stdout=json.dumps(scan.document(started), separators=(",", ":")))


HANDLERS: list[ScriptHandler] = [ScanScript()]
