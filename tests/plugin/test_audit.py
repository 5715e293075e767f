"""The audit record a change board files: verdict first, every check with its result and waiver,
the run's identity, and a SHA-256 that proves the JSON was not edited."""

from __future__ import annotations

import datetime as dt
import hashlib
import json

from imageready import audit

from .conftest import Project


def test_audit_json_and_html(project: Project) -> None:
    expires = (dt.date.today() + dt.timedelta(days=10)).isoformat()
    waivers = project.write(
        "waivers.yaml",
        "waivers:\n  - {check: T-002, vm: rg/bad, reason: INC-7, approver: cab@example.com, "
        f"expires: {expires}}}\n",
    )
    project.run("--vm", "rg/good", "--vm", "rg/bad", "--change-ticket", "CHG-9", "--waivers", str(waivers))
    out = project.root / "reports" / "out"
    body = (out / "audit.json").read_bytes()
    record = json.loads(body)
    assert (out / "audit.json.sha256").read_text().split()[0] == hashlib.sha256(body).hexdigest()
    assert record["change_ticket"] == "CHG-9"
    assert record["operator"]["upn"] == "tester@example.com"
    assert record["apply"] is False
    assert record["verdict"] == "READY"  # both VMs green (one by waiver); no action recorded steps
    by_vm = {vm["vm"]: vm for vm in record["vms"]}
    bad = by_vm["rg/bad"]
    assert bad["identity"]["vm_id"] == "vmid-bad"
    waived = next(c for c in bad["checks"] if c["check_id"] == "T-002")
    assert waived["outcome"] == "waived" and waived["waiver"]["approver"] == "cab@example.com"
    page = (out / "audit.html").read_text()
    for text in ("CHG-9", "rg/good", "rg/bad", "T-002", "cab@example.com", hashlib.sha256(body).hexdigest()):
        assert text in page


def test_report_tool_refuses_an_edited_audit(project: Project) -> None:
    project.run("--vm", "rg/good")
    out = project.root / "reports" / "out"
    assert audit.main([str(out)]) == 0
    (out / "audit.json").write_text((out / "audit.json").read_text().replace("rg/good", "rg/evil"))
    assert audit.main([str(out)]) == 1
