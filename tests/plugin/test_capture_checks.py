"""The capture pre-flight checks (checks/test_capture.py) against Azure facts shaped as ARM sends
them, one VM per rule: each check passes on a VM the target accepts and fails (or errors, when it
cannot judge) on one for each reason. The end-to-end proof against azsim, that a capture which
cannot succeed keeps the gate shut and changes nothing, is tests/e2e/test_capture_preflight.py.

The project holds only the capture module as its policy, the real one (copied), and a facts
provider that replays the fleet below."""

from __future__ import annotations

import copy
import json
import shutil
from pathlib import Path
from typing import Any

import pytest

from imageready import exitcodes
from imageready.facts.items import DEFINITION_PROPERTIES
from imageready.steps.capture import parse_capture, resolve, target_resources
from imageready.target import VmRef

from .conftest import VERDICT_KEY

REPO = Path(__file__).resolve().parents[2]
SUB = "00000000-0000-0000-0000-0000000000ca"
RG = "rg"
CAPTURE = "checks/test_capture.py"

PROVIDER = """
import json
from pathlib import Path

from imageready.facts import VmFacts


class Fleet:
    def __init__(self, path):
        self.fleet = json.loads(path.read_text())

    def facts(self, vm):
        return VmFacts(vm=vm.key, resource_id=vm.id, azure=self.fleet[vm.key])

    def live_vm_id(self, vm):
        return self.fleet[vm.key]["vm"]["properties"]["vmId"]

    def operator(self):
        return {"upn": "capture@example.com"}

    def close(self):
        pass


def pytest_imageready_facts_provider(config):
    return Fleet(Path(config.rootpath, "fleet.json"))
"""


def vm_id(name: str) -> str:
    return f"/subscriptions/{SUB}/resourceGroups/{RG}/providers/Microsoft.Compute/virtualMachines/{name}"


def vm_model(
    name: str,
    *,
    os: str = "Windows",
    security: str | None = None,
    generation: str = "V2",
    plan: dict[str, str] | None = None,
    generalized: bool = False,
) -> dict[str, Any]:
    disk = f"/subscriptions/{SUB}/resourceGroups/{RG}/providers/Microsoft.Compute/disks/{name}-osdisk"
    statuses = [{"code": "ProvisioningState/succeeded"}, {"code": "PowerState/running"}]
    if generalized:
        statuses.insert(1, {"code": "OSState/generalized"})
    props: dict[str, Any] = {
        "vmId": f"vmid-{name}",
        "storageProfile": {"osDisk": {"osType": os, "managedDisk": {"id": disk}}},
        "instanceView": {"hyperVGeneration": generation, "statuses": statuses},
    }
    if security:
        props["securityProfile"] = {"securityType": security, "uefiSettings": {"secureBootEnabled": True}}
    model: dict[str, Any] = {"id": vm_id(name), "name": name, "properties": props}
    if plan:
        model["plan"] = plan
    return model


def definition(
    *,
    os: str = "Windows",
    state: str = "Generalized",
    generation: str = "V2",
    security: str | None = None,
    architecture: str = "x64",
    plan: dict[str, str] | None = None,
) -> dict[str, Any]:
    props: dict[str, Any] = {
        "osType": os,
        "osState": state,
        "hyperVGeneration": generation,
        "architecture": architecture,
        "provisioningState": "Succeeded",
    }
    if security:
        props["features"] = [{"name": "SecurityType", "value": security}]
    if plan:
        props["purchasePlan"] = plan
    return {"properties": props}


def artifact(kind: str, source: str, state: str = "Succeeded") -> dict[str, Any]:
    if kind == "image":
        return {"properties": {"sourceVirtualMachine": {"id": source}, "provisioningState": state}}
    return {
        "properties": {"storageProfile": {"source": {"virtualMachineId": source}}, "provisioningState": state}
    }


def facts(
    name: str,
    spec: str,
    *,
    architecture: str | None = "x64",
    found: dict[str, Any] | None = None,
    unreadable: dict[str, str] | None = None,
    **vm: Any,
) -> dict[str, Any]:
    """The Azure facts of VM ``name`` with ``--capture-as spec``: ``found`` holds the capture's
    resources that exist (role -> model); every other role answered 404."""
    model = vm_model(name, **vm)
    disk_id = model["properties"]["storageProfile"]["osDisk"]["managedDisk"]["id"]
    disk: dict[str, Any] = {"properties": {}}
    if architecture:
        disk["properties"]["supportedCapabilities"] = {"architecture": architecture}
    ref = VmRef(SUB, RG, name)
    capture = parse_capture(spec)
    assert capture is not None
    roles = target_resources(capture, ref)
    found = dict(found or {})
    unreadable = dict(unreadable or {})
    return {
        "vm": model,
        "disks": {disk_id.lower(): disk},
        "capture": {
            "requested": spec,
            "target": list(resolve(capture, ref)),
            "ids": {role: rid for role, (rid, _api) in roles.items()},
            "found": found,
            "not_found": [role for role in roles if role not in found and role not in unreadable],
            "unreadable": unreadable,
        },
    }


