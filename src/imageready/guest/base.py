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
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Literal

from imageready.categories import Category

if TYPE_CHECKING:
    from imageready.guest.identity import Binding, IdentityProof, Pins

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


class Guest(abc.ABC):
    """A connection to one VM's guest OS through one transport."""

    #: "ssh", "winrm" or "run-command"
    transport: str = ""
    #: "Linux" or "Windows"
    os_type: OsType
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
