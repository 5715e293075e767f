"""--copy-first: generalize a copy, never the original (issue 7).

Run in the controller's ``pytest_configure``, before the run's targets are fixed. For each ``--vm``:

1. a copy made for it earlier (VM ``<name><suffix>`` tagged ``imageready-copy-of=<its id>``) is the
   target ("already done"); a VM of that name that is not its copy stops the run;
2. otherwise the checks run on the original first: one nested pytest for all such originals
   (one start-up and sign-in, not one per VM), writing to ``<report-dir>/originals`` (a verdict per
   original). If the provenance check (IR-SRC-001, "the VM is a copy") is an original's only
   blocker, ``--apply`` makes the copy (``imageready.steps.copy``), waits until its guest answers
   and makes it the target; without ``--apply`` the run prints the plan and the original stays the
   target (its provenance check fails, the gate stays shut, nothing changes). Any other blocker:
   no copy, and the run says which.

The rest of the run (checks, gate, actions, verdict, audit) is about the target that came out;
the audit shows the copy step with its Azure calls and the ids it made. xdist workers get the
final targets through ``workerinput`` and never copy anything.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from imageready import progress
from imageready.azure import AzureSession
from imageready.azure_errors import AzureError, AzureNotFound
from imageready.facts.azure_view import COPY_TAG
from imageready.facts.gather import AzureFactsProvider
from imageready.gate import GREEN_OUTCOMES, verdict_filename
from imageready.guest.base import GuestError
from imageready.options import POLICY_PIN_ENV, RunOptions
from imageready.redact import one_line
from imageready.steps import StepRecord
from imageready.steps.copy import (
    CopyError,
    calls_since,
    copy_ref,
    find_copy,
    make_copy,
    statuses,
    step_record,
    wait_for_guest,
)
from imageready.target import VmRef

#: the one check a copy cures (checks/test_provenance.py)
PROVENANCE_CHECK = "IR-SRC-001"
WORKERINPUT_KEY = "imageready_copy_first"
#: options the nested checks run of an original inherits: (option, RunOptions attribute)
_PASSED_ON = (
    ("--cloud", "cloud"),
    ("--arm-endpoint", "arm_endpoint"),
    ("--ca-bundle", "ca_bundle"),
    ("--lro-deadline", "lro_deadline"),
    ("--transport", "transport"),
    ("--guest-timeout", "guest_timeout"),
    ("--winrm-auth", "winrm_auth"),
    ("--scan-rules", "scan_rules_file"),
    ("--scan-deadline", "scan_deadline"),
    ("--waivers", "waiver_file"),
    ("--change-ticket", "change_ticket"),
)


@dataclass
class Decision:
    """What copy-first did for one ``--vm``: the target the run goes on with, and why."""

    original: VmRef
    target: VmRef
    outcome: str  # copied | already done | planned | no copy | not needed | failed
    message: str
    record: StepRecord | None = None


@dataclass
class LookUp:
    """What Azure says before anything runs: the copy made earlier, the original's model."""

    existing: dict[str, Any] | None
    source: dict[str, Any] | None
    error: str = ""


def copy_first(
    config: pytest.Config, options: RunOptions, vms: list[VmRef], *, policy_digest: str | None
) -> list[VmRef]:
    """The run's targets: with ``--copy-first``, each original replaced by its copy where one was
    made or found (see the module's docstring). Without it, ``vms`` as they are. The nested
    checks run of the originals is pinned to ``policy_digest`` (this run's)."""
    if not options.copy_first:
        return vms
    suffix = options.copy_suffix  # its form was checked with the other options
    workerinput = getattr(config, "workerinput", None)
    if workerinput is not None:
        return _worker_targets(config, workerinput)
    if not vms or config.option.collectonly:
        return vms
    for vm in vms:
        if len(vm.name + suffix) > 64:
            raise pytest.UsageError(
                f"--copy-first: {vm.name}{suffix} is longer than a VM name may be (64); pass a shorter "
                "--copy-suffix"
            )
    nested = NestedRun(
        cwd=config.invocation_params.dir,
        rootdir=config.rootpath,
        inifile=config.inipath,
        policy_digest=policy_digest,
    )
    copier = Copier(options, nested)
    try:
        decisions = copier.decide(vms)
    finally:
        copier.close()
    report = CopyFirstReport(decisions)
    config.pluginmanager.register(report, REPORT_NAME)
    return _sorted({d.target for d in decisions})


@dataclass(frozen=True)
class NestedRun:
    """Where the nested checks run of the originals starts: this run's directory, rootdir and
    ini file, pinned to this run's policy digest."""

    cwd: Path
    rootdir: Path
    inifile: Path | None
    policy_digest: str | None


