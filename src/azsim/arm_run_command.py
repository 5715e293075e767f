"""Run Command on a VM: it needs a running VM with a ready agent, and shows Azure's output shapes
(Linux: one ``[stdout]``/``[stderr]`` message; Windows: StdOut/StdErr statuses), each stream cut to
its last 4096 bytes as Azure does (docs/azsim-rules.md, VM-7).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from azsim.arm_http import ArmReply, ArmRequest, Route, invalid, not_allowed, route
from azsim.arm_vms import VM, check_idle
from azsim.lro import OperationError

if TYPE_CHECKING:
    from azsim.arm import Simulator

RUN_COMMAND_OUTPUT_LIMIT = 4096
RUN_COMMAND_TIMEOUT = 5400.0  # Azure gives a Run Command script 90 minutes


def _trim(text: str) -> str:
    data = text.encode("utf-8", "replace")
    if len(data) <= RUN_COMMAND_OUTPUT_LIMIT:
        return text
    return data[-RUN_COMMAND_OUTPUT_LIMIT:].decode("utf-8", "replace")


def run_command_result(os_type: str, exit_code: int, stdout: str, stderr: str) -> dict[str, Any]:
    """The final body of a Run Command, in the shape Azure uses for each OS."""
    out, err = _trim(stdout), _trim(stderr)
    if os_type == "Windows":
        return {
            "value": [
                {
                    "code": "ComponentStatus/StdOut/succeeded",
                    "level": "Info",
                    "displayStatus": "Provisioning succeeded",
                    "message": out,
                },
                {
                    "code": "ComponentStatus/StdErr/succeeded",
                    "level": "Info",
                    "displayStatus": "Provisioning succeeded",
                    "message": err,
                },
            ]
        }
    if exit_code == 0:
        status = {
            "code": "ProvisioningState/succeeded",
            "level": "Info",
            "displayStatus": "Provisioning succeeded",
            "message": f"Enable succeeded: \n[stdout]\n{out}\n[stderr]\n{err}",
        }
    else:
        status = {
            "code": "ProvisioningState/failed",
            "level": "Error",
            "displayStatus": "Provisioning failed",
            "message": "Enable failed: failed to execute command: command terminated with "
            f"exit status={exit_code}\n[stdout]\n{out}\n[stderr]\n{err}",
        }
    return {"value": [status]}


def run_command(sim: Simulator, req: ArmRequest, m: dict[str, str]) -> ArmReply:
    body = req.json()
    command_id = body.get("commandId")
    script = body.get("script") or []
    if not isinstance(script, list) or not all(isinstance(line, str) for line in script):
        raise invalid("script: expected a list of strings.")
    with sim.store.lock:
        vm = sim.vm_or_404(m)
        expected = "RunShellScript" if vm.os == "Linux" else "RunPowerShellScript"
        if command_id != expected:
            raise invalid(
                f"The command id '{command_id}' is not supported for a {vm.os} VM in azsim (use {expected}).",
                "InvalidParameter",
            )
        if vm.power != "running":
            raise not_allowed("The operation requires the VM to be running (or set to run).")
        check_idle(vm, "runCommand")
        agent_ready = vm.vm_agent_status == "Ready"
        vm.busy = "runCommand"
        key, os_type = vm.key, vm.os

    def work() -> dict[str, Any]:
        if not agent_ready:
            raise OperationError(
                "VMAgentStatusCommunicationError",
                f"VM '{vm.name}' has not "
                "reported status for VM agent or extensions. Verify that the OS "
                "is up and healthy, the VM has a running VM agent, and that it "
                "can establish outbound connections to Azure storage.",
            )
        code, out, err = sim.guests.run_command(key, "\n".join(script), RUN_COMMAND_TIMEOUT)
        return run_command_result(os_type, code, out, err)

    def finish(result: Any) -> Any:
        vm.busy = None
        return result

    def fail() -> None:
        vm.busy = None

    return sim.start_operation(
        req,
        kind="runCommand",
        resource_id=vm.id,
        location=vm.location,
        vm_key=key,
        timing="run_command",
        work=work,
        finish=finish,
        fail=fail,
    )


ROUTES: list[Route] = [
    route(
        "POST",
        VM + "/runCommand",
        run_command,
        "Microsoft.Compute/virtualMachines/runCommand/action",
        "runCommand",
        scope_trim=1,
    ),
]
