"""The WS-Management shell protocol (MS-WSMV) as Windows' WinRM service speaks it.

Implements what pywinrm 0.5 and pypsrp 0.9 send for a cmd shell: Create, Command, Send,
Receive, Signal, Delete on ``http://schemas.microsoft.com/wbem/wsman/1/windows/shell/cmd``.
Every response echoes the request's MessageID in ``RelatesTo``; errors are SOAP faults with a
``WSManFault`` detail and HTTP 500. Receive long-polls: with no new output within the request's
``OperationTimeout`` it answers the ``w:TimedOut`` fault (2150858793) as Windows does, and the
client polls again. Output is split across Receive responses to fit the client's
``MaxEnvelopeSize``. This module knows nothing of HTTP or of what a command does: the guest
supplies a runner that starts each command and feeds its streams.
"""

from __future__ import annotations

import base64
import binascii
import re
import threading
import uuid
import xml.etree.ElementTree as ET
from collections.abc import Callable
from dataclasses import dataclass, field
from xml.sax.saxutils import escape, quoteattr

NS = {
    "s": "http://www.w3.org/2003/05/soap-envelope",
    "a": "http://schemas.xmlsoap.org/ws/2004/08/addressing",
    "x": "http://schemas.xmlsoap.org/ws/2004/09/transfer",
    "w": "http://schemas.dmtf.org/wbem/wsman/1/wsman.xsd",
    "p": "http://schemas.microsoft.com/wbem/wsman/1/wsman.xsd",
    "rsp": "http://schemas.microsoft.com/wbem/wsman/1/windows/shell",
    "f": "http://schemas.microsoft.com/wbem/wsman/1/wsmanfault",
}
SHELL_URI = "http://schemas.microsoft.com/wbem/wsman/1/windows/shell"
CMD_URI = SHELL_URI + "/cmd"
TRANSFER = "http://schemas.xmlsoap.org/ws/2004/09/transfer"
ANONYMOUS = "http://schemas.xmlsoap.org/ws/2004/08/addressing/role/anonymous"
STATE_RUNNING = SHELL_URI + "/CommandState/Running"
STATE_DONE = SHELL_URI + "/CommandState/Done"

TIMED_OUT = 2150858793
SHELL_NOT_FOUND = 2150858843
#: Windows' default MaxEnvelopeSizekb (500) and MaxShellsPerUser (30)
MAX_REQUEST_ENVELOPE = 512000
MAX_SHELLS_PER_USER = 30
#: STATUS_CONTROL_C_EXIT: how a process stopped by ctrl_c or terminate exits
SIGNALLED_EXIT = -1073741510
_DURATION = re.compile(r"^PT(?:(\d+(?:\.\d+)?)M)?(?:(\d+(?:\.\d+)?)S)?$")


class WsmanFault(Exception):
    """A SOAP fault to send back (HTTP 500)."""

    def __init__(self, subcode: str, reason: str, code: int, *, sender: bool = False) -> None:
        super().__init__(reason)
        self.subcode = subcode
        self.reason = reason
        self.code = code
        self.sender = sender


class ConnectionDropped(Exception):
    """The connection carrying this request is to be reset, no answer sent (a guest_drop fault)."""


class ServiceStopped(Exception):
    """The machine went down mid-request: drop the connection without an answer."""


@dataclass
class Command:
    """One process started in a shell, with its streams."""

    id: str
    command_line: tuple[str, list[str]]
    shell: Shell
    stdout: bytearray = field(default_factory=bytearray)
    stderr: bytearray = field(default_factory=bytearray)
    stdin: bytearray = field(default_factory=bytearray)
    stdin_closed: bool = False
    exit_code: int | None = None
    sent_out: int = 0
    sent_err: int = 0
    cancelled: threading.Event = field(default_factory=threading.Event)
    cond: threading.Condition = field(default_factory=threading.Condition)

    def write(self, stream: str, data: bytes) -> None:
        with self.cond:
            (self.stdout if stream == "stdout" else self.stderr).extend(data)
            self.cond.notify_all()

    def finish(self, exit_code: int) -> None:
        with self.cond:
            if self.exit_code is None:
                self.exit_code = exit_code
            self.cond.notify_all()

    def read_stdin(self) -> bytes | None:
        """All of stdin once the client closes it; None if the command is stopped first."""
        with self.cond:
            while not self.stdin_closed and not self.cancelled.is_set():
                self.cond.wait(0.5)
            return None if self.cancelled.is_set() else bytes(self.stdin)

    def cancel(self) -> None:
        with self.cond:
            self.cancelled.set()
            self.cond.notify_all()


