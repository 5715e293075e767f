"""How the model answers PowerShell: by what a script asks for, through pluggable handlers.

A handler looks at a :class:`ScriptView` (the script with comments removed, its string literals
with ``$env:`` paths expanded, the cmdlets it names) and says whether it answers it; the first
handler that does runs with a :class:`ScriptCall` and returns what PowerShell would print.
Handlers match capabilities (``Get-BitLockerVolume``, ``Setup\\State``, ``sysprep.exe``), never
exact script text, so a harness script can be reworded without touching the model, and a script
no handler answers fails loudly (exit 1, a PowerShell error) instead of silently succeeding.

Other components add handlers with :func:`register_handler` (before the built-in ones).
"""

from __future__ import annotations

import re
import threading
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Protocol
from xml.sax.saxutils import escape

from azsim.windows.model import WindowsMachine, normalize_path

_ENV_PATHS = {
    "windir": "C:\\Windows",
    "systemroot": "C:\\Windows",
    "systemdrive": "C:",
    "programdata": "C:\\ProgramData",
    "programfiles": "C:\\Program Files",
}
_ENV_REF = re.compile(r"\$(?:\{env:(\w+)\}|env:(\w+))|%(\w+)%", re.IGNORECASE)
_CMDLET = re.compile(r"\b([A-Z][a-z]+-[A-Za-z][A-Za-z0-9]*)\b")


def sets_console_utf8(text: str, stream: str) -> bool:
    """True if ``text`` sets ``[Console]::<stream>Encoding`` to UTF-8 (stream: Input/Output)."""
    pattern = (
        rf"\[console\]::{stream}encoding\s*=\s*"
        r"(\[(system\.)?text\.encoding\]::utf8\b|new-object\s+(system\.)?text\.utf8encoding)"
    )
    return re.search(pattern, text, re.IGNORECASE) is not None


def silences_progress(text: str) -> bool:
    return re.search(r"\$progresspreference\s*=\s*['\"]?silentlycontinue", text, re.I) is not None


def expand_env(text: str) -> str:
    """``$env:WINDIR\\Panther`` -> ``C:\\Windows\\Panther`` for the variables paths use."""

    def value(match: re.Match[str]) -> str:
        name = next(g for g in match.groups() if g)
        return _ENV_PATHS.get(name.lower(), match.group(0))

    return _ENV_REF.sub(value, text)


def _scan(text: str) -> tuple[str, str, list[str]]:
    """(code without comments, code without comments and string contents, string literals)."""
    code: list[str] = []
    bare: list[str] = []
    literals: list[str] = []
    i, n = 0, len(text)
    while i < n:
        char = text[i]
        if text.startswith("<#", i):
            end = text.find("#>", i + 2)
            i = n if end < 0 else end + 2
        elif char == "#":
            end = text.find("\n", i)
            i = n if end < 0 else end
        elif char in "'\"":
            j, literal = i + 1, []
            while j < n:
                if text[j] == char and text.startswith(char * 2, j):  # '' or "" escapes a quote
                    literal.append(char)
                    j += 2
                elif text[j] == char:
                    break
                elif char == '"' and text[j] == "`" and j + 1 < n:
                    literal.append(text[j + 1])
                    j += 2
                else:
                    literal.append(text[j])
                    j += 1
            code.append(text[i : j + 1])
            bare.append(char * 2)
            literals.append("".join(literal))
            i = j + 1
        else:
            code.append(char)
            bare.append(char)
            i += 1
    return "".join(code), "".join(bare), literals


class ScriptView:
    """A script as handlers see it."""

    def __init__(self, text: str) -> None:
        self.text = text
        self.code, self.bare, raw_literals = _scan(text)
        self.lower = self.code.lower()
        self.literals = [expand_env(lit) for lit in raw_literals]

    def asks(self, *needles: str) -> bool:
        """True if the script's code (not its comments) names any of ``needles``."""
        return any(needle.lower() in self.lower for needle in needles)

    def asks_all(self, *needles: str) -> bool:
        return all(needle.lower() in self.lower for needle in needles)

    def cmdlets(self) -> list[str]:
        """Verb-Noun names used outside strings, in order of first use."""
        seen: dict[str, str] = {}
        for name in _CMDLET.findall(self.bare):
            seen.setdefault(name.lower(), name)
        return list(seen.values())

    def paths(self) -> list[str]:
        """String literals that are absolute Windows paths (expanded, normalized)."""
        return [normalize_path(lit) for lit in self.literals if re.match(r"^[A-Za-z]:\\", lit.strip())]


