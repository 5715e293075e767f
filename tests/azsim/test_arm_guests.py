"""ARM driving a real Linux guest (sshd + waagent in a sandbox): power, Run Command, shutdown.

Needs root (namespaces, overlay mounts) and the cached Debian root file system (built on first
use); skipped otherwise.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from imageready.azure import AzureSession
from tests.azsim.conftest import Azsim, azsim_cli, pid_gone, port_free

pytestmark = [
    pytest.mark.azsim,
    pytest.mark.root,
    pytest.mark.slow,
    pytest.mark.skipif(os.geteuid() != 0, reason="Linux guests need root (namespaces, overlay mounts)"),
    pytest.mark.skipif(shutil.which("unshare") is None, reason="Linux guests need util-linux unshare"),
]
SCENARIO = """
resource_groups:
  - name: rg-guests
    vms:
      - {name: lin-guest, os: Linux, admin_user: azureuser, guest: {hostname: lin-guest}}
"""


@pytest.fixture(scope="module")
def guests(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Azsim]:
    root = tmp_path_factory.mktemp("azsim-guests")
    scenario = root / "scenario.yaml"
    scenario.write_text(SCENARIO)
    up = azsim_cli(
        "up", "--scenario", str(scenario), "--state-dir", str(root / "state"), "--timeout", "900", timeout=960
    )
    assert up.returncode == 0, up.stderr
    instance = Azsim(root / "state")
    try:
        yield instance
    finally:
        down = azsim_cli("down", "--state-dir", str(instance.state_dir))
        assert down.returncode == 0, down.stderr
        deadline = time.monotonic() + 10
        while not pid_gone(instance.pid) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert pid_gone(instance.pid) and port_free(instance.port)
        leftovers = subprocess.run(
            ["pgrep", "-f", str(instance.state_dir)], capture_output=True, text=True, check=False
        )
        assert leftovers.stdout == "", "guest processes left behind"


def ssh_address(instance: Azsim) -> str | None:
    addresses = json.loads(Path(instance.env["IMAGEREADY_GUEST_ADDRESSES"]).read_text())
    address: str | None = addresses.get("rg-guests/lin-guest")
    return address


def test_guest_lifecycle_through_arm(guests: Azsim) -> None:
    ref = guests.ref("lin-guest", "rg-guests")
    address = ssh_address(guests)
    assert address is not None and address.startswith("127.0.0.1:")
    status = guests.vm_status("rg-guests", "lin-guest")
    # the address map leads to the guest through its relay (where guest faults act)
    assert status["guest"]["running"] is True and status["guest"]["address"] == address
    session: AzureSession
    with guests.session() as session:
        stdout, stderr = session.run_command(ref, "RunShellScript", ["id -un", "hostname", "echo oops >&2"])
        assert (stdout, stderr) == ("root\nlin-guest\n", "oops\n")
        session.deallocate(ref)
        assert ssh_address(guests) is None  # the guest is down with the VM
        session.start(ref)
        assert ssh_address(guests) is not None
        # a shutdown from inside the guest: Azure shows the VM stopped, still allocated
        session.run_command(ref, "RunShellScript", ["(sleep 1; poweroff -f) >/dev/null 2>&1 &"])
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            codes = [s["code"] for s in session.get_vm(ref)["properties"]["instanceView"]["statuses"]]
            if codes[-1] != "PowerState/running":
                break
            time.sleep(0.3)
        assert codes[-1] == "PowerState/stopped"
