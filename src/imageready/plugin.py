"""imageready's pytest glue: options, VM parametrization, the gate, report hooks.

Checks (``@pytest.mark.check``) and actions (``@pytest.mark.action``) are parametrized by VM.
Checks run first; a VM's actions run only when its gate is open (see ``imageready.gate``).
"""

from __future__ import annotations

import json
import os
import signal
import threading
from pathlib import Path
from typing import Any

import pytest

from imageready import hookspecs
from imageready.facts import ITEM_SOURCES, FactsUnavailable, VmFacts
from imageready.facts.view import recording_reads
from imageready.gate import WaiverBook, WaiverError, load_waivers, parse_duration
from imageready.gatekeeper import RUN, GateKeeper, Sorter, run_state
from imageready.runstate import RunState
from imageready.target import TargetError, VmRef, parse_vms

# the fixtures checks and actions request, and the item sources their `each=` names
pytest_plugins = [
    "imageready.fixtures",
    "imageready.action_fixtures",
    "imageready.facts.items",
    "imageready.allure_support",
]

MARKERS = (
    "check(id, title, severity, os, doc, each=None): an imageready pre-flight check. id: stable "
    "check id (e.g. IR-WIN-001); severity: critical|high|medium|low; os: Linux|Windows|any; doc: "
    "the URL it enforces; each: parametrize per VM over an item source (role, disk, volume, ...)",
    "action(step): an imageready action step; runs only behind a green gate, changes the VM "
    "only with --apply",
)


# --- options -----------------------------------------------------------------------------------