def _sorted(vms: set[VmRef]) -> list[VmRef]:
    return sorted(vms, key=lambda r: (r.key.lower(), r.subscription))


def _worker_targets(config: pytest.Config, workerinput: dict[str, Any]) -> list[VmRef]:
    shipped = workerinput.get(WORKERINPUT_KEY)
    if shipped is None:
        raise pytest.UsageError("--copy-first: this xdist worker did not get the controller's targets")
    data = json.loads(shipped)
    config.pluginmanager.register(CopyFirstReport([]), REPORT_NAME)
    return [VmRef(*parts) for parts in data["targets"]]


class Copier:
    """Decides, per original, what the run targets; makes or reuses copies (controller only)."""

    def __init__(self, options: RunOptions, nested: NestedRun) -> None:
        self.options = options
        self.nested = nested
        self.suffix = options.copy_suffix
        self.apply = options.apply
        #: the checks of the originals and the copy records
        self.folder = options.report_dir / "originals"
        self.provider = AzureFactsProvider(options)

    def close(self) -> None:
        self.provider.close()

    def decide(self, vms: list[VmRef]) -> list[Decision]:
        """One decision per original; the originals without a copy yet are checked together."""
        found = {vm: self._look_up(vm) for vm in vms}
        unchecked = [vm for vm in vms if found[vm].existing is None and not found[vm].error]
        verdicts = self._check_originals(unchecked) if unchecked else {}
        decisions = []
        for vm in vms:
            look = found[vm]
            if look.error:
                decisions.append(self._say(Decision(vm, vm, "no copy", look.error)))
            elif look.existing is not None:
                decisions.append(self._reuse(vm, copy_ref(vm, self.suffix), look.existing))
            else:
                decisions.append(self._judge(vm, look.source, *verdicts[vm]))
        return decisions

    def _look_up(self, original: VmRef) -> LookUp:
        copy = copy_ref(original, self.suffix)
        azure = self.provider.azure(original)
        try:
            existing = find_copy(azure, original, copy)
            source = _model_or_none(azure, original)
        except CopyError as exc:
            raise pytest.UsageError(str(exc)) from None
        except AzureError as exc:  # the original's own checks will meet it too, and say so
            return LookUp(None, None, f"cannot look for a copy of {original.key}: {exc}")
        return LookUp(existing, source)

    def _judge(
        self, original: VmRef, source: dict[str, Any] | None, verdict: dict[str, Any] | None, why: str
    ) -> Decision:
        """Copy, plan a copy, or not, from the verdict of the original's checks."""
        copy = copy_ref(original, self.suffix)
        where = f"(checks of the original: {self.folder})"
        if verdict is None:
            return self._say(Decision(original, original, "no copy", why))
        if verdict.get("green"):
            message = f"{original.key} passes every check, provenance included {where}"
            return self._say(Decision(original, original, "not needed", message))
        others = blockers_besides_provenance(verdict)
        if others:
            shown = "; ".join(others[:3]) + (f"; and {len(others) - 3} more" if len(others) > 3 else "")
            message = (
                f"a copy would not cure {len(others)} other blocker(s) of {original.key}: {shown} {where}"
            )
            return self._say(Decision(original, original, "no copy", message))
        assert source is not None  # its checks ran: it was there a moment ago
        disks = 1 + len((source.get("properties") or {}).get("storageProfile", {}).get("dataDisks") or [])
        if not self.apply:
            message = (
                f"would copy {original.key} to {copy.key} (snapshot {disks} disk(s), disks from the "
                f"snapshots, a VM from them tagged {COPY_TAG}); pass --apply to make it. Meanwhile "
                f"{original.key} stays the target: its provenance check fails and its gate stays shut"
            )
            record = step_record(original, "planned", message, original_checks=str(self.folder))
            return self._say(Decision(original, original, "planned", message, record))
        return self._make(original, copy, source)

    # --- the three ways to a copy ------------------------------------------------------------

    def _reuse(self, original: VmRef, copy: VmRef, model: dict[str, Any]) -> Decision:
        azure = self.provider.azure(copy)
        first = len(azure.calls)
        state = statuses(model)
        detail = f"{copy.key} is already a copy of {original.key} ({COPY_TAG}); using it"
        provisioning = str((model.get("properties") or {}).get("provisioningState") or "unknown")
        if provisioning != "Succeeded":
            return self._failed(
                original, copy, f"its provisioning {provisioning}: delete it and re-run", first
            )
        if state.get("OSState") != "generalized" and state.get("PowerState") != "running":
            if not self.apply:
                detail += f"; it is {state.get('PowerState')}: --apply would start it"
            else:
                progress.emit(f"{copy.key}: starting the copy (it is {state.get('PowerState')})")
                try:
                    azure.start(copy)
                    waited = self._wait_for_guest(copy)
                except (AzureError, GuestError) as exc:
                    return self._failed(original, copy, f"starting it failed: {exc}", first)
                detail += f"; started it, its guest answered after {waited:.0f} s"
        record = step_record(copy, "already done", detail, original=original.id, copy=copy.id)
        record.azure = calls_since(azure, first)
        return self._say(Decision(original, copy, "already done", detail, record))

    def _make(self, original: VmRef, copy: VmRef, source: dict[str, Any]) -> Decision:
        azure = self.provider.azure(original)
        first = len(azure.calls)
        progress.emit(f"{original.key}: only its provenance check fails: copying it to {copy.key}")
        try:
            made = make_copy(azure, original, source, copy)
            waited = self._wait_for_guest(copy)
        except (CopyError, AzureError, GuestError) as exc:
            return self._failed(original, copy, str(exc), first)
        detail = f"{made.detail}; its guest answered after {waited:.0f} s"
        record = step_record(
            copy,
            "done",
            detail,
            original=original.id,
            copy=copy.id,
            snapshots=made.snapshots,
            disks=made.disks,
            original_checks=str(self.folder),
        )
        record.azure = calls_since(azure, first)
        self._write_record(original, record)
        return self._say(Decision(original, copy, "copied", detail, record))

    def _failed(self, original: VmRef, copy: VmRef, why: str, first: int) -> Decision:
        """A copy that did not come about. The original stays the target (its provenance check
        keeps its gate shut), the audit shows the failed step with the calls made, and the run
        ends ACTION_FAILED; the other VMs go on (one VM never blocks another)."""
        azure = self.provider.azure(original)
        text = (
            f"copying {original.key} to {copy.key} failed: {one_line(why) or 'unknown error'}. "
            f"What was made is tagged {COPY_TAG}: a re-run goes on from there"
        )
        record = step_record(original, "failed", text, original=original.id, copy=copy.id)
        record.azure = calls_since(azure, first)
        self._write_record(original, record)
        return self._say(Decision(original, original, "failed", text, record))

    def _wait_for_guest(self, copy: VmRef) -> float:
        # a provider of its own: the guest addresses it reads now include the copy's
        probe = AzureFactsProvider(self.options)
        try:
            deadline = self.options.guest_timeout
            return wait_for_guest(copy, lambda: probe.connect_guest(copy, fallback=False), deadline)
        finally:
            probe.close()

    # --- the original's checks ---------------------------------------------------------------

    def _check_originals(self, originals: list[VmRef]) -> dict[VmRef, tuple[dict[str, Any] | None, str]]:
        """Run the checks on the originals in one nested pytest; per original its verdict, or
        None and why there is none."""
        folder = self.folder
        paths = {vm: folder / "verdicts" / verdict_filename(vm) for vm in originals}
        for path in paths.values():
            path.unlink(missing_ok=True)  # never judge by an earlier run's verdict
        folder.mkdir(parents=True, exist_ok=True)
        output = folder / "pytest-output.txt"
        names = ", ".join(vm.key for vm in originals)
        progress.emit(f"copy-first: checking the original(s) first: {names} (report: {folder})")
        options = self.options
        budget = len(originals) * (options.lro_deadline + options.scan_deadline + 2 * options.guest_timeout)
        with open(output, "wb") as sink:
            try:
                done = subprocess.run(
                    self._nested_argv(originals),
                    cwd=self.nested.cwd,
                    env=self._nested_env(),
                    stdin=subprocess.DEVNULL,
                    stdout=sink,
                    stderr=subprocess.STDOUT,
                    timeout=budget,
                    check=False,
                )
                status = f"exit {done.returncode}: {_last_line(output)}"
            except subprocess.TimeoutExpired:
                status = f"not finished within {budget:.0f} s"
        found: dict[VmRef, tuple[dict[str, Any] | None, str]] = {}
        for vm, path in paths.items():
            if not path.is_file():
                found[vm] = (None, f"the checks of {vm.key} wrote no verdict ({status}; {output})")
                continue
            data: dict[str, Any] = json.loads(path.read_text(encoding="utf-8"))
            progress.emit(f"{vm.key}: checks of the original: {data.get('status')}")
            found[vm] = (data, "")
        return found

    def _nested_env(self) -> dict[str, str]:
        """This process's environment, the nested run pinned to this run's policy: it names the
        same ini file and rootdir (-c, --rootdir), which only a pinned run may."""
        env = dict(os.environ)
        if self.nested.policy_digest:
            env[POLICY_PIN_ENV] = self.nested.policy_digest
        return env

    def _nested_argv(self, originals: list[VmRef]) -> list[str]:
        options, nested = self.options, self.nested
        argv = [
            sys.executable,
            "-m",
            "pytest",
            str(options.checks_dir),
            *[arg for vm in originals for arg in ("--vm", vm.id)],
            # one token each: pytest takes a bare existing directory argument for its rootdir
            f"--report-dir={self.folder}",
            f"--rootdir={nested.rootdir}",
            "-p",
            "no:cacheprovider",
            "-q",
        ]
        if nested.inifile is not None:
            argv += ["-c", str(nested.inifile)]
        for flag, name in _PASSED_ON:
            value = getattr(options, name)
            if value is not None and value != "":
                argv.append(f"{flag}={value}")
        if options.ssh_strict_host_keys:
            argv.append("--ssh-strict-host-keys")
        argv += [f"--guest-address={value}" for value in options.guest_address_values]
        return argv

    def _write_record(self, original: VmRef, record: StepRecord) -> Path:
        """The copy step's record beside the originals' checks: it outlives a run that stops."""
        self.folder.mkdir(parents=True, exist_ok=True)
        path = self.folder / f"copy-{original.resource_group}__{original.name}.json"
        path.write_text(json.dumps(record.as_dict(), indent=2, sort_keys=True) + "\n", encoding="utf-8")
        return path

    def _say(self, decision: Decision) -> Decision:
        progress.emit(f"{decision.original.key}: copy-first: {decision.outcome}: {decision.message}")
        return decision


