"""What a WinRS command line starts: cmd.exe built-ins, or powershell.exe with a script.

WinRS runs ``cmd.exe /c <command> <arguments>`` (unless the client skips the shell), so the
command line is bound by cmd.exe's 8191-character limit: the harness keeps its scripts off the
command line (a short bootstrap reads them from stdin), and the model enforces the limit.
"""

from __future__ import annotations

import base64
import binascii
import re
from dataclasses import dataclass

from azsim.windows.model import WindowsMachine

#: cmd.exe's maximum command line length
MAX_COMMAND_LINE = 8191

# powershell.exe parameters (Windows PowerShell 5.1) -> whether they take a value
_PS_PARAMETERS = {
    "command": True,
    "configurationname": True,
    "encodedcommand": True,
    "executionpolicy": True,
    "file": True,
    "inputformat": True,
    "mta": False,
    "noexit": False,
    "nologo": False,
    "noninteractive": False,
    "noprofile": False,
    "outputformat": True,
    "psconsolefile": True,
    "sta": False,
    "version": True,
    "windowstyle": True,
}
# powershell.exe resolves these short forms before prefixes (``-e`` is -EncodedCommand)
_PS_ALIASES = {
    "e": "encodedcommand",
    "ec": "encodedcommand",
    "ep": "executionpolicy",
    "ex": "executionpolicy",
}

_READS_STDIN = re.compile(r"\[console\]::in\.readtoend\(\)|\$input\b", re.IGNORECASE)
_RUNS_TEXT = re.compile(r"\[scriptblock\]::create\(|invoke-expression|\biex\b", re.IGNORECASE)


class CommandLineError(Exception):
    """cmd.exe or powershell.exe refused the command line; the message is what it prints."""

    def __init__(self, message: str, exit_code: int = 1) -> None:
        super().__init__(message)
        self.exit_code = exit_code


@dataclass(frozen=True)
class PowerShellCall:
    """powershell.exe with a script: inline, encoded, or (when ``from_stdin``) read from stdin."""

    script: str
    encoded: bool
    #: the command-line script only reads stdin and runs it (the harness's bootstrap)
    from_stdin: bool


@dataclass(frozen=True)
class CmdCall:
    argv: tuple[str, ...]
    line: str


def split_windows(line: str) -> list[str]:
    """Split like the C runtime does: whitespace separates, double quotes group."""
    args: list[str] = []
    current: list[str] = []
    quoted = in_arg = False
    for char in line:
        if char == '"':
            quoted = not quoted
            in_arg = True
        elif char in " \t" and not quoted:
            if in_arg:
                args.append("".join(current))
                current, in_arg = [], False
        else:
            current.append(char)
            in_arg = True
    if in_arg:
        args.append("".join(current))
    return args


def _program(arg: str) -> str:
    name = arg.replace("/", "\\").rsplit("\\", 1)[-1].lower()
    return name.removesuffix(".exe")


def _ps_parameter(arg: str) -> str | None:
    if not arg.startswith(("-", "/")) or len(arg) < 2:
        return None
    word = arg[1:].lower()
    if word in _PS_ALIASES:
        return _PS_ALIASES[word]
    matches = [name for name in _PS_PARAMETERS if name.startswith(word)]
    if len(matches) != 1:
        raise CommandLineError(
            f"Cannot process the command because of a missing or ambiguous parameter: {arg}", 64
        )
    return matches[0]


def _parse_powershell(args: list[str]) -> PowerShellCall:
    i = 0
    while i < len(args):
        name = _ps_parameter(args[i])
        if name is None:  # the rest is an implied -Command
            return _inline(" ".join(args[i:]))
        if name == "command":
            return _inline(" ".join(args[i + 1 :]))
        if _PS_PARAMETERS[name] and i + 1 >= len(args):
            raise CommandLineError(f"Missing argument for parameter {args[i]}.", 64)
        if name == "encodedcommand":
            try:
                script = base64.b64decode(args[i + 1], validate=True).decode("utf-16-le")
            except (binascii.Error, UnicodeDecodeError):
                raise CommandLineError("Cannot process the encoded command: invalid Base64.", 64) from None
            reads = bool(_READS_STDIN.search(script) and _RUNS_TEXT.search(script))
            return PowerShellCall(script=script, encoded=True, from_stdin=reads)
        if name == "file":
            raise CommandLineError("azsim: powershell.exe -File is not modelled; send the script", 64)
        i += 2 if _PS_PARAMETERS[name] else 1
    return PowerShellCall(script="", encoded=False, from_stdin=True)  # interactive: stdin


def _inline(text: str) -> PowerShellCall:
    if text.strip() == "-":
        return PowerShellCall(script="", encoded=False, from_stdin=True)
    return PowerShellCall(script=text, encoded=False, from_stdin=False)


def parse(command: str, arguments: list[str]) -> PowerShellCall | CmdCall:
    """Parse what a WS-Man Command asks WinRS to start."""
    line = " ".join([command, *arguments]).strip()
    if len(line) > MAX_COMMAND_LINE:
        raise CommandLineError("The command line is too long.")
    argv = split_windows(line)
    if not argv:
        return CmdCall((), line)
    program = _program(argv[0])
    if program == "cmd" and len(argv) > 1 and argv[1].lower() in ("/c", "/k"):
        return parse(argv[2] if len(argv) > 2 else "", argv[3:])
    if program in ("powershell", "pwsh"):
        return _parse_powershell(argv[1:])
    return CmdCall(tuple(argv), line)


def run_builtin(call: CmdCall, machine: WindowsMachine, account: str) -> tuple[str, str, int]:
    """The few cmd.exe commands clients use to see that a shell works."""
    if not call.argv:
        return "", "", 0
    program = _program(call.argv[0])
    rest = call.line[len(call.argv[0]) :].strip() if call.line.startswith(call.argv[0]) else ""
    if program == "whoami":
        return account.lower() + "\r\n", "", 0
    if program == "hostname":
        return machine.hostname + "\r\n", "", 0
    if program == "echo":
        return (rest or "ECHO is on.") + "\r\n", "", 0
    if program == "ver":
        return f"\r\nMicrosoft Windows [Version {machine.state.version}.2340]\r\n", "", 0
    if program == "exit":
        codes = [a for a in call.argv[1:] if a.lower() != "/b"]
        return "", "", int(codes[0]) if codes and codes[0].lstrip("-").isdigit() else 0
    if program == "type" and len(call.argv) > 1:
        with machine.lock:
            content = machine.files.read(call.argv[1])
        if content is None:
            return "", "The system cannot find the file specified.\r\n", 1
        return content, "", 0
    return (
        "",
        f"'{call.argv[0]}' is not recognized as an internal or external command,\r\n"
        "operable program or batch file.\r\n",
        1,
    )