def pytest_addhooks(pluginmanager: pytest.PytestPluginManager) -> None:
    pluginmanager.add_hookspecs(hookspecs)


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("imageready", "imageready: generalize Azure VMs safely")
    group.addoption(
        "--vm",
        action="append",
        default=[],
        metavar="RG/NAME",
        help="VM to check and act on: RG/NAME or a full virtualMachines resource id. Repeatable.",
    )
    group.addoption(
        "--subscription",
        metavar="ID",
        help="subscription of RG/NAME targets (default: $AZURE_SUBSCRIPTION_ID).",
    )
    group.addoption(
        "--apply",
        action="store_true",
        default=False,
        help="let actions change the VM. Without it, actions only report their plan.",
    )
    group.addoption(
        "--copy-first",
        action="store_true",
        default=False,
        help="for a VM whose only blocker is that it is an original (IR-SRC-001): check it, then "
        "copy it (snapshots, disks, a VM <name><suffix> tagged imageready-copy-of) and check and "
        "act on the copy; the original stays untouched. Without --apply, only the plan.",
    )
    group.addoption(
        "--copy-suffix",
        default="-imgcopy",
        metavar="SUFFIX",
        help="name of a --copy-first copy: the original's name plus this (default -imgcopy).",
    )
    group.addoption(
        "--verdict",
        action="append",
        default=[],
        metavar="FILE",
        type=Path,
        help="verdict file (or directory of them) from an earlier checks stage that may open "
        "the gate for actions. Repeatable.",
    )
    group.addoption(
        "--verdict-max-age",
        default="24h",
        metavar="AGE",
        help="refuse --verdict files older than this (e.g. 24h, 90m; default 24h).",
    )
    group.addoption(
        "--waivers",
        metavar="FILE",
        type=Path,
        help="YAML or TOML file of waivers (check, parameter, reason, approver, expires).",
    )
    group.addoption(
        "--change-ticket",
        metavar="ID",
        help="change ticket recorded in the verdict, the audit and the Allure environment.",
    )
    group.addoption(
        "--report-dir",
        metavar="DIR",
        type=Path,
        default=None,
        help="where verdicts, the audit report and Allure results go (default: reports/out).",
    )
    group.addoption(
        "--cloud",
        choices=("public", "usgov", "china", "custom"),
        default=None,
        help="Azure cloud (default: $IMAGEREADY_CLOUD, else public; custom needs --arm-endpoint).",
    )
    group.addoption(
        "--arm-endpoint",
        metavar="URL",
        help="Resource Manager endpoint of a custom cloud (default: $IMAGEREADY_ARM_ENDPOINT).",
    )
    group.addoption(
        "--ca-bundle",
        metavar="PEM",
        help="CA bundle that signs ARM's and the guests' TLS certificates (default: "
        "$IMAGEREADY_CA_BUNDLE, else the system store).",
    )
    group.addoption(
        "--lro-deadline",
        type=float,
        default=1800.0,
        metavar="SECONDS",
        help="deadline for each long-running Azure operation (default 1800).",
    )
    group.addoption(
        "--max-parallel",
        type=int,
        default=16,
        metavar="N",
        help="VMs whose facts are gathered at once (default 16: within Azure Resource Manager's "
        "read limits; requests are also paced by the x-ms-ratelimit-remaining headers).",
    )
    group.addoption(
        "--transport",
        choices=("auto", "ssh", "winrm", "run-command"),
        default="auto",
        help="how to reach the guest: auto (ssh for Linux, WinRM for Windows, Azure Run Command "
        "for read-only facts when there is no network path), or one of them.",
    )
    group.addoption(
        "--guest-address",
        action="append",
        default=[],
        metavar="RG/NAME=HOST:PORT",
        help="guest address instead of the NIC's private IP (also $IMAGEREADY_GUEST_ADDRESSES, "
        "a JSON object or file). Repeatable.",
    )
    group.addoption(
        "--guest-timeout",
        type=float,
        default=300.0,
        metavar="SECONDS",
        help="deadline for each script run on a guest (default 300).",
    )
    group.addoption(
        "--ssh-strict-host-keys",
        action="store_true",
        default=False,
        help="refuse SSH host keys not in $IMAGEREADY_KNOWN_HOSTS (default: record them in the audit).",
    )
    group.addoption(
        "--winrm-auth",
        choices=("ntlm", "kerberos", "basic", "credssp"),
        default="ntlm",
        help="WinRM authentication (default ntlm; kerberos: see docs/guests.md).",
    )
    group.addoption(
        # not --capture: pytest owns that option (output capturing)
        "--capture-as",
        metavar="image:NAME|gallery:G/D/V",
        help="after generalizing, capture a managed image (image:NAME) or an Azure Compute Gallery "
        "image version (gallery:GALLERY/DEFINITION/VERSION).",
    )
    group.addoption(
        "--lease-ttl",
        default="30m",
        metavar="AGE",
        help="how long the VM's lease lasts without renewal (default 30m; renewed at every step).",
    )
    group.addoption(
        "--break-lease",
        action="store_true",
        default=False,
        help="take a live lease held by another run (only once you know that run is dead).",
    )
    group.addoption(
        "--sysprep-args",
        default="/generalize /oobe /shutdown",
        metavar="ARGS",
        help="sysprep.exe arguments (default: /generalize /oobe /shutdown); /generalize and /oobe "
        "are required, and exactly one of /shutdown and /quit; /mode:vm only if every VM made from "
        "the image has the same hardware profile; /unattend is refused (Azure does not support "
        "custom answer files); /quiet is always added.",
    )
    group.addoption(
        "--sysprep-deadline",
        type=float,
        default=3600.0,
        metavar="SECONDS",
        help="how long sysprep may take before the step fails (default 3600).",
    )
    group.addoption(
        "--scan-rules",
        type=Path,
        metavar="FILE",
        help="extra sensitive-data rules (YAML, docs/scan-rules.md) on top of the built-in ones.",
    )
    group.addoption(
        "--scan-deadline",
        type=float,
        default=900.0,
        metavar="SECONDS",
        help="deadline of one sensitive-data scan of a guest (default 900).",
    )
    parser.addini(
        "imageready_checks_dir",
        "directory (relative to rootdir) holding the policy: every check module in it must "
        "run for a VM's gate to open",
        default="checks",
    )


