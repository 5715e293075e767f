"""Names are data, not output: guest- and Azure-controlled strings (file names, tag values, user
names) reach terminals, JUnit, Allure, HTML and one-line evidence escaped, never raw.

A file name on a Linux guest is bytes: it may be invalid UTF-8, hold a newline that would cut a
one-line message in two, an ANSI escape that rewrites the terminal, or a bidi override (U+202E)
that shows ``txt.exe`` as ``exe.txt``. Two rules:

* **decode safely**: bytes from a guest are decoded with undecodable bytes escaped as ``\\xNN``
  (:func:`decode_guest`); JSON a guest printed is cleaned of the lone surrogates a guest program's
  ``surrogateescape`` leaves in it (:func:`guest_json`), so nothing downstream fails to encode it;
* **escape at every text sink**: control, format (bidi, zero-width), surrogate and line/paragraph
  separator characters become ``\\n``, ``\\x1b``, ``\\u202e`` (:func:`printable`). JSON sinks
  need no such step: ``json.dumps`` escapes them itself and keeps the value exact.
"""

from __future__ import annotations

import json
import unicodedata
from typing import Any

#: characters shown by name rather than by number (the common ones, readable in a report)
_NAMED = {"\n": "\\n", "\r": "\\r", "\t": "\\t"}
#: Unicode categories never shown raw: controls, format characters (bidi overrides and isolates,
#: zero-width characters, the BOM), surrogates, line and paragraph separators
_UNSAFE_CATEGORIES = frozenset({"Cc", "Cf", "Cs", "Zl", "Zp"})
#: the range ``surrogateescape`` maps undecodable bytes 0x80-0xFF to
_ESCAPED_BYTES = range(0xDC80, 0xDD00)


def _escape(char: str) -> str:
    if char in _NAMED:
        return _NAMED[char]
    code = ord(char)
    if code in _ESCAPED_BYTES:
        return f"\\x{code - 0xDC00:02x}"  # the byte it stood for
    if code <= 0xFF:
        return f"\\x{code:02x}"
    if code <= 0xFFFF:
        return f"\\u{code:04x}"
    return f"\\U{code:08x}"


def _unsafe(char: str, keep: str) -> bool:
    return char not in keep and unicodedata.category(char) in _UNSAFE_CATEGORIES


def printable(text: str, *, multiline: bool = False) -> str:
    """``text`` with every control, format, surrogate and separator character escaped. With
    ``multiline``, line breaks and tabs stay (a traceback, a log attachment); anything else that
    could rewrite a terminal or reorder what a reader sees is escaped either way."""
    keep = "\n\t" if multiline else ""
    if text.isascii() and text.isprintable():
        return text
    return "".join(_escape(c) if _unsafe(c, keep) else c for c in text)


def decode_guest(data: bytes) -> str:
    """Bytes from a guest as text: UTF-8, undecodable bytes escaped (``\\xff``), never replaced
    by U+FFFD (which would lose which byte it was) nor kept as lone surrogates (which cannot be
    written out as UTF-8 again)."""
    return data.decode("utf-8", errors="backslashreplace")


def clean(value: Any) -> Any:
    """A JSON value with every string's lone surrogates escaped (recursively)."""
    if isinstance(value, str):
        if any(0xD800 <= ord(c) <= 0xDFFF for c in value):
            return "".join(_escape(c) if 0xD800 <= ord(c) <= 0xDFFF else c for c in value)
        return value
    if isinstance(value, list):
        return [clean(item) for item in value]
    if isinstance(value, dict):
        return {clean(key): clean(item) for key, item in value.items()}
    return value


def guest_json(text: str) -> Any:
    """``json.loads`` for what a guest printed: a guest program that decoded a file name with
    ``surrogateescape`` prints it as ``\\udcff``, which JSON parses into a lone surrogate; it
    comes back escaped as ``\\xff``."""
    return clean(json.loads(text))


def one_line(text: object, limit: int = 600) -> str:
    """``text`` (an error, a guest's stderr) with its whitespace, line breaks included, folded to
    single spaces and cut at ``limit`` characters ("…" marks the cut): a message built from it
    stays one line. It neither masks nor escapes: a sink's line is ``redact.one_line``."""
    flat = " ".join(str(text).split())
    return flat if len(flat) <= limit else flat[: limit - 1] + "…"
