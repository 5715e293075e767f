"""Sensitive-data scan: rules as data, one read-only pass on the guest, redacted on the guest.

The engine loads rules (``policy/scan_rules.yaml`` plus a user's ``--scan-rules FILE``), builds
the guest program (Linux: ``scripts/scan_linux.py`` on stdin with a POSIX ``sh`` fallback;
Windows: ``scripts/scan_windows.ps1``), runs it through a :class:`~imageready.guest.base.Guest`,
and turns its JSON into :class:`Finding` objects that say whether the chosen action removes them.

A finding never holds a secret: the guest sends rule, path, line, length, at most the first four
characters (none for values under 12) and a keyed HMAC fingerprint. The key (see
:func:`fingerprint_key`) travels inside the program on stdin and is never written to any output.

Nothing is skipped in silence: the guest reports the mount points it left out and why
(:class:`Excluded`: file systems off the image, the resource disk proven by its device) and every
path it could not read in full and why (:class:`NotScanned`); :meth:`ScanResult.coverage` turns
the latter into an incomplete scan unless a waiver names each path.
"""

from __future__ import annotations

import base64
import binascii
import json
import os
import re
import secrets
import time
from collections.abc import Callable, Collection, Iterable, Mapping
from dataclasses import dataclass, field, fields
from pathlib import Path, PurePosixPath
from typing import Any, Literal

import yaml

from imageready.gate import Waiver, WaiverBook
from imageready.guest.base import Guest, GuestError
from imageready.redact import one_line, redact, register_secret
from imageready.text import decode_guest, guest_json, printable

RULES_FILE = Path(__file__).with_name("policy") / "scan_rules.yaml"
SCRIPTS_DIR = Path(__file__).with_name("scripts")
KEY_ENV = "IMAGEREADY_FINGERPRINT_KEY"
#: the check id of the sensitive-data scan (waivers name it)
SCAN_CHECK_ID = "IR-SCAN"
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

Severity = Literal["critical", "high", "medium", "low"]
RuleOs = Literal["Linux", "Windows", "any"]
Action = Literal["waagent-deprovision+user", "sysprep", "none"]
_ID = re.compile(r"^[a-z0-9][a-z0-9-]{1,62}$")
_GLOB_ROOTS = ("/", "~/", "**/", "HKLM:/", "Cert:/")
_ERE_SPECIAL = set(".[]{}()*+?|^$\\")


class ScanRulesError(ValueError):
    """A rule file that cannot be used; the message is one line naming the file and rule."""


class ScanKeyError(RuntimeError):
    """The fingerprint key cannot be read or created; one line, never the key."""


@dataclass(frozen=True)
class Rule:
    """One sensitive-data rule. ``kind`` says what the report calls it; the matching mode
    follows from the data: ``paths`` only (a file that must not exist), ``paths`` and
    ``pattern`` (a pattern in those files), ``pattern`` and ``keywords`` (anywhere)."""

    id: str
    title: str
    severity: Severity
    os: RuleOs
    kind: Literal["location", "content"]
    rationale: str
    source: str
    checklist: tuple[str, ...] = ()
    paths: tuple[str, ...] = ()
    exclude: tuple[str, ...] = ()
    pattern: str | None = None
    ignore_case: bool = False
    #: the group holding the value; a list: the first of them that took part in the match
    #: (a pattern with one branch per quoting style, say)
    secret_group: int | tuple[int, ...] = 0
    detail_group: int | None = None
    detail_label: str = ""
    keywords: tuple[str, ...] = ()
    ignore_values: str | None = None
    decode: Literal["unattend-password", "basic-auth"] | None = None
    block_end: str | None = None
    #: the pattern may span lines: line breaks are read as spaces (XML elements, say)
    multiline: bool = False
    #: published example values; a match containing one is suppressed
    examples: tuple[str, ...] = ()
    #: the rule file it came from
    origin: str = "built-in"

    @property
    def mode(self) -> Literal["presence", "pattern", "grep"]:
        if self.pattern is None:
            return "presence"
        return "pattern" if self.paths else "grep"