@pytest.hookimpl(tryfirst=True)
def pytest_cmdline_main(config: pytest.Config) -> None:
    """Keep each VM's checks and actions on one xdist worker, in order."""
    workerinput = getattr(config, "workerinput", None)
    if workerinput is not None:
        # a worker re-parses the command line and so does not know the controller's choice
        if workerinput.get("imageready_loadgroup"):
            config.option.loadgroup = True
        return
    if not config.getoption("vm") or not config.pluginmanager.hasplugin("xdist"):
        return
    dist = config.getoption("dist", "no")
    if config.getoption("numprocesses", None) and config.getoption("maxworkerrestart", None) is None:
        # pytest-xdist 3.8 can hang when a worker is restarted under loadgroup (xdist #1323,
        # #1327): a crashed worker ends the run instead
        config.option.maxworkerrestart = 0
    if config.getoption("numprocesses", None) and dist in ("no", "load"):
        config.option.dist = "loadgroup"
    elif dist not in ("no", "load", "loadgroup"):
        raise pytest.UsageError(
            f"--dist {dist}: imageready runs each VM's checks and actions on one worker; "
            "use -n N alone (imageready selects --dist loadgroup)"
        )


def pytest_configure(config: pytest.Config) -> None:
    for line in MARKERS:
        config.addinivalue_line("markers", line)
    try:
        vms = parse_vms(config.getoption("vm"), config.getoption("subscription"))
    except TargetError as exc:
        raise pytest.UsageError(str(exc)) from None
    if vms:
        _refuse_policy_narrowing(config)
    try:
        max_age = parse_duration(config.getoption("verdict_max_age"))
    except ValueError as exc:
        raise pytest.UsageError(f"--verdict-max-age {exc}") from None
    try:
        lease_ttl = parse_duration(config.getoption("lease_ttl"))
    except ValueError as exc:
        raise pytest.UsageError(f"--lease-ttl {exc}") from None
    from imageready.steps.capture import CaptureSpecError, parse_capture

    try:
        parse_capture(config.getoption("capture_as"))
    except CaptureSpecError as exc:
        raise pytest.UsageError(str(exc)) from None
    from imageready.steps import StepFailed
    from imageready.steps.windows import sysprep_arguments

    try:
        sysprep_arguments(tuple(str(config.getoption("sysprep_args")).split()))
    except StepFailed as exc:
        raise pytest.UsageError(str(exc)) from None
    scan_rules = config.getoption("scan_rules")
    if scan_rules is not None:
        from imageready.facts.items import SCAN_RULES
        from imageready.scan import ScanRulesError, load_rules

        try:
            load_rules(scan_rules)
        except ScanRulesError as exc:
            raise pytest.UsageError(str(exc)) from None
        SCAN_RULES["extra"] = scan_rules
    else:
        from imageready.facts.items import SCAN_RULES

        SCAN_RULES["extra"] = None
    for path in config.getoption("verdict"):
        if not path.exists():
            raise pytest.UsageError(f"--verdict {path}: no such file or directory")
    book = WaiverBook()
    waiver_file = config.getoption("waivers")
    if waiver_file is not None:
        try:
            book.waivers = load_waivers(waiver_file)
        except WaiverError as exc:
            raise pytest.UsageError(str(exc)) from None
    from imageready.facts.gather import GuestConfigError, parse_guest_addresses

    try:
        parse_guest_addresses(
            list(config.getoption("guest_address")), os.environ.get("IMAGEREADY_GUEST_ADDRESSES")
        )
    except GuestConfigError as exc:
        raise pytest.UsageError(str(exc)) from None
    if int(config.getoption("max_parallel")) < 1:
        raise pytest.UsageError(f"--max-parallel {config.getoption('max_parallel')}: expected 1 or more")
    if config.getoption("cloud") == "custom" and not (
        config.getoption("arm_endpoint") or os.environ.get("IMAGEREADY_ARM_ENDPOINT")
    ):
        raise pytest.UsageError("--cloud custom needs --arm-endpoint URL (or $IMAGEREADY_ARM_ENDPOINT)")
    report_dir = config.getoption("report_dir") or Path("reports") / "out"
    checks_dir = config.rootpath / config.getini("imageready_checks_dir")
    if vms and not checks_dir.is_dir():
        raise pytest.UsageError(
            f"no {checks_dir.name}/ under pytest's rootdir {config.rootpath}: run from the imageready "
            "directory; write path options as --option=PATH (pytest takes a bare existing "
            "directory argument such as '--report-dir DIR' for its rootdir)"
        )
    from imageready.copyfirst import copy_first

    # last of the configuration: it may run checks and make copies, once the options are sound
    vms = copy_first(config, vms)
    state = RunState(
        config=config,
        vms=vms,
        apply=bool(config.getoption("apply")),
        verdict_paths=list(config.getoption("verdict")),
        verdict_max_age=max_age,
        waivers=book,
        change_ticket=config.getoption("change_ticket"),
        report_dir=report_dir.absolute(),
        checks_dir=checks_dir,
        policy_paths=policy_paths(checks_dir, config) + ([scan_rules] if scan_rules is not None else []),
    )
    state.lease_ttl = lease_ttl
    workerinput = getattr(config, "workerinput", None)
    if workerinput is not None and "imageready_facts" in workerinput:
        for key, data in json.loads(workerinput["imageready_facts"]).items():
            state.facts_cache[key] = VmFacts.from_json(data)
        state.run_id = workerinput.get("imageready_run_id", state.run_id)
    for waiver in book.waivers:
        if waiver.expired(book.now):
            config.issue_config_time_warning(
                pytest.PytestWarning(
                    f"EXPIRED waiver ignored: {waiver.check} [{waiver.vm} {waiver.parameter}] by "
                    f"{waiver.approver}, expired {waiver.expires:%Y-%m-%d}: {waiver.reason}"
                ),
                stacklevel=2,
            )
    config.stash[RUN] = state
    _handle_sigterm(config)
    config.pluginmanager.register(GateKeeper(state), "imageready-gatekeeper")
    config.pluginmanager.register(Sorter(state), "imageready-sorter")