@dataclass(frozen=True)
class PsError:
    """One PowerShell error record."""

    message: str
    category: str = "NotSpecified"
    error_id: str = "RuntimeException"


@dataclass
class ScriptResult:
    stdout: str = ""
    errors: list[PsError] = field(default_factory=list)
    exit_code: int = 0


class ScriptCall:
    """One run of one script: who runs it, on what machine, and how to stream or stop."""

    def __init__(
        self,
        view: ScriptView,
        machine: WindowsMachine,
        *,
        account: str,
        is_system: bool,
        via: str,
        cancelled: threading.Event | None = None,
        on_stderr: Callable[[str], None] | None = None,
        shell_id: str | None = None,
    ) -> None:
        self.view = view
        self.shell_id = shell_id
        self.machine = machine
        self.account = account
        self.is_system = is_system
        self.via = via
        self.cancelled = cancelled or threading.Event()
        self._on_stderr = on_stderr

    def write_stderr(self, text: str) -> None:
        """Raw console output on stderr (e.g. ``PROGRESS`` lines), streamed as it happens."""
        if self._on_stderr is not None:
            self._on_stderr(text)

    def sleep(self, seconds: float) -> bool:
        """Wait ``seconds``; False if the command was stopped meanwhile."""
        return not self.cancelled.wait(max(0.0, seconds))


class ScriptHandler(Protocol):
    name: str

    def matches(self, view: ScriptView) -> bool: ...

    def run(self, call: ScriptCall) -> ScriptResult: ...


_PLUGGED: list[ScriptHandler] = []


def register_handler(handler: ScriptHandler) -> None:
    """Add a handler for every Windows guest created from now on (checked before built-ins)."""
    _PLUGGED.append(handler)


def default_handlers() -> list[ScriptHandler]:
    """Plugged handlers first, then the harness's scripts, then plain statements."""
    from azsim.windows import facts, scan_handler, sysprep_scripts  # imported here: they import this module

    return [*_PLUGGED, *scan_handler.HANDLERS, *sysprep_scripts.HANDLERS, *facts.HANDLERS, SimpleStatements()]


class HandlerRegistry:
    """The ordered handlers one guest answers scripts with."""

    def __init__(self, handlers: Iterable[ScriptHandler]) -> None:
        self._handlers = list(handlers)

    def add(self, handler: ScriptHandler) -> None:
        self._handlers.insert(0, handler)

    def find(self, view: ScriptView) -> ScriptHandler | None:
        return next((h for h in self._handlers if h.matches(view)), None)


def unknown_script(view: ScriptView) -> ScriptResult:
    asked = ", ".join(view.cmdlets()[:8]) or "nothing the model knows"
    return ScriptResult(
        errors=[
            PsError(
                f"azsim: no handler of the Windows model answers this script (it asks for: {asked})",
                "NotImplemented",
                "AzsimUnknownScript",
            )
        ],
        exit_code=1,
    )


def format_error(error: PsError) -> str:
    """An error record as Windows PowerShell 5.1 prints it."""
    return (
        f"{error.message}\r\n"
        f"    + CategoryInfo          : {error.category}: (:) [], {error.error_id}\r\n"
        f"    + FullyQualifiedErrorId : {error.error_id}\r\n \r\n"
    )


def _clixml_text(text: str) -> str:
    return escape(text).replace("\r", "_x000D_").replace("\n", "_x000A_")


#: what powershell.exe prints on stderr when a module loads before progress is silenced
PROGRESS_NOISE = (
    '<Obj S="progress" RefId="0"><TN RefId="0"><T>System.Management.Automation.PSCustomObject</T>'
    '<T>System.Object</T></TN><MS><I64 N="SourceId">1</I64><PR N="Record"><AV>Preparing modules '
    "for first use.</AV><AI>0</AI><Nil /><PI>-1</PI><PC>-1</PC><T>Completed</T><SR>-1</SR>"
    "<SD> </SD></PR></MS></Obj>"
)


