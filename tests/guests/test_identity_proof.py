"""Judging a guest's proof of identity (imageready.guest.identity.verify): IMDS, the SMBIOS UUID in
either byte order, and every way a proof falls short."""

from __future__ import annotations

import uuid
from typing import Any

import pytest

from imageready.guest.identity import (
    Binding,
    ExpectedIdentity,
    GuestIdentityError,
    Pins,
    canonical_uuid,
    parse_probe,
    swap_first_fields,
    verify,
)

VM_ID = "d0df4c54-4ecb-4a4b-9954-5bdf3ed5c3b8"
# WALinuxAgent issue #830: the same VM's id as dmidecode showed it on SMBIOS < 2.6
SWAPPED = "544CDFD0-CB4E-4B4A-9954-5BDF3ED5C3B8"
OTHER = "7cdc1f83-c56c-4e5e-9f1f-60b0072ec8e6"
RID = "/subscriptions/s/resourceGroups/rg/providers/Microsoft.Compute/virtualMachines/vm1"
EXPECTED = ExpectedIdentity("rg/vm1", VM_ID, "vm1", RID)
ADDRESS = "ssh azureuser@127.0.0.1:2222"


def reading(
    vm_id: str | None = VM_ID, smbios: str | None = None, name: str = "vm1", rid: str = RID, **errors: str
) -> dict[str, Any]:
    imds = {"vmId": vm_id, "name": name, "resourceId": rid} if vm_id is not None else None
    return {"imds": imds, "smbios_uuid": smbios, "imds_error": None, "smbios_error": None, **errors}


def test_the_byte_swap_is_microsofts_example() -> None:
    assert swap_first_fields(SWAPPED) == VM_ID
    assert swap_first_fields(swap_first_fields(VM_ID)) == VM_ID
    assert canonical_uuid("{D0DF4C54-4ECB-4A4B-9954-5BDF3ED5C3B8}") == VM_ID
    for not_an_id in ("00000000-0000-0000-0000-000000000000", "FFFFFFFF-FFFF-FFFF-FFFF-FFFFFFFFFFFF", "x", 5):
        assert canonical_uuid(not_an_id) is None


def test_imds_proves_and_smbios_is_checked_in_both_byte_orders() -> None:
    proof = verify(EXPECTED, reading(smbios=VM_ID.upper()), address=ADDRESS)
    assert (proof.read_from, proof.smbios_byte_order, proof.vm_id) == ("imds", "as-is", VM_ID)
    proof = verify(EXPECTED, reading(smbios=SWAPPED), address=ADDRESS)
    assert (proof.read_from, proof.smbios_byte_order) == ("imds", "swapped")
    assert proof.evidence() == {
        "guest_vm_id": VM_ID,
        "identity_read_from": "imds",
        "smbios_byte_order": "swapped",
        "imds_name": "vm1",
        "imds_resource_id": RID,
    }


def test_smbios_alone_proves_when_imds_is_hidden() -> None:
    hidden = reading(vm_id=None, smbios=SWAPPED, imds_error="URLError: timed out")
    proof = verify(EXPECTED, hidden, address=ADDRESS)
    assert (proof.read_from, proof.smbios_byte_order, proof.vm_id) == ("smbios", "swapped", VM_ID)


@pytest.mark.parametrize(
    ("seen", "says"),
    [
        (reading(vm_id=OTHER, name="vm2"), f"the guest's IMDS says {OTHER} (vm2)"),
        (reading(vm_id=None, smbios=OTHER), f"the guest's SMBIOS UUID is {OTHER}"),
        # IMDS right, SMBIOS another machine's: one disagreeing reading is enough to refuse
        (reading(smbios=OTHER), f"the guest's SMBIOS UUID is {OTHER}"),
    ],
    ids=["imds", "smbios", "imds-right-smbios-wrong"],
)
def test_another_vm_is_refused_naming_both_ids_and_the_address(seen: dict[str, Any], says: str) -> None:
    with pytest.raises(GuestIdentityError) as caught:
        verify(EXPECTED, seen, address=ADDRESS)
    message = str(caught.value)
    assert says in message and VM_ID in message and ADDRESS in message
    assert "\n" not in message and caught.value.category == "guest identity"


def test_metadata_that_disagrees_with_arm_is_refused() -> None:
    with pytest.raises(GuestIdentityError, match="IMDS gives name 'vm9'"):
        verify(EXPECTED, reading(name="vm9"), address=ADDRESS)
    with pytest.raises(GuestIdentityError, match="resourceId"):
        verify(EXPECTED, reading(rid=RID.replace("rg", "rg2")), address=ADDRESS)
    # case does not matter in Azure names
    assert verify(EXPECTED, reading(name="VM1", rid=RID.upper()), address=ADDRESS).read_from == "imds"


@pytest.mark.parametrize(
    "seen",
    [
        None,
        {},
        "not a mapping",
        reading(vm_id=None, imds_error="URLError: [Errno 101] Network is unreachable", smbios_error="denied"),
        reading(vm_id="not-a-uuid"),
        reading(vm_id=None, smbios="00000000-0000-0000-0000-000000000000"),  # Windows: no UUID
        {"imds": {"vmId": 5}, "smbios_uuid": ["x"]},
    ],
    ids=["none", "empty", "string", "both-unreadable", "imds-garbage", "zero-uuid", "ill-typed"],
)
def test_no_proof_is_refused(seen: object) -> None:
    with pytest.raises(GuestIdentityError, match=f"cannot prove it is rg/vm1 \\(Azure's vmId {VM_ID}"):
        verify(EXPECTED, seen, address=ADDRESS)


def test_arm_without_a_vm_id_proves_nothing() -> None:
    with pytest.raises(GuestIdentityError, match="Azure reports no vmId"):
        ExpectedIdentity.from_model("rg/vm1", {"name": "vm1", "properties": {}})
    model = {"name": "vm1", "id": RID, "properties": {"vmId": VM_ID}}
    expected = ExpectedIdentity.from_model("rg/vm1", model)
    assert expected == EXPECTED


def test_a_binding_proves_per_session_and_refuses_for_good() -> None:
    binding = Binding(EXPECTED, Pins(), ADDRESS)
    first, second = object(), object()
    assert binding.needs_proof(first)
    binding.accept(reading(), first)
    assert not binding.needs_proof(first) and binding.needs_proof(second)
    with pytest.raises(GuestIdentityError):
        binding.accept(reading(vm_id=OTHER), second)
    with pytest.raises(GuestIdentityError):
        binding.check()  # nothing runs on this object any more, whatever the session
    assert binding.evidence["imds_vm_id"] == OTHER and "identity_refused" in binding.evidence
    assert not Binding(None, Pins(), ADDRESS).needs_proof(first)  # nothing expected, nothing asked


def test_probe_output_is_its_last_json_line() -> None:
    assert parse_probe(b'noise\n{"imds": null}\n') == {"imds": None}
    assert parse_probe(b"") is None and parse_probe(b"not json") is None
    assert str(uuid.UUID(VM_ID)) == VM_ID
