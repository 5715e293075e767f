"""The guest that answers is the VM Azure describes: its proof of identity, and how it is judged.

An address (the NIC's IP, or ``--guest-address`` for tunnels and port forwards) says nothing about
which machine answers there. The guest proves it: Azure's Instance Metadata Service answers a
guest with its own VM's ``compute/vmId``, ``name`` and ``resourceId`` ("VMs can only interact with
their own metadata"), and the SMBIOS system UUID carries the same vmId. Both are compared with
the ``vmId`` ARM reports for the VM; a guest that names another VM, or cannot name one at all,
is refused (category "guest identity"), whatever else it answers.

Sources:

* IMDS: https://learn.microsoft.com/azure/virtual-machines/instance-metadata-service
  (169.254.169.254, header ``Metadata: true``, proxies must be bypassed, ``compute/vmId``,
  ``name``, ``resourceId``; the vmId row says the SMBIOS UUID's byte order depends on the SMBIOS
  version).
* "Accessing and Using Azure VM Unique ID" (Microsoft Azure blog, 2014,
  https://azure.microsoft.com/blog/accessing-and-using-azure-vm-unique-id/): the VM unique ID is
  stored in SMBIOS; on Linux ``dmidecode``/``/sys/class/dmi/id/product_uuid`` show it with the
  first three fields byte-swapped on SMBIOS < 2.6 (IMDS page: as-is on SMBIOS >= 2.6). So both
  byte orders are accepted for SMBIOS, and which one matched is recorded.
* Windows: ``Win32_ComputerSystemProduct.UUID`` is the SMBIOS type 1 UUID; "if a UUID is not
  available, a UUID of all zeros is used" (learn.microsoft.com, Win32_ComputerSystemProduct).
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from importlib import resources
from typing import Any

from imageready.categories import Category
from imageready.guest.base import GuestError
from imageready.text import one_line

#: both probes ask IMDS with this api-version (compute.resourceId exists since 2019-03-11)
IMDS_API_VERSION = "2021-02-01"
_NOT_AN_ID = {"00000000-0000-0000-0000-000000000000", "ffffffff-ffff-ffff-ffff-ffffffffffff"}


class GuestIdentityError(GuestError):
    """The guest is not (or cannot prove it is) the VM Azure describes. One line naming both ids
    and the address used; the VM's checks error and its gate stays shut."""

    category = Category.GUEST_IDENTITY


@dataclass(frozen=True)
class ExpectedIdentity:
    """What ARM says the VM is; every session to its guest must prove the same."""

    vm_key: str  # rg/name, for messages
    vm_id: str
    name: str
    resource_id: str

    @classmethod
    def from_model(cls, vm_key: str, model: Mapping[str, Any]) -> ExpectedIdentity:
        """From an ARM VM model. Raises GuestIdentityError when ARM shows no vmId (nothing to
        compare a guest with is not a reason to trust it)."""
        props = model.get("properties") or {}
        vm_id = canonical_uuid(props.get("vmId"))
        if vm_id is None:
            raise GuestIdentityError(
                f"{vm_key}: Azure reports no vmId for the VM, so no guest can prove it is this VM"
            )
        name = str(model.get("name") or vm_key.rpartition("/")[2])
        return cls(vm_key=vm_key, vm_id=vm_id, name=name, resource_id=str(model.get("id") or ""))


@dataclass(frozen=True)
class Pins:
    """What a later connection must present again: the SSH host key seen when the identity was
    proven (OpenSSH ``type base64``), the WinRM TLS certificate's SHA-256 (hex)."""

    ssh_host_key: str = ""
    tls_cert_sha256: str = ""


@dataclass(frozen=True)
class IdentityProof:
    """How a guest proved it is the VM: the vmId it named and where it read it."""

    vm_id: str
    read_from: str  # "imds" | "smbios"
    #: which SMBIOS byte order matched: "as-is", "swapped" (first three fields), "" (not read)
    smbios_byte_order: str = ""
    imds_name: str = ""
    imds_resource_id: str = ""

    def evidence(self) -> dict[str, str]:
        found = {"guest_vm_id": self.vm_id, "identity_read_from": self.read_from}
        if self.smbios_byte_order:
            found["smbios_byte_order"] = self.smbios_byte_order
        if self.imds_name:
            found["imds_name"] = self.imds_name
        if self.imds_resource_id:
            found["imds_resource_id"] = self.imds_resource_id
        return found


def canonical_uuid(value: object) -> str | None:
    """Lower-case ``8-4-4-4-12`` form, or None for anything that is not a usable id (not a UUID,
    or the all-zeros / all-ones "no UUID" values)."""
    if not isinstance(value, str):
        return None
    try:
        text = str(uuid.UUID(value.strip().strip("{}")))
    except ValueError:
        return None
    return None if text in _NOT_AN_ID else text


def swap_first_fields(value: str) -> str:
    """The UUID with its first three fields byte-swapped (how SMBIOS < 2.6 shows Azure's vmId)."""
    return str(uuid.UUID(bytes_le=uuid.UUID(value).bytes))


