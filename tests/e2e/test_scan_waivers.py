"""Waiving one sensitive-data finding by its fingerprint, end to end (docs/waivers.md).

``tests/scenarios/scan-waivers.yaml``: two Linux copies, each with exactly one finding that would
persist into the image (a GitHub token whose value is generated per run). A waiver names that
finding's fingerprint; the gate opens, every report names the waiver, and the Linux action's
re-scan after waagent honours it. Expired waivers and waivers of other fingerprints do nothing.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import hmac
import json
import re
from collections.abc import Iterator
from pathlib import Path

import pytest

from imageready import exitcodes

from .conftest import REPO
from .test_scan_findings import Fleet, audit_cases, case_texts, start_fleet

pytestmark = [pytest.mark.e2e, pytest.mark.azsim, pytest.mark.root, pytest.mark.slow]

SCENARIO = "tests/scenarios/scan-waivers.yaml"
RG = "rg-waive"
RULE = "github-token"
APPROVER = "jane.doe@contoso.example"


@pytest.fixture(scope="module")
def fleet(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Fleet]:
    found = start_fleet(REPO / SCENARIO, tmp_path_factory.mktemp("scan-waivers"))
    try:
        yield found
    finally:
        found.sim.cli("down", check=False)


def expected_fingerprint(fleet: Fleet, name: str) -> str:
    """HMAC-SHA256(key, value) cut to 16 hex: what the guest must report for the planted token."""
    (token,) = fleet.planted.by_vm[name]
    return hmac.new(bytes.fromhex(fleet.key), f"ghp_{token}".encode(), hashlib.sha256).hexdigest()[:16]


def yaml_waiver(vm: str, fingerprint: str, expires: str = "2099-12-31") -> str:
    return (
        "waivers:\n"
        f"  - check: IR-SCAN\n    parameter: {RULE}\n    vm: {vm}\n    fingerprint: {fingerprint}\n"
        f"    reason: test fixture token, revoked (CHG-1234)\n    approver: {APPROVER}\n"
        f"    expires: {expires}\n"
    )


def toml_waiver(vm: str, fingerprint: str, reason: str, *, expires: str) -> str:
    return (
        f'[[waivers]]\ncheck = "IR-SCAN"\nparameter = "{RULE}"\nvm = "{vm}"\n'
        f'fingerprint = "{fingerprint}"\nreason = "{reason}"\napprover = "{APPROVER}"\n'
        f"expires = {expires}\n\n"
    )


def test_a_fingerprint_waiver_opens_the_gate_and_every_report_names_it(fleet: Fleet, tmp_path: Path) -> None:
    vm = f"{RG}/lin-one"
    case = f"checks/test_sensitive_data.py::test_sensitive_data[{vm}-{RULE}]"
    fingerprint = expected_fingerprint(fleet, "lin-one")

    red = fleet.run("--vm", vm, report_dir=tmp_path / "red")
    assert red.returncode == exitcodes.RED_CHECKS, red.output[-3000:]
    outcome, text = case_texts(red)[case]
    assert outcome == "failed" and "/opt/app/notify.py:1 " in text
    assert set(re.findall(r"fp ([0-9a-f]{16})", text)) == {fingerprint}, "the fingerprint is a keyed HMAC"
    assert [b for b in red.verdict(vm)["blockers"]] == [
        f"{case}: failed: " + audit_cases(red, vm)[RULE]["message"]
    ]

    waivers = tmp_path / "waivers.yaml"
    waivers.write_text(yaml_waiver(vm, fingerprint))
    green = fleet.run("--vm", vm, f"--waivers={waivers}", report_dir=tmp_path / "green")
    assert green.returncode == exitcodes.GREEN, green.output[-3000:]
    assert case_texts(green)[case][0] == "passed"
    # the terminal
    assert f"waiver applied: {case} by {APPROVER} until 2099-12-31" in green.output
    # the verdict
    verdict = green.verdict(vm)
    assert verdict["green"] and verdict["status"] == "green"
    applied = verdict["waivers_applied"]
    assert [(w["fingerprint"], w["approver"], w["parameter"]) for w in applied] == [
        (fingerprint, APPROVER, RULE)
    ]
    # the audit: the case names its waiver, and the finding is listed as waived, not gone
    audited = audit_cases(green, vm)[RULE]
    assert audited["waiver"]["fingerprint"] == fingerprint and audited["waiver"]["approver"] == APPROVER
    assert any(f"fp {fingerprint}" in ln and f"WAIVED by {APPROVER}" in ln for ln in audited["evidence"])
    # Allure: the case carries the waiver as an attachment
    attachments = [p.read_text() for p in (green.report_dir / "allure-results").glob("*-attachment*")]
    assert any(fingerprint in a and APPROVER in a and "CHG-1234" in a for a in attachments)


def test_expired_and_foreign_waivers_keep_the_gate_shut(fleet: Fleet, tmp_path: Path) -> None:
    """TOML this time: an expired waiver of the right fingerprint is ignored loudly, a live one
    for another fingerprint of the same rule waives nothing."""
    vm = f"{RG}/lin-one"
    fingerprint = expected_fingerprint(fleet, "lin-one")
    yesterday = (dt.datetime.now(dt.UTC) - dt.timedelta(days=1)).date().isoformat()
    waivers = tmp_path / "waivers.toml"
    waivers.write_text(
        toml_waiver(vm, fingerprint, "expired", expires=yesterday)
        + toml_waiver(vm, "0123456789abcdef", "another token", expires="2099-12-31")
    )
    run = fleet.run("--vm", vm, f"--waivers={waivers}", report_dir=tmp_path / "r")
    assert run.returncode == exitcodes.RED_CHECKS, run.output[-3000:]
    assert f"EXPIRED waiver ignored: IR-SCAN [{vm} {RULE}] by {APPROVER}" in run.output
    assert [w["fingerprint"] for w in run.audit()["expired_waivers_ignored"]] == [fingerprint]
    assert audit_cases(run, vm)[RULE]["outcome"] == "failed" and not run.verdict(vm)["waivers_applied"]


def test_the_action_rescan_honours_the_waiver(fleet: Fleet, tmp_path: Path) -> None:
    """--apply behind a waiver: waagent runs, the re-scan in the same session still sees the
    waived token (deprovision does not touch /opt) and lets it pass, and the VM is generalized."""
    vm = f"{RG}/lin-apply"
    waivers = tmp_path / "waivers.yaml"
    waivers.write_text(yaml_waiver(vm, expected_fingerprint(fleet, "lin-apply")))
    run = fleet.run("--vm", vm, f"--waivers={waivers}", "--apply", report_dir=tmp_path / "apply")
    assert run.returncode == exitcodes.GREEN, run.output[-3000:]
    state = fleet.sim.status()[vm]
    assert state["os_state"] == "generalized" and state["power_state"] == "deallocated"
    guest_step = next(s for s in run.audit()["vms"][0]["actions"] if s["step"] == "guest")
    scanned = json.dumps(guest_step)
    assert f"[{RULE}] /opt/app/notify.py:1" in scanned, scanned[:2000]
