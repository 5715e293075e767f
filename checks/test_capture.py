"""The capture target will accept this VM: proven before anything irreversible.

With ``--capture-as``, a capture Azure refuses would fail only after the VM was generalized, which
cannot be undone. These checks read the target from Azure (once per VM, with the other facts) and
judge it by the rules Azure applies to a capture (docs/azsim-rules.md, IMG and GAL rows, with
Microsoft's sources). Without ``--capture-as`` they are not applicable, and imageready alone says so
(``requires=``, docs/writing-checks.md).
"""

from __future__ import annotations

from typing import Any

import pytest

from checks import _docs
from imageready.categories import Category
from imageready.checking import evidence, finding
from imageready.facts import FactsUnavailable, VmFacts
from imageready.facts.azure_view import (
    capture,
    capture_resource,
    capture_target,
    hyper_v_generation,
    os_disk_architecture,
    os_state,
    purchase_plan,
    security_type,
)
from imageready.facts.view import FactsView
from imageready.steps.capture import source_vm
from imageready.target import VmRef

#: a VM's security type -> the SecurityType feature its image definition must declare (None: none)
DEFINITION_SECURITY = {"Standard": None, "TrustedLaunch": "TrustedLaunch", "ConfidentialVM": "ConfidentialVM"}
#: SecurityType features whose images hold no VM guest state: no VM can be their source
NO_VM_SOURCE = (
    "TrustedLaunchSupported",
    "ConfidentialVMSupported",
    "TrustedLaunchAndConfidentialVmSupported",
)
#: an artifact still being made: the capture step waits for it (steps/capture.py)
IN_PROGRESS = ("Creating", "Updating", "Accepted", "Running", "Migrating")


def _target(facts: VmFacts) -> list[str]:
    return capture_target(facts)


def _requested(facts: VmFacts) -> str:
    return str(capture(facts).need("requested", str))


# --- a managed image -----------------------------------------------------------------------------


@pytest.mark.check(
    id="IR-CAP-001",
    title="Azure makes managed images of this kind of VM (security type, architecture)",
    severity="critical",
    os="any",
    doc=_docs.MANAGED_IMAGE,
    each="managed_image_rule",
    requires="capture:image",
)
def test_managed_image_allowed(
    vm: VmRef, facts: VmFacts, managed_image_rule: Any, request: pytest.FixtureRequest
) -> None:
    image = _target(facts)[1]
    gallery_hint = (
        "capture it to an Azure Compute Gallery instead (--capture-as gallery:GALLERY/DEFINITION/VERSION, "
        "a definition that declares the VM's security type and architecture)"
    )
    if managed_image_rule == "security-type":
        kind = security_type(facts)
        evidence(request, f"{vm.key}: security type {kind}; managed image {image}")
        if kind != "Standard":
            finding(
                f"Azure makes no managed image of {vm.key}: it is a {kind} VM, and managed images are "
                "not supported for Trusted Launch or Confidential VMs",
                where=f"{vm.id} securityProfile.securityType",
                fix=gallery_hint,
                doc=_docs.MANAGED_IMAGE,
            )
        return
    architecture = os_disk_architecture(facts)
    evidence(request, f"{vm.key}: architecture {architecture} (OS disk); managed image {image}")
    if architecture != "x64":
        finding(
            f"Azure makes no managed image of {vm.key}: it runs {architecture}, which only an Azure "
            "Compute Gallery supports",
            where=f"{vm.id} OS disk supportedCapabilities.architecture",
            fix=gallery_hint,
            doc=_docs.MANAGED_IMAGE,
        )


# --- a gallery image version ---------------------------------------------------------------------


@pytest.mark.check(
    id="IR-CAP-002",
    title="The gallery and the image definition of the capture exist",
    severity="critical",
    os="any",
    doc=_docs.IMAGE_VERSION,
    requires="capture:gallery",
)
def test_gallery_definition_exists(vm: VmRef, facts: VmFacts, request: pytest.FixtureRequest) -> None:
    _kind, gallery, definition, version = _target(facts)
    found_gallery = capture_resource(facts, "gallery")
    found_definition = capture_resource(facts, "definition")
    evidence(
        request,
        f"{vm.key}: gallery {gallery} {'exists' if found_gallery is not None else 'not found'}, "
        f"definition {definition} {'exists' if found_definition is not None else 'not found'}",
    )
    if found_gallery is None:
        finding(
            f"the capture of {vm.key} to gallery {gallery} cannot succeed: no gallery {gallery} in "
            f"resource group {vm.resource_group}",
            where=str(capture(facts).need("ids.gallery", str)),
            fix=f"az sig create -g {vm.resource_group} -r {gallery}, then an image definition for the VM "
            f"(az sig image-definition create), or correct --capture-as",
            doc=_docs.IMAGE_VERSION,
        )
    if found_definition is None:
        finding(
            f"the capture of {vm.key} to {gallery}/{definition}/{version} cannot succeed: gallery "
            f"{gallery} has no image definition {definition}",
            where=str(capture(facts).need("ids.definition", str)),
            fix=f"az sig image-definition create -g {vm.resource_group} -r {gallery} -i {definition} "
            "with the VM's OS type, --os-state Generalized, its Hyper-V generation, security type and "
            "architecture",
            doc=_docs.IMAGE_VERSION,
        )


def _definition_features(definition: FactsView) -> dict[str, str]:
    props = definition.need("properties", dict)
    # ARM leaves `features` out of a definition that declares none (a standard security type)
    features = props.optional("features", list) or []
    found = {}
    for index in range(len(features)):
        feature = features[index]
        if not isinstance(feature, FactsView):
            raise FactsUnavailable(f"image definition feature {index} is not an object", Category.AZURE_API)
        found[str(feature.need("name", str))] = str(feature.need("value", str))
    return found


