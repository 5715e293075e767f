"""Linux: ``sudo waagent -deprovision+user -force`` with ``HISTSIZE=0``, then proof from the state
of the disk, never from waagent's exit code (it exits 0 even when it did nothing).

waagent deletes the very user we are connected as, so everything after it happens in the same
SSH session, as root: the post-state probe and a sensitive-data re-scan of the deprovisioned
disk. Anything that would persist into the image fails the step before the VM is deallocated.
"""

from __future__ import annotations

import shlex
import time
from typing import Any

from imageready import progress
from imageready.facts import VmFacts
from imageready.gate import parse_step_tag
from imageready.guest.base import GuestError
from imageready.guest.identity import GuestIdentityError
from imageready.steps.records import Outcome, StepFailed
from imageready.steps.vm_actions import VmActions

#: why an earlier run's deprovisioning could not be proven (the ``why=`` of a failed guest tag)
FAILURES = {
    "post-state": "waagent left the user, its home, host keys, its state or root's history behind",
    "findings": "sensitive data persisted after waagent",
    "login": "the admin could still log in after waagent",
}
SCAN_CHECK_ID = "IR-SCAN"  # the check id of checks/test_sensitive_data.py (waivers name it)
DEPROVISION = (
    'export HISTSIZE=0; unset HISTFILE; waagent -deprovision+user -force; echo "IR-POST waagent_exit $?"'
)


def post_probe(user: str) -> str:
    """POSIX sh run as root after waagent: one ``IR-POST key value`` line per fact."""
    quoted = shlex.quote(user)
    return f"""u={quoted}
if id -u "$u" >/dev/null 2>&1; then echo "IR-POST user_present yes"; else echo "IR-POST user_present no"; fi
if [ -d "/home/$u" ]; then echo "IR-POST home_present yes"; else echo "IR-POST home_present no"; fi
echo "IR-POST host_keys $(ls /etc/ssh/ 2>/dev/null | grep -c '^ssh_host_.*key')"
echo "IR-POST waagent_lib_entries $(ls -A /var/lib/waagent 2>/dev/null | wc -l)"
if [ -e /root/.bash_history ]; then echo "IR-POST root_history yes"; else echo "IR-POST root_history no"; fi
echo "IR-POST root_password $(awk -F: '$1=="root"{{print ($2 ~ /^[!*]/) ? "locked" : "set"}}' /etc/shadow)"
"""


def parse_post(lines: list[str]) -> dict[str, str]:
    found = {}
    for line in lines:
        parts = line.split(None, 2)
        if len(parts) == 3 and parts[0] == "IR-POST":
            found[parts[1]] = parts[2].strip()
    return found


def problems(post: dict[str, str], *, regenerate_host_keys: bool, delete_root_password: bool) -> list[str]:
    """What the post-state says waagent did not do."""
    wrong = []
    if post.get("user_present") != "no":
        wrong.append("the provisioned user still exists")
    if post.get("home_present") != "no":
        wrong.append("the provisioned user's home still exists")
    if regenerate_host_keys and post.get("host_keys") != "0":
        wrong.append(f"{post.get('host_keys', '?')} SSH host key files remain")
    if post.get("waagent_lib_entries") != "0":
        wrong.append("/var/lib/waagent is not empty")
    if post.get("root_history") != "no":
        wrong.append("/root/.bash_history remains")
    if delete_root_password and post.get("root_password") != "locked":
        wrong.append("root still has a password")
    return wrong


def deprovision(actions: VmActions, facts: VmFacts, scan: Any) -> Outcome:
    """The guest step for Linux. ``scan`` is a callable(guest, run_first) -> ScanResult bound to
    the run's rules, key and waivers (see imageready.action_fixtures)."""
    from imageready.scan import DeprovisionContext

    vm = actions.vm
    state = actions.statuses()
    if actions.step_done("guest") or state.get("OSState") == "generalized":
        return Outcome("already done", "the guest was deprovisioned")
    # an earlier run started it and was interrupted: its tag holds what the guest may no longer tell
    started = parse_step_tag(actions.step_tag("guest"))
    if started.get("state") == "failed":
        raise StepFailed(
            f"run {started.get('run')} deprovisioned {vm.key} at {started.get('at')} and could not prove "
            f"it clean ({FAILURES.get(started.get('why', ''), started.get('why', '?'))}); the admin "
            "login is gone, so nothing can prove it any more: rebuild the copy from its source"
        )
    if state.get("PowerState") != "running":
        raise StepFailed(
            f"{vm.key} is {state.get('PowerState')} and no run recorded deprovisioning its guest: "
            "start it and run the checks again"
        )
    if started.get("user"):
        # the admin user may be gone already (waagent ran): the facts cannot be trusted to name it
        # (read through Run Command they describe root), the tag written before waagent can
        user = started["user"]
        context = DeprovisionContext(
            action="waagent-deprovision+user",
            provisioned_user=user,
            regenerate_host_keys=started.get("hostkeys") == "y",
            delete_root_password=started.get("rootpw") == "y",
        )
    else:
        guest_facts = facts.require_guest()
        user = str((guest_facts.get("user") or {}).get("name") or "")
        context = DeprovisionContext.from_facts(guest_facts, user)
    plan = (
        f"run `sudo -n waagent -deprovision+user -force` (HISTSIZE=0) as {user}, prove the user, its "
        "home, the host keys, /var/lib/waagent and root's history are gone, and re-scan the disk for "
        "sensitive data in the same session"
    )
    if not actions.options.apply:
        return Outcome("planned", f"would {plan}")
    try:
        guest = actions.provider.guest(vm)
    except GuestError:
        if not started:
            raise
        guest = None
    if guest is None or guest.read_only:
        if started:  # no SSH login as the admin any more: waagent most likely ran; prove it
            return _resume_by_run_command(actions, user, context)
        raise StepFailed(
            f"{vm.key}: no SSH login as {user}: waagent must run in the admin's session, not through "
            "Run Command (read-only here)"
        )
    remembered = {
        "user": user,
        "hostkeys": "y" if context.regenerate_host_keys else "n",
        "rootpw": "y" if context.delete_root_password else "n",
    }
    actions.mark_started("guest", **remembered)
    try:
        return _deprovision_and_prove(actions, guest, user, context, scan)
    except _ProofFailed as exc:
        actions.mark_failed("guest", exc.why, **remembered)
        raise StepFailed(str(exc)) from None


