"""The real Azure CLI against azsim (opt-in: it installs azure-cli, ~1 GB, the first time).

    AZSIM_AZ_CLI=1 .venv/bin/pytest tests/azsim/test_az_cli.py

azure-cli goes into its own virtual environment (it pins versions that conflict with the
project's), in ``$AZSIM_AZ_CLI_VENV`` or ``~/.cache/azsim/azure-cli-venv``, reused afterwards.
The CLI is registered as a custom cloud against azsim and logged in with the scenario's service
principal; the secret travels in a 0600 file (``-p @file``), never on the command line.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.azsim.conftest import FLEET, Azsim, start_azsim, stop_azsim

pytestmark = [
    pytest.mark.azsim,
    pytest.mark.optin,
    pytest.mark.slow,
    pytest.mark.skipif(
        os.environ.get("AZSIM_AZ_CLI") != "1",
        reason="opt-in: set AZSIM_AZ_CLI=1 to install azure-cli in a separate venv and run it",
    ),
]
AZ_VENV = Path(os.environ.get("AZSIM_AZ_CLI_VENV") or Path.home() / ".cache" / "azsim" / "azure-cli-venv")


@pytest.fixture(scope="module")
def az_executable() -> Path:
    """The `az` of a throwaway venv (created and filled on first use)."""
    az = AZ_VENV / "bin" / "az"
    if not az.exists():
        subprocess.run([sys.executable, "-m", "venv", "--clear", str(AZ_VENV)], check=True, timeout=300)
        subprocess.run(
            [str(AZ_VENV / "bin" / "python"), "-m", "pip", "install", "--quiet", "azure-cli"],
            check=True,
            timeout=1800,
        )
    return az


AzRun = Callable[..., subprocess.CompletedProcess[str]]


@pytest.fixture(scope="module")
def azsim_for_az(az_executable: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Azsim]:
    instance = start_azsim(tmp_path_factory.mktemp("azsim-az"), FLEET)
    try:
        yield instance
    finally:
        stop_azsim(instance)


@pytest.fixture
def az(az_executable: Path, azsim_for_az: Azsim, tmp_path: Path) -> AzRun:
    """`az ARGS...` with a fresh config dir, azsim registered as the current cloud."""
    config = tmp_path / "az-config"
    env = {
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        "HOME": str(config),
        "AZURE_CONFIG_DIR": str(config / ".azure"),
        # MSAL and azure-core both use requests: only this variable makes them trust azsim's CA
        "REQUESTS_CA_BUNDLE": azsim_for_az.ca_bundle,
        "AZURE_CORE_INSTANCE_DISCOVERY": "false",
        "AZURE_CORE_COLLECT_TELEMETRY": "false",
        "AZURE_CORE_ONLY_SHOW_ERRORS": "true",
    }

    def run(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [str(az_executable), *args], capture_output=True, text=True, env=env, timeout=300, check=False
        )

    port = azsim_for_az.port
    registered = run(
        "cloud",
        "register",
        "-n",
        "AzSim",
        "--endpoint-resource-manager",
        f"https://127.0.0.1:{port}/",
        "--endpoint-active-directory",
        f"https://localhost:{port}",
        "--endpoint-active-directory-resource-id",
        "https://management.core.windows.net/",
        "--endpoint-management",
        "https://management.core.windows.net/",
        "--skip-endpoint-discovery",
    )
    assert registered.returncode == 0, registered.stderr
    assert run("cloud", "set", "-n", "AzSim").returncode == 0
    return run


def login(az: AzRun, instance: Azsim, secret: str, tmp_path: Path) -> subprocess.CompletedProcess[str]:
    """`az login --service-principal` with the secret read from a 0600 file (`-p @file`)."""
    secret_file = tmp_path / "secret"
    secret_file.touch(mode=0o600)
    secret_file.write_text(secret)
    return az(
        "login",
        "--service-principal",
        "-u",
        instance.env["AZURE_CLIENT_ID"],
        "-p",
        f"@{secret_file}",
        "--tenant",
        instance.env["AZURE_TENANT_ID"],
    )


def az_json(az: AzRun, *args: str) -> Any:
    done = az(*args, "-o", "json")
    assert done.returncode == 0, f"az {' '.join(args)}: {done.stderr}"
    return json.loads(done.stdout)


def az_refused(az: AzRun, *args: str) -> str:
    done = az(*args)
    assert done.returncode != 0, f"az {' '.join(args)} was not refused: {done.stdout}"
    return done.stderr


def test_az_reads_generalizes_captures_and_is_refused_like_azure(
    az: AzRun, azsim_for_az: Azsim, tmp_path: Path
) -> None:
    instance = azsim_for_az
    mark = instance.mark()
    signed_in = login(az, instance, instance.env["AZURE_CLIENT_SECRET"], tmp_path)
    assert signed_in.returncode == 0, signed_in.stderr
    assert json.loads(signed_in.stdout)[0]["id"] == instance.subscription

    # reads: a list with a VM that has an extension (ARM names it by id), show, instance view
    listed = {vm["name"]: vm for vm in az_json(az, "vm", "list")}
    routes = listed["lin-routes"]
    assert [r["id"] for r in routes["resources"]] == [f"{routes['id']}/extensions/AzureMonitorLinuxAgent"]
    assert listed["win-routes"]["securityProfile"]["securityType"] == "TrustedLaunch"
    shown = az_json(az, "vm", "show", "--ids", routes["id"])
    assert shown["resources"][0]["name"] == "AzureMonitorLinuxAgent"
    assert shown["osProfile"]["adminUsername"] == "azureuser"
    extensions = az_json(az, "vm", "extension", "list", "-g", "rg-fleet", "--vm-name", "lin-routes")
    assert [(e["name"], e["publisher"]) for e in extensions] == [
        ("AzureMonitorLinuxAgent", "Microsoft.Azure.Monitor")
    ]
    vm_id = instance.ref("lin-fast").id
    view = az_json(az, "vm", "get-instance-view", "--ids", vm_id)
    assert [s["code"] for s in view["instanceView"]["statuses"]][-1] == "PowerState/running"

    # deallocate, generalize, then capture: a managed image and a gallery image version
    assert az("vm", "deallocate", "--ids", vm_id).returncode == 0
    assert instance.vm_status("rg-fleet", "lin-fast")["power_state"] == "deallocated"
    generalized = az("vm", "generalize", "--ids", vm_id)
    assert generalized.returncode == 0, generalized.stderr
    view = az_json(az, "vm", "get-instance-view", "--ids", vm_id)
    assert "OSState/generalized" in [s["code"] for s in view["instanceView"]["statuses"]]
    # Microsoft: `az image create` of a generation 2 VM needs --hyper-v-generation V2
    image = az_json(
        az,
        "image",
        "create",
        "-g",
        "rg-fleet",
        "-n",
        "img-az",
        "--source",
        vm_id,
        "--hyper-v-generation",
        "V2",
    )
    assert (image["sourceVirtualMachine"]["id"], image["hyperVGeneration"]) == (vm_id, "V2")
    assert (image["provisioningState"], image["storageProfile"]["osDisk"]["osState"]) == (
        "Succeeded",
        "Generalized",
    )
    version = az_json(
        az, "sig", "image-version", "create", "-g", "rg-fleet", "--gallery-name", "galFleet",
        "--gallery-image-definition", "linux-generalized", "--gallery-image-version", "2.0.0",
        "--virtual-machine", vm_id,
    )  # fmt: skip
    assert version["storageProfile"]["source"]["virtualMachineId"] == vm_id
    assert version["provisioningState"] == "Succeeded"

    # refused as Azure refuses: start, any tag write (Tags API and the VM's PUT), a managed image
    # of a Trusted Launch VM
    stderr = az_refused(az, "vm", "start", "--ids", vm_id)
    assert (
        "(OperationNotAllowed) Operation 'Start VM' is not allowed on VM 'lin-fast' since the VM is "
        "generalized." in stderr
    )
    refusal = "(OperationNotAllowedOnGeneralizedVM) Operation 'Update VM' is not allowed on VM 'lin-fast'"
    assert refusal in az_refused(
        az, "tag", "update", "--resource-id", vm_id, "--operation", "merge", "--tags", "a=b"
    )
    assert refusal in az_refused(az, "vm", "update", "--ids", vm_id, "--set", "tags.a=b")
    assert instance.vm_status("rg-fleet", "lin-fast")["tags"] == {}
    trusted = instance.ref("lin-tl-gen").id
    stderr = az_refused(az, "image", "create", "-g", "rg-fleet", "-n", "img-tl", "--source", trusted)
    assert (
        "Creation of managed images are not supported for virtual machine with TrustedLaunch security type."
        in stderr
    )

    tokens = [r for r in instance.requests(mark) if r["kind"] == "aad" and r["operation"] == "token"]
    assert len(tokens) == 1  # az's MSAL cache served every later command


def test_az_wrong_secret_is_aadsts(az: AzRun, azsim_for_az: Azsim, tmp_path: Path) -> None:
    refused = login(az, azsim_for_az, "wrong-secret", tmp_path)
    assert refused.returncode != 0
    assert "AADSTS7000215: Invalid client secret provided." in refused.stderr
