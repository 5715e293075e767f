"""The default facts provider: Azure through the SDK, the guest through one facts script.

Per VM: a fixed, small number of ARM calls (VM with instance view, each attached disk, the OS
disk's source snapshot and its source disk, extensions, the NIC unless an address is given; with
--capture-as, the capture target's artifact, gallery and image definition) and one guest round
trip, whatever the number of checks. Connections are kept for the rest of the run
(the sensitive-data scan and the actions reuse them).

The reads of one VM go in rounds: the VM with its instance view; then its disks, its extensions
and (in the guest's own thread, with the facts script after it) its NIC at once; then the OS
disk's lineage hop by hop, while the guest answers. Every read of one VM's facts carries one
correlation id, so Azure's logs (and azsim's) show them as one operation.
"""

from __future__ import annotations

import contextvars
import dataclasses
import os
import threading
import uuid
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from typing import TYPE_CHECKING, Any, TypeVar

from imageready import guest as transports
from imageready import progress
from imageready.azure import AzureSession, correlated, resolve_ca_bundle, resolve_cloud
from imageready.azure_errors import AzureError, AzureNotFound
from imageready.categories import Category
from imageready.facts import VmFacts
from imageready.facts.azure_view import lineage_kind, source_id
from imageready.facts.capture import capture_facts
from imageready.guest.addresses import parse_guest_addresses
from imageready.guest.base import (
    CommandResult,
    Guest,
    GuestDisconnected,
    GuestError,
    GuestTarget,
    GuestUnreachable,
)
from imageready.guest.identity import ExpectedIdentity, GuestIdentityError, Pins
from imageready.redact import one_line
from imageready.target import VmRef
from imageready.text import decode_guest

NIC_API = "2024-05-01"
#: how far the OS disk's lineage is followed (disk -> snapshot -> disk -> ...)
LINEAGE_HOPS = 8
#: Microsoft.Compute DiskRP api-version for each kind of lineage hop
LINEAGE_API = {"disk": "2024-03-02", "snapshot": "2024-03-02", "disk restore point": "2024-03-02"}
#: how many times the (read-only) facts script is run when its connection drops under it
FACTS_ATTEMPTS = 2
#: how many VMs' facts are gathered at once unless --max-parallel says otherwise: about 6 reads a
#: VM, so a first wave stays well inside ARM's read bucket (250 per subscription and principal)
DEFAULT_MAX_PARALLEL = 16
T = TypeVar("T")

if TYPE_CHECKING:
    from imageready.options import RunOptions


