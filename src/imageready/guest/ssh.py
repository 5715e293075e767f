"""SSH transport for Linux guests: pytest-testinfra's paramiko backend, with deadlines.

The connection is testinfra's ``ParamikoBackend.client``; we build that client ourselves because
testinfra's own accepts any host key, reads ``~/.ssh/config`` and tries every ``~/.ssh/id_*``,
and a harness that decides whether a VM is fit to become an image must know exactly which
credential and which host key it used. Commands run on a channel of that connection so that
stdin can be fed, stdout/stderr come back as bytes, and every command has a wall-clock deadline.
testinfra modules (``guest.testinfra_host.file(...)``) go through the same runner.

Credentials: an explicit key file, ``IMAGEREADY_SSH_KEY`` (a key file path), a ``pkey`` handed
over by a caller (e.g. read from Key Vault), or the ssh-agent. Never a password, never argv,
never a host string.

One transport, one module (a little over 500 lines): the host-key policy, the client, the identity
proof and the command loop share the connection's state and are read together.
"""

from __future__ import annotations

import base64
import contextlib
import dataclasses
import functools
import hashlib
import logging
import os
import select
import shlex
import socket
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import paramiko
from testinfra.backend.paramiko import ParamikoBackend
from testinfra.host import Host

from imageready.categories import Category
from imageready.guest.base import (
    AddressedGuest,
    CommandResult,
    GuestAuthError,
    GuestDisconnected,
    GuestError,
    GuestTarget,
    GuestTimeout,
    GuestUnreachable,
    ProgressLines,
    error_line,
    parse_address,
)
from imageready.guest.identity import ExpectedIdentity, GuestIdentityError, Pins, probe_script

#: paramiko's own log, with tracebacks for failures this module reports as one line; it does not
#: propagate (attach a handler to this logger to see the wire-level detail)
WIRE_LOG = "imageready.guest.ssh.paramiko"
logging.getLogger(WIRE_LOG).propagate = False
logging.getLogger(WIRE_LOG).addHandler(logging.NullHandler())

KEY_ENV = "IMAGEREADY_SSH_KEY"
PASSPHRASE_ENV = "IMAGEREADY_SSH_KEY_PASSPHRASE"  # noqa: S105 - a variable name
#: Runs the script ($1) as a child and, on SIGTERM (sshd's "signal" request, which sudo relays),
#: kills the script's whole process group: killing only the top shell would orphan its children.
#: fd 3 carries our stdin past the /dev/null an asynchronous command would otherwise get.
_GROUP_WRAPPER = (
    'exec 3<&0; trap "trap - TERM HUP; kill -TERM 0; exit 143" TERM HUP; sh -c "$1" <&3 3<&- & wait $!'
)
#: the deadline for testinfra module calls, which have no timeout argument of their own
TESTINFRA_TIMEOUT = 60.0
_READ_SIZE = 65536


class GuestHostKeyRejected(GuestError):
    """Strict host-key checking refused the server's key (unknown or changed)."""

    category = Category.GUEST_HOST_KEY


def host_key_evidence(key: paramiko.PKey) -> str:
    """``ssh-ed25519 SHA256:...`` as ``ssh-keygen -l`` prints it."""
    return _fingerprint(key.get_name(), key.asbytes())


def _fingerprint(kind: str, blob: bytes) -> str:
    digest = base64.b64encode(hashlib.sha256(blob).digest()).decode().rstrip("=")
    return f"{kind} SHA256:{digest}"


def pinned_key_evidence(pin: str) -> str:
    """The fingerprint of a pinned key (OpenSSH ``type base64``), as :func:`host_key_evidence`."""
    kind, _, data = pin.partition(" ")
    try:
        return _fingerprint(kind, base64.b64decode(data))
    except ValueError:
        return pin[:40]


class _RecordPolicy(paramiko.MissingHostKeyPolicy):
    """Non-strict mode: accept a key not in known_hosts (it is recorded in the audit)."""

    def missing_host_key(self, client: paramiko.SSHClient, hostname: str, key: paramiko.PKey) -> None:
        return None