def _refuse_policy_narrowing(config: pytest.Config) -> None:
    """The policy is what the project's own configuration collects: a command-line override of
    an option that decides what is collected would shrink what the gate expects."""
    from imageready.selection import refused_overrides

    refused = refused_overrides(config.getoption("override_ini", None), "imageready_checks_dir")
    if refused:
        raise pytest.UsageError(
            f"-o {refused[0]}: a run with --vm may not override what the policy collects "
            f"({refused[0]} comes from the project's pytest.ini, which the policy digest covers)"
        )
    if config.getoption("pyargs", False):
        raise pytest.UsageError("--pyargs cannot be combined with --vm: name checks and actions by path")


PREVIOUS_SIGTERM = pytest.StashKey[Any]()


def _sigterm(signum: int, frame: Any) -> None:
    raise KeyboardInterrupt("SIGTERM")


def _handle_sigterm(config: pytest.Config) -> None:
    """SIGTERM (a CI job cancelled) unwinds like Ctrl-C: the lease is released, the verdict and
    the audit are written, and a re-run resumes where this one stopped."""
    if threading.current_thread() is threading.main_thread():
        config.stash[PREVIOUS_SIGTERM] = signal.signal(signal.SIGTERM, _sigterm)


def policy_paths(checks_dir: Path, config: pytest.Config | None = None) -> list[Path]:
    """What the policy digest covers: the checks directory, the packaged rule data, and the
    pytest configuration that decides how the policy is collected (the ini file and the root
    conftest.py)."""
    paths = [checks_dir, Path(__file__).parent / "policy"]
    if config is not None:
        if config.inipath is not None:
            paths.append(Path(config.inipath))
        paths.append(config.rootpath / "conftest.py")
    return paths