IMAGE = "image:img-{vm}"
GALLERY = "gallery:gal/{vm}/1.0.0"
GAL = {"gallery": {"properties": {"provisioningState": "Succeeded"}}}
PLAN = {"name": "byol", "publisher": "contoso", "product": "app"}


def gallery_vm(name: str, *, found: dict[str, Any] | None = None, **kwargs: Any) -> dict[str, Any]:
    """A VM with a gallery, a definition that fits a standard Windows Gen2 x64 VM unless ``found``
    says otherwise, and a free version name."""
    resources = {**GAL, "definition": definition(), **(found or {})}
    return facts(name, GALLERY, found={k: v for k, v in resources.items() if v is not None}, **kwargs)


IMAGE_FLEET = {
    "img-ok": facts("img-ok", IMAGE),
    "img-trusted": facts("img-trusted", IMAGE, security="TrustedLaunch"),
    "img-confidential": facts("img-confidential", IMAGE, security="ConfidentialVM"),
    "img-arm": facts("img-arm", IMAGE, architecture="Arm64"),
    "img-no-arch": facts("img-no-arch", IMAGE, architecture=None),
    "img-taken": facts("img-taken", IMAGE, found={"artifact": artifact("image", vm_id("other"))}),
    "img-mine": facts("img-mine", IMAGE, found={"artifact": artifact("image", vm_id("img-mine"))}),
    "img-mine-busy": facts(
        "img-mine-busy", IMAGE, found={"artifact": artifact("image", vm_id("img-mine-busy"), "Creating")}
    ),
    "img-mine-failed": facts(
        "img-mine-failed", IMAGE, found={"artifact": artifact("image", vm_id("img-mine-failed"), "Failed")}
    ),
    "img-unreadable": facts(
        "img-unreadable", IMAGE, unreadable={"artifact": "get ...: (AuthorizationFailed) no read"}
    ),
}
GALLERY_FLEET = {
    "gal-ok": gallery_vm("gal-ok"),
    "gal-tl-ok": gallery_vm(
        "gal-tl-ok", security="TrustedLaunch", found={"definition": definition(security="TrustedLaunch")}
    ),
    "gal-plan-ok": gallery_vm("gal-plan-ok", plan=PLAN, found={"definition": definition(plan=PLAN)}),
    "gal-no-gallery": gallery_vm("gal-no-gallery", found={"gallery": None, "definition": None}),
    "gal-no-definition": gallery_vm("gal-no-definition", found={"definition": None}),
    "gal-os-type": gallery_vm("gal-os-type", found={"definition": definition(os="Linux")}),
    "gal-os-state": gallery_vm("gal-os-state", found={"definition": definition(state="Specialized")}),
    "gal-generation": gallery_vm("gal-generation", generation="V1"),
    "gal-security": gallery_vm("gal-security", security="TrustedLaunch"),
    "gal-security-supported": gallery_vm(
        "gal-security-supported",
        security="TrustedLaunch",
        found={"definition": definition(security="TrustedLaunchSupported")},
    ),
    "gal-standard-vm-tl-def": gallery_vm(
        "gal-standard-vm-tl-def", found={"definition": definition(security="TrustedLaunch")}
    ),
    "gal-architecture": gallery_vm("gal-architecture", architecture="Arm64"),
    "gal-plan": gallery_vm("gal-plan", plan=PLAN),
    "gal-taken": gallery_vm("gal-taken", found={"artifact": artifact("gallery", vm_id("other"))}),
    "gal-unreadable": facts(
        "gal-unreadable", GALLERY, found=GAL, unreadable={"definition": "get ...: (AuthorizationFailed)"}
    ),
}


@pytest.fixture
def capture_project(pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch) -> pytest.Pytester:
    monkeypatch.setenv("IMAGEREADY_VERDICT_KEY", VERDICT_KEY)  # both stages hold the pipeline's key
    pytester.makeini("[pytest]\ntestpaths = checks\naddopts = --strict-markers\n")
    checks = pytester.path / "checks"
    checks.mkdir()
    for name in ("__init__.py", "_docs.py", "test_capture.py"):
        shutil.copy(REPO / "checks" / name, checks / name)
    (pytester.path / "conftest.py").write_text(PROVIDER)
    return pytester


