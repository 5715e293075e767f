"""The facts of a VM's ``--capture-as`` target: what the capture would create or write into,
read before anything irreversible runs (checks/test_capture.py)."""

from __future__ import annotations

from typing import Any

from imageready.azure import AzureSession
from imageready.azure_errors import AzureError, AzureNotFound
from imageready.redact import one_line
from imageready.target import VmRef


def capture_facts(azure: AzureSession, vm: VmRef, capture: tuple[str, ...], requested: str) -> dict[str, Any]:
    """What the --capture-as target of ``vm`` holds now, for the capture pre-flight checks
    (checks/test_capture.py): one read of each resource the capture touches (the artifact; for a
    gallery also the gallery and the image definition). A 404 is an answer (``not_found``: the
    name is free, the gallery or definition is missing); any other failure is recorded in
    ``unreadable`` and makes the checks that need that resource error, never pass."""
    from imageready.steps.capture import resolve, target_resources

    resources = target_resources(capture, vm)
    found: dict[str, Any] = {}
    not_found: list[str] = []
    unreadable: dict[str, str] = {}
    for role, (resource_id, api) in resources.items():
        try:
            found[role] = azure.get_resource(resource_id, api)
        except AzureNotFound:
            not_found.append(role)
        except AzureError as exc:
            unreadable[role] = one_line(str(exc))
    return {
        "requested": requested,
        "target": list(resolve(capture, vm)),
        "ids": {role: resource_id for role, (resource_id, _api) in resources.items()},
        "found": found,
        "not_found": not_found,
        "unreadable": unreadable,
    }