def _compare(facts: VmFacts, prop: str, definition: FactsView) -> tuple[str, str, str | None]:
    """(the VM's value, the definition's value, why they do not fit or None)."""
    props = definition.need("properties", dict)
    if prop == "os-type":
        mine = facts.os_type
        if mine is None:
            raise FactsUnavailable(f"{facts.vm}: Azure reports no OS type to compare", Category.VM_STATE)
        theirs = str(props.need("osType", str))
        return mine, theirs, None if mine == theirs else "a different OS type"
    if prop == "os-state":
        # the capture runs after generalize: the VM's OS state is then Generalized
        now = os_state(facts) or "specialized"
        theirs = str(props.need("osState", str))
        mine = f"Generalized (once generalized; now {now})"
        why = None if theirs == "Generalized" else "a Specialized definition takes no generalized VM"
        return mine, theirs, why
    if prop == "hyper-v-generation":
        mine = hyper_v_generation(facts)
        theirs = str(props.need("hyperVGeneration", str))
        return mine, theirs, None if mine == theirs else "a different Hyper-V generation"
    if prop == "security-type":
        mine = security_type(facts)
        declared = _definition_features(definition).get("SecurityType")
        theirs = declared or "none declared"
        if declared in NO_VM_SOURCE:
            return mine, theirs, f"a {declared} definition takes no VM as a source (no VM guest state)"
        wanted = DEFINITION_SECURITY.get(mine, mine)
        why = None if declared == wanted else f"a {mine} VM needs SecurityType {wanted or 'none'}"
        return mine, theirs, why
    if prop == "architecture":
        mine = os_disk_architecture(facts)
        theirs = str(props.need("architecture", str))
        return mine, theirs, None if mine.lower() == theirs.lower() else "a different architecture"
    plan = purchase_plan(facts)
    raw = props.optional("purchasePlan", dict)
    declared = {key: str(raw.need(key, str)) for key in ("name", "publisher", "product")} if raw else None
    mine = "/".join(plan[k] for k in ("publisher", "product", "name")) if plan else "none"
    theirs = "/".join(declared[k] for k in ("publisher", "product", "name")) if declared else "none"
    # only a VM with a plan needs it on the definition, and exactly (GAL-7)
    return mine, theirs, None if plan is None or plan == declared else "the plan must match exactly"


@pytest.mark.check(
    id="IR-CAP-003",
    title="The image definition fits the VM (OS type, OS state, generation, security, architecture, plan)",
    severity="critical",
    os="any",
    doc=_docs.GALLERY_DEFINITIONS,
    each="definition_property",
    requires="capture:gallery",
)
def test_gallery_definition_matches_vm(
    vm: VmRef, facts: VmFacts, definition_property: Any, request: pytest.FixtureRequest
) -> None:
    _kind, gallery, name, _version = _target(facts)
    definition = capture_resource(facts, "definition")
    where = str(capture(facts).need("ids.definition", str))
    if definition is None:
        evidence(request, f"{vm.key}: definition {gallery}/{name} not found")
        finding(
            f"the {definition_property} of {vm.key} cannot be matched: image definition {gallery}/{name} "
            "does not exist (IR-CAP-002)",
            where=where,
            fix="create the image definition (see IR-CAP-002), or correct --capture-as",
            doc=_docs.GALLERY_DEFINITIONS,
        )
    mine, theirs, why = _compare(facts, str(definition_property), definition)
    evidence(request, f"{vm.key}: {definition_property} {mine}; definition {gallery}/{name}: {theirs}")
    if why is not None:
        finding(
            f"image definition {gallery}/{name} takes no version of {vm.key}: {definition_property} "
            f"{theirs} on the definition, {mine} on the VM ({why})",
            where=where,
            fix=f"capture to an image definition made for this VM ({definition_property} {mine}), or "
            "correct --capture-as",
            doc=_docs.GALLERY_DEFINITIONS,
        )


# --- either ------------------------------------------------------------------------------------


@pytest.mark.check(
    id="IR-CAP-004",
    title="The image or version name is free, or holds this VM's own capture",
    severity="critical",
    os="any",
    doc=_docs.MANAGED_IMAGE,
    each="capture_target",
    requires="capture",
)
def test_capture_name_free(
    vm: VmRef, facts: VmFacts, capture_target: Any, request: pytest.FixtureRequest
) -> None:
    requested = _requested(facts)
    artifact_id = str(capture(facts).need("ids.artifact", str))
    doc = _docs.MANAGED_IMAGE if _target(facts)[0] == "image" else _docs.IMAGE_VERSION
    existing = capture_resource(facts, "artifact")
    if existing is None:
        evidence(request, f"{vm.key}: {artifact_id} does not exist (--capture-as {requested}): free")
        return
    state = str(existing.need("properties.provisioningState", str))
    made_from = source_vm(dict(existing.raw))
    evidence(
        request,
        f"{vm.key}: {artifact_id} exists ({state}), made from {made_from or 'no VM Azure shows'}",
        {"artifact": dict(existing.raw)},
    )
    if made_from.lower() != vm.id.lower():
        finding(
            f"the capture of {vm.key} cannot succeed: {artifact_id} already exists and was made from "
            f"{made_from or 'something that is not a VM'}; imageready never overwrites it",
            where=artifact_id,
            fix="choose another name (--capture-as; {vm} and {rg} are substituted), or delete that "
            "artifact if it is not needed",
            doc=doc,
        )
    if state != "Succeeded" and state not in IN_PROGRESS:
        finding(
            f"the capture of {vm.key} cannot finish: {artifact_id}, made from it, is in provisioning "
            f"state {state} (an earlier capture failed)",
            where=artifact_id,
            fix="delete it, then run again",
            doc=doc,
        )
