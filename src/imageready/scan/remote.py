"""The scan on a guest: the guest programs with their configuration embedded (Linux:
``scripts/scan_linux.py`` on stdin with a POSIX ``sh`` fallback; Windows:
``scripts/scan_windows.ps1``), run read-only through a :class:`~imageready.guest.base.Guest`
before a deadline, and their JSON read back.
"""

from __future__ import annotations

import base64
import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from imageready.guest.base import Guest, GuestError
from imageready.redact import one_line
from imageready.scan.findings import DeprovisionContext, ScanResult, parse_scan_output
from imageready.scan.patterns import compile_glob, ere_for_grep, fold_case
from imageready.scan.rules import Rule, rules_for
from imageready.text import decode_guest, guest_json

SCRIPTS_DIR = Path(__file__).parent.parent / "scripts"
#: files larger than this are listed as not scanned (below it every file is read in full, in
#: chunks: grep streams, the guest programs read 16 MiB at a time)
DEFAULT_MAX_FILE_SIZE = 8 * 1024**3
#: compressed files and archives are expanded up to this many bytes; past it, not scanned
DEFAULT_MAX_EXPANDED = 256 * 1024**2
#: not-scanned entries a guest lists one by one (it counts them all)
NOT_SCANNED_LIMIT = 500
#: seconds kept between the guest program's own deadline and the transport's
DEADLINE_MARGIN = 20.0
#: file systems that never reach the OS disk image (by type, from /proc/mounts)
EXCLUDED_FSTYPES = (
    "proc", "sysfs", "devtmpfs", "devpts", "tmpfs", "ramfs", "cgroup", "cgroup2", "securityfs",
    "debugfs", "tracefs", "configfs", "fusectl", "mqueue", "hugetlbfs", "pstore", "bpf",
    "binfmt_misc", "autofs", "efivarfs", "rpc_pipefs", "nsfs", "overlay", "squashfs", "nfs",
    "nfs4", "cifs", "smb3", "9p", "iso9660", "udf",
)  # fmt: skip


def _guest_config(
    rules: list[Rule],
    key: bytes,
    os_type: str,
    budget: float,
    max_file_size: int,
    max_expanded: int = DEFAULT_MAX_EXPANDED,
) -> dict[str, Any]:
    entries: list[dict[str, Any]] = []
    globs: list[dict[str, Any]] = []
    providers: list[dict[str, Any]] = []
    for index, rule in enumerate(rules):
        excludes = [compile_glob(g, os_type) for g in rule.exclude]
        exclude_re = "|".join(f"({e['path_re']})" for e in excludes if e and "path_re" in e)
        group = rule.secret_group
        entries.append(
            {
                "id": rule.id, "mode": rule.mode, "pattern": rule.pattern,
                "ignore_case": rule.ignore_case,
                "group": list(group) if isinstance(group, tuple) else group,
                "detail_group": rule.detail_group, "detail_label": rule.detail_label,
                "keywords": list(rule.keywords), "ignore_values": rule.ignore_values,
                "decode": rule.decode, "block_end": rule.block_end, "multiline": rule.multiline,
                "exclude_re": exclude_re or None,
                "ere": ere_for_grep(rule) if rule.mode == "grep" else None,
            }
        )  # fmt: skip
        for glob in rule.paths:
            compiled = compile_glob(glob, os_type)
            if compiled is None:
                continue
            compiled["rule"] = index
            (providers if "path_re" not in compiled else globs).append(compiled)
    return {
        "schema": 1, "key": key.hex(), "budget": round(budget, 1), "max_file_size": max_file_size,
        "max_expanded": max_expanded, "not_scanned_limit": NOT_SCANNED_LIMIT,
        "rules": entries, "globs": globs, "providers": providers,
        "examples": sorted({e for r in rules for e in r.examples}),
        "exclude_fstypes": list(EXCLUDED_FSTYPES), "progress_interval": 2.0,
    }  # fmt: skip


