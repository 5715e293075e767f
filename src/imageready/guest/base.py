"""The one interface every guest transport implements.

A transport runs a script on the guest OS and returns its exit code and output. Nothing else
about the guest is known here: facts, scans and actions are scripts run through this interface.

Contract for implementations:

* ``run`` never raises for a non-zero exit code; it returns it. It raises :class:`GuestError`
  subclasses for transport problems, each with a one-line message that names the VM, the
  endpoint and what went wrong (never a credential).
* Every call has a deadline (``timeout`` seconds, wall clock). Past it, the remote command is
  abandoned (signalled where the protocol allows) and :class:`GuestTimeout` is raised.
* Linux (ssh, run-command): ``script`` is POSIX ``sh`` source, run by ``sh -c`` on the guest
  (as root with ``sudo -n`` when ``elevated``); ``stdin`` is fed to it and then closed.
* Windows (winrm, run-command): ``script`` is PowerShell source. It travels over stdin (never on
  the command line, so its size is not bound by the cmd.exe limit) and runs under
  ``powershell.exe -NoProfile -NonInteractive`` with ``$ProgressPreference='SilentlyContinue'``;
  output is UTF-8. ``stdin`` must be empty.
* Progress: a script may print lines starting with ``PROGRESS `` on stderr; where the protocol
  streams (ssh, winrm), ``on_progress`` is called with each such line (prefix stripped) as it
  arrives. Those lines stay in ``stderr`` too.
* Credentials come from the environment, an agent, a key file or Key Vault, never from argv or a
  host string, and never appear in an exception message, a log line or ``repr``.
* Identity (``imageready.guest.identity``): a guest built with an expected identity runs nothing
  on a session (an SSH connection, a WinRM shell) before that session proved it is the VM ARM
  describes. ``run(..., proof_in=...)`` is for a script whose own output carries the proof (the
  facts): it runs first, and its result is returned only once the proof in it is accepted.
  Run Command is addressed by the VM's resource id through ARM, so it has nothing to prove.
"""

from __future__ import annotations

import abc
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, ClassVar, Literal, Self

from imageready.categories import Category
from imageready.text import one_line

if TYPE_CHECKING:
    from imageready.azure import AzureSession
    from imageready.guest.identity import Binding, ExpectedIdentity, IdentityProof, Pins
    from imageready.target import VmRef

OsType = Literal["Linux", "Windows"]


@dataclass(frozen=True)
class CommandResult:
    """What one remote script produced."""

    exit_code: int
    stdout: bytes
    stderr: bytes
    duration: float

    @property
    def ok(self) -> bool:
        return self.exit_code == 0

    def text(self) -> str:
        """stdout decoded as UTF-8, undecodable bytes escaped (``\\xff``)."""
        from imageready.text import decode_guest

        return decode_guest(self.stdout)


class GuestError(Exception):
    """A transport-level failure. ``str(err)`` is one line fit for a report."""

    category: Category = Category.GUEST_UNREACHABLE


class GuestUnreachable(GuestError):
    """No connection: refused, no route, DNS, TLS handshake, the VM is not running."""


class GuestAuthError(GuestError):
    """The guest refused the credentials."""

    category = Category.GUEST_AUTHENTICATION


class GuestTimeout(GuestError):
    """A connect or command deadline passed."""

    category = Category.TIMEOUT


class GuestDisconnected(GuestError):
    """The connection dropped while a command ran (e.g. the guest shut down)."""


class GuestNotAllowed(GuestError):
    """The transport may not do this (e.g. sysprep over Run Command, which runs as SYSTEM)."""

    category = Category.NOT_ALLOWED


@dataclass
class GuestIdentity:
    """What the audit records about the endpoint we talked to (never a secret)."""

    transport: str
    endpoint: str
    user: str = ""
    # e.g. {"ssh_host_key": "ssh-ed25519 SHA256:...", "tls_cert_sha256": "..."}
    evidence: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class GuestTarget:
    """Everything a transport may need to open one VM's guest (``Guest.open``); each transport
    takes what it uses. Credentials are not here: each transport reads its own from the
    environment, an agent or a key file."""

    vm: VmRef
    os_type: OsType
    #: the VM's admin user as Azure reports it ("" when unknown)
    admin: str
    #: what the guest must prove it is, and what it presented before
    expected: ExpectedIdentity
    pins: Pins
    #: prove the identity now (else the first command does)
    prove: bool
    #: the subscription's Azure session (Run Command goes through ARM)
    azure: AzureSession
    #: HOST[:PORT] of the guest, for a transport with a ``default_port`` ("" for the others)
    address: str = ""
    #: --ssh-strict-host-keys, --winrm-auth and the CA bundle of --ca-bundle
    ssh_strict_host_keys: bool = False
    winrm_auth: str = "ntlm"
    ca_bundle: str | None = None


