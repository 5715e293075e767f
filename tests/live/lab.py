"""The live suite's resources: made by the plan, in one resource group, and deleted with it.

Against Azure and against azsim alike: the originals from Marketplace images, their copies
(snapshot, disk, VM: through imageready's own Azure layer), the guest preparation an operator
does before imageready runs (through Azure Run Command), the gallery and its image definitions,
and the sweeper that deletes what an interrupted run left behind.
"""

from __future__ import annotations

import datetime as dt
import re
import time
from pathlib import Path
from typing import Any

from imageready.facts.azure_view import COPY_TAG
from imageready.target import VmRef
from tests.live.arm import API, LiveArm, LiveArmError
from tests.live.plan import (
    SECURITY_PROFILE,
    TAG_EXPIRES,
    TAG_PREFIX,
    CostGuard,
    LiveBudgetError,
    LivePlan,
    Machine,
)

HERE = Path(__file__).parent
NETWORK = "Microsoft.Network"
COMPUTE = "Microsoft.Compute"
PEM = re.compile(r"-----BEGIN CERTIFICATE-----\s+[A-Za-z0-9+/=\s]+?-----END CERTIFICATE-----")


class Lab:
    """One run's resource group and what is in it."""

    def __init__(self, plan: LivePlan, arm: LiveArm, *, ssh_public_key: str, windows_password: str) -> None:
        self.plan = plan
        self.arm = arm
        self.rg = plan.resource_group
        self._ssh_public_key = ssh_public_key
        self._windows_password = windows_password
        self.guard = CostGuard(plan)
        #: the certificates the copies' WinRM HTTPS listeners present (PEM), for the harness
        self.winrm_certificates: list[str] = []

    # --- the time guard -----------------------------------------------------------------------

    def remaining(self) -> float:
        """Seconds left before the suite's time limit; past it, LiveBudgetError."""
        return self.guard.seconds_left()

    # --- making things ------------------------------------------------------------------------

    def create_group(self) -> None:
        body = {"location": self.plan.config.location, "tags": self.plan.tags()}
        self.arm.put(self.arm.path(self.rg), API["resourceGroups"], body)

    def create_gallery(self) -> None:
        gallery = self.arm.path(self.rg, f"{COMPUTE}/galleries/{self.plan.gallery}")
        location = self.plan.config.location
        self.arm.put(gallery, API["galleries"], {"location": location, "tags": self.plan.tags()})
        for machine in self.plan.machines:
            definition = {
                "location": location,
                "properties": {
                    "osType": machine.os,
                    "osState": "Generalized",
                    "hyperVGeneration": "V2",
                    "architecture": "x64",
                    "identifier": {"publisher": "imageready-live", "offer": machine.os, "sku": machine.copy},
                    "features": [{"name": "SecurityType", "value": SECURITY_PROFILE["securityType"]}],
                },
            }
            self.arm.put(f"{gallery}/images/{machine.copy}", API["galleries"], definition)

    def _nic(self, name: str) -> str:
        path = self.arm.path(self.rg, f"{NETWORK}/networkInterfaces/{name}")
        config = {"subnet": {"id": self.plan.config.subnet_id}, "privateIPAllocationMethod": "Dynamic"}
        body = {
            "location": self.plan.config.location,
            "tags": self.plan.tags(),
            "properties": {"ipConfigurations": [{"name": "ipconfig1", "properties": config}]},
        }
        return str(self.arm.put(path, API["networkInterfaces"], body)["id"])

    def create_original(self, machine: Machine) -> dict[str, Any]:
        """A VM from the Marketplace image, Trusted Launch, on a NIC in the configured subnet."""
        self.guard.admit_vm(machine.original)
        nic = self._nic(f"{machine.original}-nic")
        if machine.os == "Linux":
            key = {"path": f"/home/{machine.admin}/.ssh/authorized_keys", "keyData": self._ssh_public_key}
            os_profile: dict[str, Any] = {
                "computerName": machine.original,
                "adminUsername": machine.admin,
                "linuxConfiguration": {"disablePasswordAuthentication": True, "ssh": {"publicKeys": [key]}},
            }
        else:
            os_profile = {
                "computerName": machine.original,
                "adminUsername": machine.admin,
                "adminPassword": self._windows_password,
                "windowsConfiguration": {"provisionVMAgent": True, "enableAutomaticUpdates": False},
            }
        body = {
            "location": self.plan.config.location,
            "tags": self.plan.tags(),
            "properties": {
                "hardwareProfile": {"vmSize": machine.size},
                "storageProfile": {
                    "imageReference": dict(machine.image),
                    "osDisk": {
                        "createOption": "FromImage",
                        "managedDisk": {"storageAccountType": "StandardSSD_LRS"},
                    },
                },
                "osProfile": os_profile,
                "networkProfile": {"networkInterfaces": [{"id": nic, "properties": {"primary": True}}]},
                "securityProfile": dict(SECURITY_PROFILE),
                "diagnosticsProfile": {"bootDiagnostics": {"enabled": True}},
            },
        }
        path = self.arm.path(self.rg, f"{COMPUTE}/virtualMachines/{machine.original}")
        return self.arm.put(path, API["virtualMachines"], body)

    def copy(self, machine: Machine) -> dict[str, Any]:
        """snapshot of the original's OS disk -> disk -> a VM attaching it, through imageready's
        own Azure layer (the calls its --copy-first makes)."""
        self.guard.admit_vm(machine.copy)
        session = self.arm.session
        original = session.get_vm(
            VmRef(self.arm.subscription, self.rg, machine.original), instance_view=False
        )
        os_disk = original["properties"]["storageProfile"]["osDisk"]["managedDisk"]["id"]
        location, tags = self.plan.config.location, self.plan.tags()
        snapshot = session.create_snapshot(self.rg, f"{machine.copy}-snap", os_disk, location, tags)
        disk = session.create_disk_from_snapshot(
            self.rg, f"{machine.copy}-osdisk", snapshot["id"], location, tags
        )
        # as imageready's copy step does: a VM attaching a specialized disk has no osProfile, and
        # the harness finds its admin user through this tag (evidence only, never proof of a copy)
        vm_tags = {**tags, COPY_TAG: str(original["id"])}
        return session.create_vm_from_disks(
            self.rg, machine.copy, source_vm=original, os_disk_id=disk["id"], data_disks=[], tags=vm_tags
        )

    def prepare_guest(self, machine: Machine) -> str:
        """What an operator sets up before imageready runs, through Azure Run Command (root /
        SYSTEM): on Linux the waagent and sshd settings the checks want; on Windows a WinRM
        HTTPS listener, whose certificate the harness is then told to trust."""
        ref = VmRef(self.arm.subscription, self.rg, machine.copy)
        if machine.os == "Linux":
            script = (HERE / "guest_prep" / "linux.sh").read_text(encoding="utf-8")
            out, err = self.arm.session.run_command(ref, "RunShellScript", script.splitlines())
        else:
            script = (HERE / "guest_prep" / "windows.ps1").read_text(encoding="utf-8")
            out, err = self.arm.session.run_command(ref, "RunPowerShellScript", script.splitlines())
            found = PEM.findall(out)
            if not found:
                raise LiveArmError(
                    f"{machine.copy}: the WinRM listener's certificate was not printed: {err[-300:]}"
                )
            self.winrm_certificates += found
        return out

    def wait_until_running(self, name: str) -> None:
        ref = VmRef(self.arm.subscription, self.rg, name)
        while True:
            model = self.arm.session.get_vm(ref)
            codes = [s.get("code") for s in model["properties"].get("instanceView", {}).get("statuses", [])]
            agent = model["properties"].get("instanceView", {}).get("vmAgent", {}).get("statuses") or []
            if "PowerState/running" in codes and any(s.get("displayStatus") == "Ready" for s in agent):
                return
            if self.remaining() < 60:
                raise LiveBudgetError(f"{name} did not become ready before the time limit")
            time.sleep(5)

    # --- cleaning up --------------------------------------------------------------------------

    def delete(self) -> bool:
        """Delete this run's resource group and everything in it (and wait)."""
        return self.arm.delete(self.arm.path(self.rg), API["resourceGroups"])


