"""The audit record of a run, for change boards: ``audit.json`` (the record) and ``audit.html``
(self-contained, printable, one page per VM), plus ``audit.json.sha256``.

Everything in it is already redacted at its source (check messages, evidence summaries, step
details); it is redacted once more here, as the last sink before disk.
"""

from __future__ import annotations

import argparse
import datetime as dt
import hashlib
import html
import json
import sys
from collections.abc import Iterable, Mapping
from dataclasses import asdict
from pathlib import Path
from typing import Any

from imageready import exitcodes
from imageready.redact import redact
from imageready.text import printable

AUDIT_SCHEMA = 1


def _utc(moment: dt.datetime) -> str:
    return moment.astimezone(dt.UTC).isoformat(timespec="seconds").replace("+00:00", "Z")


def vm_verdict(status: str, decision: Mapping[str, Any] | None, steps: list[dict[str, Any]]) -> str:
    """One word for the top of a VM's page."""
    if any(s.get("status") == "failed" for s in steps):
        return "ACTION FAILED"
    if any(s.get("status") == "interrupted" for s in steps):
        return "INTERRUPTED"
    if decision is not None and not decision.get("open"):
        return "BLOCKED" if status in ("green", "absent") else "NOT READY"
    if steps and all(s.get("status") in ("done", "already done", "skipped") for s in steps):
        if any(s.get("step") == "generalize" for s in steps):
            return "GENERALIZED"
        return "ACTIONS DONE"
    if steps and any(s.get("status") == "planned" for s in steps):
        return "READY (PLAN ONLY)"
    return {"green": "READY", "red": "NOT READY"}.get(status, "INCOMPLETE")


def build_record(
    *,
    run: Mapping[str, Any],
    vms: Iterable[Mapping[str, Any]],
) -> dict[str, Any]:
    """The audit document. ``run``: run-level fields; ``vms``: one mapping per VM (identity,
    checks, waivers, steps, final state) as assembled by ``from_run_state``."""
    vm_list = [dict(v) for v in vms]
    order = [
        "ACTION FAILED",
        "INTERRUPTED",
        "NOT READY",
        "BLOCKED",
        "INCOMPLETE",
        "READY (PLAN ONLY)",
        "READY",
        "ACTIONS DONE",
        "GENERALIZED",
    ]
    worst = min((v["verdict"] for v in vm_list), key=order.index, default="INCOMPLETE")
    record = {
        "schema": AUDIT_SCHEMA,
        "kind": "imageready-audit",
        "verdict": worst,
        **dict(run),
        "vms": vm_list,
    }
    masked: dict[str, Any] = json.loads(redact(json.dumps(record, sort_keys=True, default=str)))
    return masked


def _identity(vm: Any, facts: Any) -> dict[str, Any]:
    """What Azure said the VM is, for the record; never fails the audit (facts may be partial)."""
    from imageready.facts import FactsUnavailable
    from imageready.facts.azure_view import provenance_chain

    identity: dict[str, Any] = {"resource_id": vm.id, "key": vm.key}
    if facts is None:
        return identity
    try:
        model = facts.vm_model
        props = model.get("properties") or {}
        os_disk = (props.get("storageProfile") or {}).get("osDisk") or {}
        disk_id = str((os_disk.get("managedDisk") or {}).get("id") or "")
        identity.update(
            copy_of=facts.tag("imageready-copy-of") or None,
            vm_id=facts.vm_id,
            os=facts.os_type,
            size=(props.get("hardwareProfile") or {}).get("vmSize"),
            region=model.get("location"),
            os_disk=disk_id,
            os_disk_provenance=provenance_chain(facts, disk_id) if disk_id else [],
            guest=facts.guest_identity,
        )
    except FactsUnavailable as exc:
        identity["error"] = facts.azure_error or str(exc)
    except (AttributeError, TypeError, ValueError) as exc:  # a malformed document is recorded, not fatal
        identity["error"] = f"Azure's view of the VM is malformed ({type(exc).__name__})"
    return identity


def run_header(state: Any) -> dict[str, Any]:
    """The run-level fields of the record, as the journal's ``run`` entry carries them."""
    return {
        "run_id": state.run_id,
        "started_at": _utc(state.started_at),
        "change_ticket": state.change_ticket,
        "operator": state.operator(),
        "harness_version": state.harness_version,
        "policy_digest": state.digest,
        "apply": state.apply,
        "vms": [vm.key for vm in state.vms],
        "expired_waivers_ignored": [w.as_record() for w in state.waivers.expired()],
        "scan_rules_disabled": _disabled_rules(state),
    }


