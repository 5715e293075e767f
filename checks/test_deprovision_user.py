"""The user `waagent -deprovision+user` deletes is the admin user imageready expects it to delete.

waagent does not take the user on its command line: it reads the UserName of
/var/lib/waagent/ovf-env.xml (the last provisioned user). A missing file, one WALinuxAgent 2.7
cannot parse (it needs a PlatformSettingsSection, else it prints "ovf-env.xml is not found",
skips the user and still exits 0), or one that names another user would leave the admin account,
its home and its keys in every VM made from the image. This is known only before the step: after
it, the login the harness would prove things with may be gone.
"""

from __future__ import annotations

import pytest

from checks import _docs
from imageready.categories import Category
from imageready.checking import evidence, finding
from imageready.facts import FactsUnavailable, VmFacts
from imageready.facts.azure_view import azure
from imageready.facts.view import FactsView
from imageready.target import VmRef


@pytest.fixture
def ovf_env(guest_facts: FactsView) -> FactsView:
    """The ``ovf_env`` fact (facts/SCHEMA.md); absent or null (e.g. no root to read
    /var/lib/waagent): the case errors, it never passes."""
    view: FactsView = guest_facts.need("ovf_env", dict)
    return view


@pytest.fixture
def ssh_user(vm: VmRef, facts: VmFacts, guest_facts: FactsView) -> str:
    """Who the deprovision step would run waagent as: the user imageready's SSH session logged in
    as (proven by a login with the run's key, unlike a tag), as the facts script saw it."""
    transport = facts.guest_identity.get("transport")
    if transport != "ssh":
        raise FactsUnavailable(
            f"{vm.key}: the facts came through {transport or 'an unknown transport'}, not an SSH login: "
            "the user whose session would run waagent is unknown",
            Category.GUEST_UNREACHABLE,
        )
    name: str = guest_facts.need("user.name", str)
    if not name:
        raise FactsUnavailable(f"{vm.key}: the facts name no connecting user", Category.GUEST_FACTS)
    return name


@pytest.fixture
def arm_admin(facts: VmFacts) -> str | None:
    """``osProfile.adminUsername`` as ARM reports it. None only when ARM shows no osProfile at
    all: a VM made from a copied (specialized) disk has none, as in Azure; the SSH login then
    stands alone. An osProfile without its adminUsername is missing data."""
    props = azure(facts).need("vm.properties", dict)
    profile = props.optional("osProfile", dict)
    if profile is None:
        return None
    admin: str = profile.need("adminUsername", str)
    return admin


@pytest.mark.check(
    id="IR-LNX-007",
    title="waagent -deprovision+user will delete the admin user (ovf-env.xml names it)",
    severity="critical",
    os="Linux",
    doc=_docs.LINUX_AGENT,
)
def test_deprovision_deletes_admin_user(
    vm: VmRef, ovf_env: FactsView, ssh_user: str, arm_admin: str | None, request: pytest.FixtureRequest
) -> None:
    connecting, admin = ssh_user, arm_admin
    path = ovf_env.need("path", str)
    present = ovf_env.need("present", bool)
    evidence(
        request,
        f"{vm.key}: {path} present {present}; ARM admin {admin or '(no osProfile)'}; SSH user {connecting}",
    )
    if not present:
        finding(
            f"{path} is missing on {vm.key}: `waagent -deprovision+user` would delete no user and leave "
            f"{connecting}, its home and its keys in the image",
            where=f"{vm.key}: {path}",
            fix="Restore the file Azure wrote at provisioning, or delete the admin user yourself "
            "(userdel -r) and deprovision without +user.",
            doc=_docs.LINUX_AGENT,
        )
    parses, parser = ovf_env.need("parses", bool), ovf_env.need("parser", str)
    if not parses:
        why = ovf_env.optional("error", str) or "it names no UserName"  # null: the parser gave no reason
        evidence(request, f"{vm.key}: {parser} cannot read it: {why}")
        finding(
            f"waagent cannot read the user from {path} on {vm.key} ({why}): "
            "`waagent -deprovision+user` would print 'ovf-env.xml is not found', skip deleting the "
            f"user and still exit 0, leaving {connecting} in the image",
            where=f"{vm.key}: {path}",
            fix="Restore the ovf-env.xml Azure provisioned (WALinuxAgent 2.7 needs its "
            "PlatformSettingsSection), or delete the admin user yourself before deprovisioning.",
            doc=_docs.LINUX_AGENT,
        )
    named = ovf_env.need("user_name", str)
    evidence(request, f"{vm.key}: {parser} reads UserName {named!r}")
    wanted = [("the SSH user imageready connects as", connecting)]
    if admin is not None:
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