class AzureFactsProvider:
    """Facts from Azure and the guest; connections shared with the scan and the actions."""

    def __init__(self, options: RunOptions) -> None:
        self.options = options
        self.cloud = options.cloud_settings or resolve_cloud(options.cloud, options.arm_endpoint)
        self.ca_bundle = options.ca_bundle_path or resolve_ca_bundle(options.ca_bundle)
        self.transport = options.transport
        self.guest_timeout = options.guest_timeout
        # the environment's addresses are read now: a VM made during the run (a copy) adds its own
        self.addresses = {
            **parse_guest_addresses([], os.environ.get("IMAGEREADY_GUEST_ADDRESSES")),
            **options.guest_addresses,
        }
        #: --capture-as, parsed (None without it): its target is read once per VM with the facts
        self.capture = options.capture
        #: VMs whose facts are gathered at once (RunState.prefetch_facts reads it)
        self.max_parallel = options.max_parallel or DEFAULT_MAX_PARALLEL
        self._sessions: dict[str, AzureSession] = {}
        self._guests: dict[str, Guest] = {}
        #: per VM: what its first proven connection presented (a later one must present the same)
        self._pins: dict[str, Pins] = {}
        #: per VM: why its guest was refused; no session of this run reaches it again
        self._refused: dict[str, GuestIdentityError] = {}
        self._lock = threading.RLock()
        # one VM's independent reads and its guest round trip; tasks here never wait on each
        # other, so a VM's thread waiting on them cannot deadlock the pool
        self._reads = ThreadPoolExecutor(
            max_workers=4 * self.max_parallel, thread_name_prefix="imageready-read"
        )

    # --- connections ---------------------------------------------------------------------

    def azure(self, vm: VmRef) -> AzureSession:
        with self._lock:
            session = self._sessions.get(vm.subscription)
            if session is None:
                session = AzureSession(
                    vm.subscription,
                    cloud=self.cloud,
                    ca_bundle=self.ca_bundle,
                    lro_deadline=self.options.lro_deadline,
                    progress=progress.emit,
                    max_connections=4 * self.max_parallel,
                )
                self._sessions[vm.subscription] = session
            return session

    def guest(self, vm: VmRef, model: dict[str, Any] | None = None) -> Guest:
        """The guest connection of ``vm`` (opened once; ``model`` spares a VM read). It proves
        its identity with its first command (the facts carry the proof in the same round trip);
        a guest refused once in this run is never handed out again."""
        with self._lock:
            self._check_refused(vm)
            cached = self._guests.get(vm.key)
            if cached is not None:
                return cached
        guest = self.connect_guest(vm, model, prove=False)
        with self._lock:
            self._guests[vm.key] = guest
        return guest

    def _check_refused(self, vm: VmRef) -> None:
        refused = self._refused.get(vm.key)
        if refused is not None:
            raise GuestIdentityError(str(refused))

    def refuse_guest(self, vm: VmRef, error: GuestIdentityError) -> None:
        """Remember that ``vm``'s guest failed to prove its identity, and drop its connection."""
        with self._lock:
            self._refused.setdefault(vm.key, error)
        self.drop_guest(vm)

    def remember_pins(self, vm: VmRef, guest: Guest) -> None:
        """After ``guest`` proved it is ``vm``: what later connections must present again."""
        if guest.proof is None:
            return
        seen = guest.pins()
        with self._lock:
            old = self._pins.get(vm.key, Pins())
            self._pins[vm.key] = Pins(
                ssh_host_key=seen.ssh_host_key or old.ssh_host_key,
                tls_cert_sha256=seen.tls_cert_sha256 or old.tls_cert_sha256,
            )

    def drop_guest(self, vm: VmRef) -> None:
        """Forget a guest connection (e.g. after the guest shut down)."""
        with self._lock:
            guest = self._guests.pop(vm.key, None)
        if guest is not None:
            guest.close()

    def connect_guest(
        self,
        vm: VmRef,
        model: dict[str, Any] | None = None,
        *,
        fallback: bool = True,
        prove: bool = True,
    ) -> Guest:
        """A new connection to the guest of ``vm``, not shared (the caller closes it), bound to
        the vmId ARM reports: with ``prove`` it proves its identity now, else its first command
        does; nothing runs on it before. With ``fallback`` and --transport auto, an unreachable
        guest is read through Run Command."""
        self._check_refused(vm)
        model = model or self.azure(vm).get_vm(vm, instance_view=False)
        expected = ExpectedIdentity.from_model(vm.key, model)
        with self._lock:
            pins = self._pins.get(vm.key, Pins())
        props = model.get("properties", {})
        os_type = props.get("storageProfile", {}).get("osDisk", {}).get("osType")
        admin = str(props.get("osProfile", {}).get("adminUsername") or "") or self._copied_admin(vm, model)
        if os_type not in ("Linux", "Windows"):
            raise GuestError(f"{vm.key}: unknown OS type {os_type!r}, no transport for it")
        chosen = transports.for_os(os_type, self.transport)
        if chosen is None:
            raise GuestError(f"{vm.key}: --transport {self.transport} does not fit a {os_type} VM")
        target = GuestTarget(
            vm=vm,
            os_type=os_type,
            admin=admin,
            expected=expected,
            pins=pins,
            prove=prove,
            azure=self.azure(vm),
            ssh_strict_host_keys=self.options.ssh_strict_host_keys,
            winrm_auth=self.options.winrm_auth,
            ca_bundle=self.ca_bundle,
        )
        if chosen.default_port is not None:
            address = self.addresses.get(vm.key.lower()) or self._nic_address(vm, model, chosen.default_port)
            target = dataclasses.replace(target, address=address)
        try:
            return chosen.open(target)
        except GuestIdentityError as exc:
            self.refuse_guest(vm, exc)
            raise
        except GuestUnreachable as exc:
            if self.transport != transports.AUTO or not fallback:
                raise
            progress.emit(f"{vm.key}: {exc}; falling back to Azure Run Command (read-only facts)")
            return transports.transport_class(transports.FALLBACK).open(target)

    def _copied_admin(self, vm: VmRef, model: dict[str, Any]) -> str:
        """A VM created from a copied (specialized) disk has no osProfile in Azure: its admin user
        is the one of the VM it is a copy of (tag imageready-copy-of), whose disk it carries."""
        from imageready.facts.azure_view import COPY_TAG
        from imageready.target import TargetError, parse_vm

        source_id = str((model.get("tags") or {}).get(COPY_TAG) or "")
        for _hop in range(3):  # a copy of a copy of ...
            if not source_id:
                return ""
            try:
                source = parse_vm(source_id, None)
                source_model = self.azure(source).get_vm(source, instance_view=False)
            except (TargetError, AzureError):
                return ""
            admin = str(source_model.get("properties", {}).get("osProfile", {}).get("adminUsername") or "")
            if admin:
                return admin
            source_id = str((source_model.get("tags") or {}).get(COPY_TAG) or "")
        return ""

    def _nic_address(self, vm: VmRef, model: dict[str, Any], port: int) -> str:
        nics = model.get("properties", {}).get("networkProfile", {}).get("networkInterfaces") or []
        if not nics:
            raise GuestUnreachable(f"{vm.key}: no network interface; give --guest-address {vm.key}=HOST:PORT")
        primary = next((n for n in nics if (n.get("properties") or {}).get("primary")), nics[0])
        nic = self.azure(vm).get_resource(str(primary["id"]), NIC_API)
        for config in nic.get("properties", {}).get("ipConfigurations") or []:
            address = (config.get("properties") or {}).get("privateIPAddress")
            if address:
                return f"{address}:{port}"
        raise GuestUnreachable(f"{vm.key}: its NIC has no private IP; give --guest-address")

    # --- FactsProvider -----------------------------------------------------------------

    def _submit(self, fn: Callable[..., T], *args: Any) -> Future[T]:
        """Run ``fn`` on the read pool, in the caller's context (its correlation id)."""
        context = contextvars.copy_context()
        return self._reads.submit(context.run, fn, *args)

    def facts(self, vm: VmRef) -> VmFacts:
        facts = VmFacts(vm=vm.key, resource_id=vm.id)
        with correlated(str(uuid.uuid4())):
            guest: Future[VmFacts] | None = None
            try:
                azure = self.azure(vm)
                model = azure.get_vm(vm, instance_view=True)
                # the guest needs the VM only: it answers while Azure is read further
                guest = self._submit(self._guest_facts, vm, VmFacts(vm.key, vm.id, azure={"vm": model}))
                facts.azure = self._azure_facts(vm, azure, model)
            except AzureError as exc:
                facts.azure = None
                category = Category.NOT_FOUND if isinstance(exc, AzureNotFound) else exc.category
                facts.azure_error, facts.azure_error_category = str(exc), category
                # the guest of a VM Azure cannot show is out of reach for the same reason
                facts.guest_error, facts.guest_error_category = str(exc), category
                if guest is not None:
                    guest.result()  # bounded by --guest-timeout; its answer is not used
                return facts
            assert guest is not None
            answered = guest.result()
        facts.guest, facts.guest_identity = answered.guest, answered.guest_identity
        facts.guest_error, facts.guest_error_category = answered.guest_error, answered.guest_error_category
        return facts

    def _azure_facts(self, vm: VmRef, azure: AzureSession, model: dict[str, Any]) -> dict[str, Any]:
        storage = model.get("properties", {}).get("storageProfile", {})
        entries = [storage.get("osDisk") or {}, *(storage.get("dataDisks") or [])]
        disk_ids = [str((entry.get("managedDisk") or {}).get("id") or "") for entry in entries]
        reads = {disk_id.lower(): self._submit(azure.get_disk, disk_id) for disk_id in disk_ids if disk_id}
        extensions = self._submit(azure.list_extensions, vm)
        pending: list[Future[Any]] = [*reads.values(), extensions]
        try:
            disks: dict[str, Any] = {key: read.result() for key, read in reads.items()}
            listed = extensions.result()
        finally:  # a failed read ends the VM's facts: the others are not waited for
            for read in pending:
                read.cancel()
        os_disk_id = str(((storage.get("osDisk") or {}).get("managedDisk") or {}).get("id") or "")
        sources, missing, unresolved = self._lineage(azure, disks.get(os_disk_id.lower()))
        found = {
            "vm": model,
            "disks": disks,
            "sources": sources,
            "missing_sources": missing,
            "unresolved_sources": unresolved,
            "extensions": listed,
        }
        if self.capture is not None:
            found["capture"] = capture_facts(azure, vm, self.capture, self.options.capture_as or "")
        return found

    def _lineage(
        self, azure: AzureSession, os_disk: dict[str, Any] | None
    ) -> tuple[dict[str, Any], list[str], dict[str, str]]:
        """The OS disk's lineage, hop by hop (disk -> snapshot | disk restore point | disk -> ...)
        until a hop has no source, a source is gone (404) or cannot be read, or ``LINEAGE_HOPS``.
        Each source is read by its full id: it may live in another resource group or
        subscription. Returns (models by lower-cased id, ids Azure answered 404 for, ids that
        could not be read with the reason)."""
        sources: dict[str, Any] = {}
        missing: list[str] = []
        unresolved: dict[str, str] = {}
        source = source_id(os_disk)
        for _hop in range(LINEAGE_HOPS):
            if not source or source.lower() in sources:
                break
            api = LINEAGE_API.get(lineage_kind(source))
            if api is None:
                unresolved[source.lower()] = "not a disk, snapshot or disk restore point"
                break
            try:
                found = azure.get_resource(source, api)
            except AzureNotFound:
                missing.append(source)
                break
            except AzureError as exc:
                unresolved[source.lower()] = one_line(str(exc))
                break
            sources[source.lower()] = found
            if lineage_kind(source) == "disk":
                break  # the first source disk decides whether the VM is a copy (checks/test_provenance.py)
            source = source_id(found)
        return sources, missing, unresolved

    def _guest_facts(self, vm: VmRef, facts: VmFacts) -> VmFacts:
        """The guest's part of ``facts`` (which holds the VM's model): its facts or why not."""
        from imageready.facts.azure_view import os_state, power_state

        state = power_state(facts)
        if facts.os_type is None:
            facts.guest_error = f"{vm.key}: Azure reports no OS type, so no facts script can be chosen"
            facts.guest_error_category = Category.VM_STATE
            return facts
        if state != "running":
            facts.guest_error = (
                f"{vm.key} is {state} and generalized: its guest can never be checked again"
                if os_state(facts) == "generalized"
                else f"{vm.key} is {state}: its guest can be checked only while it runs"
            )
            facts.guest_error_category = Category.VM_STATE  # not broken infrastructure
            return facts
        guest: Guest | None = None
        try:
            script, parse, elevated = _facts_script(facts.os_type)
            parsed: dict[int, dict[str, Any]] = {}

            def document(result: CommandResult) -> dict[str, Any]:
                if id(result) not in parsed:
                    if not result.ok and not result.stdout.strip():
                        why = one_line(decode_guest(result.stderr))
                        raise GuestError(f"{vm.key}: facts script exited {result.exit_code}: {why}")
                    parsed[id(result)] = parse(result.stdout)
                return parsed[id(result)]

            result: CommandResult | None = None
            for attempt in range(1, FACTS_ATTEMPTS + 1):
                guest = self.guest(vm, facts.vm_model)
                try:
                    # one round trip: the facts carry the guest's proof of identity, judged
                    # before any of them is believed
                    result = guest.run(
                        script,
                        timeout=self.guest_timeout,
                        elevated=elevated,
                        proof_in=lambda done: document(done).get("identity"),
                    )
                    break
                except GuestDisconnected as exc:
                    # the facts script only reads: a connection lost under it (an idle-timeout
                    # reset, a network blip) is read again on a new one, a bounded number of times
                    self.drop_guest(vm)
                    if attempt == FACTS_ATTEMPTS:
                        raise
                    progress.emit(f"{vm.key}: {exc}; reading the facts again on a new connection")
            assert result is not None and guest is not None
            facts.guest = document(result)
            self.remember_pins(vm, guest)
        except GuestIdentityError as exc:
            self.refuse_guest(vm, exc)
            facts.guest_error, facts.guest_error_category = str(exc), exc.category
        except GuestError as exc:
            facts.guest_error, facts.guest_error_category = str(exc), exc.category
        except AzureError as exc:
            # through Run Command the facts script is an Azure operation: one that failed or ran
            # past its deadline is the guest's facts missing, for this run, not a crash
            facts.guest_error, facts.guest_error_category = str(exc), exc.category
        except ValueError as exc:  # the facts parsers' FactsError
            facts.guest_error, facts.guest_error_category = f"{vm.key}: {exc}", Category.GUEST_FACTS
        if guest is not None:
            facts.guest_identity = _identity(guest)
        return facts

    def live_vm_id(self, vm: VmRef) -> str | None:
        model = self.azure(vm).get_vm(vm, instance_view=False)
        value = model.get("properties", {}).get("vmId")
        return str(value) if value else None

    def operator(self) -> dict[str, str]:
        subscription = next(iter(self._sessions), None)
        if subscription is None:
            return {}
        return self._sessions[subscription].operator_identity()

    def current_state(self, vm: VmRef) -> dict[str, Any]:
        """What Azure says now: power and OS state, provisioning, imageready tags."""
        model = self.azure(vm).get_vm(vm, instance_view=True)
        props = model.get("properties", {})
        statuses = [str(s.get("code")) for s in (props.get("instanceView") or {}).get("statuses") or []]
        return {
            "provisioning_state": props.get("provisioningState"),
            "statuses": statuses,
            "vm_id": props.get("vmId"),
            "tags": {k: v for k, v in (model.get("tags") or {}).items() if k.startswith("imageready")},
        }

    def close(self) -> None:
        self._reads.shutdown(wait=False, cancel_futures=True)
        with self._lock:
            guests, self._guests = list(self._guests.values()), {}
            sessions, self._sessions = list(self._sessions.values()), {}
        for guest in guests:
            guest.close()
        for session in sessions:
            session.close()


def _identity(guest: Guest) -> dict[str, Any]:
    """What the audit and the verdict keep about the guest: the endpoint, how it proved (or
    failed to prove) that it is the VM, and the host key or certificate it presented."""
    ident = guest.identity
    found: dict[str, Any] = {
        "transport": ident.transport,
        "endpoint": ident.endpoint,
        "user": ident.user,
        **ident.evidence,
    }
    binding = guest.binding
    if binding is not None and binding.expected is not None:
        found["azure_vm_id"] = binding.expected.vm_id
        state = "refused" if binding.failure is not None else "unproven"
        found["identity"] = "proven" if binding.proof is not None else state
    return found


def _facts_script(os_type: str | None) -> tuple[str, Any, bool]:
    """The facts script for ``os_type``, its parser, and whether the transport must elevate it."""
    if os_type == "Linux":
        from imageready.facts import linux

        # it elevates itself where sudo allows, so a guest without passwordless sudo still answers
        return linux.self_elevating(), linux.parse, False
    if os_type == "Windows":
        from imageready.facts import windows

        return windows.SCRIPT, windows.parse, True
    raise GuestError(f"unknown OS type {os_type!r}: no facts script")