def _disabled_rules(state: Any) -> list[dict[str, str]]:
    """The built-in scan rules this run's --scan-rules file switched off, with their approvals
    (shown like waivers: a policy change someone approved; read with the options)."""
    return [dict(approval) for approval in state.options.scan_rules_disabled]


def vm_entry(state: Any, vm: Any) -> dict[str, Any]:
    """What the gate knows of ``vm`` now, as the journal's ``vm`` entry carries it."""
    gate = state.gates.get(vm.key)
    cases = sorted(gate.cases.values(), key=lambda c: c.case_id) if gate is not None else []
    decision = state.decisions.get(vm.key)
    return {
        "kind": "vm",
        "vm": vm.key,
        "identity": _identity(vm, state.facts_cache.get(vm.key)),
        "checks_status": gate.status if gate is not None else "absent",
        "gate": asdict(decision) if decision is not None else None,
        "blockers": gate.blockers() if gate is not None else [],
        "checks": [asdict(c) for c in cases],
        "waivers": [
            {"case": case_id, **w.as_record()}
            for case_id, w in state.waivers.applied
            if any(c.case_id == case_id for c in cases)
        ],
    }


def run_entries(
    state: Any, steps: Mapping[str, list[dict[str, Any]]], final_states: Mapping[str, dict[str, Any]]
) -> list[dict[str, Any]]:
    """The end of a run as journal entries: every VM as the gate saw it, every step this process
    knows of, the final states read back, and the end."""
    entries: list[dict[str, Any]] = [{"kind": "run", **run_header(state)}]
    entries += [vm_entry(state, vm) for vm in state.vms]
    for key, records in steps.items():
        entries += [{"kind": "step", "vm": key, "step": r.get("step"), "record": r} for r in records]
    entries += [{"kind": "final", "vm": key, "state": value} for key, value in final_states.items()]
    entries.append({"kind": "end", "finished_at": _utc(dt.datetime.now(dt.UTC))})
    return entries


def from_journal(entries: Iterable[Mapping[str, Any]]) -> dict[str, Any]:
    """The audit record from journal entries (``imageready.journal``): what the end of a run
    writes, and what ``imageready-report --from-journal`` rebuilds after a crash."""
    from imageready.journal import fold

    folded = fold(entries)
    run, end = folded["run"], folded["end"]
    keys = list(dict.fromkeys([*run.get("vms", []), *folded["vms"], *folded["steps"]]))
    vms = []
    for key in keys:
        seen = folded["vms"].get(key) or {}
        steps = folded["steps"].get(key, [])
        status = seen.get("checks_status", "absent")
        vms.append(
            {
                "vm": key,
                "verdict": vm_verdict(status, seen.get("gate"), steps),
                "exit_code": exitcodes.for_vm(seen.get("checks", []), steps, seen.get("gate"), status),
                "identity": seen.get("identity") or {"key": key},
                "checks_status": status,
                "gate": seen.get("gate"),
                "blockers": seen.get("blockers", []),
                "checks": seen.get("checks", []),
                "waivers": seen.get("waivers", []),
                "actions": steps,
                "final_state": folded["finals"].get(key, {}),
            }
        )
    fields = {
        "run_id": run.get("run_id"),
        "started_at": run.get("started_at"),
        "finished_at": (end or {}).get("finished_at") or _short(folded["last_at"]),
        "change_ticket": run.get("change_ticket"),
        "operator": run.get("operator") or {},
        "harness_version": run.get("harness_version"),
        "policy_digest": run.get("policy_digest"),
        "apply": run.get("apply", False),
        "expired_waivers_ignored": run.get("expired_waivers_ignored", []),
        "scan_rules_disabled": run.get("scan_rules_disabled", []),
    }
    if end is None:
        fields["incomplete"] = (
            "rebuilt from the journal: the run did not finish (killed or crashed); a step it never "
            "saw end is shown interrupted, and the final state was not read back"
        )
    return build_record(run=fields, vms=vms)


def _short(moment: str) -> str:
    """A journal time (microseconds) as the record's times are (seconds)."""
    return moment.split(".", 1)[0] + "Z" if "." in moment else moment