# --- loading ------------------------------------------------------------------------------------


def load_rules(extra_file: Path | None = None) -> list[Rule]:
    """The built-in rules, plus (and minus ``disable:``) those of ``extra_file``."""
    rules, examples, _ = _read_rule_file(RULES_FILE, "built-in")
    if extra_file is not None:
        extra, extra_examples, disabled = _read_rule_file(Path(extra_file), str(extra_file))
        known = {r.id for r in rules}
        for rule in extra:
            if rule.id in known:
                raise ScanRulesError(
                    f"--scan-rules {extra_file}: rule {rule.id!r} already exists; "
                    "disable the built-in one (disable: [id]) and give yours another id"
                )
        approved = approved_disables(disabled, f"--scan-rules {extra_file}")
        unknown = sorted(set(approved) - known)
        if unknown:
            raise ScanRulesError(f"--scan-rules {extra_file}: disable: no rule {unknown[0]!r}")
        rules = [r for r in rules if r.id not in approved] + extra
        examples += extra_examples
    ordered = tuple(dict.fromkeys(examples))
    return [_replace(r, examples=ordered) if r.mode != "presence" else r for r in rules]


DISABLE_KEYS = ("rule", "reason", "approver", "expires")


def approved_disables(entries: list[Any], where: str) -> dict[str, dict[str, str]]:
    """The built-in rules a rule file switches off, each with its approval: switching a rule off
    is a change of policy, so, like a waiver, it names a reason, an approver and an expiry
    (``{rule, reason, approver, expires}``). A bare id, or an approval past its expiry, is refused:
    the rule stays on until someone approves again."""
    import datetime as dt

    from imageready.gate import WaiverError, parse_expiry

    approved: dict[str, dict[str, str]] = {}
    now = dt.datetime.now(dt.UTC)
    for index, entry in enumerate(entries, 1):
        at = f"{where}: disable {index}"
        if isinstance(entry, str):
            raise ScanRulesError(
                f"{at}: {entry!r} needs an approval: write {{rule: {entry}, reason: ..., approver: ..., "
                "expires: YYYY-MM-DD}} (switching a built-in rule off is a policy change, like a waiver)"
            )
        if not isinstance(entry, dict):
            raise ScanRulesError(f"{at}: expected {{rule, reason, approver, expires}}")
        unknown = sorted(set(entry) - set(DISABLE_KEYS))
        if unknown:
            raise ScanRulesError(f"{at}: unknown key {unknown[0]!r}")
        for key in ("rule", "reason", "approver"):
            if not str(entry.get(key) or "").strip():
                raise ScanRulesError(f"{at}: {key!r} is required")
        try:
            expires = parse_expiry(entry.get("expires"), at)
        except WaiverError as exc:
            raise ScanRulesError(str(exc)) from None
        rule = str(entry["rule"]).strip()
        if now >= expires:
            raise ScanRulesError(
                f"{at}: the approval to disable {rule!r} by {str(entry['approver']).strip()} expired "
                f"{expires:%Y-%m-%d}: renew it or remove the entry (the rule stays on)"
            )
        approved[rule] = {
            "rule": rule,
            "reason": str(entry["reason"]).strip(),
            "approver": str(entry["approver"]).strip(),
            "expires": expires.isoformat(),
        }
    return approved


def rules_for(os_type: str, rules: Iterable[Rule]) -> list[Rule]:
    """The rules that apply to a guest of ``os_type`` (``"Linux"`` or ``"Windows"``)."""
    return [
        r
        for r in rules
        if r.os in (os_type, "any") and (not r.paths or any(_applies(g, os_type) for g in r.paths))
    ]


def _replace(rule: Rule, **changes: Any) -> Rule:
    values = {f.name: getattr(rule, f.name) for f in fields(Rule)}
    values.update(changes)
    return Rule(**values)