class _StrictPolicy(paramiko.MissingHostKeyPolicy):
    def missing_host_key(self, client: paramiko.SSHClient, hostname: str, key: paramiko.PKey) -> None:
        raise GuestHostKeyRejected(f"host key {host_key_evidence(key)} is not in known_hosts")


class _Backend(ParamikoBackend):  # type: ignore[misc]  # testinfra is untyped
    """testinfra's paramiko backend whose client and commands belong to an :class:`SshGuest`."""

    def __init__(self, guest: SshGuest) -> None:
        super().__init__(f"{guest.user}@{guest.host_port}", timeout=int(guest.connect_timeout))
        self._guest = guest

    @functools.cached_property
    def client(self) -> paramiko.SSHClient:
        return self._guest._open_client()

    def _exec_command(self, command: bytes) -> tuple[int, bytes, bytes]:
        result = self._guest._exec(command, timeout=TESTINFRA_TIMEOUT, purpose="testinfra command")
        return result.exit_code, result.stdout, result.stderr

    def get_sudo_command(self, command: str, sudo_user: str | None) -> str:
        """``host.sudo()`` as the harness's own root commands run: ``sudo -n``, so a sudo that
        wants a password fails at once instead of waiting for one until the deadline."""
        if sudo_user is None:
            return str(self.quote("sudo -n /bin/sh -c %s", command))
        return str(self.quote("sudo -n -u %s /bin/sh -c %s", sudo_user, command))


