"""Rules as the guest programs match them: one POSIX ERE per rule for a single ``grep -E`` pass
(case folded into bracket expressions), and path globs compiled to anchored regexes for the
guest's OS (Linux paths, Windows drives, the registry, the certificate store).
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any, Literal

if TYPE_CHECKING:
    from imageready.scan.rules import Rule

#: the characters an ERE escapes (and the only escapes a portable pattern may use)
ERE_SPECIAL = set(".[]{}()*+?|^$\\")


def ere_for_grep(rule: Rule) -> str:
    """The rule's pattern as one POSIX ERE with ``ignore_case`` folded into bracket expressions,
    so that a single ``grep -E`` pass over all rules keeps each rule's own case semantics.

    Upper bounds are dropped (``{0,64}`` becomes ``*``): grep only picks candidate lines, so a
    superset is fine, and its DFA pays for every counted copy, while the bound is there for the
    backtracking engines (Python, .NET) that apply the exact pattern to those lines."""
    assert rule.pattern is not None
    if rule.multiline:  # grep sees one line: it picks the lines holding a keyword
        alternation = "|".join(_ere_escape(k) for k in rule.keywords)
        return fold_case(alternation) if rule.ignore_case else alternation
    return _widen_bounds(fold_case(rule.pattern) if rule.ignore_case else rule.pattern)


def _tokens(pattern: str) -> Iterator[tuple[Literal["escape", "set", "bounds", "char"], str]]:
    """A portable pattern's tokens: an escape (``\\.``), a bracket expression (``[^a-z]``, a
    ``]`` first in it literal), bounds (``{0,64}``) or one character."""
    i = 0
    while i < len(pattern):
        char = pattern[i]
        if char == "\\":
            yield "escape", pattern[i : i + 2]
            i += 2
        elif char == "[":
            start = i + 1 + (pattern[i + 1] == "^")
            end = pattern.index("]", start + 1)
            yield "set", pattern[i : end + 1]
            i = end + 1
        elif char == "{":
            end = pattern.index("}", i)
            yield "bounds", pattern[i : end + 1]
            i = end + 1
        else:
            yield "char", char
            i += 1


def _widen_bounds(pattern: str) -> str:
    out = []
    for kind, text in _tokens(pattern):
        if kind == "bounds":
            low, comma, _ = text[1:-1].partition(",")
            text = "*" if comma and low == "0" else f"{{{low},}}" if comma else text
        out.append(text)
    return "".join(out)


def fold_case(pattern: str) -> str:
    out = []
    for kind, text in _tokens(pattern):
        if kind == "set":
            head = "[^" if text.startswith("[^") else "["
            text = head + _fold_set(text[len(head) : -1]) + "]"
        elif kind == "char" and text.isalpha():
            text = f"[{text.lower()}{text.upper()}]"
        out.append(text)
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


def glob_applies(glob: str, os_type: str) -> bool:
    if glob.startswith(("~/", "**/")):
        return True
    if os_type == "Linux":
        return glob.startswith("/")
    return bool(re.match(r"^[A-Za-z]:/", glob)) or glob.startswith(("HKLM:/", "Cert:/"))


def _ere_escape(text: str) -> str:
    return "".join("\\" + c if c in ERE_SPECIAL else c for c in text)


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
    if not glob_applies(glob, os_type):
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
