"""Bad input is one clear line and pytest's usage-error exit code, before anything connects."""

from __future__ import annotations

import sys

import pytest

from imageready import exitcodes

from .conftest import Project


@pytest.mark.parametrize(
    "value",
    [
        "bad-value",
        "rg/",
        "/subscriptions/x/resourceGroups/rg/providers/Microsoft.Compute/disks/d",
        "a/b/c",
    ],
)
def test_malformed_vm_is_one_usage_line(project: Project, value: str) -> None:
    result = project.run("--vm", value)
    assert result.ret == exitcodes.USAGE_ERROR
    errors = [line for line in result.errlines if line.strip()]
    assert len(errors) == 1, errors
    assert errors[0].startswith(f"ERROR: --vm {value!r}: expected RG/NAME or /subscriptions/")


def test_real_command_line_prints_one_usage_line(pytester: pytest.Pytester) -> None:
    result = pytester.run(sys.executable, "-m", "pytest", "--vm", "bad-value", "-p", "no:cacheprovider")
    assert result.ret == exitcodes.USAGE_ERROR
    assert [line for line in result.errlines if line.strip()] == [
        "ERROR: --vm 'bad-value': expected RG/NAME or "
        "/subscriptions/SUB/resourceGroups/RG/providers/Microsoft.Compute/virtualMachines/NAME"
    ]


def test_full_resource_id_is_accepted_without_a_subscription(project: Project) -> None:
    vm = (
        "/subscriptions/00000000-0000-0000-0000-0000000000bb/resourceGroups/rg"
        "/providers/Microsoft.Compute/virtualMachines/good"
    )
    result = project.pytester.runpytest("--vm", vm, "--co", "-q", "-p", "no:cacheprovider")
    assert result.ret == exitcodes.GREEN
    result.stdout.fnmatch_lines(["checks/test_basic.py::test_always[[]rg/good[]]"])


def test_short_form_needs_a_subscription(project: Project, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("AZURE_SUBSCRIPTION_ID", raising=False)
    result = project.pytester.runpytest("--vm", "rg/good", "-p", "no:cacheprovider")
    assert result.ret == exitcodes.USAGE_ERROR
    result.stderr.fnmatch_lines(["ERROR: --vm 'rg/good': no subscription; pass --subscription*"])


def test_bad_subscription_is_a_usage_error(project: Project) -> None:
    result = project.pytester.runpytest("--vm", "rg/good", "--subscription", "nope")
    assert result.ret == exitcodes.USAGE_ERROR
    result.stderr.fnmatch_lines(["ERROR: --subscription 'nope': expected a subscription id (GUID)"])


def test_checks_without_a_vm_is_a_usage_error(project: Project) -> None:
    result = project.run()
    assert result.ret == exitcodes.USAGE_ERROR
    result.stderr.fnmatch_lines(["ERROR: no VM given: pass --vm RG/NAME (repeatable)"])


def test_bad_max_age_is_a_usage_error(project: Project) -> None:
    result = project.run("--vm", "rg/good", "--verdict-max-age", "soon")
    assert result.ret == exitcodes.USAGE_ERROR
    result.stderr.fnmatch_lines(["ERROR: --verdict-max-age 'soon' is not a duration*"])


def test_check_without_metadata_is_refused(project: Project) -> None:
    project.write("checks/test_rogue.py", "def test_rogue(vm):\n    pass\n")
    result = project.run("--vm", "rg/good")
    assert result.ret == exitcodes.USAGE_ERROR
    result.stderr.fnmatch_lines(["ERROR: checks/test_rogue.py::test_rogue*must declare @pytest.mark.check*"])


def test_check_with_bad_severity_is_refused(project: Project) -> None:
    project.write(
        "checks/test_rogue.py",
        """
        import pytest

        @pytest.mark.check(id="X", title="t", severity="urgent", os="any", doc="https://x")
        def test_rogue(vm):
            pass
        """,
    )
    result = project.run("--vm", "rg/good")
    assert result.ret == exitcodes.USAGE_ERROR
    result.stderr.fnmatch_lines(["*severity must be one of critical, high, medium, low*"])


def test_options_are_in_one_group_with_help(pytester: pytest.Pytester) -> None:
    result = pytester.runpytest("--help")
    text = result.stdout.str()
    section = text[text.index("imageready: generalize Azure VMs safely") :]
    for option in (
        "--vm=RG/NAME",
        "--subscription=ID",
        "--apply",
        "--verdict=FILE",
        "--waivers=FILE",
        "--change-ticket=ID",
        "--report-dir=DIR",
    ):
        assert option in section, option


def test_bad_sysprep_arguments_are_a_usage_error(project: Project) -> None:
    result = project.run("--vm", "rg/good", "--sysprep-args", "/generalize /oobe /reboot")
    assert result.ret == exitcodes.USAGE_ERROR
    result.stderr.fnmatch_lines(["ERROR: --sysprep-args *give exactly one of /shutdown and /quit*"])


@pytest.mark.parametrize(
    "answer_file",
    ["/unattend:C:\\Windows\\Temp\\unattend.xml", "/UNATTEND:D:\\a.xml", "/unattend", "-unattend:x.xml"],
)
def test_an_answer_file_in_sysprep_arguments_is_a_usage_error(project: Project, answer_file: str) -> None:
    # issue 11: Azure's generalize page does not support custom answer files
    result = project.run("--vm", "rg/good", "--sysprep-args", f"/generalize /oobe /shutdown {answer_file}")
    assert result.ret == exitcodes.USAGE_ERROR
    assert [line for line in result.errlines if line.strip()] == [
        f"ERROR: --sysprep-args: {answer_file!r} is refused: Azure does not support custom answer files "
        "(/unattend) when it generalizes a VM for an image"
    ]


def test_sysprep_vm_mode_is_accepted_only_when_asked(project: Project) -> None:
    result = project.run("--vm", "rg/good", "--sysprep-args", "/generalize /oobe /shutdown /mode:vm")
    assert result.ret == exitcodes.GREEN, result.stderr.str()
    result = project.run("--vm", "rg/good", "--sysprep-args", "/generalize /oobe /shutdown /mode:hw")
    assert result.ret == exitcodes.USAGE_ERROR
    result.stderr.fnmatch_lines(["ERROR: --sysprep-args: '/mode:hw' is not a sysprep option (known: *)"])