class SshGuest(AddressedGuest):
    """One Linux guest over SSH; the connection opens on first use and is reused."""

    transport = "ssh"
    os_type = "Linux"
    os_types = ("Linux",)
    default_port = 22

    def __init__(
        self,
        host: str,
        port: int,
        user: str,
        *,
        vm_key: str,
        key_path: str | os.PathLike[str] | None = None,
        pkey: paramiko.PKey | None = None,
        allow_agent: bool = True,
        connect_timeout: float = 15.0,
        known_hosts: str | os.PathLike[str] | None = None,
        strict: bool = False,
        expected: ExpectedIdentity | None = None,
        pins: Pins | None = None,
    ) -> None:
        super().__init__(host, port, user, vm_key=vm_key, expected=expected, pins=pins)
        self.connect_timeout = connect_timeout
        self.known_hosts = Path(known_hosts) if known_hosts else None
        self.strict = strict
        env_key = os.environ.get(KEY_ENV) or None
        self._key_path = Path(key_path) if key_path else Path(env_key) if env_key else None
        self._pkey = pkey
        self._allow_agent = allow_agent
        self._backend = _Backend(self)
        #: the host key of the current connection (OpenSSH "type base64": a public key)
        self._host_key = ""

    @classmethod
    def open(cls, target: GuestTarget) -> SshGuest:
        """``target``'s guest as ``IMAGEREADY_SSH_USER`` (else the VM's admin user), host keys
        from ``IMAGEREADY_KNOWN_HOSTS``."""
        return connect_ssh(
            target.address,
            os.environ.get("IMAGEREADY_SSH_USER") or target.admin,
            vm_key=target.vm.key,
            known_hosts=os.environ.get("IMAGEREADY_KNOWN_HOSTS"),
            strict=target.ssh_strict_host_keys,
            expected=target.expected,
            pins=target.pins,
            prove=target.prove,
        )

    def pins(self) -> Pins:
        return Pins(ssh_host_key=self._host_key)

    @property
    def testinfra_host(self) -> Host:
        """A testinfra ``Host`` on this connection (each call bounded by TESTINFRA_TIMEOUT)."""
        return Host(self._backend)

    def connect(self, *, prove: bool = True) -> None:
        """Open the connection now (it otherwise opens on the first command) and, with ``prove``
        and an expected identity, prove it right away (else the first command does)."""
        client = self._client()
        transport = client.get_transport()
        if prove and self._binding.needs_proof(transport):
            self._prove(transport)

    def _prove(self, transport: paramiko.Transport | None) -> None:
        """Run the identity probe on ``transport`` (this SSH connection) and judge it."""
        result = self._exec_raw(
            transport,
            _command(probe_script("Linux"), elevated=False),
            timeout=60.0,
            purpose="the identity probe",
        )
        self._accept(self._probe_reading(result.exit_code, result.stdout, result.stderr), transport)

    def _accept(self, reading: object, transport: object) -> None:
        """Judge ``reading``; once proven, later connections of this object must show the same
        host key before they prove again."""
        binding = self._binding
        binding.accept(reading, transport)
        if not binding.pins.ssh_host_key and self._host_key:
            binding.pins = dataclasses.replace(binding.pins, ssh_host_key=self._host_key)

    def _client(self) -> paramiko.SSHClient:
        client: paramiko.SSHClient = self._backend.client
        transport = client.get_transport()
        if transport is None or not transport.is_active():
            # the guest rebooted or dropped us between commands: reconnect once
            self.close()
            client = self._backend.client
        return client

    def _open_client(self) -> paramiko.SSHClient:
        client = paramiko.SSHClient()
        client.set_log_channel(WIRE_LOG)
        if self.known_hosts is not None:
            try:
                client.load_host_keys(str(self.known_hosts))
            except OSError as err:
                raise GuestHostKeyRejected(
                    f"{self._where()}: cannot read known_hosts {self.known_hosts}: {err.strerror}"
                ) from None
        elif self.strict:
            raise GuestHostKeyRejected(f"{self._where()}: strict host-key checking needs known_hosts")
        client.set_missing_host_key_policy(_StrictPolicy() if self.strict else _RecordPolicy())
        pkey = self._pkey or self._load_key()
        agent = self._allow_agent and bool(os.environ.get("SSH_AUTH_SOCK"))
        if pkey is None and not agent:
            raise GuestAuthError(
                f"{self._where()}: no SSH credential: set {KEY_ENV} to a key file, "
                "pass a key file, or run an ssh-agent"
            )
        try:
            client.connect(
                self.host,
                port=self.port,
                username=self.user,
                pkey=pkey,
                allow_agent=agent,
                look_for_keys=False,
                timeout=self.connect_timeout,
                banner_timeout=self.connect_timeout,
                auth_timeout=self.connect_timeout,
                channel_timeout=self.connect_timeout,
            )
        except BaseException as err:
            client.close()
            raise self._connect_error(err) from None
        transport = client.get_transport()
        assert transport is not None
        transport.set_keepalive(15)
        key = transport.get_remote_server_key()
        offered = f"{key.get_name()} {key.get_base64()}"
        pinned = self._binding.pins.ssh_host_key
        if pinned and offered != pinned:
            client.close()
            error = GuestIdentityError(
                f"{self._where()}: another machine answers: the host key is "
                f"{host_key_evidence(key)}, the key seen when {self.vm_key} proved its identity was "
                f"{pinned_key_evidence(pinned)}"
            )
            self._binding.refuse(error)
            raise error
        self._host_key = offered
        self._evidence["ssh_host_key"] = host_key_evidence(key)
        return client

    def _load_key(self) -> paramiko.PKey | None:
        if self._key_path is None:
            return None
        passphrase = os.environ.get(PASSPHRASE_ENV) or None
        try:
            return paramiko.PKey.from_path(self._key_path, password=passphrase)
        except FileNotFoundError:
            raise GuestAuthError(f"{self._where()}: key file {self._key_path} not found") from None
        except paramiko.PasswordRequiredException:
            raise GuestAuthError(
                f"{self._where()}: key file {self._key_path} is encrypted; set {PASSPHRASE_ENV}"
            ) from None
        except (OSError, paramiko.SSHException, ValueError) as err:
            reason = err.strerror if isinstance(err, OSError) and err.strerror else type(err).__name__
            raise GuestAuthError(
                f"{self._where()}: cannot load key file {self._key_path}: {reason}"
            ) from None

    def _credentials(self) -> list[str]:
        """What authentication offers, named for an error message (never the key itself)."""
        offered = []
        if self._pkey is not None:
            offered.append("the key handed over")
        elif self._key_path is not None:
            offered.append(f"key file {self._key_path}")
        if self._allow_agent and os.environ.get("SSH_AUTH_SOCK"):
            offered.append("ssh-agent")
        return offered

    def _connect_error(self, err: BaseException) -> BaseException:
        where = self._where()
        if isinstance(err, GuestError):
            return type(err)(f"{where}: {err}")
        if isinstance(err, paramiko.BadHostKeyException):
            return GuestHostKeyRejected(
                f"{where}: host key changed: known_hosts has {host_key_evidence(err.expected_key)}"
                f", the server offered {host_key_evidence(err.key)}"
            )
        if isinstance(err, paramiko.AuthenticationException):
            tried = ", ".join(self._credentials())
            return GuestAuthError(f"{where}: the guest refused the credentials (tried {tried})")
        if isinstance(err, TimeoutError | socket.timeout):
            return GuestTimeout(f"{where}: no connection within {self.connect_timeout:g} s")
        if isinstance(err, paramiko.ssh_exception.NoValidConnectionsError):
            return GuestUnreachable(f"{where}: connection refused")
        if isinstance(err, OSError):
            return GuestUnreachable(f"{where}: {err.strerror or type(err).__name__}")
        if isinstance(err, paramiko.SSHException):
            return GuestUnreachable(f"{where}: SSH handshake failed: {error_line(err)}")
        return err

    def run(
        self,
        script: str,
        *,
        timeout: float,
        stdin: bytes = b"",
        elevated: bool = False,
        on_progress: Callable[[str], None] | None = None,
        proof_in: Callable[[CommandResult], object] | None = None,
        purpose: str = "",
    ) -> CommandResult:
        """Run ``script`` with ``sh -c`` (as root via ``sudo -n`` when ``elevated``)."""
        what = purpose or _purpose(script)
        return self._exec(
            _command(script, elevated=elevated),
            timeout=timeout,
            stdin=stdin,
            on_progress=on_progress,
            purpose=what,
            proof_in=proof_in,
        )

    def _exec(
        self,
        command: bytes,
        *,
        timeout: float,
        purpose: str,
        stdin: bytes = b"",
        on_progress: Callable[[str], None] | None = None,
        proof_in: Callable[[CommandResult], object] | None = None,
    ) -> CommandResult:
        """Every command, testinfra's included: on a connection that proved its identity (or,
        with ``proof_in``, one whose result carries the proof); one at a time."""
        with self._serial:
            binding = self._binding
            binding.check()
            transport = self._client().get_transport()
            if binding.needs_proof(transport) and proof_in is None:
                self._prove(transport)
            result = self._exec_raw(
                transport, command, timeout=timeout, purpose=purpose, stdin=stdin, on_progress=on_progress
            )
            if binding.needs_proof(transport) and proof_in is not None:
                self._accept(proof_in(result), transport)
            return result

    def _exec_raw(
        self,
        transport: paramiko.Transport | None,
        command: bytes,
        *,
        timeout: float,
        purpose: str,
        stdin: bytes = b"",
        on_progress: Callable[[str], None] | None = None,
    ) -> CommandResult:
        """Run ``command`` on ``transport`` and on no other connection: a connection that
        dropped is an error here, never silently replaced by one that proved nothing."""
        started = time.monotonic()
        deadline = started + timeout
        try:
            assert transport is not None
            channel = transport.open_session(timeout=max(0.1, min(timeout, self.connect_timeout)))
            channel.exec_command(command)
        except (paramiko.SSHException, OSError, EOFError) as err:
            raise GuestDisconnected(f"{self._where()}: cannot start {purpose}: {error_line(err)}") from None
        stdout, stderr = bytearray(), bytearray()
        progress = ProgressLines(on_progress)
        pending = memoryview(stdin)
        # poll, not select: a harness with a large fleet's connections open holds more than
        # select's 1024 descriptors (a channel's fileno() is a pipe paramiko sets when data comes)
        waiting = select.poll()
        waiting.register(channel, select.POLLIN)
        try:
            if not pending:
                channel.shutdown_write()
            while True:
                if time.monotonic() >= deadline:
                    raise GuestTimeout(
                        f"{self._where()}: {purpose} did not finish within {timeout:g} s (abandoned)"
                    )
                busy = False
                if pending and channel.send_ready():
                    sent = channel.send(bytes(pending[:_READ_SIZE]))
                    pending = pending[sent:]
                    busy = True
                    if not pending:
                        channel.shutdown_write()
                while channel.recv_ready():
                    stdout += channel.recv(_READ_SIZE)
                    busy = True
                while channel.recv_stderr_ready():
                    chunk = channel.recv_stderr(_READ_SIZE)
                    stderr += chunk
                    progress.feed(chunk)
                    busy = True
                if channel.exit_status_ready() and channel.eof_received:
                    stdout += _drain(channel.recv_ready, channel.recv)
                    tail = _drain(channel.recv_stderr_ready, channel.recv_stderr)
                    stderr += tail
                    progress.feed(tail)
                    break
                if channel.closed or not transport.is_active():
                    raise GuestDisconnected(f"{self._where()}: the connection dropped during {purpose}")
                if not busy:
                    waiting.poll(min(50.0, max(0.0, (deadline - time.monotonic()) * 1000)))
        except GuestTimeout:
            _abandon(channel)
            raise
        except (paramiko.SSHException, OSError, EOFError) as err:
            channel.close()
            raise GuestDisconnected(
                f"{self._where()}: {purpose} lost its connection: {error_line(err)}"
            ) from None
        code = channel.recv_exit_status()
        channel.close()
        progress.flush()
        return CommandResult(code, bytes(stdout), bytes(stderr), time.monotonic() - started)

    def close(self) -> None:
        client = self._backend.__dict__.pop("client", None)
        if client is not None:
            client.close()