def verify(expected: ExpectedIdentity, reading: object, *, address: str) -> IdentityProof:
    """Judge a probe's ``reading`` (the identity probe's JSON, or the facts' ``identity``).

    IMDS, when it answered, must name the vmId (and the name and resource id, when given) ARM
    reports; the SMBIOS UUID, when readable, must be the vmId in one of its two byte orders. At
    least one of them must have answered. Anything else raises GuestIdentityError."""
    data = reading if isinstance(reading, Mapping) else {}
    where = f"{expected.vm_key}: the guest at {address}"
    imds = data.get("imds") if isinstance(data.get("imds"), Mapping) else None
    imds_id = canonical_uuid(imds.get("vmId")) if imds is not None else None
    name = str(imds.get("name") or "") if imds is not None else ""
    resource = str(imds.get("resourceId") or "") if imds is not None else ""
    if imds_id is not None:
        if imds_id != expected.vm_id:
            raise GuestIdentityError(
                f"{where} is another VM: Azure's vmId for {expected.vm_key} is {expected.vm_id}, "
                f"the guest's IMDS says {imds_id}" + (f" ({name})" if name else "") + _hint()
            )
        pairs = [("name", name, expected.name), ("resourceId", resource, expected.resource_id)]
        pairs = [(label, seen, want) for label, seen, want in pairs if want]
        wrong = [f"{label} {seen!r}" for label, seen, want in pairs if seen and seen.lower() != want.lower()]
        if wrong:
            raise GuestIdentityError(
                f"{where} names vmId {imds_id} (Azure's, for {expected.vm_key}) but IMDS gives "
                f"{' and '.join(wrong)}: refusing a guest whose metadata disagrees with ARM"
            )
    raw_smbios = data.get("smbios_uuid")
    smbios = canonical_uuid(raw_smbios)
    order = ""
    if smbios is not None:
        if smbios == expected.vm_id:
            order = "as-is"
        elif swap_first_fields(smbios) == expected.vm_id:
            order = "swapped"
        else:
            raise GuestIdentityError(
                f"{where} is another VM: Azure's vmId for {expected.vm_key} is {expected.vm_id}, "
                f"the guest's SMBIOS UUID is {smbios} (byte-swapped: {swap_first_fields(smbios)})" + _hint()
            )
    if imds_id is None and smbios is None:
        imds_why = one_line(data.get("imds_error") or "", 200) or (
            "gave no vmId" if imds is not None else "no answer"
        )
        smbios_why = one_line(data.get("smbios_error") or "", 200) or (
            f"{raw_smbios!r} is not a UUID" if isinstance(raw_smbios, str) else "not readable"
        )
        raise GuestIdentityError(
            f"{where} cannot prove it is {expected.vm_key} (Azure's vmId {expected.vm_id}; the "
            f"guest's: unknown): IMDS {imds_why}; SMBIOS UUID {smbios_why}. See docs/guests.md, "
            "'Guest identity'"
        )
    return IdentityProof(
        vm_id=imds_id or expected.vm_id,
        read_from="imds" if imds_id is not None else "smbios",
        smbios_byte_order=order,
        imds_name=name,
        imds_resource_id=resource,
    )


def _hint() -> str:
    return ": a wrong entry in the address map, a stale port forward or a reused IP address"


def probe_script(os_type: str) -> str:
    """The identity probe for ``os_type``: POSIX sh for Linux, PowerShell for Windows; each
    prints one JSON object (see :func:`verify`)."""
    name = "identity_linux.sh" if os_type == "Linux" else "identity_windows.ps1"
    return resources.files("imageready.scripts").joinpath(name).read_text(encoding="utf-8")


def parse_probe(stdout: bytes) -> object:
    """The probe's JSON (its last non-empty line), or None when it printed none."""
    lines = [line for line in stdout.decode("utf-8", "replace").splitlines() if line.strip()]
    if not lines:
        return None
    try:
        found: object = json.loads(lines[-1].lstrip("\ufeff"))
    except json.JSONDecodeError:
        return None
    return found


class Binding:
    """The identity state of one guest connection object, kept by its transport.

    A transport asks :meth:`needs_proof` before it runs anything on a session (an SSH connection,
    a WinRM shell); when it does, it runs the probe on that very session and hands the reading to
    :meth:`accept`. A refusal is final for the object: every later command raises it again, so
    nothing runs on a machine that once failed to prove it is the VM."""

    def __init__(self, expected: ExpectedIdentity | None, pins: Pins, address: str) -> None:
        self.expected = expected
        self.pins = pins
        self.address = address
        self.proof: IdentityProof | None = None
        self.failure: GuestIdentityError | None = None
        #: what the audit keeps about the proof (or the refusal); merged into GuestIdentity.evidence
        self.evidence: dict[str, str] = {}
        self._session: object = None

    def check(self) -> None:
        """Raise the earlier refusal, if there was one."""
        if self.failure is not None:
            raise self.failure

    def needs_proof(self, session: object) -> bool:
        return self.expected is not None and (self.proof is None or session is not self._session)

    def accept(self, reading: object, session: object) -> IdentityProof:
        """Judge ``reading`` read on ``session``: remember the proof, or refuse for good."""
        assert self.expected is not None
        self.evidence.update(_seen(reading))
        try:
            proof = verify(self.expected, reading, address=self.address)
        except GuestIdentityError as err:
            self.refuse(err)
            raise
        self.proof, self._session = proof, session
        self.evidence.update(proof.evidence())
        self.evidence.pop("identity_refused", None)
        return proof

    def refuse(self, err: GuestIdentityError) -> None:
        self.failure = err
        self.evidence["identity_refused"] = str(err)


def _seen(reading: object) -> dict[str, str]:
    """What the guest said, for the audit (ids only; they are not secrets)."""
    data = reading if isinstance(reading, Mapping) else {}
    imds = data.get("imds") if isinstance(data.get("imds"), Mapping) else {}
    found = {}
    imds_id = canonical_uuid(imds.get("vmId")) if imds else None
    if imds_id:
        found["imds_vm_id"] = imds_id
    smbios = canonical_uuid(data.get("smbios_uuid"))
    if smbios:
        found["smbios_uuid"] = smbios
    return found