def _read_rule_file(path: Path, origin: str) -> tuple[list[Rule], list[str], list[str]]:
    where = "scan rules" if origin == "built-in" else f"--scan-rules {path}"
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise ScanRulesError(f"{where}: cannot read: {exc.strerror}") from None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        at = f" (line {mark.line + 1})" if mark is not None else ""
        raise ScanRulesError(f"{where}: not valid YAML{at}") from None
    if not isinstance(data, dict) or not isinstance(data.get("rules", []), list):
        raise ScanRulesError(f"{where}: expected a mapping with a 'rules' list")
    unknown = sorted(set(data) - {"version", "rules", "known_examples", "disable"})
    if unknown:
        raise ScanRulesError(f"{where}: unknown key {unknown[0]!r}")
    if data.get("version", 1) != 1:
        raise ScanRulesError(f"{where}: version {data.get('version')!r} is not supported (1)")
    examples = []
    for index, entry in enumerate(data.get("known_examples") or [], 1):
        value = entry.get("value") if isinstance(entry, dict) else entry
        if not isinstance(value, str) or len(value) < 16:
            raise ScanRulesError(f"{where}: known_examples {index}: value of 16+ characters needed")
        examples.append(value)
    disabled = data.get("disable") or []
    if not isinstance(disabled, list):
        raise ScanRulesError(f"{where}: disable: expected a list of approved rule ids")
    rules: list[Rule] = []
    for index, entry in enumerate(data.get("rules") or [], 1):
        rule = _parse_rule(entry, f"{where}: rule {index}", origin)
        if any(r.id == rule.id for r in rules):
            raise ScanRulesError(f"{where}: rule {rule.id!r} is defined twice")
        rules.append(rule)
    return rules, examples, disabled


_STR_FIELDS = {"id", "title", "severity", "os", "kind", "rationale", "source", "pattern",
               "detail_label", "ignore_values", "decode", "block_end"}  # fmt: skip
_LIST_FIELDS = {"checklist", "paths", "exclude", "keywords"}
_CHOICES: dict[str, tuple[str, ...]] = {
    "severity": ("critical", "high", "medium", "low"),
    "os": ("Linux", "Windows", "any"),
    "kind": ("location", "content"),
    "decode": ("unattend-password", "basic-auth"),
}


def _parse_rule(entry: object, where: str, origin: str) -> Rule:
    if not isinstance(entry, dict):
        raise ScanRulesError(f"{where}: expected a mapping")
    if isinstance(entry.get("id"), str):
        where = f"{where.rsplit(': rule', 1)[0]}: rule {entry['id']!r}"
    allowed = _STR_FIELDS | _LIST_FIELDS | {"ignore_case", "multiline", "secret_group", "detail_group"}
    unknown = sorted(set(entry) - allowed)
    if unknown:
        raise ScanRulesError(f"{where}: unknown key {unknown[0]!r}")
    values: dict[str, Any] = {"origin": origin}
    for name in ("id", "title", "severity", "os", "kind", "rationale", "source"):
        if not isinstance(entry.get(name), str) or not entry[name].strip():
            raise ScanRulesError(f"{where}: {name!r} is required (a string)")
    for name, value in entry.items():
        if name in _STR_FIELDS:
            if not isinstance(value, str):
                raise ScanRulesError(f"{where}: {name!r} must be a string")
            if name in _CHOICES and value not in _CHOICES[name]:
                raise ScanRulesError(f"{where}: {name} must be one of {', '.join(_CHOICES[name])}")
            values[name] = value.strip() if name in {"title", "rationale", "source"} else value
        elif name in _LIST_FIELDS:
            if not isinstance(value, list) or not all(isinstance(v, str) and v for v in value):
                raise ScanRulesError(f"{where}: {name!r} must be a list of strings")
            values[name] = tuple(value)
        elif name in ("ignore_case", "multiline"):
            if not isinstance(value, bool):
                raise ScanRulesError(f"{where}: {name!r} must be true or false")
            values[name] = value
        elif name == "secret_group" and isinstance(value, list):
            if not value or not all(isinstance(v, int) and not isinstance(v, bool) and v > 0 for v in value):
                raise ScanRulesError(f"{where}: 'secret_group' must be a group number or a list of them")
            values[name] = tuple(value)
        elif value is not None:
            if not isinstance(value, int) or isinstance(value, bool) or value < 0:
                raise ScanRulesError(f"{where}: {name!r} must be a group number")
            values[name] = value
    if not _ID.match(values["id"]):
        raise ScanRulesError(f"{where}: id must be lowercase letters, digits and '-'")
    rule = Rule(**values)
    _check_rule(rule, where)
    return rule


