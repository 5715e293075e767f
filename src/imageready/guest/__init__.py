"""The guest transports behind one interface (see base.py), and the one table of them.

A transport is one ``Guest`` subclass (its name, the OSes it serves, its default port and how it
opens a VM's guest: ``Guest.open``) and one line in ``TRANSPORTS``. ``--transport`` takes its
choices from that table and the facts provider opens every guest through it. Classes are
imported when first asked for, so a run that never reaches a Windows guest never imports
pywinrm.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from imageready.guest.base import Guest

#: name -> "module:Class". The order is --transport auto's preference: the first transport that
#: serves the VM's OS (ssh for Linux, winrm for Windows)
TRANSPORTS: dict[str, str] = {
    "ssh": "imageready.guest.ssh:SshGuest",
    "winrm": "imageready.guest.winrm:WinRmGuest",
    "run-command": "imageready.guest.runcommand:RunCommandGuest",
}
#: --transport auto: the preferred transport for the VM's OS, then FALLBACK when the guest
#: cannot be reached at its address
AUTO = "auto"
#: read-only facts for a guest with no network path (Azure Run Command, through ARM)
FALLBACK = "run-command"


def choices() -> tuple[str, ...]:
    """What ``--transport`` accepts: auto, then every registered transport."""
    return (AUTO, *TRANSPORTS)


def transport_class(name: str) -> type[Guest]:
    """The class registered as ``name`` (KeyError for a name not in ``TRANSPORTS``)."""
    module, _, attribute = TRANSPORTS[name].partition(":")
    found: type[Guest] = getattr(importlib.import_module(module), attribute)
    return found


def for_os(os_type: str, name: str = AUTO) -> type[Guest] | None:
    """The transport ``--transport name`` reaches a guest of ``os_type`` with (None: that
    transport does not serve this OS, or no transport does)."""
    names = list(TRANSPORTS) if name == AUTO else [name]
    return next(
        (found for found in map(transport_class, names) if os_type in found.os_types),
        None,
    )
