"""Fresh facts before the guest step (issue 13): an actions stage behind a --verdict gathers the
facts again (at collection, before any action), compares, per check case, the facts the case
read with the digest the verdict recorded, and runs again the cases whose facts changed; the
verdict opens the gate only if each of them passes again."""

from __future__ import annotations

import json

import pytest

from imageready import exitcodes

from .conftest import SUB, Project

VERDICTS = "reports/out/verdicts"

CONFTEST = '''
import json
from pathlib import Path

import pytest

from imageready.facts import VmFacts


class GuestProvider:
    """Facts from fleet.json: {"rg/name": {"vmId": ..., "guest": {...} or null, optional "tags"
    and "disk" (the OS disk's id)}}."""

    def __init__(self, path):
        self.path = path

    def _vm(self, vm):
        return json.loads(self.path.read_text())[vm.key]

    def facts(self, vm):
        data = self._vm(vm)
        os_disk = {"osType": "Windows"}
        if data.get("disk"):
            os_disk["managedDisk"] = {"id": data["disk"]}
        model = {
            "tags": data.get("tags", {}),
            "properties": {"vmId": data["vmId"], "storageProfile": {"osDisk": os_disk}},
        }
        return VmFacts(vm=vm.key, resource_id=vm.id, azure={"vm": model}, guest=data.get("guest"))

    def live_vm_id(self, vm):
        return self._vm(vm)["vmId"]

    def operator(self):
        return {"upn": "tester@example.com"}

    def close(self):
        pass


def pytest_imageready_facts_provider(config):
    return GuestProvider(Path(config.rootpath, "fleet.json"))
'''

CHECKS = """
import pytest

DOC = "https://learn.microsoft.com/azure/virtual-machines/generalize"


@pytest.mark.check(id="F-001", title="not joined to a domain", severity="high", os="any", doc=DOC)
def test_not_joined(vm, guest_facts):
    assert guest_facts.need("domain.part_of_domain", bool) is False, "joined"


@pytest.mark.check(id="F-002", title="image state complete", severity="high", os="any", doc=DOC)
def test_image_state(vm, guest_facts):
    assert guest_facts.need("image_state", str) == "IMAGE_STATE_COMPLETE"
"""


def guest(joined: bool = False, domain: str = "WORKGROUP", state: str = "IMAGE_STATE_COMPLETE") -> dict:
    return {"domain": {"part_of_domain": joined, "domain": domain}, "image_state": state, "errors": []}


@pytest.fixture
def fresh(project: Project) -> Project:
    project.write("conftest.py", project.root.joinpath("conftest.py").read_text() + CONFTEST)
    project.write("checks/test_basic.py", CHECKS)
    (project.root / "checks" / "test_more.py").unlink()
    project.fleet(good={"vmId": "vmid-good", "guest": guest()})
    result = project.run("checks", "--vm", "rg/good")
    assert result.ret == exitcodes.GREEN, result.stdout.str()
    return project


def test_the_verdict_records_what_each_case_read(fresh: Project) -> None:
    cases = {c["check_id"]: c for c in fresh.verdict("good")["checks"]}
    assert cases["F-001"]["facts_read"] == [["guest", "domain", "part_of_domain"]]
    assert cases["F-002"]["facts_read"] == [["guest", "image_state"]]
    assert cases["F-001"]["facts_digest"].startswith("sha256:")


def test_unchanged_facts_run_no_check_again(fresh: Project) -> None:
    result = fresh.run("actions", "--vm", "rg/good", "--apply", "--verdict", VERDICTS)
    result.assert_outcomes(passed=1, deselected=2)
    assert fresh.acted("good")


def test_a_changed_fact_reruns_its_check_and_a_red_one_stops_the_actions(fresh: Project) -> None:
    fresh.fleet(good={"vmId": "vmid-good", "guest": guest(joined=True, domain="corp.contoso.com")})
    result = fresh.run("actions", "--vm", "rg/good", "--apply", "--verdict", VERDICTS)
    # only the case whose facts changed ran again, and failed: the gate is shut
    result.assert_outcomes(failed=2, deselected=1)
    assert not fresh.acted("good") and not fresh.fixture_ran("good")
    result.stdout.fnmatch_lines(["*test_not_joined[[]rg/good[]]*joined*"])
    assert result.ret != exitcodes.GREEN


def test_a_changed_fact_that_still_passes_opens_the_gate(fresh: Project) -> None:
    # the domain's name is not what F-001 read; the image state is read, changes, and still passes
    fresh.fleet(good={"vmId": "vmid-good", "guest": guest(domain="OTHERGROUP")})
    result = fresh.run("actions", "--vm", "rg/good", "--apply", "--verdict", VERDICTS)
    result.assert_outcomes(passed=1, deselected=2)
    assert fresh.acted("good")


def test_a_changed_case_left_out_by_the_command_line_refuses_the_verdict(fresh: Project) -> None:
    fresh.fleet(good={"vmId": "vmid-good", "guest": guest(state="IMAGE_STATE_UNDEPLOYABLE")})
    result = fresh.run(
        "actions", "--vm", "rg/good", "--apply", "--verdict", VERDICTS, "-k", "not test_image_state"
    )
    assert not fresh.acted("good")
    result.stdout.fnmatch_lines(
        ["*refused: the facts checks/test_basic.py::test_image_state[[]rg/good[]] judged changed since it*"]
    )