def _check_rule(rule: Rule, where: str) -> None:
    if rule.kind == "location" and not rule.paths:
        raise ScanRulesError(f"{where}: a location rule needs 'paths'")
    if rule.kind == "content" and rule.pattern is None:
        raise ScanRulesError(f"{where}: a content rule needs 'pattern'")
    if rule.mode == "grep" and not all(len(k) >= 2 for k in rule.keywords or ("",)):
        raise ScanRulesError(f"{where}: a content rule without 'paths' needs 'keywords' (2+ characters each)")
    if rule.multiline and (rule.mode != "grep" or rule.block_end):
        raise ScanRulesError(f"{where}: 'multiline' is for content rules with keywords, without block_end")
    for glob in rule.paths + rule.exclude:
        problem = _glob_problem(glob)
        if problem:
            raise ScanRulesError(f"{where}: path {glob!r}: {problem}")
    for name in ("pattern", "ignore_values"):
        text = getattr(rule, name)
        problem = pattern_problem(text) if text is not None else None
        if problem:
            raise ScanRulesError(f"{where}: {name}: {problem}")
    if rule.pattern is not None:
        groups = re.compile(rule.pattern).groups
        for name in ("secret_group", "detail_group"):
            wanted = getattr(rule, name)
            for group in wanted if isinstance(wanted, tuple) else (wanted,):
                if group is not None and group > groups:
                    raise ScanRulesError(f"{where}: {name} {group} but the pattern has {groups} groups")
                if group is not None and group > 8:
                    # the sh fallback takes groups with sed, which numbers them \1 to \9 (one is its own)
                    raise ScanRulesError(f"{where}: {name} {group}: groups above 8 are not portable")
        if rule.detail_group is not None:
            problem = _detail_overlaps_secret(rule.pattern, rule.detail_group, rule.secret_group)
            if problem:
                raise ScanRulesError(f"{where}: detail_group {rule.detail_group} {problem}")


def _detail_overlaps_secret(pattern: str, detail: int, secret: int | tuple[int, ...] | None) -> str | None:
    """The detail group is shown in full in every report (the secret group only masked): it may
    neither hold nor sit inside a secret group, nor match inside a lookaround (where it may cover
    any text, the secret's included)."""
    import re._parser as sre  # type: ignore[import-not-found]  # the stdlib's own parser (3.11+)

    ancestors: dict[int, tuple[int, ...]] = {}
    in_lookaround: set[int] = set()

    def walk(node: Any, outer: tuple[int, ...], look: bool) -> None:
        for op, av in node:
            if op is sre.SUBPATTERN:
                group, _, _, sub = av
                inner = (*outer, group) if group else outer
                if group:
                    ancestors[group] = outer
                    if look:
                        in_lookaround.add(group)
                walk(sub, inner, look)
            elif op in (sre.ASSERT, sre.ASSERT_NOT):
                walk(av[1], outer, True)
            elif op is sre.BRANCH:
                for sub in av[1]:
                    walk(sub, outer, look)
            elif op in (sre.MAX_REPEAT, sre.MIN_REPEAT, sre.POSSESSIVE_REPEAT):
                walk(av[2], outer, look)
            elif op is sre.ATOMIC_GROUP:
                walk(av, outer, look)
            elif op is sre.GROUPREF_EXISTS:
                walk(av[1], outer, look)
                if av[2] is not None:
                    walk(av[2], outer, look)

    walk(sre.parse(pattern), (), False)
    secrets = secret if isinstance(secret, tuple) else (() if secret is None else (secret,))
    if detail in in_lookaround:
        return "is inside a lookaround: it could show any part of the line, the secret's included"
    for group in secrets:
        if group == 0:
            return "overlaps the secret, which is the whole match (secret_group 0)"
        if group == detail or detail in ancestors.get(group, ()) or group in ancestors.get(detail, ()):
            return f"overlaps secret group {group}: the detail is shown unmasked"
    return None