def run_fleet(project: pytest.Pytester, fleet: dict[str, Any], *args: str) -> dict[str, dict[str, Any]]:
    """Run the policy over ``fleet``; every case of every VM, from its verdict, by case id."""
    (project.path / "fleet.json").write_text(json.dumps({f"{RG}/{name}": f for name, f in fleet.items()}))
    result = project.runpytest_subprocess(
        f"--subscription={SUB}",
        "-p",
        "no:cacheprovider",
        *[a for n in fleet for a in ("--vm", f"{RG}/{n}")],
        *args,
    )
    assert result.ret in (exitcodes.GREEN, exitcodes.RED_CHECKS, exitcodes.INFRASTRUCTURE_ERROR), (
        result.stdout.str()[-3000:]
    )
    cases = {}
    for path in (project.path / "reports" / "out" / "verdicts").glob("verdict-*.json"):
        for case in json.loads(path.read_text())["checks"]:
            cases[case["case_id"]] = case
    return cases


def case(cases: dict[str, dict[str, Any]], check: str, vm: str, item: str = "") -> dict[str, Any]:
    key = f"{CAPTURE}::{check}[{RG}/{vm}{'-' + item if item else ''}]"
    assert key in cases, f"{key} not among {sorted(c for c in cases if f'[{RG}/{vm}' in c)}"
    return cases[key]


P, F, E = "passed", "failed", "error"
# (check, VM, item, outcome, part of the one-line message)
# fmt: off
IMAGE_EXPECTED = [
    ("test_managed_image_allowed", "img-ok", "security-type", P, ""),
    ("test_managed_image_allowed", "img-ok", "architecture", P, ""),
    ("test_managed_image_allowed", "img-trusted", "security-type", F,
     "Azure makes no managed image of rg/img-trusted: it is a TrustedLaunch VM"),
    ("test_managed_image_allowed", "img-confidential", "security-type", F, "it is a ConfidentialVM VM"),
    ("test_managed_image_allowed", "img-arm", "architecture", F, "it runs Arm64, which only an Azure"),
    ("test_managed_image_allowed", "img-no-arch", "architecture", E, "supportedCapabilities' is missing"),
    ("test_capture_name_free", "img-ok", "image-img-img-ok", P, ""),
    ("test_capture_name_free", "img-mine", "image-img-img-mine", P, ""),
    ("test_capture_name_free", "img-mine-busy", "image-img-img-mine-busy", P, ""),
    ("test_capture_name_free", "img-taken", "image-img-img-taken", F,
     "images/img-img-taken already exists and was made from /subscriptions/"),
    ("test_capture_name_free", "img-mine-failed", "image-img-img-mine-failed", F,
     "is in provisioning state Failed (an earlier capture failed)"),
    ("test_capture_name_free", "img-unreadable", "image-img-img-unreadable", E,
     "the capture target's artifact could not be read: get ...: (AuthorizationFailed) no read"),
]
GALLERY_EXPECTED = [
    ("test_gallery_definition_exists", "gal-ok", "", P, ""),
    ("test_gallery_definition_exists", "gal-no-gallery", "", F, "no gallery gal in resource group rg"),
    ("test_gallery_definition_exists", "gal-no-definition", "", F, "gal has no image definition gal-no-de"),
    ("test_gallery_definition_exists", "gal-unreadable", "", E, "definition could not be read"),
    *[("test_gallery_definition_matches_vm", vm, prop, P, "")
      for vm in ("gal-ok", "gal-tl-ok", "gal-plan-ok") for prop in DEFINITION_PROPERTIES],
    ("test_gallery_definition_matches_vm", "gal-no-definition", "os-type", F, "does not exist (IR-CAP-002)"),
    ("test_gallery_definition_matches_vm", "gal-os-type", "os-type", F,
     "os-type Linux on the definition, Windows on the VM (a different OS type)"),
    ("test_gallery_definition_matches_vm", "gal-os-state", "os-state", F,
     "os-state Specialized on the definition"),
    ("test_gallery_definition_matches_vm", "gal-generation", "hyper-v-generation", F,
     "hyper-v-generation V2 on the definition, V1 on the VM"),
    ("test_gallery_definition_matches_vm", "gal-security", "security-type", F,
     "security-type none declared on the definition, TrustedLaunch on the VM (a TrustedLaunch VM needs "
     "SecurityType TrustedLaunch)"),
    ("test_gallery_definition_matches_vm", "gal-security-supported", "security-type", F,
     "a TrustedLaunchSupported definition takes no VM as a source"),
    ("test_gallery_definition_matches_vm", "gal-standard-vm-tl-def", "security-type", F,
     "a Standard VM needs SecurityType none"),
    ("test_gallery_definition_matches_vm", "gal-architecture", "architecture", F,
     "architecture x64 on the definition, Arm64 on the VM"),
    ("test_gallery_definition_matches_vm", "gal-plan", "purchase-plan", F,
     "purchase-plan none on the definition, contoso/app/byol on the VM (the plan must match exactly)"),
    ("test_gallery_definition_matches_vm", "gal-unreadable", "architecture", E, "could not be read"),
    ("test_capture_name_free", "gal-ok", "gallery-gal-gal-ok-1.0.0", P, ""),
    ("test_capture_name_free", "gal-taken", "gallery-gal-gal-taken-1.0.0", F, "already exists and was made"),
]
# fmt: on


