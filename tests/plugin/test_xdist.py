"""Under xdist each VM's checks and actions run in order on one worker, verdicts are written by
the controller, and one VM's red gate still never blocks another."""

from __future__ import annotations

import json

from imageready import exitcodes

from .conftest import Project


def test_gate_under_two_workers(project: Project) -> None:
    project.fleet(
        good={"os": "Linux", "vmId": "vmid-good"},
        good2={"os": "Linux", "vmId": "vmid-good2"},
        bad={"os": "Linux", "vmId": "vmid-bad"},
    )
    args = ["-n", "2", "--apply", "-v"]
    for vm in ("good", "good2", "bad"):
        args += ["--vm", f"rg/{vm}"]
    result = project.run(*args, subprocess=True)
    assert project.acted("good") and project.acted("good2")
    assert not project.acted("bad")
    assert result.ret == exitcodes.RED_CHECKS
    # each VM's cases ran on exactly one worker, and its action after all its checks
    for vm in ("good", "good2", "bad"):
        lines = [line for line in result.outlines if f"[rg/{vm}]" in line and "[gw" in line]
        workers = {line.split("[gw")[1].split("]")[0] for line in lines}
        assert len(workers) == 1, lines
    # verdicts come from the controller, with every worker's outcomes merged
    assert project.verdict("good")["green"] is True
    assert project.verdict("bad")["green"] is False
    outcomes = {c["outcome"] for c in project.verdict("good2")["checks"]}
    assert outcomes == {"passed", "not_applicable"}
    result.stdout.fnmatch_lines(["*rg/bad: checks red; gate SHUT*"])


def test_verdict_stage_under_workers(project: Project) -> None:
    project.run("checks", "--vm", "rg/good", "-n", "2", subprocess=True)
    verdict = json.loads((project.root / "reports/out/verdicts/verdict-rg__good.json").read_text())
    assert verdict["green"] is True
    result = project.run(
        "actions",
        "--vm",
        "rg/good",
        "--apply",
        "-n",
        "2",
        "--verdict",
        "reports/out/verdicts",
        subprocess=True,
    )
    assert result.ret == exitcodes.GREEN
    assert project.acted("good")


def test_other_distribution_modes_are_refused(project: Project) -> None:
    result = project.run("--vm", "rg/good", "-n", "2", "--dist", "loadfile", subprocess=True)
    assert result.ret == exitcodes.USAGE_ERROR
    result.stderr.fnmatch_lines(
        ["ERROR: --dist loadfile: imageready runs each VM's checks and actions on one worker*"]
    )