def _glob_problem(glob: str) -> str | None:
    if not glob.startswith(_GLOB_ROOTS) and not re.match(r"^[A-Za-z]:/", glob):
        return "must start with /, ~/, **/, a drive (C:/), HKLM:/ or Cert:/"
    if "\\" in glob or "/../" in glob + "/" or "//" in glob:
        return "use '/' as separator, no '..' or empty components"
    if "**" in glob.replace("/**/", "/").replace("**/", "").removesuffix("/**"):
        return "'**' must be a whole component"
    return None


def pattern_problem(pattern: str) -> str | None:
    """Why ``pattern`` is outside the subset shared by Python ``re``, .NET and POSIX ERE
    (None when it is inside it)."""
    if re.search(r"\[\[[:=.]", pattern):
        return "no POSIX classes like [:alpha:] (Python and .NET lack them)"
    try:
        re.compile(pattern)
        re.compile(pattern.encode())
    except (re.error, UnicodeEncodeError) as exc:
        return f"does not compile: {exc}"
    i, size = 0, len(pattern)
    last = ""  # "" start, "(" group opened, "|" alternative, "q" quantifier, "a" atom
    while i < size:
        char = pattern[i]
        if char == "[":
            j = i + 1 + (pattern[i + 1 : i + 2] == "^")
            j += pattern[j : j + 1] == "]"  # a leading ']' is literal in every dialect
            while j < size and pattern[j] != "]":
                if pattern[j] == "\\":
                    return "no backslash inside [...] (POSIX takes it literally)"
                if pattern[j] == "[" and pattern[j + 1 : j + 2] in (":", "=", "."):
                    return "no POSIX classes like [:alpha:] (Python and .NET lack them)"
                j += 1
            i, last = j + 1, "a"
            continue
        if char == "\\":
            escaped = pattern[i + 1 : i + 2]
            if escaped not in _ERE_SPECIAL:
                return f"escape \\{escaped} is not portable: use [...] or escape punctuation only"
            i, last = i + 2, "a"
            continue
        if char == "(" and pattern[i + 1 : i + 2] == "?":
            return "no (?...) groups, flags or look-around (use ignore_case and plain groups)"
        if char in "*+?{":
            if last == "q":
                return "no lazy, possessive or stacked quantifiers"
            if last in ("", "(", "|"):
                return "a quantifier needs something to repeat"
            if char == "{":
                braces = re.match(r"\{[0-9]+(,[0-9]*)?\}", pattern[i:])
                if not braces:
                    return "braces must be {n}, {n,} or {n,m}"
                i += len(braces.group()) - 1
            last = "q"
        elif char in "|)" and last in ("", "(", "|"):
            return "no empty alternatives or groups"
        else:
            last = {"(": "(", "|": "|"}.get(char, "a")
        i += 1
    return "no empty alternatives or groups" if last == "|" else None


def ere_for_grep(rule: Rule) -> str:
    """The rule's pattern as one POSIX ERE with ``ignore_case`` folded into bracket expressions,
    so that a single ``grep -E`` pass over all rules keeps each rule's own case semantics.

    Upper bounds are dropped (``{0,64}`` becomes ``*``): grep only picks candidate lines, so a
    superset is fine, and its DFA pays for every counted copy, while the bound is there for the
    backtracking engines (Python, .NET) that apply the exact pattern to those lines."""
    assert rule.pattern is not None
    if rule.multiline:  # grep sees one line: it picks the lines holding a keyword
        alternation = "|".join(_ere_escape(k) for k in rule.keywords)
        return _fold_case(alternation) if rule.ignore_case else alternation
    return _widen_bounds(_fold_case(rule.pattern) if rule.ignore_case else rule.pattern)