def blockers_besides_provenance(verdict: dict[str, Any]) -> list[str]:
    """What keeps the original's gate shut other than "it is not a copy" (a copy cures only that)."""
    found = []
    for case in verdict.get("checks") or []:
        outcome = str(case.get("outcome") or "not_run")
        if outcome in GREEN_OUTCOMES:
            continue
        if case.get("check_id") == PROVENANCE_CHECK and outcome == "failed":
            continue
        message = str(case.get("message") or "")
        found.append(f"{case.get('check_id')} {outcome}" + (f" ({message})" if message else ""))
    found += [f"{module}: not collected" for module in verdict.get("missing_modules") or []]
    return found


def _model_or_none(azure: AzureSession, vm: VmRef) -> dict[str, Any] | None:
    try:
        return azure.get_vm(vm, instance_view=False)
    except AzureNotFound:
        return None


def _last_line(path: Path) -> str:
    try:
        lines = [line for line in path.read_text(errors="replace").splitlines() if line.strip()]
    except OSError:
        return "no output"
    return one_line(lines[-1]) if lines else "no output"


#: the name the copy-first report is registered under (a plugin object)
REPORT_NAME = "imageready-copy-first"


def copy_failed(config: pytest.Config) -> bool:
    """A copy that --copy-first tried to make failed: an action that failed, whatever the checks
    of the original said (the end of the session ends ACTION_FAILED)."""
    report = config.pluginmanager.get_plugin(REPORT_NAME)
    return isinstance(report, CopyFirstReport) and any(d.outcome == "failed" for d in report.decisions)