def linux_program(
    rules: list[Rule],
    key: bytes,
    *,
    root: str = "/",
    max_file_size: int = DEFAULT_MAX_FILE_SIZE,
    max_expanded: int = DEFAULT_MAX_EXPANDED,
    deadline: float = 600.0,
    grep_max: int | None = None,
) -> bytes:
    """What goes on stdin for the Linux scan: the Python program with its configuration, and
    the same configuration as ``#SH`` comment lines for the POSIX fallback. ``deadline`` is in
    seconds from the program's start (the guest's own clock)."""
    rules = rules_for("Linux", rules)
    config = _guest_config(rules, key, "Linux", deadline, max_file_size, max_expanded)
    config["root"] = root
    if grep_max is not None:  # files past it are streamed by the program, not given to grep
        config["grep_max"] = grep_max
    encoded = base64.b64encode(json.dumps(config, sort_keys=True).encode()).decode()
    source = (SCRIPTS_DIR / "scan_linux.py").read_text(encoding="utf-8")
    placeholder = "CONFIG = None  # the engine replaces this line"
    if placeholder not in source:
        raise RuntimeError("scan_linux.py lost its CONFIG placeholder")
    program = source.replace(placeholder, f"CONFIG = {encoded!r}", 1)
    return (program + _fallback_data(config)).encode("utf-8")


def _fallback_data(config: dict[str, Any]) -> str:
    """The configuration as ``#SH`` lines for scan_linux.sh (one record per line, the regex or
    value last so that it may contain spaces)."""
    lines = [
        "#SH key " + config["key"],
        f"#SH budget {int(config['budget'])}",
        f"#SH maxsize {config['max_file_size']}",
        f"#SH maxexp {config['max_expanded']}",
        f"#SH limit {config['not_scanned_limit']}",
        "#SH root " + config["root"],
        "#SH fstypes " + " ".join(config["exclude_fstypes"]),
    ]
    for index, rule in enumerate(config["rules"]):
        lines.append(
            f"#SH rule {index} {rule['id']} {rule['mode']} "
            f"{','.join(map(str, rule['group'])) if isinstance(rule['group'], list) else rule['group']} "
            f"{rule['detail_group'] or 0} {rule['detail_label'] or '-'} {rule['decode'] or '-'} "
            f"{'block' if rule['block_end'] else '-'} {'multi' if rule['multiline'] else '-'}"
        )
        fold = fold_case if rule["ignore_case"] else str
        if rule["pattern"]:
            lines.append(f"#SH ere {index} {fold(rule['pattern'])}")
        if rule["multiline"]:
            lines.append(f"#SH kw {index} {rule['ere']}")
        if rule["ignore_values"]:
            lines.append(f"#SH ignore {index} {fold_case(rule['ignore_values'])}")
        if rule["exclude_re"]:
            lines.append(f"#SH exclude {index} {rule['exclude_re']}")
    for glob in config["globs"]:
        lines.append(f"#SH glob {glob['rule']} {glob['path_re']}")
        if glob.get("ancestors_re"):
            lines.append(f"#SH anc {glob['ancestors_re']}")
    for example in config["examples"]:
        lines.append("#SH example " + example)
    return "\n" + "\n".join(lines) + "\n"


def linux_script(run_first: str | None = None) -> str:
    """The ``sh -c`` script: python3 reads the program from stdin; without python3 the POSIX
    fallback reads the ``#SH`` lines. ``run_first`` runs before the scan in the same session,
    with stdin closed; its output reaches stderr as ``RUN_FIRST`` lines, then its exit code."""
    head = ["IMAGEREADY_T0=${IMAGEREADY_T0:-$(date +%s)}; export IMAGEREADY_T0"]
    if run_first:
        head.append(
            f'{{ {{ {run_first}\n}} </dev/null 2>&1; echo "RUN_FIRST_EXIT $?"; }}'
            " | sed 's/^/RUN_FIRST /' >&2"
        )
    head.append("if command -v python3 >/dev/null 2>&1; then exec python3 -I -; fi")
    fallback = (SCRIPTS_DIR / "scan_linux.sh").read_text(encoding="utf-8")
    return "\n".join(head) + "\n" + fallback