def leftovers(arm: LiveArm, prefix: str, *, now: dt.datetime, everything: bool = False) -> list[str]:
    """Resource groups an earlier run of this prefix left behind: tagged by the suite, past their
    expiry (or all of them with ``everything``)."""
    query = f"$filter=tagName eq '{TAG_PREFIX}' and tagValue eq '{prefix}'"
    found = []
    for group in arm.list(f"/subscriptions/{arm.subscription}/resourcegroups", API["resourceGroups"], query):
        tags = group.get("tags") or {}
        if tags.get(TAG_PREFIX) != prefix or not str(group.get("name", "")).startswith(prefix + "-"):
            continue  # only what this suite made for this prefix, whatever the filter returned
        try:
            expires = dt.datetime.fromisoformat(str(tags.get(TAG_EXPIRES, "")).replace("Z", "+00:00"))
        except ValueError:
            expires = now  # an unreadable expiry: treat as expired, it is ours by its tags
        if everything or expires <= now:
            found.append(str(group["name"]))
    return sorted(found)


def sweep(
    arm: LiveArm, prefix: str, *, now: dt.datetime, everything: bool = False, dry_run: bool = False
) -> list[str]:
    """Delete the leftovers of earlier runs; returns their names."""
    names = leftovers(arm, prefix, now=now, everything=everything)
    if not dry_run:
        for name in names:
            arm.delete(arm.path(name), API["resourceGroups"])
    return names