def from_run_state(
    state: Any, steps: Mapping[str, list[dict[str, Any]]], final_states: Mapping[str, dict[str, Any]]
) -> dict[str, Any]:
    """Assemble the record from a finished run (controller side), the way the journal would."""
    return from_journal(run_entries(state, steps, final_states))


def write(record: Mapping[str, Any], directory: Path, *, stem: str = "audit") -> tuple[Path, Path, str]:
    """Write audit.json, its .sha256 and audit.html (each atomically, fsynced, with the report
    directory's reserve on a full disk); return (json path, html path, sha256). If
    ``audit.json`` cannot be written under its name (something else took it: a directory), the
    three go to ``audit-<run id>.*`` instead and the failure is noted: the record is never lost
    for the name."""
    from imageready import reportdir

    directory.mkdir(parents=True, exist_ok=True)
    body = (json.dumps(record, indent=2, sort_keys=True) + "\n").encode("utf-8")
    digest = hashlib.sha256(body).hexdigest()
    html_text = render_html(record, digest).encode("utf-8")
    try:
        reportdir.write_durably(directory / f"{stem}.json", body)
    except OSError as exc:
        if reportdir.full_disk(exc):
            raise
        wanted, stem = stem, f"audit-{record.get('run_id') or 'run'}"
        reportdir.note_failure(
            f"{wanted}.json could not be written in {directory} ({exc.strerror or exc}): the audit is "
            f"{stem}.json"
        )
        reportdir.write_durably(directory / f"{stem}.json", body)
    reportdir.write_durably(directory / f"{stem}.json.sha256", f"{digest}  {stem}.json\n".encode())
    html_path = directory / f"{stem}.html"
    reportdir.write_durably(html_path, html_text)
    return directory / f"{stem}.json", html_path, digest


# --- HTML ------------------------------------------------------------------------------------

_CSS = """
body{font:14px/1.45 system-ui,-apple-system,"Segoe UI",sans-serif;color:#1b1f23;margin:0;background:#f6f7f9}
main{max-width:1100px;margin:0 auto;padding:24px}
section.vm{background:#fff;border:1px solid #d0d7de;border-radius:8px;padding:20px 24px;margin:20px 0}
h1{font-size:22px;margin:0 0 4px} h2{font-size:18px;margin:0 0 8px} h3{font-size:15px;margin:18px 0 6px}
table{border-collapse:collapse;width:100%;margin:6px 0} th,td{border:1px solid #d0d7de;padding:4px 6px;
text-align:left;vertical-align:top;font-size:12.5px} th{background:#f0f2f4}
.verdict{display:inline-block;padding:4px 12px;border-radius:14px;font-weight:700;color:#fff}
.v-ok{background:#1a7f37}.v-warn{background:#9a6700}.v-bad{background:#cf222e}
.o-passed,.o-done,.o-waived,.o-not_applicable,.o-already{color:#1a7f37;font-weight:600}
.o-failed,.o-error,.o-blocked{color:#cf222e;font-weight:600}
.mono{font-family:ui-monospace,monospace;font-size:12px}
dl{display:grid;grid-template-columns:190px 1fr;gap:2px 12px;margin:6px 0} dt{color:#57606a} dd{margin:0}
@media print{body{background:#fff}main{padding:0}section.vm{page-break-before:always;border:none;padding:0}
section.vm:first-of-type{page-break-before:auto}}
"""

_OK = {"GENERALIZED", "ACTIONS DONE", "READY"}
_WARN = {"READY (PLAN ONLY)", "INCOMPLETE", "BLOCKED", "INTERRUPTED"}


def _e(value: Any) -> str:
    """Text for the page: escaped for HTML, and control and bidi characters shown as escapes (a
    U+202E in a file name would otherwise reorder what the change board reads)."""
    return html.escape(printable(str(value if value is not None else "")))


def _badge(verdict: str) -> str:
    cls = "v-ok" if verdict in _OK else "v-warn" if verdict in _WARN else "v-bad"
    return f'<span class="verdict {cls}">{_e(verdict)}</span>'


def _dl(pairs: Iterable[tuple[str, Any]]) -> str:
    return "<dl>" + "".join(f"<dt>{_e(k)}</dt><dd>{_e(v)}</dd>" for k, v in pairs) + "</dl>"