@dataclass
class Shell:
    id: str
    owner: str
    client_ip: str
    codepage: int = 437
    commands: dict[str, Command] = field(default_factory=dict)


#: starts a command (it must return quickly and end with ``command.finish``)
Runner = Callable[[Shell, Command], None]


@dataclass
class Request:
    action: str
    message_id: str
    resource_uri: str
    body: ET.Element
    shell_id: str | None
    options: dict[str, str]
    operation_timeout: float
    max_envelope: int


def _duration(text: str | None, default: float) -> float:
    match = _DURATION.match((text or "").strip())
    if not match or not any(match.groups()):
        return default
    minutes, seconds = (float(g) if g else 0.0 for g in match.groups())
    return minutes * 60 + seconds


def parse_request(body: bytes) -> Request:
    if len(body) > MAX_REQUEST_ENVELOPE:
        raise WsmanFault(
            "w:EncodingLimit",
            "The WS-Management service cannot process the request because the request envelope "
            "size exceeds MaxEnvelopeSizeKb.",
            2150858817,
            sender=True,
        )
    if b"<!DOCTYPE" in body or b"<!ENTITY" in body:
        raise WsmanFault("w:SchemaValidationError", "DTDs are not accepted.", 2150858817, sender=True)
    try:
        # expat with DTDs refused above: nothing here expands entities
        root = ET.fromstring(body)  # noqa: S314
    except ET.ParseError as err:
        raise WsmanFault(
            "w:SchemaValidationError", f"The SOAP XML is malformed: {err}", 2150858817, sender=True
        ) from None
    header = root.find("s:Header", NS)
    body_el = root.find("s:Body", NS)
    if header is None or body_el is None:
        raise WsmanFault("w:SchemaValidationError", "Not a SOAP envelope.", 2150858817, sender=True)

    def text(path: str) -> str:
        node = header.find(path, NS)
        return (node.text or "").strip() if node is not None else ""

    selector = header.find("w:SelectorSet/w:Selector[@Name='ShellId']", NS)
    options = {o.get("Name", ""): (o.text or "").strip() for o in header.findall("w:OptionSet/w:Option", NS)}
    max_envelope = text("w:MaxEnvelopeSize")
    return Request(
        action=text("a:Action"),
        message_id=text("a:MessageID"),
        resource_uri=text("w:ResourceURI"),
        body=body_el,
        shell_id=(selector.text or "").strip() if selector is not None else None,
        options=options,
        operation_timeout=min(_duration(text("w:OperationTimeout"), 60.0), 3600.0),
        max_envelope=int(max_envelope) if max_envelope.isdigit() else 153600,
    )


def envelope(action: str, relates_to: str, body: str) -> bytes:
    namespaces = " ".join(f'xmlns:{k}="{v}"' for k, v in NS.items() if k != "f")
    return (
        f'<s:Envelope xml:lang="en-US" {namespaces}><s:Header>'
        f"<a:Action>{escape(action)}</a:Action>"
        f"<a:MessageID>uuid:{str(uuid.uuid4()).upper()}</a:MessageID>"
        f"<a:To>{ANONYMOUS}</a:To><a:RelatesTo>{escape(relates_to)}</a:RelatesTo>"
        f"</s:Header><s:Body>{body}</s:Body></s:Envelope>"
    ).encode()