@pytest.mark.parametrize(
    ("spec", "fleet", "expected"),
    [(IMAGE, IMAGE_FLEET, IMAGE_EXPECTED), (GALLERY, GALLERY_FLEET, GALLERY_EXPECTED)],
    ids=["image", "gallery"],
)
def test_each_capture_check_passes_and_fails_by_azure_s_rules(
    capture_project: pytest.Pytester, spec: str, fleet: dict[str, Any], expected: list[tuple[str, ...]]
) -> None:
    cases = run_fleet(capture_project, fleet, f"--capture-as={spec}")
    for check, vm, item, outcome, message in expected:
        found = case(cases, check, vm, item)
        assert found["outcome"] == outcome, (check, vm, item, found["message"])
        assert message in found["message"], (check, vm, item, found["message"])
    for name in fleet:
        verdict = [c for c in cases.values() if c["vm"] == f"{RG}/{name}"]
        green = all(c["outcome"] in ("passed", "not_applicable") for c in verdict)
        assert green is (name.endswith("ok") or name in ("img-mine", "img-mine-busy")), (name, verdict)
    # the checks of the other kind of capture are one case per VM, not applicable
    other = "test_gallery_definition_matches_vm" if spec == IMAGE else "test_managed_image_allowed"
    assert case(cases, other, next(iter(fleet)))["outcome"] == "not_applicable"


def test_without_capture_as_every_capture_check_is_not_applicable(capture_project: pytest.Pytester) -> None:
    """The facts hold no capture target at all: nothing is read, every case is one per VM and not
    applicable, and the VM is green."""
    fleet = {"plain": {k: v for k, v in facts("plain", IMAGE).items() if k != "capture"}}
    cases = run_fleet(capture_project, fleet)
    assert {c.split("::")[1] for c in cases} == {
        "test_managed_image_allowed[rg/plain]",
        "test_gallery_definition_exists[rg/plain]",
        "test_gallery_definition_matches_vm[rg/plain]",
        "test_capture_name_free[rg/plain]",
    }
    assert {c["outcome"] for c in cases.values()} == {"not_applicable"}


def test_missing_capture_facts_error_never_pass(capture_project: pytest.Pytester) -> None:
    """With --capture-as, a facts provider that did not read the target makes every applicable
    case error (a custom provider, or a bug): never a pass."""
    fleet = {"blind": {k: v for k, v in gallery_vm("blind").items() if k != "capture"}}
    cases = run_fleet(capture_project, fleet, f"--capture-as={GALLERY}")
    applicable = {c: v["outcome"] for c, v in cases.items() if v["outcome"] != "not_applicable"}
    assert applicable and set(applicable.values()) == {"error"}, applicable


def test_the_case_id_names_the_target_so_a_verdict_binds_it(capture_project: pytest.Pytester) -> None:
    """A verdict judged for one capture target does not open the gate of a run that captures to
    another: the name check's case id names the target, so the expected case sets differ."""
    fleet = {"img-ok": IMAGE_FLEET["img-ok"]}
    run_fleet(capture_project, fleet, f"--capture-as={IMAGE}")
    verdicts = capture_project.path / "reports" / "out" / "verdicts"
    assert json.loads((verdicts / "verdict-rg__img-ok.json").read_text())["green"] is True
    other = copy.deepcopy(IMAGE_FLEET["img-ok"])
    other["capture"]["target"] = ["image", "another"]
    (capture_project.path / "fleet.json").write_text(json.dumps({f"{RG}/img-ok": other}))
    (capture_project.path / "actions").mkdir()
    (capture_project.path / "actions" / "test_act.py").write_text(
        "import pytest\n\n@pytest.mark.action(step='touch')\ndef test_act(vm):\n    pass\n"
    )
    result = capture_project.runpytest_subprocess(
        f"--subscription={SUB}",
        "-p",
        "no:cacheprovider",
        "actions",
        "--vm",
        f"{RG}/img-ok",
        "--capture-as=image:another",
        f"--verdict={verdicts}",
    )
    assert result.ret != exitcodes.GREEN
    result.stdout.fnmatch_lines(["*it does not cover the checks this run expects of the VM now*"])
