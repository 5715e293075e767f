"""Azure Resource Manager as azsim serves it: one request in, one reply out.

:class:`Simulator` owns the state, the operations, the faults, the guests and the request log;
:meth:`Simulator.handle_arm` matches each ARM request to its route, runs it through what Azure's
front door does (:mod:`azsim.arm_front_door`: authentication, throttling, RBAC) and then the
route. The routes live in the ``azsim.arm_*`` modules, one per kind of resource; ``ROUTES``
lists them all.
"""

from __future__ import annotations

import copy
import threading
import time
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import parse_qsl, unquote, urlsplit

from azsim import (
    arm_disks,
    arm_groups,
    arm_images,
    arm_network,
    arm_restore_points,
    arm_run_command,
    arm_subscriptions,
    arm_vm_create,
    arm_vms,
)
from azsim.aad import Directory
from azsim.arm_front_door import authenticate, authorize, http_fault_error, throttle
from azsim.arm_http import ArmError, ArmReply, ArmRequest, Route
from azsim.faults import FaultSet, RequestFacts
from azsim.guests import Guests, GuestSettings
from azsim.lro import Operation, Operations, Outcome
from azsim.request_log import RequestLog
from azsim.scenario import Scenario
from azsim.state import Store, Vm
from azsim.throttling import Throttle

DEFAULT_LRO_ERROR = (
    "InternalExecutionError",
    "An internal execution error occurred. Please retry later.",
)


@dataclass(frozen=True)
class Secrets:
    """Generated per state directory by ``azsim up``; never in a scenario, argv or log."""

    client_secret: str
    admin_token: str
    admin_password: str
    signing_key: str  # hex; signs the JWTs azsim issues

    def __repr__(self) -> str:
        return "Secrets(<redacted>)"


ROUTES: list[Route] = [
    *arm_subscriptions.ROUTES,
    *arm_groups.ROUTES,
    *arm_vms.ROUTES,
    *arm_vm_create.ROUTES,
    *arm_run_command.ROUTES,
    *arm_disks.ROUTES,
    *arm_images.ROUTES,
    *arm_network.ROUTES,
    *arm_restore_points.ROUTES,
]


