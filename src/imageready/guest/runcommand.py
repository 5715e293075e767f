"""Azure Run Command as a guest transport, for VMs with no network path.

Read-only facts only: Run Command runs as root/SYSTEM through the VM agent with no user context,
so the harness never changes a guest through it (and sysprep must never run as SYSTEM). Azure keeps
only the last 4096 bytes of output, so the output travels gzip-compressed and base64-encoded
between markers, and a result that still does not fit is an error, never silently truncated.
"""

from __future__ import annotations

import base64
import binascii
import gzip
import re
import secrets
import time
from collections.abc import Callable
from typing import TYPE_CHECKING

from imageready.guest.base import (
    CommandResult,
    Guest,
    GuestError,
    GuestIdentity,
    GuestNotAllowed,
    GuestTarget,
    OsType,
)
from imageready.guest.identity import Binding, ExpectedIdentity, Pins

if TYPE_CHECKING:
    from imageready.azure import AzureSession
    from imageready.target import VmRef

AZURE_OUTPUT_LIMIT = 4096
_RESULT = re.compile(r"IR-B64:([A-Za-z0-9+/=]*)\s+IR-RC=(-?\d+)")


class RunCommandGuest(Guest):
    """Run scripts through ``Microsoft.Compute/virtualMachines/runCommand/action``."""

    transport = "run-command"
    read_only = True
    os_types = ("Linux", "Windows")

    def __init__(
        self, azure: AzureSession, ref: VmRef, os_type: OsType, *, expected: ExpectedIdentity | None = None
    ) -> None:
        self.azure = azure
        self.ref = ref
        self.os_type = os_type
        # ARM delivers the script to the VM by its resource id: there is no address that could
        # lead elsewhere, so no probe runs first; a result that carries a proof (the facts) is
        # still judged, and recorded
        self.binding = Binding(expected, Pins(), address=f"Run Command on {ref.id}")

    @classmethod
    def open(cls, target: GuestTarget) -> RunCommandGuest:
        return cls(target.azure, target.vm, target.os_type, expected=target.expected)

    @property
    def identity(self) -> GuestIdentity:
        assert self.binding is not None
        return GuestIdentity(
            transport=self.transport,
            endpoint=f"{self.ref.id}/runCommand",
            user="root/SYSTEM",
            evidence=dict(self.binding.evidence),
        )

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
        assert self.binding is not None
        self.binding.check()
        if stdin:
            raise GuestNotAllowed(f"{self.ref.key}: Run Command cannot feed stdin to a script")
        started = time.monotonic()
        if self.os_type == "Linux":
            command_id, wrapped = "RunShellScript", _wrap_sh(script)
        else:
            command_id, wrapped = "RunPowerShellScript", _wrap_powershell(script)
        stdout, stderr = self.azure.run_command(self.ref, command_id, [wrapped])
        match = _RESULT.search(stdout)
        if match is None:
            if len(stdout) >= AZURE_OUTPUT_LIMIT - 64:
                raise GuestError(
                    f"{self.ref.key}: Run Command output exceeds what Azure keeps "
                    f"({AZURE_OUTPUT_LIMIT} bytes) even compressed"
                )
            raise GuestError(f"{self.ref.key}: Run Command returned no result marker: {stderr.strip()[:200]}")
        try:
            data = gzip.decompress(base64.b64decode(match.group(1))) if match.group(1) else b""
        except (binascii.Error, OSError, EOFError) as err:
            raise GuestError(f"{self.ref.key}: Run Command output could not be decoded: {err}") from None
        result = CommandResult(
            exit_code=int(match.group(2)),
            stdout=data,
            stderr=stderr.encode("utf-8", errors="replace"),
            duration=time.monotonic() - started,
        )
        if proof_in is not None and self.binding.expected is not None:
            self.binding.accept(proof_in(result), self.ref.id)
        return result


def _wrap_sh(script: str) -> str:
    delimiter = f"IR_SCRIPT_{secrets.token_hex(6)}"
    return (
        f"ir_script=$(cat <<'{delimiter}'\n{script}\n{delimiter}\n)\n"
        'ir_out=$(sh -c "$ir_script" 2>/dev/null); ir_rc=$?\n'
        "printf 'IR-B64:'; printf '%s' \"$ir_out\" | gzip -9 -c | base64 | tr -d '\\n'\n"
        "printf '\\nIR-RC=%s\\n' \"$ir_rc\"\n"
    )


def _wrap_powershell(script: str) -> str:
    """The script as a scriptblock (readable as itself, so nothing hides what it asks for), its
    output gzip-compressed and base64-encoded between markers."""
    return (
        "$ProgressPreference='SilentlyContinue'\n"
        "$irScript = {\n"
        f"{script}\n"
        "}  # imageready: end of script\n"
        "$o=(& $irScript 2>$null | Out-String); $rc=[int]$LASTEXITCODE\n"
        "$m=New-Object IO.MemoryStream; $g=New-Object IO.Compression.GZipStream($m,"
        "[IO.Compression.CompressionMode]::Compress)\n"
        "$b=[Text.Encoding]::UTF8.GetBytes($o.Trim()); $g.Write($b,0,$b.Length); $g.Close()\n"
        "Write-Output ('IR-B64:'+[Convert]::ToBase64String($m.ToArray())); Write-Output ('IR-RC='+$rc)\n"
    )