def _vm_page(vm: Mapping[str, Any]) -> str:
    ident = vm.get("identity", {})
    chain = " → ".join(
        f"{link.get('kind')} {str(link.get('id', '')).rsplit('/', 1)[-1]}"
        + (f" ({link['create_option']})" if link.get("create_option") else "")
        + (" [deleted]" if link.get("exists") is False else "")
        for link in ident.get("os_disk_provenance") or []
    )
    parts = [f'<section class="vm" id="{_e(vm["vm"])}">', f"<h2>{_e(vm['vm'])} {_badge(vm['verdict'])}</h2>"]
    parts.append(
        _dl(
            [
                ("Resource id", ident.get("resource_id")),
                ("vmId", ident.get("vm_id")),
                ("Copy of", ident.get("copy_of") or "not an imageready copy"),
                ("OS / size / region", f"{ident.get('os')} / {ident.get('size')} / {ident.get('region')}"),
                ("OS disk", ident.get("os_disk")),
                ("OS disk provenance", chain or "unknown"),
                ("Guest endpoint", json.dumps(ident.get("guest") or {}, sort_keys=True)),
                ("Checks", vm.get("checks_status")),
                ("Exit code (this VM alone)", vm.get("exit_code")),
                ("Gate", "; ".join((vm.get("gate") or {}).get("reasons") or []) or "not evaluated"),
            ]
        )
    )
    rows = []
    for case in vm.get("checks", []):
        waiver = case.get("waiver") or {}
        waiver_text = (
            f"{waiver.get('approver')} until {waiver.get('expires', '')[:10]}: {waiver.get('reason')}"
            if waiver
            else ""
        )
        rows.append(
            "<tr>"
            f"<td class='mono'>{_e(case['check_id'])}</td><td>{_e(case['title'])}"
            f"<div class='mono'>{_e(case['case_id'])}</div></td>"
            f"<td class='o-{_e(case['outcome'])}'>{_e(case['outcome'])}</td>"
            f"<td>{_e(case.get('message'))}<div>{_e('; '.join(case.get('evidence') or []))}</div></td>"
            f"<td>{_e(waiver_text)}</td></tr>"
        )
    parts.append(
        "<h3>Checks</h3><table><tr><th>Id</th><th>Check</th><th>Result</th>"
        "<th>Finding / evidence</th><th>Waiver</th></tr>" + "".join(rows) + "</table>"
    )
    steps = []
    for step in vm.get("actions", []):
        ids = ", ".join(
            f"{c.get('operation')}: {', '.join(c.get('request_ids') or [])} "
            f"(correlation {c.get('correlation_id')})"
            for c in step.get("azure") or []
        )
        status = str(step.get("status"))
        steps.append(
            f"<tr><td>{_e(step.get('step'))}</td><td class='o-{_e(status.split()[0])}'>{_e(status)}</td>"
            f"<td>{_e(step.get('started'))}</td><td>{_e(step.get('ended'))}</td>"
            f"<td>{_e(step.get('detail'))}<div class='mono'>{_e(ids)}</div></td></tr>"
        )
    parts.append(
        "<h3>Actions</h3>"
        + (
            "<table><tr><th>Step</th><th>Result</th><th>Started (UTC)</th><th>Ended (UTC)</th>"
            "<th>Detail and Azure request ids</th></tr>" + "".join(steps) + "</table>"
            if steps
            else "<p>No action ran for this VM in this run.</p>"
        )
    )
    final = vm.get("final_state") or {}
    parts.append(
        "<h3>Final state (read back from Azure)</h3>"
        + (
            _dl(
                sorted(
                    (k, json.dumps(v, sort_keys=True) if isinstance(v, dict | list) else v)
                    for k, v in final.items()
                )
            )
            if final
            else "<p>Not read.</p>"
        )
    )
    parts.append("</section>")
    return "".join(parts)


def _approval(entry: Mapping[str, Any]) -> str:
    until = str(entry.get("expires"))[:10]
    return f"{entry.get('rule')} by {entry.get('approver')} until {until}: {entry.get('reason')}"