def windows_script(
    rules: list[Rule],
    key: bytes,
    *,
    max_file_size: int = DEFAULT_MAX_FILE_SIZE,
    max_expanded: int = DEFAULT_MAX_EXPANDED,
    deadline: float,
) -> str:
    """The PowerShell scan with its configuration embedded (it travels on stdin, never argv)."""
    rules = rules_for("Windows", rules)
    config = _guest_config(rules, key, "Windows", deadline, max_file_size, max_expanded)
    encoded = base64.b64encode(json.dumps(config, sort_keys=True).encode()).decode()
    source = (SCRIPTS_DIR / "scan_windows.ps1").read_text(encoding="utf-8")
    placeholder = "$ConfigBase64 = ''  # the engine replaces this line"
    if placeholder not in source:
        raise RuntimeError("scan_windows.ps1 lost its configuration placeholder")
    return source.replace(placeholder, f"$ConfigBase64 = '{encoded}'", 1)


# --- running ------------------------------------------------------------------------------------


def scan_guest(
    guest: Guest,
    rules: list[Rule],
    *,
    key: bytes,
    deadline: float,
    context: DeprovisionContext,
    progress: Callable[[str], None] | None = None,
    run_first: str | None = None,
    max_file_size: int = DEFAULT_MAX_FILE_SIZE,
) -> ScanResult:
    """Scan ``guest`` read-only. ``deadline`` is a ``time.monotonic()`` value; the guest
    program stops itself before it and reports ``complete: false``. Transport failures come
    back as an incomplete result with one error line, never as a clean one.

    ``run_first`` (Linux) is a shell command run in the same session just before the scan,
    e.g. ``waagent -force -deprovision+user``: the scan then sees the post-action disk."""
    os_type = guest.os_type
    result = ScanResult(os_type=os_type)
    if guest.read_only:
        # Run Command writes every script it runs to the guest's disk (its extension's download
        # directory, so into the image) and keeps it in Azure: the scan carries the fingerprint key
        result.errors.append(
            f"scan: the sensitive-data scan needs an SSH or WinRM session, not {guest.transport} "
            "(which would leave the scan program, fingerprint key included, on the guest's disk)"
        )
        return result
    budget = deadline - time.monotonic() - DEADLINE_MARGIN
    if budget < 5:
        result.errors.append("scan: no time left before the deadline")
        return result
    if os_type == "Linux":
        script, stdin = (
            linux_script(run_first),
            linux_program(rules, key, max_file_size=max_file_size, deadline=budget),
        )
    else:
        if run_first:
            raise ValueError("run_first is for Linux guests")
        script, stdin = (
            windows_script(rules, key, max_file_size=max_file_size, deadline=budget),
            b"",
        )
    try:
        outcome = guest.run(
            script,
            timeout=budget + DEADLINE_MARGIN / 2,
            stdin=stdin,
            elevated=True,
            on_progress=progress,
        )
    except GuestError as err:
        result.errors.append(f"scan: {err}")
        return result
    stderr = outcome.stderr.decode("utf-8", errors="replace")
    document = _last_json(outcome.stdout)
    if document is None:
        reasons = [one_line(ln) for ln in stderr.splitlines() if ln.startswith("ERROR ")]
        reason = reasons[-1] if reasons else f"exit code {outcome.exit_code}, no JSON on stdout"
        result.errors.append(f"scan produced no result: {reason}")
        return result
    return parse_scan_output(document, os_type, context, stderr=stderr, stats=result.stats)


def _last_json(stdout: bytes) -> dict[str, Any] | None:
    # a file name that is not UTF-8 comes back escaped (\xff), never as a lone surrogate
    for line in reversed(decode_guest(stdout).strip().splitlines()):
        if line.startswith("{"):
            try:
                document = guest_json(line)
            except ValueError:
                return None
            return document if isinstance(document, dict) else None
    return None
