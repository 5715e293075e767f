"""The user `waagent -deprovision+user` deletes is the admin user imageready expects it to delete.

waagent does not take the user on its command line: it reads the UserName of
/var/lib/waagent/ovf-env.xml (the last provisioned user). A missing file, one WALinuxAgent 2.7
cannot parse (it needs a PlatformSettingsSection, else it prints "ovf-env.xml is not found",
skips the user and still exits 0), or one that names another user would leave the admin account,
its home and its keys in every VM made from the image. This is known only before the step: after
it, the login the harness would prove things with may be gone.
"""

from __future__ import annotations

from typing import Any

import pytest

from checks import _docs
from imageready.checking import evidence, finding
from imageready.facts import FactsUnavailable, VmFacts
from imageready.target import VmRef


@pytest.fixture
def ovf_env(vm: VmRef, guest_facts: dict[str, Any]) -> dict[str, Any]:
    """The ``ovf_env`` fact (facts/SCHEMA.md), or an error: absent, null or ill-typed facts never
    pass."""
    ovf = guest_facts.get("ovf_env")
    if not isinstance(ovf, dict):
        why = next(
            (e.get("error") for e in guest_facts.get("errors") or [] if e.get("probe") == "ovf_env"),
            "missing from the facts",
        )
        raise FactsUnavailable(f"{vm.key}: the ovf_env fact is unavailable: {why}", "guest facts")
    kinds = {
        "path": (str,),
        "present": (bool,),
        "parses": (bool, type(None)),
        "user_name": (str, type(None)),
        "error": (str, type(None)),
    }
    for key, allowed in kinds.items():
        if not isinstance(ovf.get(key), allowed):
            raise FactsUnavailable(
                f"{vm.key}: the ovf_env fact has no valid {key!r} ({ovf.get(key)!r})", "guest facts"
            )
    if ovf["present"] and ovf["parses"] is None:
        raise FactsUnavailable(
            f"{vm.key}: ovf_env says the file exists but not whether it parses", "guest facts"
        )
    return ovf


@pytest.fixture
def ssh_user(vm: VmRef, facts: VmFacts, guest_facts: dict[str, Any]) -> str:
    """Who the deprovision step would run waagent as: the user imageready's SSH session logged in
    as (proven by a login with the run's key, unlike a tag), as the facts script saw it."""
    transport = facts.guest_identity.get("transport")
    if transport != "ssh":
        raise FactsUnavailable(
            f"{vm.key}: the facts came through {transport or 'an unknown transport'}, not an SSH login: "
            "the user whose session would run waagent is unknown",
            "guest unreachable",
        )
    name = (guest_facts.get("user") or {}).get("name")
    if not isinstance(name, str) or not name:
        raise FactsUnavailable(f"{vm.key}: the facts do not name the connecting user", "guest facts")
    return name


@pytest.fixture
def arm_admin(vm: VmRef, facts: VmFacts) -> str | None:
    """``osProfile.adminUsername`` as ARM reports it; None for a VM made from a copied disk,
    which has no osProfile (as in Azure): the SSH login stands alone then."""
    os_profile = facts.vm_model.get("properties", {}).get("osProfile") or {}
    admin = os_profile.get("adminUsername")
    if admin is not None and (not isinstance(admin, str) or not admin):
        raise FactsUnavailable(f"{vm.key}: osProfile.adminUsername is not a user name ({admin!r})")
    return admin


@pytest.mark.check(
    id="IR-LNX-007",
    title="waagent -deprovision+user will delete the admin user (ovf-env.xml names it)",
    severity="critical",
    os="Linux",
    doc=_docs.LINUX_AGENT,
)
def test_deprovision_deletes_admin_user(
    vm: VmRef, ovf_env: dict[str, Any], ssh_user: str, arm_admin: str | None, request: pytest.FixtureRequest
) -> None:
    ovf, connecting, admin = ovf_env, ssh_user, arm_admin
    evidence(
        request,
        f"{vm.key}: {ovf['path']} present {ovf['present']}, parses {ovf['parses']} ({ovf['parser']}), "
        f"names user {ovf['user_name']}; ARM admin {admin or '(no osProfile)'}; SSH user {connecting}",
    )
    path = ovf["path"]
    if not ovf["present"]:
        finding(
            f"{path} is missing on {vm.key}: `waagent -deprovision+user` would delete no user and leave "
            f"{connecting}, its home and its keys in the image",
            where=f"{vm.key}: {path}",
            fix="Restore the file Azure wrote at provisioning, or delete the admin user yourself "
            "(userdel -r) and deprovision without +user.",
            doc=_docs.LINUX_AGENT,
        )
    if not ovf["parses"]:
        finding(
            f"waagent cannot read the user from {path} on {vm.key} ({ovf['error'] or 'no UserName'}): "
            "`waagent -deprovision+user` would print 'ovf-env.xml is not found', skip deleting the "
            f"user and still exit 0, leaving {connecting} in the image",
            where=f"{vm.key}: {path}",
            fix="Restore the ovf-env.xml Azure provisioned (WALinuxAgent 2.7 needs its "
            "PlatformSettingsSection), or delete the admin user yourself before deprovisioning.",
            doc=_docs.LINUX_AGENT,
        )
    named = ovf["user_name"]
    wanted = [("the SSH user imageready connects as", connecting)]
    if admin:
        wanted.insert(0, ("osProfile.adminUsername", admin))
    for label, user in wanted:
        if named != user:
            finding(
                f"{path} on {vm.key} names user {named!r}, but {label} is {user!r}: "
                f"`waagent -deprovision+user` would delete {named!r} and leave {user!r} in the image",
                where=f"{vm.key}: {path} UserName",
                fix=f"Deprovision as the user ovf-env.xml names, or delete {user!r} yourself first "
                "(userdel -r); never edit the file to point waagent at another account.",
                doc=_docs.LINUX_AGENT,
            )
