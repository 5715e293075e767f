"""A step tag on the VM can make a run resume another run's work (its checks then do not apply),
so a tag must be the pipeline's own and match the guest: one written by hand, signed for another
OS disk, or naming a guest step done on a guest that answers intact resumes nothing."""

from __future__ import annotations

import datetime as dt
import json
from typing import Any

import pytest

from imageready import exitcodes
from imageready.gate import sign_step_tag

from .conftest import VERDICT_KEY, Project
from .test_fresh_facts import CONFTEST  # fleet.json's VMs, with tags and OS disk ids

VERDICTS = "reports/out/verdicts"
DISK = "/subscriptions/s/resourceGroups/rg/providers/Microsoft.Compute/disks/good-osdisk"


CHECKS = """
import pytest


@pytest.mark.check(id="R-001", title="image state complete", severity="high", os="any", doc="https://x")
def test_image_state(vm, guest_facts):
    assert guest_facts.need("image_state", str) == "IMAGE_STATE_COMPLETE"
"""

INTACT = {"image_state": "IMAGE_STATE_COMPLETE", "errors": []}


def model(disk: str = DISK) -> dict[str, Any]:
    return {"properties": {"vmId": "vmid-good", "storageProfile": {"osDisk": {"managedDisk": {"id": disk}}}}}


@pytest.fixture
def green_run(project: Project) -> str:
    """rg/good with a green checks stage behind it; the run id of that stage."""
    project.write("conftest.py", project.root.joinpath("conftest.py").read_text() + CONFTEST)
    project.write("checks/test_basic.py", CHECKS)
    (project.root / "checks" / "test_more.py").unlink()
    project.fleet(good={"vmId": "vmid-good", "disk": DISK, "guest": INTACT})
    assert project.run("checks", "--vm", "rg/good").ret == exitcodes.GREEN
    return str(project.verdict("good")["run_id"])


def tag_vm(project: Project, value: str, guest: dict[str, Any] | None = INTACT) -> None:
    project.fleet(
        good={"vmId": "vmid-good", "disk": DISK, "guest": guest, "tags": {"imageready-step-guest": value}}
    )


def body(run: str, state: str = "done") -> str:
    return f"{state} run={run} at={dt.datetime.now(dt.UTC):%Y-%m-%dT%H:%M:%SZ}"


def test_a_hand_written_tag_resumes_nothing(project: Project, green_run: str) -> None:
    tag_vm(project, body(green_run), guest=None)  # a stopped VM: the guest cannot tell
    result = project.run("--vm", "rg/good", "--apply", "--verdict", VERDICTS)
    assert not project.acted("good")
    assert result.ret != exitcodes.GREEN
    result.stdout.fnmatch_lines(["*it is not signed with this pipeline's verdict key*nothing is resumed*"])


def test_a_tag_signed_for_another_os_disk_resumes_nothing(project: Project, green_run: str) -> None:
    swapped = model(DISK.replace("good-osdisk", "restored-osdisk"))
    tag_vm(project, sign_step_tag(body(green_run), "guest", swapped, VERDICT_KEY.encode()), guest=None)
    result = project.run("--vm", "rg/good", "--apply", "--verdict", VERDICTS)
    assert not project.acted("good")
    result.stdout.fnmatch_lines(["*its signature does not match this VM, its OS disk*"])


def test_a_done_tag_on_a_guest_that_answers_intact_resumes_nothing(
    project: Project, green_run: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Without a key nothing can be checked of the tag; the guest itself contradicts it."""
    monkeypatch.delenv("IMAGEREADY_VERDICT_KEY")
    path = project.root / VERDICTS / "verdict-rg__good.json"
    document = json.loads(path.read_text())
    document.pop("signature")
    path.write_text(json.dumps(document))
    tag_vm(project, body(green_run))
    result = project.run("--vm", "rg/good", "--apply", "--verdict", VERDICTS, "--accept-unsigned-verdicts")
    assert not project.acted("good")
    result.stdout.fnmatch_lines(["*answers as an intact machine (ImageState is IMAGE_STATE_COMPLETE*"])


def test_a_started_tag_on_an_intact_guest_lets_the_checks_decide(project: Project, green_run: str) -> None:
    """A run stopped after tagging and before its guest step changed anything: the checks of this
    run apply (nothing is resumed) and, green, open the gate."""
    tag_vm(project, sign_step_tag(body(green_run, "started"), "guest", model(), VERDICT_KEY.encode()))
    result = project.run("--vm", "rg/good", "--apply")
    assert result.ret == exitcodes.GREEN, result.stdout.str()
    assert project.acted("good")
    result.stdout.fnmatch_lines(["*gate OPEN (via checks)*"])
    assert "resuming" not in result.stdout.str()