def _command(script: str, *, elevated: bool) -> bytes:
    sudo = "sudo -n " if elevated else ""
    return f"{sudo}sh -c {shlex.quote(_GROUP_WRAPPER)} imageready {shlex.quote(script)}".encode()


def _drain(ready: Callable[[], bool], recv: Callable[[int], bytes]) -> bytes:
    data = bytearray()
    while ready():
        data += recv(_READ_SIZE)
    return bytes(data)


def _abandon(channel: paramiko.Channel, grace: float = 1.0) -> None:
    """Stop a command past its deadline: TERM first (sudo relays it to a root command, KILL
    it could not), KILL if it lingers, then hang up."""
    _signal(channel, "TERM")
    until = time.monotonic() + grace
    while not channel.exit_status_ready() and time.monotonic() < until:
        time.sleep(0.02)
    if not channel.exit_status_ready():
        _signal(channel, "KILL")
    channel.close()


def _signal(channel: paramiko.Channel, name: str) -> None:
    """RFC 4254 6.9 "signal": OpenSSH's sshd signals the command's process group. paramiko has
    no method for this client-side request, so the message is built here."""
    message = paramiko.Message()
    message.add_byte(paramiko.common.cMSG_CHANNEL_REQUEST)
    message.add_int(channel.remote_chanid)
    message.add_string("signal")
    message.add_boolean(False)
    message.add_string(name)
    # if the connection is already gone, so is the command
    with contextlib.suppress(paramiko.SSHException, OSError, EOFError, AttributeError):
        channel.get_transport()._send_user_message(message)  # type: ignore[attr-defined]


def _purpose(script: str) -> str:
    first = next((line.strip() for line in script.splitlines() if line.strip()), "")
    return f"command {first[:60]!r}" if first else "command"


def connect_ssh(
    address: str,
    user: str,
    *,
    vm_key: str,
    key_path: str | os.PathLike[str] | None = None,
    pkey: paramiko.PKey | None = None,
    connect_timeout: float = 15.0,
    known_hosts: str | os.PathLike[str] | None = None,
    strict: bool = False,
    expected: ExpectedIdentity | None = None,
    pins: Pins | None = None,
    prove: bool = True,
    **options: Any,
) -> SshGuest:
    """Connect to ``address`` (``host[:port]``) as ``user`` and return the open guest; with
    ``expected``, proven to be that VM (unless ``prove`` is False: the first command proves)."""
    host, port = parse_address(address, 22)
    return SshGuest(
        host,
        port,
        user,
        vm_key=vm_key,
        key_path=key_path,
        pkey=pkey,
        connect_timeout=connect_timeout,
        known_hosts=known_hosts,
        strict=strict,
        expected=expected,
        pins=pins,
        **options,
    ).connected(prove=prove)