def render_html(record: Mapping[str, Any], digest: str) -> str:
    operator = record.get("operator") or {}
    who = operator.get("upn") or operator.get("appid") or operator.get("oid") or operator.get("local_user")
    head = _dl(
        [
            ("Change ticket", record.get("change_ticket") or "none given"),
            (
                "Operator",
                f"{who} (tenant {operator.get('tid', 'unknown')}, object {operator.get('oid', 'unknown')})",
            ),
            (
                "Run",
                f"{record.get('run_id')}: {record.get('started_at')} to {record.get('finished_at')} (UTC)",
            ),
            ("Mode", "apply (changes allowed)" if record.get("apply") else "plan only (nothing changed)"),
            ("Harness version", record.get("harness_version")),
            ("Policy digest", record.get("policy_digest")),
            ("Expired waivers ignored", len(record.get("expired_waivers_ignored") or [])),
            (
                "Built-in scan rules disabled",
                "; ".join(_approval(d) for d in record.get("scan_rules_disabled") or []) or "none",
            ),
            ("SHA-256 of audit.json", digest),
            *([("Incomplete", record["incomplete"])] if record.get("incomplete") else []),
        ]
    )
    summary = "".join(
        f"<tr><td><a href='#{_e(vm['vm'])}'>{_e(vm['vm'])}</a></td><td>{_badge(vm['verdict'])}</td></tr>"
        for vm in record.get("vms", [])
    )
    return (
        "<!doctype html><html lang='en'><head><meta charset='utf-8'>"
        f"<title>imageready audit {_e(record.get('run_id'))}</title><style>{_CSS}</style></head><body><main>"
        f"<h1>imageready audit report {_badge(str(record.get('verdict')))}</h1>{head}"
        f"<table><tr><th>VM</th><th>Verdict</th></tr>{summary}</table>"
        + "".join(_vm_page(vm) for vm in record.get("vms", []))
        + "</main></body></html>\n"
    )


def main(argv: list[str] | None = None) -> int:
    """imageready-report: re-render audit.html from an audit.json (and check its SHA-256), or
    rebuild the audit from the run's journal (--from-journal) when the run could not write it."""
    parser = argparse.ArgumentParser(prog="imageready-report", description=main.__doc__)
    parser.add_argument("report_dir", type=Path, nargs="?", default=Path("reports/out"))
    parser.add_argument(
        "--from-journal",
        nargs="?",
        const="",
        metavar="RUN_ID",
        help="rebuild audit.json, its .sha256 and audit.html from the journal of RUN_ID (default: "
        "the run that wrote last) in REPORT_DIR/journal; an audit.json of another run is kept and "
        "the rebuilt one is named audit-RUN_ID.json",
    )
    args = parser.parse_args(argv)
    if args.from_journal is not None:
        return _rebuild(args.report_dir, args.from_journal or None)
    path = args.report_dir / "audit.json"
    try:
        body = path.read_bytes()
        record = json.loads(body)
    except (OSError, json.JSONDecodeError) as exc:
        why = exc.strerror if isinstance(exc, OSError) else f"not JSON ({exc.msg})"
        print(f"imageready-report: cannot read {path}: {why}", file=sys.stderr)
        if (args.report_dir / "journal").is_dir():
            print("imageready-report: rebuild it from the run's journal: --from-journal", file=sys.stderr)
        return 2
    digest = hashlib.sha256(body).hexdigest()
    recorded = args.report_dir / "audit.json.sha256"
    if recorded.exists() and recorded.read_text().split()[0] != digest:
        print(f"imageready-report: {path} does not match {recorded}: it was changed", file=sys.stderr)
        return 1
    (args.report_dir / "audit.html").write_text(render_html(record, digest), encoding="utf-8")
    print(f"{args.report_dir / 'audit.html'} (audit.json sha256 {digest})")
    return 0


def _rebuild(report_dir: Path, run_id: str | None) -> int:
    from imageready.journal import journal_files, read_entries

    files = journal_files(report_dir, run_id)
    if not files:
        which = f"of run {run_id} " if run_id else ""
        print(f"imageready-report: no journal {which}in {report_dir / 'journal'}", file=sys.stderr)
        return 2
    record = from_journal(read_entries(files))
    stem = "audit"
    try:
        existing = json.loads((report_dir / "audit.json").read_bytes())
        if existing.get("run_id") != record.get("run_id"):
            stem = f"audit-{record.get('run_id')}"
    except (OSError, ValueError, AttributeError):
        pass
    try:
        json_path, html_path, digest = write(record, report_dir, stem=stem)
    except OSError as exc:
        print(
            f"imageready-report: cannot write the audit in {report_dir}: {exc.strerror or exc}",
            file=sys.stderr,
        )
        return 2
    note = (
        " (the run did not finish: steps it never saw end are interrupted)"
        if record.get("incomplete")
        else ""
    )
    print(f"{json_path} rebuilt from {len(files)} journal file(s) of run {record.get('run_id')}{note}")
    print(f"{html_path} (sha256 {digest})")
    return 0
