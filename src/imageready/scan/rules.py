"""Sensitive-data rules: the data (``policy/scan_rules.yaml`` plus a user's ``--scan-rules
FILE``), read, validated and chosen for a guest's OS. A rule file that cannot be used fails in one
line naming the file and the rule; switching a built-in rule off needs an approval, like a waiver.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Iterable
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any, Literal

import yaml

from imageready.scan.patterns import ERE_SPECIAL, glob_applies

RULES_FILE = Path(__file__).parent.parent / "policy" / "scan_rules.yaml"
#: libyaml's safe loader where PyYAML was built with it (the same safe schema, about 10x faster)
_YAML_LOADER: Any = getattr(yaml, "CSafeLoader", yaml.SafeLoader)

Severity = Literal["critical", "high", "medium", "low"]
RuleOs = Literal["Linux", "Windows", "any"]
_ID = re.compile(r"^[a-z0-9][a-z0-9-]{1,62}$")
_GLOB_ROOTS = ("/", "~/", "**/", "HKLM:/", "Cert:/")


class ScanRulesError(ValueError):
    """A rule file that cannot be used; the message is one line naming the file and rule."""


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
        if r.os in (os_type, "any") and (not r.paths or any(glob_applies(g, os_type) for g in r.paths))
    ]


def _replace(rule: Rule, **changes: Any) -> Rule:
    values = {f.name: getattr(rule, f.name) for f in fields(Rule)}
    values.update(changes)
    return Rule(**values)


def _read_rule_file(path: Path, origin: str) -> tuple[list[Rule], list[str], list[str]]:
    where = "scan rules" if origin == "built-in" else f"--scan-rules {path}"
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ScanRulesError(f"{where}: cannot read: {exc.strerror}") from None
    rules, examples, disabled = _parse_rule_text(text, where, origin)
    return list(rules), list(examples), list(disabled)


@functools.lru_cache(maxsize=16)
def _parse_rule_text(
    text: str, where: str, origin: str
) -> tuple[tuple[Rule, ...], tuple[str, ...], tuple[str, ...]]:
    """A rule file's text parsed and validated, once per distinct text (the file is read every
    time, so an edit between two reads is seen; parsing it was a fifth of the harness's CPU per
    VM). Rules are frozen; the caller gets fresh lists."""
    try:
        data = yaml.load(text, Loader=_YAML_LOADER)  # noqa: S506 (CSafeLoader or SafeLoader)
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
    return tuple(rules), tuple(examples), tuple(disabled)


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
            if escaped not in ERE_SPECIAL:
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