def fault_envelope(fault: WsmanFault, relates_to: str, machine: str) -> bytes:
    code = "s:Sender" if fault.sender else "s:Receiver"
    reason = escape(fault.reason)
    body = (
        f"<s:Fault><s:Code><s:Value>{code}</s:Value><s:Subcode><s:Value>{fault.subcode}"
        f'</s:Value></s:Subcode></s:Code><s:Reason><s:Text xml:lang="en-US">{reason}</s:Text>'
        f'</s:Reason><s:Detail><f:WSManFault xmlns:f="{NS["f"]}" Code="{fault.code}" '
        f"Machine={quoteattr(machine)}><f:Message>{reason}</f:Message></f:WSManFault>"
        f"</s:Detail></s:Fault>"
    )
    return envelope("http://schemas.dmtf.org/wbem/wsman/1/wsman/fault", relates_to, body)


class WsmanService:
    """Shells and commands of one machine, answering parsed WS-Man requests."""

    def __init__(
        self, machine_name: str, runner: Runner, on_shell_closed: Callable[[str], None] | None = None
    ) -> None:
        self.machine_name = machine_name
        self.runner = runner
        #: WinRS runs a shell's processes in one job object: closing the shell kills them all
        self.on_shell_closed = on_shell_closed
        self._shells: dict[str, Shell] = {}
        self._lock = threading.Lock()
        self._stopped = threading.Event()
        #: counters tests read (e.g. how many Receive long polls timed out)
        self.stats: dict[str, int] = {"receive_timeouts": 0, "requests": 0}
        #: asked at a Receive of a command whose output has not all reached the client: True
        #: resets the connection instead of answering (azsim.guestnet, guest_drop)
        self.drop_receive: Callable[[], bool] | None = None

    def _count(self, name: str) -> None:
        with self._lock:
            self.stats[name] += 1

    def open_shells(self) -> int:
        with self._lock:
            return len(self._shells)

    def start(self) -> None:
        self._stopped.clear()

    def stop(self) -> None:
        """Power off: every command dies, every shell goes, waiting polls give up."""
        self._stopped.set()
        with self._lock:
            shells, self._shells = list(self._shells.values()), {}
        for shell in shells:
            for command in shell.commands.values():
                command.cancel()

    def handle(self, body: bytes, *, owner: str, client_ip: str, endpoint: str) -> tuple[int, bytes]:
        """One request body -> (HTTP status, response body)."""
        self._count("requests")
        relates_to = ""
        try:
            request = parse_request(body)
            relates_to = request.message_id
            action = request.action.rsplit("/", 1)[-1]
            handler = {
                "Create": self._create,
                "Command": self._command,
                "Send": self._send,
                "Receive": self._receive,
                "Signal": self._signal,
                "Delete": self._delete,
            }.get(action)
            if handler is None or not request.action.startswith((SHELL_URI, TRANSFER)):
                raise WsmanFault(
                    "a:ActionNotSupported",
                    f"The action {request.action} is not supported by the service.",
                    2150858754,
                    sender=True,
                )
            if request.resource_uri != CMD_URI:
                raise WsmanFault(
                    "w:DestinationUnreachable",
                    f"The WS-Management service cannot process the request. The resource URI "
                    f"{request.resource_uri} is not supported; azsim serves {CMD_URI} only.",
                    2150858770,
                    sender=True,
                )
            response_action, response_body = handler(request, owner, client_ip, endpoint)
            return 200, envelope(response_action, relates_to, response_body)
        except WsmanFault as fault:
            if fault.code == TIMED_OUT:
                self._count("receive_timeouts")
            return 500, fault_envelope(fault, relates_to, self.machine_name)

    def _shell(self, request: Request, owner: str) -> Shell:
        with self._lock:
            shell = self._shells.get(request.shell_id or "")
        if shell is None or shell.owner.lower() != owner.lower():
            raise WsmanFault(
                "w:InvalidSelectors",
                f"The request for the Windows Remote Shell with ShellId {request.shell_id} failed "
                "because the shell was not found on the server. Possible causes are: the "
                "specified ShellId is incorrect or the shell no longer exists on the server.",
                SHELL_NOT_FOUND,
                sender=True,
            )
        return shell

    def _command_of(self, shell: Shell, command_id: str | None) -> Command:
        command = shell.commands.get((command_id or "").upper())
        if command is None:
            raise WsmanFault(
                "w:InvalidSelectors",
                f"The command {command_id} was not found in shell {shell.id}.",
                SHELL_NOT_FOUND,
                sender=True,
            )
        return command

    def _create(self, request: Request, owner: str, client_ip: str, endpoint: str) -> tuple[str, str]:
        with self._lock:
            if sum(s.owner.lower() == owner.lower() for s in self._shells.values()) >= MAX_SHELLS_PER_USER:
                raise WsmanFault(
                    "w:QuotaLimit",
                    "The WS-Management service cannot process the request. This user is allowed a "
                    f"maximum number of {MAX_SHELLS_PER_USER} concurrent shells, which has been "
                    "exceeded. Close existing shells or raise the quota for this user.",
                    2150859174,
                )
            codepage = request.options.get("WINRS_CODEPAGE", "437")
            shell = Shell(
                id=str(uuid.uuid4()).upper(),
                owner=owner,
                client_ip=client_ip,
                codepage=int(codepage) if codepage.isdigit() else 437,
            )
            self._shells[shell.id] = shell
        body = (
            f"<x:ResourceCreated><a:Address>{escape(endpoint)}</a:Address><a:ReferenceParameters>"
            f"<w:ResourceURI>{CMD_URI}</w:ResourceURI><w:SelectorSet>"
            f'<w:Selector Name="ShellId">{shell.id}</w:Selector></w:SelectorSet>'
            f"</a:ReferenceParameters></x:ResourceCreated>"
            f"<rsp:Shell><rsp:ShellId>{shell.id}</rsp:ShellId><rsp:ResourceUri>{CMD_URI}"
            f"</rsp:ResourceUri><rsp:Owner>{escape(owner)}</rsp:Owner><rsp:ClientIP>"
            f"{escape(client_ip)}</rsp:ClientIP><rsp:IdleTimeOut>PT7200.000S</rsp:IdleTimeOut>"
            f"<rsp:InputStreams>stdin</rsp:InputStreams><rsp:OutputStreams>stdout stderr"
            f"</rsp:OutputStreams><rsp:ShellRunTime>P0DT0H0M0S</rsp:ShellRunTime>"
            f"<rsp:ShellInactivity>P0DT0H0M0S</rsp:ShellInactivity></rsp:Shell>"
        )
        return TRANSFER + "/CreateResponse", body

    def _command(self, request: Request, owner: str, client_ip: str, endpoint: str) -> tuple[str, str]:
        shell = self._shell(request, owner)
        line = request.body.find("rsp:CommandLine", NS)
        if line is None:
            raise WsmanFault("w:SchemaValidationError", "No rsp:CommandLine.", 2150858817, sender=True)
        program = (line.findtext("rsp:Command", "", NS) or "").strip()
        arguments = [a.text or "" for a in line.findall("rsp:Arguments", NS)]
        command_id = (line.get("CommandId") or str(uuid.uuid4())).upper()
        command = Command(id=command_id, command_line=(program, arguments), shell=shell)
        shell.commands[command_id] = command
        self.runner(shell, command)
        body = f"<rsp:CommandResponse><rsp:CommandId>{command_id}</rsp:CommandId></rsp:CommandResponse>"
        return SHELL_URI + "/CommandResponse", body

    def _send(self, request: Request, owner: str, client_ip: str, endpoint: str) -> tuple[str, str]:
        shell = self._shell(request, owner)
        for stream in request.body.findall("rsp:Send/rsp:Stream", NS):
            command = self._command_of(shell, stream.get("CommandId"))
            try:
                data = base64.b64decode(stream.text or "", validate=True)
            except binascii.Error:
                raise WsmanFault(
                    "w:SchemaValidationError", "stdin is not Base64.", 2150858817, sender=True
                ) from None
            with command.cond:
                command.stdin.extend(data)
                if (stream.get("End") or "").lower() == "true":
                    command.stdin_closed = True
                command.cond.notify_all()
        return SHELL_URI + "/SendResponse", "<rsp:SendResponse/>"

    def _receive(self, request: Request, owner: str, client_ip: str, endpoint: str) -> tuple[str, str]:
        shell = self._shell(request, owner)
        desired = request.body.find("rsp:Receive/rsp:DesiredStream", NS)
        command = self._command_of(shell, desired.get("CommandId") if desired is not None else None)
        if self.drop_receive is not None and self.drop_receive():
            # the command goes on in its shell; only the connection waiting for its output is lost
            raise ConnectionDropped
        budget = max(1024, (request.max_envelope - 2048) * 3 // 4)
        with command.cond:

            def ready() -> bool:
                pending = len(command.stdout) > command.sent_out or len(command.stderr) > command.sent_err
                return pending or command.exit_code is not None or self._stopped.is_set()

            command.cond.wait_for(ready, timeout=request.operation_timeout)
            if self._stopped.is_set():
                raise ServiceStopped
            out = bytes(command.stdout[command.sent_out : command.sent_out + budget])
            err = bytes(command.stderr[command.sent_err : command.sent_err + budget - len(out)])
            if not out and not err and command.exit_code is None:
                raise WsmanFault(
                    "w:TimedOut",
                    "The WS-Management service cannot complete the operation within the time "
                    "specified in OperationTimeout.",
                    TIMED_OUT,
                )
            command.sent_out += len(out)
            command.sent_err += len(err)
            drained = command.sent_out == len(command.stdout) and command.sent_err == len(command.stderr)
            done = command.exit_code is not None and drained
            exit_code = command.exit_code
        cid = command.id
        parts = [
            f'<rsp:Stream Name="{name}" CommandId="{cid}">{base64.b64encode(data).decode()}</rsp:Stream>'
            for name, data in (("stdout", out), ("stderr", err))
            if data
        ]
        if done:
            parts += [
                f'<rsp:Stream Name="{n}" CommandId="{cid}" End="true"></rsp:Stream>'
                for n in ("stdout", "stderr")
            ]
            parts.append(
                f'<rsp:CommandState CommandId="{cid}" State="{STATE_DONE}">'
                f"<rsp:ExitCode>{exit_code}</rsp:ExitCode></rsp:CommandState>"
            )
        else:
            parts.append(f'<rsp:CommandState CommandId="{cid}" State="{STATE_RUNNING}"/>')
        return SHELL_URI + "/ReceiveResponse", f"<rsp:ReceiveResponse>{''.join(parts)}</rsp:ReceiveResponse>"

    def _signal(self, request: Request, owner: str, client_ip: str, endpoint: str) -> tuple[str, str]:
        shell = self._shell(request, owner)
        signal = request.body.find("rsp:Signal", NS)
        command = self._command_of(shell, signal.get("CommandId") if signal is not None else None)
        code = (signal.findtext("rsp:Code", "", NS) if signal is not None else "") or ""
        if code.lower().rsplit("/", 1)[-1] in ("terminate", "ctrl_c", "ctrl_break"):
            command.cancel()
            command.finish(SIGNALLED_EXIT)
        return SHELL_URI + "/SignalResponse", "<rsp:SignalResponse/>"

    def _delete(self, request: Request, owner: str, client_ip: str, endpoint: str) -> tuple[str, str]:
        shell = self._shell(request, owner)
        with self._lock:
            self._shells.pop(shell.id, None)
        for command in shell.commands.values():
            command.cancel()
        if self.on_shell_closed is not None:
            self.on_shell_closed(shell.id)
        return TRANSFER + "/DeleteResponse", ""