class Guest(abc.ABC):
    """A connection to one VM's guest OS through one transport."""

    #: the transport's name (its key in ``imageready.guest.TRANSPORTS``)
    transport: str = ""
    #: "Linux" or "Windows"
    os_type: OsType
    #: the guest OSes the transport serves; --transport auto picks the first registered
    #: transport that serves the VM's OS and is not read-only
    os_types: ClassVar[tuple[OsType, ...]] = ()
    #: the port the transport listens on when the address names none (None: not reached at an
    #: address of the guest, e.g. through ARM)
    default_port: ClassVar[int | None] = None
    #: True for transports that may only read (Run Command runs as SYSTEM/root without a user
    #: context; the harness only reads facts through it)
    read_only: bool = False
    #: what every session must prove before a command runs (None: no proof is asked)
    binding: Binding | None = None

    @property
    def proof(self) -> IdentityProof | None:
        """How this guest proved it is the VM (None: not proven, or nothing was asked)."""
        return self.binding.proof if self.binding is not None else None

    def pins(self) -> Pins:
        """What a later connection to this VM must present again (host key, certificate)."""
        from imageready.guest.identity import Pins

        return Pins()

    @property
    @abc.abstractmethod
    def identity(self) -> GuestIdentity:
        """Endpoint identity for the audit record."""

    @abc.abstractmethod
    def run(
        self,
        script: str,
        *,
        timeout: float,
        stdin: bytes = b"",
        elevated: bool = False,
        on_progress: Callable[[str], None] | None = None,
        proof_in: Callable[[CommandResult], object] | None = None,
    ) -> CommandResult:
        """Run ``script`` on the guest and wait at most ``timeout`` seconds for it. With
        ``proof_in``, the script's result carries the identity reading (``proof_in`` extracts it)
        instead of a probe running first."""

    @classmethod
    def open(cls, target: GuestTarget) -> Guest:
        """A new connection to ``target``'s guest through this transport (the registry calls it;
        a guest class made for a test need not have it)."""
        raise NotImplementedError(f"{cls.__name__} cannot be opened from the transport registry")

    def close(self) -> None:  # noqa: B027 - optional hook
        """Release the connection (idempotent)."""

    def __enter__(self) -> Guest:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def parse_address(address: str, default_port: int) -> tuple[str, int]:
    """``host``, ``host:port``, ``[v6]:port`` or a bare IPv6 address."""
    text = address.strip()
    if text.startswith("["):
        host, _, rest = text[1:].partition("]")
        port = rest[1:] if rest.startswith(":") else ""
    elif text.count(":") == 1:
        host, port = text.split(":")
    else:
        host, port = text, ""
    if not host or (port and not port.isdigit()):
        raise ValueError(f"guest address {address!r}: expected HOST or HOST:PORT")
    return host, int(port) if port else default_port


class AddressedGuest(Guest):
    """A guest reached at an address as a user (ssh, winrm): its endpoint, how it names itself
    in messages and the audit, and how it judges an identity probe."""

    def __init__(
        self,
        host: str,
        port: int,
        user: str,
        *,
        vm_key: str,
        expected: ExpectedIdentity | None,
        pins: Pins | None,
    ) -> None:
        from imageready.guest.identity import Binding, Pins

        self.host = host
        self.port = port
        self.user = user
        self.vm_key = vm_key
        #: what the connection presented (host key, certificate), for the audit
        self._evidence: dict[str, str] = {}
        self.binding = Binding(expected, pins or Pins(), address=f"{self.transport} {user}@{self.endpoint}")
        #: one command at a time on this object (a scan may run in a thread of its own while a
        #: check's testinfra host asks for a command; the session and the proof state are shared)
        self._serial = threading.RLock()

    @property
    def host_port(self) -> str:
        """``host:port``, an IPv6 host in brackets."""
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{host}:{self.port}"

    @property
    def endpoint(self) -> str:
        return self.host_port

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.vm_key} {self.user}@{self.endpoint})"

    @property
    def identity(self) -> GuestIdentity:
        evidence = {**self._evidence, **self._binding.evidence}
        return GuestIdentity(
            transport=self.transport, endpoint=self.endpoint, user=self.user, evidence=evidence
        )

    @property
    def _binding(self) -> Binding:
        assert self.binding is not None  # set by __init__
        return self.binding

    def _where(self) -> str:
        return f"{self.vm_key}: {self.transport} {self.user}@{self.endpoint}"

    @abc.abstractmethod
    def connect(self, *, prove: bool = True) -> None:
        """Open the connection now and, with ``prove`` and an expected identity, prove it."""

    def connected(self, *, prove: bool) -> Self:
        """This guest, connected (see ``connect``); closed again when that fails."""
        try:
            self.connect(prove=prove)
        except BaseException:
            self.close()
            raise
        return self

    def _probe_reading(self, exit_code: int, stdout: bytes, stderr: bytes) -> object:
        """The identity probe's reading; a probe that did not run to its end (it always exits 0
        when it does, e.g. the machine is shutting down) proves nothing either way, so nothing
        runs now and the next command tries again."""
        from imageready.guest.identity import parse_probe

        reading = parse_probe(stdout)
        if reading is None and exit_code != 0:
            why = one_line(stderr.decode("utf-8", "replace"), 300) or f"exit {exit_code}"
            raise GuestDisconnected(f"{self._where()}: the identity probe did not complete: {why}")
        return reading


class ProgressLines:
    """Calls back with each ``PROGRESS ...`` line of a script's stderr as it completes."""

    PREFIX = "PROGRESS "

    def __init__(self, callback: Callable[[str], None] | None) -> None:
        self._callback = callback
        self._partial = b""

    def feed(self, chunk: bytes) -> None:
        if self._callback is None:
            return
        lines = (self._partial + chunk).split(b"\n")
        self._partial = lines.pop()
        for line in lines:
            self._emit(line)

    def flush(self) -> None:
        if self._callback is not None and self._partial:
            self._emit(self._partial)
            self._partial = b""

    def _emit(self, line: bytes) -> None:
        text = line.decode("utf-8", "backslashreplace").rstrip("\r")
        if text.startswith(self.PREFIX) and self._callback is not None:
            self._callback(text[len(self.PREFIX) :])


def error_line(err: BaseException, limit: int = 600) -> str:
    """An exception's message as one line, or its class name when it has none."""
    return one_line(err, limit) or type(err).__name__