class _ProofFailed(Exception):
    """waagent ran, and the guest it left is not proven clean: ``why`` is a FAILURES key."""

    def __init__(self, why: str, message: str) -> None:
        super().__init__(message)
        self.why = why


def _deprovision_and_prove(actions: VmActions, guest: Any, user: str, context: Any, scan: Any) -> Outcome:
    began = time.monotonic()
    result = scan(guest, DEPROVISION + "\n" + post_probe(user))
    post = parse_post(list(result.stats.get("run_first_lines") or []))
    if not post:
        why = "; ".join(result.errors) or "no output"
        raise StepFailed(f"the deprovision session reported nothing ({why}): the guest state is unknown")
    waagent_exit = post.get("waagent_exit", "unknown")
    evidence: dict[str, Any] = {
        "waagent_exit": waagent_exit,
        "post_state": post,
        "seconds": round(time.monotonic() - began, 1),
    }
    wrong = problems(
        post,
        regenerate_host_keys=context.regenerate_host_keys,
        delete_root_password=context.delete_root_password,
    )
    if wrong:
        raise _ProofFailed(
            "post-state", f"waagent exited {waagent_exit} but {'; '.join(wrong)} (checked on the disk)"
        )
    if not result.complete:
        raise StepFailed(
            "the sensitive-data re-scan after waagent did not complete ("
            + ("; ".join(result.errors) or "deadline")
            + "): the image is not proven clean"
        )
    coverage = result.coverage(actions.waivers, actions.vm.key)
    if not coverage.complete:
        raise StepFailed(
            f"the sensitive-data re-scan after waagent is incomplete, {coverage.reason()}: the image is "
            "not proven clean (fix or waive each path)"
        )
    persisting = actions_waived(result.findings, actions)
    evidence["scan"] = {
        "files": result.stats.get("files"),
        "findings": [f.summary() for f in result.findings],
    }
    if persisting:
        listed = "; ".join(f.summary() for f in persisting[:5])
        raise _ProofFailed(
            "findings",
            f"{len(persisting)} sensitive finding(s) persist after deprovisioning, the VM is NOT "
            f"deallocated: {listed}",
        )
    _prove_login_refused(actions, user)
    return Outcome(
        "done",
        f"waagent -deprovision+user ran (exit {waagent_exit}); user {user}, its home, host keys, "
        "/var/lib/waagent and root's history verified gone; re-scan: "
        + (f"{len(result.findings)} finding(s), all waived by fingerprint" if result.findings else "clean")
        + "; new logins refused",
        evidence,
    )


def actions_waived(findings: list[Any], actions: VmActions) -> list[Any]:
    """Findings not waived by fingerprint in the run's waiver file."""
    book = actions.waivers
    if book is None:
        return list(findings)
    return [
        f
        for f in findings
        if book.find(SCAN_CHECK_ID, actions.vm.key, str(f.rule_id), fingerprint=f.fingerprint) is None
    ]


def _prove_login_refused(actions: VmActions, user: str) -> None:
    """From outside: a new SSH login as the deleted user must fail. A connection that reaches
    another machine (another host key, another vmId) proves nothing either way: the step fails,
    and a re-run resumes by proving the post-state through Run Command."""
    actions.provider.drop_guest(actions.vm)
    try:
        guest = actions.provider.connect_guest(actions.vm, fallback=False)
    except GuestIdentityError as exc:
        raise StepFailed(
            f"the login probe after waagent reached another machine, so it proves nothing about "
            f"{actions.vm.key}: {exc}. Fix the guest address, then re-run (it resumes)"
        ) from None
    except GuestError as exc:
        progress.emit(f"{actions.vm.key}: new login as {user} refused, as it should be: {exc}")
        return
    guest.close()
    raise _ProofFailed("login", f"{user} can still log in to {actions.vm.key} after deprovisioning")


def _resume_by_run_command(actions: VmActions, user: str, context: Any) -> Outcome:
    """The admin can no longer log in: an earlier run was interrupted after waagent. Verify the
    post-state through Azure Run Command (root, read-only) instead of trusting anything."""
    from imageready.guest.runcommand import RunCommandGuest

    guest = RunCommandGuest(actions.provider.azure(actions.vm), actions.vm, "Linux")
    result = guest.run(post_probe(user), timeout=actions.options.guest_timeout)
    post = parse_post(result.text().splitlines())
    wrong = problems(
        post,
        regenerate_host_keys=context.regenerate_host_keys,
        delete_root_password=context.delete_root_password,
    )
    if wrong:
        raise StepFailed(
            f"{user} cannot log in, yet the guest is not deprovisioned: {'; '.join(wrong)} "
            "(checked through Run Command)"
        )
    return Outcome(
        "already done",
        f"{user} can no longer log in; Run Command confirms the user, host keys and waagent state "
        "are gone (an earlier run was interrupted after waagent; its re-scan of the deprovisioned "
        "disk is not on record, the pre-flight scan of its green verdict stands for it)",
        {"post_state": post},
    )
