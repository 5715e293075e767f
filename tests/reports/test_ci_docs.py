"""The CI examples in docs/ci are valid pipelines of their platforms (their published schemas,
offline) with the shape the docs promise: checks per VM in a matrix, the approval, then
`--apply --verdict`; credentials by workload identity, no secret on a command line. And the exit
codes page says exactly what imageready.exitcodes does."""

from __future__ import annotations

import json
import re
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from imageready import exitcodes
from imageready.categories import Category

from .conftest import REPO

CI = REPO / "docs" / "ci"
GITHUB = CI / "github-actions.yml"
AZURE = CI / "azure-pipelines.yml"
CHECK_JSONSCHEMA = REPO / ".venv" / "bin" / "check-jsonschema"
SCHEMAS = {
    GITHUB: [
        ["--builtin-schema", "vendor.github-workflows"],
        ["--builtin-schema", "custom.github-workflows-require-timeout"],
    ],
    AZURE: [["--builtin-schema", "vendor.azure-pipelines", "--data-transform", "azure-pipelines"]],
}


def validate(path: Path, schema_args: list[str]) -> subprocess.CompletedProcess[str]:
    if not CHECK_JSONSCHEMA.exists():
        pytest.fail("check-jsonschema is missing: run `make bootstrap` (it is in the dev extra)")
    return subprocess.run(
        [str(CHECK_JSONSCHEMA), *schema_args, str(path)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


@pytest.mark.parametrize("path", [GITHUB, AZURE], ids=["github", "azure"])
def test_valid_against_the_platform_schema(path: Path) -> None:
    for schema_args in SCHEMAS[path]:
        done = validate(path, schema_args)
        assert done.returncode == 0, done.stdout + done.stderr


@pytest.mark.parametrize(
    ("path", "good", "bad"),
    [
        (GITHUB, "    environment: imageready-apply", "    environmnet: imageready-apply"),
        (AZURE, "            environment: imageready-apply", "            environmnet: imageready-apply"),
    ],
    ids=["github", "azure"],
)
def test_the_schema_check_catches_a_typo(path: Path, good: str, bad: str, tmp_path: Path) -> None:
    text = path.read_text()
    assert good in text
    broken = tmp_path / path.name
    broken.write_text(text.replace(good, bad))
    done = validate(broken, SCHEMAS[path][0])
    assert done.returncode == 1
    assert "environmnet" in done.stdout


def test_github_workflow_shape() -> None:
    flow = yaml.safe_load(GITHUB.read_text())
    jobs = flow["jobs"]
    assert list(jobs) == ["checks", "green", "generalize"]
    checks, green, generalize = jobs["checks"], jobs["green"], jobs["generalize"]

    assert checks["strategy"]["matrix"]["vm"] == "${{ fromJSON(inputs.vms) }}"
    assert checks["strategy"]["fail-fast"] is False
    assert_signs_in_before_pytest(checks["steps"], "azure/login@")
    assert checks["permissions"]["id-token"] == "write"
    run = pytest_line(checks["steps"])
    assert run.startswith('.venv/bin/pytest checks --vm "$VM"') and "--apply" not in run
    uploads = [
        s["with"]["path"]
        for s in checks["steps"]
        if str(s.get("uses", "")).startswith("actions/upload-artifact")
    ]
    assert uploads == ["${{ env.REPORT_DIR }}", "${{ env.REPORT_DIR }}/verdicts/"]
    assert any("junit.xml" in str(s.get("with", {}).get("report_paths")) for s in checks["steps"])

    assert green["needs"] == "checks" and "!cancelled()" in green["if"]
    assert generalize["needs"] == "green"
    assert generalize["environment"] == "imageready-apply"
    assert generalize["strategy"]["matrix"]["vm"] == "${{ fromJSON(needs.green.outputs.vms) }}"
    assert_signs_in_before_pytest(generalize["steps"], "azure/login@")
    run = pytest_line(generalize["steps"])
    assert run.startswith('.venv/bin/pytest actions --vm "$VM" --apply --verdict verdicts')
    assert "--change-ticket" in run


def test_azure_pipeline_shape() -> None:
    pipeline = yaml.safe_load(AZURE.read_text())
    checks, generalize = pipeline["stages"]
    assert checks["stage"] == "checks"
    (job,) = checks["jobs"]
    assert job["strategy"]["matrix"] == "${{ parameters.vms }}"
    task = azure_cli_task(job["steps"])
    assert task["inputs"]["inlineScript"].count('.venv/bin/pytest checks --vm "$VM"') == 1
    assert "--apply" not in task["inputs"]["inlineScript"]
    published = [s for s in job["steps"] if s.get("task") == "PublishTestResults@2"]
    assert published[0]["inputs"] == {
        "testResultsFormat": "JUnit",
        "testResultsFiles": "$(reportDir)/junit.xml",
        "testRunTitle": "imageready checks $(vm)",
    }
    artifacts = [
        s["inputs"]["artifact"] for s in job["steps"] if s.get("task") == "PublishPipelineArtifact@1"
    ]
    assert artifacts == ["checks-$(artifact)", "verdict-$(artifact)"]

    assert generalize["dependsOn"] == "checks"
    assert "dependencies.checks.result" in generalize["condition"]
    (loop,) = generalize["jobs"]
    (deployment,) = loop["${{ each leg in parameters.vms }}"]
    assert deployment["environment"] == "imageready-apply"
    steps = deployment["strategy"]["runOnce"]["deploy"]["steps"]
    task = azure_cli_task(steps)
    script = task["inputs"]["inlineScript"]
    assert '.venv/bin/pytest actions --vm "$VM" --apply --verdict "$VERDICTS"' in script
    assert task["env"]["VERDICTS"].startswith("$(Pipeline.Workspace)/verdict-")
    assert any(s.get("download") == "current" for s in steps)


@pytest.mark.parametrize("path", [GITHUB, AZURE], ids=["github", "azure"])
def test_no_secret_on_a_command_line(path: Path) -> None:
    """Secrets reach a step through `env:` only; scripts name environment variables."""
    scripts = [
        text
        for key, text in walk(yaml.safe_load(path.read_text()))
        if key in ("run", "script", "inlineScript")
    ]
    assert scripts
    for text in scripts:
        assert "secrets." not in text and "IMAGEREADY_WINRM_PASSWORD" not in text, text
        assert "--password" not in text and "client-secret" not in text
        if path == AZURE:  # a $(macro) is expanded into the script text: only the harmless two
            assert re.findall(r"\$\((\w[\w.]*)\)", text) in ([], ["reportDir"], ["vm"]), text


def exit_code_rows() -> dict[int, str]:
    """The exit codes page's table: each code's whole row."""
    text = (CI / "exit-codes.md").read_text()
    return {int(code): row for row, code in re.findall(r"^(\| (\d+) \| `[A-Z_]+` \|.*)$", text, re.MULTILINE)}


def test_exit_codes_page_matches_the_module() -> None:
    rows = re.findall(r"^\| (\d+) \| `([A-Z_]+)` \|", (CI / "exit-codes.md").read_text(), re.MULTILINE)
    documented = {name: int(code) for code, name in rows}
    actual = {name: value for name, value in vars(exitcodes).items() if name.isupper() and type(value) is int}
    assert documented == actual


@pytest.mark.parametrize("category", list(Category), ids=[c.name for c in Category])
def test_every_category_has_its_exit_code_and_its_row(category: Category) -> None:
    """Each category leads to the code the run's own computation gives it, and the page names it
    (quoted, as the verdict carries it) in that code's row and in no other."""
    code = exitcodes.for_category(category)
    if category is Category.ACTION_FAILED:  # raised by action steps only: any failed step is 11
        assert exitcodes.for_vm([], [{"status": "failed", "category": category}], None) == code
    else:  # a check errored with it, nothing else went wrong
        case = {"outcome": "error", "category": json.loads(json.dumps(category))}
        assert exitcodes.for_vm([case], [], {"open": False}) == code
    assert (code == exitcodes.INFRASTRUCTURE_ERROR) is category.infrastructure
    assert (category in exitcodes.INFRA_CATEGORIES) is category.infrastructure
    naming = [number for number, row in exit_code_rows().items() if f'"{category}"' in row]
    assert naming == [code], f'"{category}" belongs in the row of exit code {code} only'


def test_a_category_travels_as_its_string() -> None:
    """Verdicts, the audit JSON and JUnit carry a category as its string, unchanged."""
    assert json.dumps({"category": Category.AZURE_API}) == '{"category": "Azure API error"}'
    assert str(Category.GUEST_FACTS) == f"{Category.GUEST_FACTS}" == "guest facts"
    assert type(str(Category.TIMEOUT)) is str
    assert Category.of("guest host key") is Category.GUEST_HOST_KEY and Category.of("") is None


def test_readme_links_both_pipelines_and_the_exit_codes() -> None:
    readme = (CI / "README.md").read_text()
    for target in ("github-actions.yml", "azure-pipelines.yml", "exit-codes.md", "../img/allure-report.png"):
        assert f"]({target})" in readme or f"]({target} " in readme, target
    for image in re.findall(r"\]\((\.\./img/[^)]+)\)", readme):
        assert (CI / image).resolve().is_file(), image


# --- helpers ------------------------------------------------------------------------------------


def walk(node: Any) -> list[tuple[str, str]]:
    """Every (key, string value) in a parsed YAML document."""
    found: list[tuple[str, str]] = []
    if isinstance(node, dict):
        for key, value in node.items():
            if isinstance(value, str):
                found.append((str(key), value))
            found.extend(walk(value))
    elif isinstance(node, list):
        for value in node:
            found.extend(walk(value))
    return found


def pytest_line(steps: list[dict[str, Any]]) -> str:
    """The one `pytest` command of a job, continuation lines joined, whitespace collapsed."""
    runs = [str(step.get("run", "")).replace("\\\n", " ") for step in steps]
    lines = [" ".join(line.split()) for run in runs for line in run.splitlines() if "bin/pytest" in line]
    assert len(lines) == 1, lines
    return lines[0]


def assert_signs_in_before_pytest(steps: list[dict[str, Any]], login: str) -> None:
    login_at = next(i for i, s in enumerate(steps) if str(s.get("uses", "")).startswith(login))
    pytest_at = next(i for i, s in enumerate(steps) if "bin/pytest" in str(s.get("run", "")))
    assert login_at < pytest_at


def azure_cli_task(steps: list[dict[str, Any]]) -> dict[str, Any]:
    (task,) = [s for s in steps if s.get("task") == "AzureCLI@2"]
    assert task["inputs"]["azureSubscription"] == "${{ variables.serviceConnection }}"
    return task