def clixml_stderr(errors: list[PsError], progress_noise: bool) -> str:
    """stderr of ``powershell.exe -EncodedCommand``: serialized records, not text."""
    if not errors and not progress_noise:
        return ""
    body = PROGRESS_NOISE if progress_noise else ""
    for error in errors:
        for line in format_error(error).splitlines(keepends=True):
            body += f'<S S="Error">{_clixml_text(line)}</S>'
    return (
        '#< CLIXML\r\n<Objs Version="1.1.0.1" xmlns="http://schemas.microsoft.com/powershell/2004/04">'
        f"{body}</Objs>"
    )


# --- the generic handler: scripts made only of simple statements (used by tests and probes)

_LITERAL = r"(?:'(?:[^']|'')*'|\"[^\"$`]*\")"
_REPEAT = rf"\(\s*({_LITERAL})\s*\*\s*(\d+)\s*\)"
_PATTERNS: list[tuple[str, re.Pattern[str]]] = [
    (
        "noop",
        re.compile(r"^\$(ProgressPreference|ErrorActionPreference)\s*=\s*" + _LITERAL + "$", re.I),
    ),
    (
        "noop",
        re.compile(r"^\[Console\]::(Output|Input)Encoding\s*=\s*\[(System\.)?Text\.Encoding\]::UTF8$", re.I),
    ),
    (
        "sleep",
        re.compile(r"^Start-Sleep(?:\s+-(Seconds|s|Milliseconds|m))?\s+(\d+(?:\.\d+)?)$", re.I),
    ),
    ("out", re.compile(rf"^(?:Write-Output\s+|echo\s+)?({_LITERAL}|{_REPEAT})$", re.I)),
    ("write", re.compile(rf"^\[Console\]::Out\.Write(Line)?\(({_LITERAL})\)$", re.I)),
    ("err", re.compile(rf"^\[Console\]::Error\.WriteLine\(({_LITERAL})\)$", re.I)),
    ("error", re.compile(rf"^Write-Error\s+({_LITERAL})$", re.I)),
    ("throw", re.compile(rf"^throw\s+({_LITERAL})$", re.I)),
    ("exit", re.compile(r"^exit(?:\s+(-?\d+))?$", re.I)),
]


def _unquote(literal: str) -> str:
    quote = literal[0]
    return literal[1:-1].replace(quote * 2, quote)


def _statements(code: str) -> list[str]:
    """Split on newlines and semicolons outside quotes."""
    statements: list[str] = []
    current: list[str] = []
    quote = ""
    for char in code:
        if quote:
            quote = "" if char == quote else quote
        elif char in "'\"":
            quote = char
        elif char in ";\n":
            statements.append("".join(current).strip())
            current = []
            continue
        current.append(char)
    statements.append("".join(current).strip())
    return [s for s in statements if s]


class SimpleStatements:
    """Scripts of plain statements: output, errors, sleeps, exit codes. Anything else: no match."""

    name = "simple-statements"

    def _parse(self, view: ScriptView) -> list[tuple[str, re.Match[str]]] | None:
        parsed = []
        for statement in _statements(view.code):
            match = next(((kind, m) for kind, p in _PATTERNS if (m := p.match(statement))), None)
            if match is None:
                return None
            parsed.append(match)
        return parsed

    def matches(self, view: ScriptView) -> bool:
        return self._parse(view) is not None

    def run(self, call: ScriptCall) -> ScriptResult:
        result = ScriptResult()
        for kind, m in self._parse(call.view) or []:
            if kind == "sleep":
                unit = (m.group(1) or "s").lower()
                seconds = float(m.group(2)) / (1000 if unit.startswith("m") else 1)
                if not call.sleep(seconds):
                    break
            elif kind == "out":
                text = _unquote(m.group(2)) * int(m.group(3)) if m.group(3) else _unquote(m.group(1))
                result.stdout += text + "\r\n"
            elif kind == "write":
                result.stdout += _unquote(m.group(2)) + ("\r\n" if m.group(1) else "")
            elif kind == "err":
                call.write_stderr(_unquote(m.group(1)) + "\r\n")
            elif kind == "error":
                result.errors.append(PsError(_unquote(m.group(1)), "NotSpecified", "WriteErrorException"))
                result.exit_code = 1
            elif kind == "throw":
                result.errors.append(PsError(_unquote(m.group(1)), "OperationStopped", "RuntimeException"))
                result.exit_code = 1
                break
            elif kind == "exit":
                result.exit_code = int(m.group(1) or 0)
                break
        return result
