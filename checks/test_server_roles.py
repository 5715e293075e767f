"""Windows server roles and features: only what Sysprep supports, and nothing Azure Marketplace
certification rejects. One case per installed role or feature; the table is policy data
(src/imageready/policy/server_roles.yaml), each row with its source."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest

from checks import _docs
from imageready.checking import evidence, finding
from imageready.facts.view import FactsView
from imageready.policy import role_rule
from imageready.target import VmRef

# conditional rows of the table: the state in which the role is supported, from the guest facts
# (an installed conditional role must have its details: absent or null, the check errors)
CONDITIONS: dict[str, tuple[Callable[[FactsView], bool], str]] = {
    "wds_not_initialized": (
        lambda g: g.need("role_details.WDS.initialized", bool) is False,
        "Windows Deployment Services is initialized",
    ),
    "hyperv_no_virtual_networks": (
        lambda g: g.need("role_details.Hyper-V.virtual_switches", int) == 0,
        "Hyper-V has virtual networks (virtual switches)",
    ),
    "iis_no_encrypted_credentials": (
        lambda g: g.need("role_details.Web-Server.encrypted_credentials", bool) is False,
        "IIS applicationHost.config holds encrypted credentials",
    ),
}


@pytest.mark.check(
    id="IR-WIN-ROLE",
    title="Server role or feature is supported by Sysprep and Azure Marketplace",
    severity="critical",
    os="Windows",
    doc=_docs.SYSPREP_ROLES,
    each="role",
)
def test_server_role_supported(
    vm: VmRef, role: Any, guest_facts: FactsView, request: pytest.FixtureRequest
) -> None:
    if not isinstance(role, FactsView):  # no role or feature installed at all
        evidence(request, f"{vm.key}: no Windows roles or features installed")
        return
    name = role.need("name", str)
    rule = role_rule(name)
    label = f"{role.need('display_name', str)} ({name})"
    if rule is None:
        evidence(request, f"{label}: supported by Sysprep")
        return
    where = f"{vm.key}: installed {role.need('feature_type', str)} {name}"
    source = f"{rule.source_text}"
    if rule.verdict == "conditional":
        holds, problem = CONDITIONS[rule.condition]
        if holds(guest_facts):
            evidence(request, f"{label}: supported in its current state ({rule.condition})")
            return
        finding(
            f"{problem}: Sysprep does not support {rule.title} in this state",
            where=where,
            fix=rule.advice,
            doc=source,
        )
    what = (
        "is not supported by Sysprep"
        if rule.verdict == "unsupported"
        else ("is rejected by Azure Marketplace certification")
    )
    via = f" (a part of {rule.via})" if rule.via else ""
    note = f" {rule.note}" if rule.note else ""
    finding(f"{label}{via} {what}.{note}", where=where, fix=rule.advice, doc=source)