class CopyFirstReport:
    """Hooks for the rest of the run: workers' targets, the audit's copy step and the terminal
    summary."""

    def __init__(self, decisions: list[Decision]) -> None:
        self.decisions = decisions

    @pytest.hookimpl(optionalhook=True)
    def pytest_configure_node(self, node: Any) -> None:
        targets = _sorted({d.target for d in self.decisions})
        node.workerinput[WORKERINPUT_KEY] = json.dumps(
            {"targets": [[t.subscription, t.resource_group, t.name] for t in targets]}
        )

    def pytest_sessionstart(self, session: pytest.Session) -> None:
        """The copy step opens its VM's actions in the audit (controller only)."""
        if hasattr(session.config, "workerinput"):
            return
        from imageready.runstate import run_state

        state = run_state(session.config)
        for decision in self.decisions:
            if decision.record is not None:
                record = decision.record.as_dict()
                record["run_id"] = state.run_id
                state.step_records.setdefault(record["vm"], []).insert(0, record)

    def pytest_terminal_summary(self, terminalreporter: Any, config: pytest.Config) -> None:
        if hasattr(config, "workerinput") or not self.decisions:
            return
        terminalreporter.section("imageready copy-first")
        for decision in self.decisions:
            arrow = f" -> {decision.target.key}" if decision.target != decision.original else ""
            good = decision.outcome in ("copied", "already done", "not needed")
            bad = decision.outcome == "failed"
            terminalreporter.line(
                f"{decision.original.key}{arrow}: {decision.outcome}: {decision.message}",
                green=good,
                red=bad,
                yellow=not good and not bad,
            )
