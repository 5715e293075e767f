"""The Windows model's answer to imageready's sensitive-data scan (``scripts/scan_windows.ps1``).

The handler recognises the scan by what it asks for (``HMACSHA256`` and
``EnumerateFileSystemInfos``), decodes the configuration the engine embedded in the script
(``$ConfigBase64``: rules, compiled path patterns, the HMAC key) and applies it to the model's
files and registry as the script does on Windows: location rules by path, content rules by
regular expression on each text file's lines, values masked and fingerprinted here, never
returned in clear. The model has no event log (it yields nothing). Machine certificates live
where Windows keeps them, in the registry (``CERT_STORE_KEY``), one subkey per thumbprint; as the
model has no certificate blobs, a ``KeyProvInfo`` value stands for the private-key link inside the
blob (``HasPrivateKey``) and a ``Subject`` value for the subject.

Register it with ``azsim.windows.powershell.register_handler(ScanScript())`` (or list
``HANDLERS`` in ``default_handlers``).
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import json
import re
import time
from typing import Any

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
BINARY_EXTENSIONS = frozenset({
    ".exe", ".dll", ".sys", ".mui", ".cat", ".msi", ".msp", ".cab", ".pdb", ".etl", ".evtx", ".png",
    ".jpg", ".gif", ".ico", ".zip", ".7z", ".wim", ".vhd", ".vhdx", ".iso", ".dat", ".bin", ".pyc",
    ".lib", ".obj", ".ttf", ".otf", ".winmd", ".db", ".edb", ".jfm", ".pf",
})  # fmt: skip
KEY_LINE = re.compile(
    r"^[ \t\"'+]*(?:([A-Za-z0-9+/=]+)|[A-Za-z-]+: [^\"']*)?[ \t\"',+;]*(?:\\n)?[ \t\"',+;]*\r?$"
)
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


class _Scan:
    """One scan of one machine, following scan_windows.ps1 step by step."""

    def __init__(self, config: dict[str, Any]) -> None:
        self.key = bytes.fromhex(config["key"])
        self.max_size = int(config["max_file_size"])
        self.examples: list[str] = list(config.get("examples") or [])
        self.rules: list[dict[str, Any]] = config["rules"]
        for rule in self.rules:
            flags = re.IGNORECASE if rule.get("ignore_case") else 0
            rule["rx"] = re.compile(rule["pattern"], flags) if rule.get("pattern") else None
            ignore = rule.get("ignore_values")
            rule["ignore_rx"] = re.compile(f"^({ignore})$", re.IGNORECASE) if ignore else None
            exclude = rule.get("exclude_re")
            rule["excl_rx"] = _path_rx(exclude) if exclude else None
        self.grep_rules = [r for r in self.rules if r["mode"] == "grep"]
        self.globs = [
            (g, _path_rx(g["path_re"]), _path_rx(g["dir_re"]) if g.get("dir_re") else None)
            for g in config.get("globs") or []
        ]
        self.providers: list[dict[str, Any]] = list(config.get("providers") or [])
        self.findings: dict[tuple[str, str, Any, str], dict[str, Any]] = {}
        self.stats: dict[str, Any] = {
            "engine": "azsim-windows-model", "files": 0, "dirs": 0, "bytes": 0,
            "content_files": 0, "content_bytes": 0, "skipped_large": 0, "skipped_large_paths": [],
            "excluded_paths": [], "suppressed_examples": 0, "suppressed_package_files": 0,
            "candidate_lines": 0,
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
        return True

    def block_body(self, lines: list[str], index: int, rest: str, end: str) -> str | None:
        if end in rest:
            parts = rest[: rest.index(end)].replace("\\n", "\n").split("\n")
        else:
            parts = rest.replace("\\n", "\n").split("\n")
            for line in lines[index + 1 : index + 401]:
                if end in line:
                    parts.append(line[: line.index(end)])
                    break
                if not KEY_LINE.match(line):
                    return None
                parts.append(line)
            else:
                return None
        body = []
        for part in parts:
            match = KEY_LINE.match(part.replace("\\n", ""))
            if match is None:
                return None
            body.append(match.group(1) or "")
        value = "".join(body)
        return value if len(value) >= 64 else None

    def lines(self, rules: list[dict[str, Any]], path: str, lines: list[str]) -> None:
        for index, line in enumerate(lines):
            for rule in rules:
                for match in rule["rx"].finditer(line):
                    value = match.group(int(rule.get("group") or 0)) or ""
                    if rule.get("block_end"):
                        body = self.block_body(lines, index, line[match.end() :], rule["block_end"])
                        if body is None:
                            continue
                        value = body
                    if not self.accept(rule, value):
                        continue
                    detail = ""
                    if rule.get("detail_group"):
                        detail = f"{rule['detail_label']}={match.group(rule['detail_group'])}"
                    self.add(rule, path, index + 1, value.encode("utf-8"), detail=detail)

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

    def file(self, path: str, text: str) -> None:
        data = text.encode("utf-8")
        self.stats["files"] += 1
        self.stats["bytes"] += len(data)
        for rule in self.path_rules(path):
            if rule["mode"] == "presence":
                if not data:
                    continue
                digest = (
                    hashlib.sha256(data).hexdigest() if len(data) <= self.max_size else f"size:{len(data)}"
                )
                material = f"location\0{rule['id']}\0{path}\0{digest}".encode()
                self.add(rule, path, None, material, shown=False, length=len(data))
            elif len(data) <= self.max_size:
                self.lines([rule], path, re.split(r"\r?\n", text))
        if len(data) > self.max_size:
            self.stats["skipped_large"] += 1
            self.stats["skipped_large_paths"] = (self.stats["skipped_large_paths"] + [path])[:20]
            return
        extension = "." + path.rsplit(".", 1)[-1].lower() if "." in path.rsplit("\\", 1)[-1] else ""
        if not data or extension in BINARY_EXTENSIONS or "\0" in text[:8192]:
            return
        self.stats["content_files"] += 1
        self.stats["content_bytes"] += len(data)
        if any(rule["rx"].search(text) for rule in self.grep_rules):
            lines = re.split(r"\r?\n", text)
            self.stats["candidate_lines"] += len(lines)
            self.lines(self.grep_rules, path, lines)

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

    def document(self, started: float) -> dict[str, Any]:
        self.stats["elapsed"] = round(time.monotonic() - started, 3)
        findings = sorted(self.findings.values(), key=lambda f: (f["rule"], f["path"], f["line"] or 0))
        return {
            "schema": 1, "complete": True, "findings": findings, "stats": self.stats, "errors": [],
        }  # fmt: skip


def _path_rx(pattern: str) -> re.Pattern[str]:
    return re.compile(pattern.replace("@SYSDRIVE@", _SYSDRIVE_RE), re.IGNORECASE)


def _ancestors(directory: str) -> list[str]:
    parts = directory.split("\\")
    return ["\\".join(parts[:i]) for i in range(1, len(parts) + 1)]


class ScanScript:
    """Answers scan_windows.ps1 from the model's files and registry."""

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
        with machine.lock:
            files = [
                (path, machine.files.read(path) or "")
                for path in machine.files.files_under(SYSTEM_DRIVE)
                if not path.lower().startswith(tuple(d + "\\" for d in SKIPPED_DIRS))
            ]
            scan.registry(machine.registry)
        for path, text in files:
            scan.file(path, text)
        call.write_stderr(f"PROGRESS phase=done files={scan.stats['files']} elapsed=0.0s\n")
        return ScriptResult(stdout=json.dumps(scan.document(started), separators=(",", ":")))


HANDLERS: list[ScriptHandler] = [ScanScript()]