def _widen_bounds(pattern: str) -> str:
    out, i = [], 0
    while i < len(pattern):
        char = pattern[i]
        if char == "\\":
            out.append(pattern[i : i + 2])
            i += 2
        elif char == "[":
            start = i + 1 + (pattern[i + 1] == "^")
            end = pattern.index("]", start + 1)
            out.append(pattern[i : end + 1])
            i = end + 1
        elif char == "{":
            end = pattern.index("}", i)
            low, comma, _ = pattern[i + 1 : end].partition(",")
            out.append("*" if comma and low == "0" else f"{{{low},}}" if comma else pattern[i : end + 1])
            i = end + 1
        else:
            out.append(char)
            i += 1
    return "".join(out)


def _fold_case(pattern: str) -> str:
    out, i = [], 0
    while i < len(pattern):
        char = pattern[i]
        if char == "\\":
            out.append(pattern[i : i + 2])
            i += 2
        elif char == "{":
            end = pattern.index("}", i)
            out.append(pattern[i : end + 1])
            i = end + 1
        elif char == "[":
            start = i + 1 + (pattern[i + 1] == "^")
            end = pattern.index("]", start + 1)
            out.append(pattern[i:start] + _fold_set(pattern[start:end]) + "]")
            i = end + 1
        else:
            out.append(f"[{char.lower()}{char.upper()}]" if char.isalpha() else char)
            i += 1
    return "".join(out)


def _fold_set(body: str) -> str:
    items, i = [], 0
    while i < len(body):
        if i + 2 < len(body) and body[i + 1] == "-":
            items.append(body[i : i + 3])
            i += 3
        else:
            items.append(body[i])
            i += 1
    extra = [it.swapcase() for it in items if it.replace("-", "").isalpha()]
    extra = [it for it in extra if it not in items]
    if items and items[-1] == "-":  # a trailing '-' is literal only in last place
        return "".join(items[:-1] + extra + ["-"])
    return "".join(items + extra)


# --- globs --------------------------------------------------------------------------------------


def _applies(glob: str, os_type: str) -> bool:
    if glob.startswith(("~/", "**/")):
        return True
    if os_type == "Linux":
        return glob.startswith("/")
    return bool(re.match(r"^[A-Za-z]:/", glob)) or glob.startswith(("HKLM:/", "Cert:/"))


def _ere_escape(text: str) -> str:
    return "".join("\\" + c if c in _ERE_SPECIAL else c for c in text)


def _component(text: str, sep: str) -> str:
    other = "[^/]" if sep == "/" else "[^\\\\]"
    out = []
    for char in text:
        out.append(other + "*" if char == "*" else other if char == "?" else _ere_escape(char))
    return "".join(out)


_WIN_HOMES = (
    "(@SYSDRIVE@\\\\Users\\\\[^\\\\]+|@SYSDRIVE@\\\\Windows\\\\System32\\\\config\\\\systemprofile"
    "|@SYSDRIVE@\\\\Windows\\\\ServiceProfiles\\\\[^\\\\]+)"
)


def _path_regex(parts: list[str], sep: str) -> str:
    """Regex (ERE subset) of a path made of glob components; '**' spans directories."""
    sep_re = "/" if sep == "/" else "\\\\"
    out = ""
    for index, part in enumerate(parts):
        if index == 0:
            if part == "~":
                out = "@HOME@" if sep == "/" else _WIN_HOMES
            elif part == "":
                out = ""
            elif part == "**":
                out = "" if sep == "/" else "[A-Za-z]:"
                out += f"({sep_re}.*)?"
            else:  # a drive letter: the system drive
                out = "@SYSDRIVE@"
            continue
        if part == "**":
            out += f"({sep_re}.*)?"
        else:
            out += sep_re + _component(part, sep)
    return out


