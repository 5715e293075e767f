"""The second "not applicable" imageready decides: a check marked ``requires="capture"`` (or
``"capture:image"``, ``"capture:gallery"``) judges the --capture-as target, so it does not apply
to a run that captures nothing, or the other kind of artifact. It is one case per VM then, and
its item source is not asked. With the capture it runs like any check (a failure, an error or its
own skip keeps the gate shut), and it still runs on a VM a later run resumes: it reads only
Azure, and the capture it judges is still ahead."""

from __future__ import annotations

import pytest

from imageready import exitcodes

from .conftest import PROJECT_CONFTEST, Project, signed_step_tag

# the fleet provider of the shared project, plus the capture target (from --capture-as) and the
# VM's tags in the facts, and an item source naming the target (like imageready's own)
CONFTEST = (
    PROJECT_CONFTEST
    + """

from imageready.facts import item_source


class CaptureFleet(FleetProvider):
    def __init__(self, path, capture):
        super().__init__(path)
        self.capture = capture

    def facts(self, vm):
        found = super().facts(vm)
        data = self._vm(vm)
        found.azure["vm"]["tags"] = data.get("tags", {})
        found.azure["capture"] = {"target": self.capture, "ok": data.get("capture_ok", True)}
        return found


def pytest_imageready_facts_provider(config):
    return CaptureFleet(Path(config.rootpath, "fleet.json"), config.getoption("capture_as"))


@item_source("project_capture_target")
def project_capture_target(facts):
    target = facts.azure["capture"]["target"]
    if target is None:
        raise RuntimeError("asked about a capture this run does not make")
    return [(target.replace(":", "-"), facts.azure["capture"])]
"""
)

CAPTURE_CHECK = """
import pytest

@pytest.mark.check(id="T-CAP", title="the target accepts the VM", severity="critical", os="any",
                   doc="https://x", each="project_capture_target", requires="capture")
def test_target_accepts(vm, project_capture_target):
    assert project_capture_target["ok"], f"{vm.key}: the target refuses it"
"""


@pytest.fixture
def capture_project(project: Project) -> Project:
    project.write("conftest.py", CONFTEST)
    project.write("checks/test_capture.py", CAPTURE_CHECK)
    return project


def outcomes(project: Project, vm: str = "good") -> dict[str, str]:
    return {c["case_id"].split("::")[1]: c["outcome"] for c in project.verdict(vm)["checks"]}


def test_without_capture_as_a_capture_check_is_not_applicable(capture_project: Project) -> None:
    result = capture_project.run("--vm", "rg/good", "--apply", "-rs")
    assert result.ret == exitcodes.GREEN, result.stdout.str()[-2000:]
    assert capture_project.acted("good")
    # one case per VM, and its item source was not asked (it raises when asked without a capture)
    assert outcomes(capture_project)["test_target_accepts[rg/good]"] == "not_applicable"
    result.stdout.fnmatch_lines(["*not applicable: this run captures nothing (no --capture-as)*"])


def test_with_capture_as_a_capture_check_runs_and_a_failure_keeps_the_gate_shut(
    capture_project: Project,
) -> None:
    capture_project.fleet(good={"os": "Linux", "vmId": "vmid-good", "capture_ok": False})
    result = capture_project.run("--vm", "rg/good", "--apply", "--capture-as=image:img")
    assert result.ret == exitcodes.RED_CHECKS
    assert not capture_project.acted("good") and not capture_project.fixture_ran("good")
    assert outcomes(capture_project)["test_target_accepts[rg/good-image-img]"] == "failed"
    result.stdout.fnmatch_lines(["*BLOCKED by the gate of rg/good*", "*rg/good: the target refuses it*"])