class Simulator:
    """The whole simulated subscription: ARM state, operations, faults, guests, request log."""

    def __init__(
        self,
        scenario: Scenario,
        secrets: Secrets,
        *,
        ssh_public_key: str = "",
        guest_settings: GuestSettings | None = None,
    ) -> None:
        self.scenario = scenario
        #: the one password azsim's Windows guests accept (a VM from an image must be given it)
        self.admin_password = secrets.admin_password
        self.timings = scenario.timings
        self.store = Store(scenario, ssh_public_key)
        self.directory = Directory(
            scenario.tenant,
            scenario.principal,
            secrets.client_secret,
            bytes.fromhex(secrets.signing_key),
            scenario.token_lifetime,
        )
        self.throttle = Throttle(scenario.throttling)
        self.faults = FaultSet()
        for fault in scenario.faults:
            self.faults.add(copy.copy(fault))
        self.ops = Operations(self.store.lock)
        self.guests = Guests(guest_settings if scenario.guests else None, self.on_guest_shutdown, self.faults)
        self.log = RequestLog()
        #: set by the server once guests have booted (or failed to)
        self.ready = threading.Event()

    # -- guests ------------------------------------------------------------------------------

    def create_guests(self) -> None:
        """Create (not boot) a guest per VM; a missing guest module fails here, loudly."""
        with self.store.lock:
            vms = self.store.vms()
        self.guests.check_classes({vm.os for vm in vms})
        for vm in vms:
            self.create_guest(vm)

    def create_guest(self, vm: Vm, disk_home: str | None = None) -> None:
        """Create (not boot) ``vm``'s guest; it boots from its OS disk's content at ``disk_home``
        (None: the guest's own directory, as a scenario VM's)."""
        self.guests.create(
            vm.key,
            resource_group=vm.resource_group,
            vm_name=vm.name,
            os_type=vm.os,
            admin_user=vm.admin_user,
            spec=vm.guest_spec,
            disk_home=disk_home,
            platform=vm.platform(),
        )

    def boot_guests(self) -> dict[str, str]:
        with self.store.lock:
            running = [vm.key for vm in self.store.vms() if vm.power == "running"]
        return self.guests.start_many(running)

    def on_guest_shutdown(self, key: str) -> None:
        """The guest powered itself off: Azure shows the VM *stopped*, still allocated."""
        rg, _, name = key.partition("/")
        with self.store.lock:
            vm = self.store.vm(rg, name)
            if vm is not None and vm.power in ("running", "stopping"):
                vm.power = "stopped"
                vm.touch()

    def delete_vm(self, key: str) -> bool:
        rg, _, name = key.partition("/")
        with self.store.lock:
            vm = self.store.vm(rg, name)
            if vm is None:
                return False
            self.store.delete_vm(vm)
        # the guest's shutdown takes a moment; the request that triggered it should not wait
        threading.Thread(target=self.guests.remove, args=(vm.key,), daemon=True).start()
        return True

    # -- helpers for routes --------------------------------------------------------------------

    def check_subscription(self, sub: str) -> None:
        if sub.lower() != self.store.subscription_id:
            raise ArmError(404, "SubscriptionNotFound", f"The subscription '{sub}' could not be found.")

    def check_rg(self, rg: str) -> str:
        name = self.store.rg_name(rg)
        if name is None:
            raise ArmError(404, "ResourceGroupNotFound", f"Resource group '{rg}' could not be found.")
        return name

    def vm_or_404(self, m: Mapping[str, str]) -> Vm:
        self.check_subscription(m["sub"])
        rg = self.check_rg(m["rg"])
        vm = self.store.vm(rg, m["name"])
        if vm is None:
            raise ArmError(
                404,
                "ResourceNotFound",
                f"The Resource 'Microsoft.Compute/virtualMachines/"
                f"{m['name']}' under resource group '{m['rg']}' was not found. For more "
                "details please go to https://aka.ms/ARMResourceNotFoundFix",
            )
        return vm

    def operation_url(self, req: ArmRequest, op: Operation, *, monitor: bool = False) -> str:
        url = (
            f"{req.base_url}/subscriptions/{self.store.subscription_id}/providers/"
            f"Microsoft.Compute/locations/{op.location}/operations/{op.id}"
            f"?api-version={req.api_version or '2024-07-01'}"
        )
        return url + "&monitor=true" if monitor else url

    def start_operation(
        self,
        req: ArmRequest,
        *,
        kind: str,
        resource_id: str,
        location: str,
        vm_key: str | None,
        timing: str,
        work: Callable[[], Any] | None,
        finish: Callable[[Any], Any],
        fail: Callable[[], None],
        status: int = 202,
        body: Any = None,
    ) -> ArmReply:
        """Start an LRO and answer like ARM: 202 (or 201 + body for a PUT) and the poll URLs."""
        fault = self.faults.lro_outcome(kind, vm_key)
        outcome = Outcome()
        if fault is not None and fault.kind == "lro_never_ends":
            outcome = Outcome(never_ends=True, released=fault.released)
        elif fault is not None:
            outcome = Outcome(
                failed=(fault.code or DEFAULT_LRO_ERROR[0], fault.message or DEFAULT_LRO_ERROR[1])
            )
        duration = self.timings[timing]
        op = self.ops.start(
            kind,
            resource_id,
            location,
            duration=duration,
            outcome=outcome,
            work=work,
            finish=finish,
            fail=fail,
        )
        settle = self.timings["settle"]
        if not outcome.never_ends and duration <= settle:
            op.done.wait(settle)
        headers = {
            "Azure-AsyncOperation": self.operation_url(req, op),
            "Location": self.operation_url(req, op, monitor=True),
            "Retry-After": "1",
        }
        return ArmReply(status, body, headers)

    # -- the front door ----------------------------------------------------------------------

    def _match(self, method: str, path: str) -> tuple[Route, dict[str, str]]:
        allowed = False
        for candidate in ROUTES:
            found = candidate.pattern.match(path)
            if found is None:
                continue
            if candidate.method == method:
                return candidate, {k: unquote(v) for k, v in found.groupdict().items()}
            allowed = True
        if allowed:
            raise ArmError(
                405,
                "MethodNotAllowed",
                f"The requested method '{method}' is not allowed on this resource in azsim.",
            )
        raise ArmError(
            404,
            "InvalidResourceType",
            f"The resource type for path '{path}' could not "
            "be found in azsim (it serves the Microsoft.Compute subset imageready uses).",
        )

    def handle_arm(
        self, method: str, target: str, headers: Mapping[str, str], body: bytes, base_url: str
    ) -> ArmReply:
        started = time.monotonic()
        split = urlsplit(target)
        path = unquote(split.path).rstrip("/") or "/"
        query = {
            k.lower() if k.lower() == "api-version" else k: v
            for k, v in parse_qsl(split.query, keep_blank_values=True)
        }
        req = ArmRequest(method, path, query, headers, body, base_url)
        correlation = req.header("x-ms-correlation-request-id") or str(uuid.uuid4())
        matched: Route | None = None
        try:
            for key in self.faults.due_deletions():
                self.delete_vm(key)
            matched, groups = self._match(method, path)
            vm_key = (
                f"{groups['rg']}/{groups['name']}"
                if "/virtualmachines/" in path.lower() and "name" in groups and "rg" in groups
                else None
            )
            facts = RequestFacts(method, path, vm_key, matched.action, matched.operation)
            delay = self.faults.latency(facts)
            if delay:
                time.sleep(delay)
            limits: dict[str, str] = {}
            if matched.auth:
                req.claims = authenticate(self, req, base_url)
                limits = throttle(self, req, groups)
                fault = self.faults.http_fault(facts)
                if fault is not None:
                    raise http_fault_error(fault)
                authorize(self, req, matched, facts)
            reply = matched.handler(self, req, groups)
            reply.headers.update(limits)
        except ArmError as err:
            reply = ArmReply(
                err.status, {"error": {"code": err.code, "message": err.message}}, dict(err.headers)
            )
        reply.headers.setdefault("x-ms-request-id", str(uuid.uuid4()))
        reply.headers["x-ms-correlation-request-id"] = correlation
        self.log.add(
            {
                "time": time.time(),
                "kind": "arm",
                "method": method,
                "path": path,
                "query": {k: v for k, v in query.items() if k != "api-version"},
                "api_version": req.api_version,
                "operation": matched.operation if matched else None,
                "status": reply.status,
                "duration": round(time.monotonic() - started, 4),
                "correlation_id": correlation,
                "client_request_id": req.header("x-ms-client-request-id"),
            }
        )
        return reply

    # -- admin ---------------------------------------------------------------------------------

    def status(self) -> dict[str, Any]:
        with self.store.lock:
            vms = []
            for vm in self.store.vms():
                entry: dict[str, Any] = {
                    "id": vm.id,
                    "resource_group": vm.resource_group,
                    "name": vm.name,
                    "os": vm.os,
                    "power_state": vm.power,
                    "os_state": "generalized" if vm.generalized else "specialized",
                    "provisioning_state": vm.provisioning_state,
                    "tags": dict(vm.tags),
                    "etag": vm.etag,
                    "disks": {
                        "os": vm.os_disk.id if vm.os_disk else None,
                        "data": [disk.id for _, disk in sorted(vm.data_disks, key=lambda d: d[0])],
                    },
                }
                if vm.busy:
                    entry["operation_in_progress"] = vm.busy
                vms.append(entry)
        for entry in vms:
            guest = self.guests.describe(f"{entry['resource_group']}/{entry['name']}")
            if guest is not None:
                entry["guest"] = guest
        return {
            "tenant": self.store.tenant,
            "subscription": self.store.subscription_id,
            "scenario": self.scenario.source,
            "guests": "all" if self.guests.enabled else "none",
            "ready": self.ready.is_set(),
            "guest_errors": dict(self.guests.errors),
            "operations_in_progress": self.ops.in_progress(),
            "faults": self.faults.as_json(),
            "vms": vms,
        }

    def close(self) -> None:
        self.ops.shutdown()
        self.guests.close_all()
