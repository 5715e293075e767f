"""Facts about a VM: from Azure (VM, instance view, disks, extensions) and from the guest (one
script per OS, one round trip), gathered once per VM per run and shared by every check.

Facts are plain JSON so that, under xdist, the controller gathers them once and ships them to
every worker (identical collection everywhere), and so that the audit can keep them.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

from imageready.categories import Category
from imageready.target import VmRef


class FactsUnavailable(Exception):
    """A check needs facts that could not be gathered. The check errors (gate shut). The
    category (a ``Category``, or its string) says whose fault it is; "" names none, and a string
    that is no ``Category`` is kept as it is: neither is infrastructure."""

    def __init__(self, message: str, category: Category | str = Category.AZURE_API) -> None:
        super().__init__(message)
        self.category: Category | str = Category.of(category) or category


@dataclass
class VmFacts:
    """Everything the checks read about one VM, JSON-able."""

    vm: str  # rg/name
    resource_id: str
    gathered_at: str = field(
        default_factory=lambda: dt.datetime.now(dt.UTC).isoformat().replace("+00:00", "Z")
    )
    #: ARM view: {"vm": <VM with instanceView>, "disks": {id: disk}, "sources": {id: model},
    #: "extensions": [...], and with --capture-as "capture": the target (facts.capture.capture_facts)}
    azure: dict[str, Any] | None = None
    azure_error: str | None = None
    azure_error_category: str = ""
    #: the facts script's JSON (facts/SCHEMA.md)
    guest: dict[str, Any] | None = None
    guest_error: str | None = None
    guest_error_category: str = ""
    #: transport, endpoint, host key or certificate: what the audit records about the guest
    guest_identity: dict[str, Any] = field(default_factory=dict)

    # --- derived views -------------------------------------------------------------------

    @property
    def vm_model(self) -> dict[str, Any]:
        if self.azure is None:
            raise FactsUnavailable(
                self.azure_error or "no Azure facts", self.azure_error_category or Category.AZURE_API
            )
        vm = self.azure.get("vm")
        _read(("azure", "vm"))  # the whole model, whatever the caller reads of it
        if not isinstance(vm, dict):
            raise FactsUnavailable(f"{self.vm}: Azure's view of the VM is missing", Category.AZURE_API)
        return vm

    def _vm_path(self, *keys: str) -> Any:
        """A value of the VM model, None where any step is absent or not an object (recorded as
        read, so that a later stage notices when it changed)."""
        _read(("azure", "vm", *keys))
        value: Any = (self.azure or {}).get("vm")
        for key in keys:
            if not isinstance(value, dict):
                return None
            value = value.get(key)
        return value

    def tag(self, name: str) -> str:
        """The VM's tag ``name`` as Azure reported it ("" when absent or unreadable)."""
        tags = self._vm_path("tags")
        value = tags.get(name) if isinstance(tags, dict) else None
        return str(value) if value else ""

    @property
    def vm_id(self) -> str | None:
        value = self._vm_path("properties", "vmId")
        return str(value) if isinstance(value, str) and value else None

    @property
    def os_type(self) -> str | None:
        """ "Linux" or "Windows" as ARM reports it for the OS disk (None when unknown)."""
        value = self._vm_path("properties", "storageProfile", "osDisk", "osType")
        if value in ("Linux", "Windows"):
            return str(value)
        return None

    def require_guest(self) -> dict[str, Any]:
        if self.guest is None:
            raise FactsUnavailable(
                self.guest_error or f"{self.vm}: no guest facts",
                self.guest_error_category or Category.GUEST_UNREACHABLE,
            )
        return self.guest

    def to_json(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> VmFacts:
        names = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in names})


class FactsProvider(Protocol):
    """Where a run gets its facts and live identities. The default talks to Azure and the guest
    (``imageready.facts.gather.AzureFactsProvider``); a conftest may supply another through the
    ``pytest_imageready_facts_provider`` hook (e.g. to replay recorded facts)."""

    def facts(self, vm: VmRef) -> VmFacts:
        """Gather (once) and return the facts of ``vm``; never raises: errors are recorded."""

    def live_vm_id(self, vm: VmRef) -> str | None:
        """The VM's current ``vmId`` read now from Azure (for verdict files), None if unknown."""

    def operator(self) -> dict[str, str]:
        """Who runs this: object id, UPN or app id, tenant (never a token)."""

    def close(self) -> None:
        """Release connections."""


# --- what a check is parametrized over ---------------------------------------------------------

#: An item source turns a VM's facts into the things a check examines: (parameter id, value).
ItemSource = Callable[[VmFacts], list[tuple[str, Any]]]
#: One that also reads the run's options (``imageready.options.RunOptions``: its scan rules, say).
ItemSourceWithOptions = Callable[[VmFacts, Any], list[tuple[str, Any]]]
#: every item source by name, each called with the VM's facts and the run's options
ITEM_SOURCES: dict[str, ItemSourceWithOptions] = {}


def item_source(name: str, *, with_options: bool = False) -> Callable[[Any], Any]:
    """Register an item source for ``@pytest.mark.check(..., each=name)``.

    The check function then takes an argument called ``name``; it is parametrized per VM with what
    the source returns. A source may raise FactsUnavailable: the VM then gets one erroring case.
    A source takes the VM's facts, and with ``with_options`` the run's options too.
    """

    def register(source: Any) -> Any:
        if with_options:
            ITEM_SOURCES[name] = source
        else:
            ITEM_SOURCES[name] = lambda facts, options: source(facts)
        return source

    return register


def _read(path: tuple[str, ...]) -> None:
    """Record ``path`` as read by the running check case (imageready.facts.view)."""
    from imageready.facts.view import _record

    _record(path)