@pytest.mark.parametrize(
    ("requires", "capture", "applies"),
    [
        ("capture:image", "image:img", True),
        ("capture:image", "gallery:gal/def/1.0.0", False),
        ("capture:gallery", "gallery:gal/def/1.0.0", True),
        ("capture:gallery", "image:img", False),
    ],
)
def test_a_capture_check_of_the_other_kind_is_not_applicable(
    capture_project: Project, requires: str, capture: str, applies: bool
) -> None:
    capture_project.write(
        "checks/test_capture.py", CAPTURE_CHECK.replace('requires="capture"', f'requires="{requires}"')
    )
    capture_project.fleet(good={"os": "Linux", "vmId": "vmid-good", "capture_ok": False})
    result = capture_project.run("--vm", "rg/good", f"--capture-as={capture}", "-rs")
    found = {k: v for k, v in outcomes(capture_project).items() if k.startswith("test_target_accepts")}
    if applies:
        assert list(found.values()) == ["failed"] and result.ret == exitcodes.RED_CHECKS
    else:
        assert found == {"test_target_accepts[rg/good]": "not_applicable"}
        assert result.ret == exitcodes.GREEN
        result.stdout.fnmatch_lines(["*not applicable: it judges a capture to *, this run captures to *"])


def test_a_capture_check_s_own_skip_keeps_the_gate_shut(capture_project: Project) -> None:
    capture_project.write(
        "checks/test_capture.py",
        CAPTURE_CHECK.replace(
            'assert project_capture_target["ok"], ', "pytest.skip('not applicable: trust me'); "
        ),
    )
    result = capture_project.run("--vm", "rg/good", "--apply", "--capture-as=image:img")
    assert not capture_project.acted("good")
    assert outcomes(capture_project)["test_target_accepts[rg/good-image-img]"] == "skipped"
    assert result.ret == exitcodes.RED_CHECKS


def test_an_unknown_requirement_is_a_usage_error(capture_project: Project) -> None:
    capture_project.write("checks/test_capture.py", CAPTURE_CHECK.replace('"capture")', '"snapshot")'))
    result = capture_project.run("--vm", "rg/good")
    assert result.ret == exitcodes.USAGE_ERROR
    result.stderr.fnmatch_lines(
        ["*@pytest.mark.check: requires must be one of capture, capture:image, capture:gallery*"]
    )


def test_a_resumed_vm_s_capture_checks_still_judge_its_capture(capture_project: Project) -> None:
    """Run R judged the VM green and started its guest step; the next runs resume it. Its other
    checks no longer apply, but the capture checks read only Azure, and the capture is still
    ahead: a red one keeps the gate shut; left out (an actions-only stage), the resumed verdict
    must have judged the same target."""
    first = capture_project.run("--vm", "rg/good", "--capture-as=image:img")
    assert first.ret == exitcodes.GREEN, first.stdout.str()[-2000:]
    run_id = capture_project.verdict("good")["run_id"]
    # as run R wrote it (signed with the pipeline's key); the project's VMs have no guest facts,
    # so nothing contradicts it
    started = {
        "imageready-step-guest": signed_step_tag(f"started run={run_id} at=2026-01-01T00:00:00Z", "vmid-good")
    }

    def resume(*args: str, capture_ok: bool = True) -> tuple[pytest.RunResult, bool]:
        capture_project.fleet(
            good={"os": "Linux", "vmId": "vmid-good", "tags": started, "capture_ok": capture_ok}
        )
        acted = capture_project.root / "acted" / "good"
        acted.unlink(missing_ok=True)
        result = capture_project.run("--vm", "rg/good", "--apply", *args)
        return result, capture_project.acted("good")

    result, acted = resume("--capture-as=image:img", capture_ok=False)
    assert not acted, result.stdout.str()[-3000:]
    result.stdout.fnmatch_lines(
        [f"*resuming run {run_id} under its green verdict*", "*test_target_accepts*: failed*"]
    )

    result, acted = resume("--capture-as=image:img")
    assert acted, result.stdout.str()[-3000:]
    result.stdout.fnmatch_lines(["*gate OPEN (via resume)*"])

    # an actions-only stage: the capture check is deselected; run R's verdict judged this target
    result, acted = resume("actions", "--capture-as=image:img")
    assert acted, result.stdout.str()[-3000:]

    # ... but never another target
    result, acted = resume("actions", "--capture-as=image:other")
    assert not acted
    result.stdout.fnmatch_lines(
        [f"*not judged in this run, and run {run_id}'s verdict did not check this capture target*"]
    )