def compile_glob(glob: str, os_type: str) -> dict[str, Any] | None:
    """How the guest matches one glob: ``path_re`` (anchored, over the whole path) and one of
    ``name`` (a literal file name), ``name_re`` (a wildcard file name) or ``dir_re`` (every
    file of matching directories, below them too when ``recursive``). Windows provider paths
    come back as ``registry``/``certstore``. None when the glob is for another OS."""
    if not _applies(glob, os_type):
        return None
    if glob.startswith("HKLM:/"):
        key, _, value = glob[len("HKLM:/") :].rpartition("/")
        return {"registry": "HKLM:\\" + key.replace("/", "\\"), "value": value}
    if glob.startswith("Cert:/"):
        return {"certstore": glob[len("Cert:/") :].rstrip("/*").replace("/", "\\")}
    sep = "/" if os_type == "Linux" else "\\"
    parts = glob.split("/")
    if glob.startswith("/"):
        parts = ["", *parts[1:]]
    last = parts[-1]
    compiled: dict[str, Any] = {"path_re": "^" + _path_regex(parts, sep) + "$"}
    if last in ("*", "**"):
        compiled["dir_re"] = "^" + _path_regex(parts[:-1], sep) + "$"
        compiled["recursive"] = last == "**"
    elif "*" in last or "?" in last:
        compiled["name_re"] = _component(last, sep) + "$"
        compiled["name_glob"] = last
    else:
        compiled["name"] = last
    if parts[0] != "**":
        compiled["ancestors_re"] = _ancestors_regex(parts, sep)
    return compiled


def _ancestors_regex(parts: list[str], sep: str) -> str:
    """The directories an anchored glob can match below: a symlink (junction) there is followed
    so that the rule sees paths through it (``~/.kube`` linked elsewhere)."""
    found = []
    first = 1 if parts[0] == "~" else 2  # a home itself may be a link; "/" never is
    for end in range(first, len(parts) + (parts[-1] == "**")):
        found.append(_path_regex(parts[:end], sep))
        if parts[end - 1] == "**":
            break
    return "^(" + "|".join(found) + ")$" if found else "^$"


# --- findings -----------------------------------------------------------------------------------


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


# --- the key ------------------------------------------------------------------------------------


def fingerprint_key() -> bytes:
    """The HMAC key: ``IMAGEREADY_FINGERPRINT_KEY`` (hex or base64, 16+ bytes) or the key file
    ``$XDG_CONFIG_HOME/imageready/fingerprint.key``, created 0600 on first use. Stable across
    runs so that fingerprint waivers keep matching."""
    text = os.environ.get(KEY_ENV, "").strip()
    source = KEY_ENV
    if not text:
        config = os.environ.get("XDG_CONFIG_HOME") or str(Path.home() / ".config")
        path = Path(config) / "imageready" / "fingerprint.key"
        source = str(path)
        try:
            path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        except FileExistsError:
            pass
        except OSError as exc:
            raise ScanKeyError(f"fingerprint key {path}: cannot create: {exc.strerror}") from None
        else:
            with os.fdopen(fd, "w") as handle:
                handle.write(secrets.token_hex(32) + "\n")
        try:
            text = path.read_text(encoding="ascii").strip()
        except (OSError, UnicodeDecodeError):
            raise ScanKeyError(f"fingerprint key {path}: cannot read") from None
    key = _decode_key(text)
    if key is None:
        raise ScanKeyError(f"fingerprint key from {source}: expected 16+ bytes as hex or base64")
    for form in (key.hex(), base64.b64encode(key).decode(), text):
        register_secret(form)
    return key


def _decode_key(text: str) -> bytes | None:
    for decode in (bytes.fromhex, lambda t: base64.b64decode(t, validate=True)):
        try:
            key = decode(text)
        except (ValueError, binascii.Error):
            continue
        if len(key) >= 16:
            return key
    return None


# --- guest programs -----------------------------------------------------------------------------


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
        fold = _fold_case if rule["ignore_case"] else str
        if rule["pattern"]:
            lines.append(f"#SH ere {index} {fold(rule['pattern'])}")
        if rule["multiline"]:
            lines.append(f"#SH kw {index} {rule['ere']}")
        if rule["ignore_values"]:
            lines.append(f"#SH ignore {index} {_fold_case(rule['ignore_values'])}")
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