def test_a_fact_gone_since_the_verdict_reruns_the_check_which_errors(fresh: Project) -> None:
    document = guest()
    del document["image_state"]
    fresh.fleet(good={"vmId": "vmid-good", "guest": document})
    result = fresh.run("actions", "--vm", "rg/good", "--apply", "--verdict", VERDICTS)
    assert not fresh.acted("good")
    result.stdout.fnmatch_lines(["*guest fact 'image_state' is missing*"])


def test_the_changed_cases_are_named_in_the_verdict_of_the_actions_stage_audit(fresh: Project) -> None:
    fresh.fleet(good={"vmId": "vmid-good", "guest": guest(joined=True)})
    fresh.run("actions", "--vm", "rg/good", "--apply", "--verdict", VERDICTS)
    audit = json.loads((fresh.root / "reports" / "out" / "audit.json").read_text())
    outcomes = {c["check_id"]: c["outcome"] for c in audit["vms"][0]["checks"]}
    assert outcomes == {"F-001": "failed", "F-002": "deselected"}
    assert SUB in audit["vms"][0]["identity"]["resource_id"]


LIVE_CHECK = """
from pathlib import Path

import pytest


@pytest.mark.check(id="F-003", title="no secret on the disk", severity="critical", os="any", doc="https://x")
def test_disk_has_no_secret(vm, request):
    # reads the guest live (as the sensitive-data scan does), not through the facts
    disk = Path(request.config.rootpath, "disk", vm.name)
    assert "secret" not in disk.read_text(), "a secret on the disk"
"""


@pytest.fixture
def live(project: Project) -> Project:
    project.write("conftest.py", project.root.joinpath("conftest.py").read_text() + CONFTEST)
    project.write("checks/test_basic.py", CHECKS)
    project.write("checks/test_more.py", LIVE_CHECK)
    project.write("disk/good", "nothing to see\n")
    project.fleet(good={"vmId": "vmid-good", "guest": guest()})
    result = project.run("checks", "--vm", "rg/good")
    assert result.ret == exitcodes.GREEN, result.stdout.str()
    case = next(c for c in project.verdict("good")["checks"] if c["check_id"] == "F-003")
    assert case["facts_read"] == []  # nothing on record proves it unchanged later
    return project


def test_a_case_that_read_live_runs_again_in_the_actions_stage(live: Project) -> None:
    result = live.run("actions", "--vm", "rg/good", "--apply", "--verdict", VERDICTS)
    result.assert_outcomes(passed=2, deselected=2)  # the live case and the action
    assert live.acted("good")


def test_a_secret_planted_after_the_checks_stage_stops_the_actions(live: Project) -> None:
    live.write("disk/good", "api_secret=planted after the approval\n")
    result = live.run("actions", "--vm", "rg/good", "--apply", "--verdict", VERDICTS)
    assert not live.acted("good") and not live.fixture_ran("good")
    result.stdout.fnmatch_lines(["*test_disk_has_no_secret[[]rg/good[]]*a secret on the disk*"])
    assert result.ret != exitcodes.GREEN


RAW_CHECK = """
import pytest


@pytest.mark.check(id="F-004", title="no domain controller role", severity="high", os="any", doc="https://x")
def test_no_dc_role(vm, guest_facts):
    roles = guest_facts["roles"].raw  # the whole list at once, as evidence code reads it
    assert "AD-Domain-Services" not in roles, "a domain controller"


@pytest.mark.check(id="F-005", title="no listed service is disabled", severity="low", os="any", doc="https://x")
def test_services(vm, guest_facts):
    services = guest_facts["services"]
    assert all(services[name] != "disabled" for name in services), "a disabled service"
"""


@pytest.mark.parametrize(
    "change",
    [
        {"roles": ["Web-Server", "AD-Domain-Services"]},  # read through .raw
        {"services": {"w3svc": "running", "spooler": "disabled"}},  # keys read by iterating
    ],
)
def test_reads_of_a_whole_object_or_list_are_on_record(project: Project, change: dict) -> None:
    project.write("conftest.py", project.root.joinpath("conftest.py").read_text() + CONFTEST)
    project.write("checks/test_basic.py", CHECKS)
    project.write("checks/test_more.py", RAW_CHECK)
    document = {**guest(), "roles": ["Web-Server"], "services": {"w3svc": "running"}}
    project.fleet(good={"vmId": "vmid-good", "guest": document})
    assert project.run("checks", "--vm", "rg/good").ret == exitcodes.GREEN
    project.fleet(good={"vmId": "vmid-good", "guest": {**document, **change}})
    result = project.run("actions", "--vm", "rg/good", "--apply", "--verdict", VERDICTS)
    assert not project.acted("good")
    assert result.ret != exitcodes.GREEN
    expected = "a domain controller" if "roles" in change else "a disabled service"
    result.stdout.fnmatch_lines([f"*{expected}*"])