@pytest.hookimpl(optionalhook=True)
def pytest_configure_node(node: Any) -> None:
    """xdist controller: gather facts once and ship them, so every worker collects the same."""
    state = run_state(node.config)
    state.prefetch_facts()
    facts = {vm.key: state.facts(vm).to_json() for vm in state.vms}
    node.workerinput["imageready_facts"] = json.dumps(facts)
    node.workerinput["imageready_run_id"] = state.run_id
    node.workerinput["imageready_loadgroup"] = node.config.getoption("dist") == "loadgroup"


def pytest_unconfigure(config: pytest.Config) -> None:
    previous = config.stash.get(PREVIOUS_SIGTERM, None)
    if previous is not None and threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGTERM, previous)
    state = config.stash.get(RUN, None)
    if state is not None and state._provider is not None:
        state._provider.close()


# --- parametrization ---------------------------------------------------------------------------


class Sentinel:
    """A parameter value standing for "no item": readable in test ids and reports."""

    def __init__(self, text: str, error: FactsUnavailable | None = None) -> None:
        self.text = text
        self.error = error

    def __repr__(self) -> str:
        return self.text


NOTHING_TO_EXAMINE = Sentinel("nothing-to-examine")
NOT_APPLICABLE_PARAM = Sentinel("not-applicable")


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    """Parametrize checks and actions by VM and, for ``each=...`` checks, by what they examine."""
    check = metafunc.definition.get_closest_marker("check")
    action = metafunc.definition.get_closest_marker("action")
    if check is None and action is None:
        return
    if "vm" not in metafunc.fixturenames:
        raise pytest.UsageError(
            f"{metafunc.definition.nodeid}: imageready checks and actions take a `vm` argument"
        )
    state = run_state(metafunc.config)
    if not state.vms:
        state.needs_vm = True
    state.prefetch_facts()  # every VM's at once, before the first case reads one VM's
    each = check.kwargs.get("each") if check is not None else None
    if each is None:
        metafunc.parametrize("vm", state.vms, ids=[vm.key for vm in state.vms])
        return
    source = ITEM_SOURCES.get(each)
    if source is None:
        known = ", ".join(sorted(ITEM_SOURCES)) or "none registered"
        raise pytest.UsageError(f"{metafunc.definition.nodeid}: unknown each={each!r} ({known})")
    check_os = check.kwargs.get("os", "any") if check is not None else "any"
    values: list[tuple[VmRef, Any]] = []
    ids: list[str] = []
    for vm in state.vms:
        facts = state.facts(vm)
        if check_os != "any" and facts.os_type is not None and facts.os_type != check_os:
            values.append((vm, NOT_APPLICABLE_PARAM))
            ids.append(vm.key)
            continue
        try:
            with recording_reads() as reads:
                items = source(facts)
        except FactsUnavailable as exc:
            values.append((vm, Sentinel("facts-unavailable", exc)))
            ids.append(f"{vm.key}-facts-unavailable")
            continue
        except (AttributeError, KeyError, TypeError, ValueError, IndexError) as exc:
            # facts of an unexpected shape: this VM's cases error, the run goes on for the others
            error = FactsUnavailable(
                f"{vm.key}: the facts {each!r} is read from are malformed ({type(exc).__name__}: {exc})",
                "guest facts",
            )
            values.append((vm, Sentinel("facts-unavailable", error)))
            ids.append(f"{vm.key}-facts-unavailable")
            continue
        # what the source read decides which cases exist: every case of the check depends on it
        state.param_reads[(metafunc.definition.nodeid, vm.key)] = reads
        if not items:
            values.append((vm, NOTHING_TO_EXAMINE))
            ids.append(f"{vm.key}-none")
        for param_id, value in items:
            values.append((vm, value))
            ids.append(f"{vm.key}-{param_id}")
    metafunc.parametrize(["vm", each], values, ids=ids)
