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
from imageready.applicability import unmet_requirement
from imageready.facts import ITEM_SOURCES, FactsUnavailable, VmFacts
from imageready.facts.view import recording_reads
from imageready.gate import WaiverBook, WaiverError, load_waivers, parse_duration
from imageready.gatekeeper import GateKeeper, Sorter
from imageready.runstate import RUN, RunState, run_state
from imageready.target import TargetError, VmRef, parse_vms

# Allure's defaults must be set before allure-pytest configures itself, and the record's guard
# after the run's state is built (trylast), so those modules are loaded with this one; their hooks
# do nothing in a session imageready is not asked into (``wanted``).
pytest_plugins = ["imageready.allure_support", "imageready.recording"]
#: the fixtures checks and actions request, and the item sources their `each=` names: registered
#: only in a session imageready is asked into
SESSION_PLUGINS = ("imageready.fixtures", "imageready.action_fixtures", "imageready.facts.items")

MARKERS = (
    "check(id, title, severity, os, doc, each=None, requires=None): an imageready pre-flight check. "
    "id: stable check id (e.g. IR-WIN-001); severity: critical|high|medium|low; os: "
    "Linux|Windows|any; doc: the URL it enforces; each: parametrize per VM over an item source "
    "(role, disk, volume, ...); requires: capture|capture:image|capture:gallery, not applicable "
    "to a run without that --capture-as",
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
        "--accept-unsigned-verdicts",
        action="store_true",
        default=False,
        help="trust --verdict files that carry no signature (a pipeline without a verdict key; "
        "docs/gate.md). Without it, a verdict must be signed with $IMAGEREADY_VERDICT_KEY; a "
        "signature that does not match is refused either way.",
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
        "run for a VM's gate to open (default: checks). Setting it marks the rootdir as an "
        "imageready policy directory: imageready is active even without --vm",
        default="",
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


def wanted(config: pytest.Config) -> bool:
    """Whether this session is an imageready run. Installed in a virtualenv, the plugin stays
    dormant (as junitxml does without --junitxml) unless the run targets VMs (``--vm``) or the
    pytest configuration file names a policy directory (``imageready_checks_dir``, as this
    project's pytest.ini does): a ``checks/`` directory alone proves nothing, another project may
    have one. Dormant, it registers no marker, fixture, hook object or signal handler."""
    return bool(config.getoption("vm", None)) or bool(config.getini("imageready_checks_dir"))


def checks_dir_name(config: pytest.Config) -> str:
    """The policy directory's name, relative to the rootdir."""
    return str(config.getini("imageready_checks_dir") or "checks")


def pytest_configure(config: pytest.Config) -> None:
    if not wanted(config):
        return
    _refuse_blocked_parts(config)
    for line in MARKERS:
        config.addinivalue_line("markers", line)
    for name in SESSION_PLUGINS:
        config.pluginmanager.import_plugin(name)
    _guard_credentials(config)
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
        capture = parse_capture(config.getoption("capture_as"))
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
        except UnicodeDecodeError as exc:
            raise pytest.UsageError(f"--scan-rules {scan_rules}: not UTF-8 text (byte {exc.start})") from None
        SCAN_RULES["extra"] = scan_rules
    else:
        from imageready.facts.items import SCAN_RULES

        SCAN_RULES["extra"] = None
    for path in config.getoption("verdict"):
        if not path.exists():
            raise pytest.UsageError(f"--verdict {path}: no such file or directory")
    if vms:
        from imageready.signing import SigningKeyError, verdict_key

        try:
            verdict_key()
        except SigningKeyError as exc:
            raise pytest.UsageError(str(exc)) from None
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
    if vms:
        _check_azure_settings(config)
    report_dir = config.getoption("report_dir") or Path("reports") / "out"
    checks_dir = config.rootpath / checks_dir_name(config)
    if vms and not checks_dir.is_dir():
        raise pytest.UsageError(
            f"no {checks_dir.name}/ under pytest's rootdir {config.rootpath}: run from the imageready "
            "directory; write path options as --option=PATH (pytest takes a bare existing "
            "directory argument such as '--report-dir DIR' for its rootdir)"
        )

    from imageready.copyfirst import copy_first

    policy = (
        policy_paths(checks_dir, config)
        + ([scan_rules] if scan_rules is not None else [])
        + ([waiver_file] if waiver_file is not None else [])
    )
    digest = None
    if vms:
        digest = RunState.policy_digest_of(policy)
        _check_policy_pin(digest)
        config.stash[POLICY_DIGEST] = digest  # copy-first pins its nested checks run to it
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
        policy_paths=policy,
    )
    state._digest = digest  # hashed once, before anything connected (None: on first use)
    state.lease_ttl = lease_ttl
    state.capture = capture
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
    for plugin, name in ((GateKeeper(state), GATEKEEPER), (Sorter(state), SORTER)):
        if config.pluginmanager.register(plugin, name) is None:  # blocked (-p no:NAME)
            raise pytest.UsageError(f"-p no:{name}: imageready's gate cannot be switched off")


#: names of the plugin objects the gate registers (pytest's -p no:NAME would block them)
GATEKEEPER, SORTER = "imageready-gatekeeper", "imageready-sorter"


def _refuse_blocked_parts(config: pytest.Config) -> None:
    """``-p no:NAME`` on the command line or in PYTEST_ADDOPTS blocks a plugin by name, and
    pluggy then silently refuses to register it: the gate, its record or its redaction would be
    gone without a word. None of them may be switched off in an imageready run."""
    for name in (*pytest_plugins, *SESSION_PLUGINS, GATEKEEPER, SORTER):
        if config.pluginmanager.is_blocked(name):
            raise pytest.UsageError(
                f"-p no:{name}: a part of imageready (its gate, record, redaction or fixtures) "
                "cannot be switched off in a run imageready is asked into"
            )


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
    # the rootdir and the ini file decide where the policy directory is: chosen by the command
    # line, a directory of one's own (one permissive check) would stand in for the policy. With
    # the policy pinned (IMAGEREADY_POLICY_DIGEST, as copy-first's nested checks run has it) they
    # cannot: the pin is compared before anything connects
    if os.environ.get(POLICY_PIN_ENV, "").strip():
        return
    for flag, value in (
        ("-c/--config-file", config.getoption("inifilename", None)),
        ("--rootdir", config.getoption("rootdir", None)),
    ):
        if value:
            raise pytest.UsageError(
                f"{flag} cannot be combined with --vm: run pytest from the policy directory, whose "
                "pytest.ini names the policy (the policy digest covers it)"
            )


#: the policy a pipeline approved (a verdict's policy_digest)
POLICY_PIN_ENV = "IMAGEREADY_POLICY_DIGEST"
#: this run's policy digest, known before anything connects
POLICY_DIGEST = pytest.StashKey[str]()


def _check_policy_pin(digest: str) -> None:
    """``IMAGEREADY_POLICY_DIGEST`` (a pipeline variable): the policy this pipeline approved. A
    run whose policy differs (another directory, an edited check, other harness code) stops
    before anything connects."""
    pinned = os.environ.get(POLICY_PIN_ENV, "").strip()
    if pinned and pinned != digest:
        raise pytest.UsageError(
            f"the policy is {digest}, not the {pinned} this pipeline pins "
            "(IMAGEREADY_POLICY_DIGEST): a changed check, another policy directory or harness version"
        )


def _guard_credentials(config: pytest.Config) -> None:
    """No credential in a URL: Azure Resource Manager and Entra ID take tokens, never a
    user:password in the endpoint, so one there is a mistake that would otherwise print the
    password wherever the endpoint is named. Any URL credential in an option or the environment
    (a proxy's, say) is masked in every sink from now on."""
    from imageready.redact import redact, register_credentials, url_credentials

    values = [str(v) for v in vars(config.option).values() if isinstance(v, str | Path)]
    values += [str(item) for v in vars(config.option).values() if isinstance(v, list) for item in v]
    register_credentials(values)
    register_credentials(os.environ.values())
    endpoints = [
        ("--arm-endpoint", config.getoption("arm_endpoint")),
        ("IMAGEREADY_ARM_ENDPOINT", os.environ.get("IMAGEREADY_ARM_ENDPOINT")),
        ("AZURE_AUTHORITY_HOST", os.environ.get("AZURE_AUTHORITY_HOST")),
    ]
    for source, value in endpoints if config.getoption("vm") else []:
        if value and url_credentials(str(value)):
            raise pytest.UsageError(
                f"{source} {redact(str(value))}: a URL with user:password@ is refused (Azure "
                "authenticates with tokens; credentials come from the environment, an agent or a "
                "key file, never from an endpoint)"
            )


def _check_azure_settings(config: pytest.Config) -> None:
    """The cloud, its endpoints and the CA bundle, found unusable before anything connects (a
    usage error) rather than by every check of every VM."""
    from imageready.azure import AzureError, resolve_ca_bundle, resolve_cloud

    try:
        resolve_cloud(config.getoption("cloud"), config.getoption("arm_endpoint"))
        resolve_ca_bundle(config.getoption("ca_bundle"))
    except AzureError as exc:
        raise pytest.UsageError(str(exc)) from None


PREVIOUS_SIGTERM = pytest.StashKey[Any]()


def _sigterm(signum: int, frame: Any) -> None:
    raise KeyboardInterrupt("SIGTERM")


def _handle_sigterm(config: pytest.Config) -> None:
    """SIGTERM (a CI job cancelled) unwinds like Ctrl-C: the lease is released, the verdict and
    the audit are written, and a re-run resumes where this one stopped."""
    if threading.current_thread() is threading.main_thread():
        config.stash[PREVIOUS_SIGTERM] = signal.signal(signal.SIGTERM, _sigterm)


def policy_paths(checks_dir: Path, config: pytest.Config | None = None) -> list[Path]:
    """What the policy digest covers: the checks directory, the harness's own code and packaged
    rule data (the whole ``imageready`` package: the same checks run by other code may decide
    otherwise), and the pytest configuration that decides how the policy is collected (the ini
    file and the root conftest.py). The run adds its --scan-rules and --waivers files."""
    paths = [checks_dir, Path(__file__).parent]
    if config is not None:
        if config.inipath is not None:
            paths.append(Path(config.inipath))
        paths.append(config.rootpath / "conftest.py")
    return paths


@pytest.hookimpl(optionalhook=True)
def pytest_configure_node(node: Any) -> None:
    """xdist controller: gather facts once and ship them, so every worker collects the same."""
    if RUN not in node.config.stash:
        return  # dormant
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
    if (check is None and action is None) or RUN not in metafunc.config.stash:
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
    try:
        # a check that needs what this run does not do (--capture-as) is one case per VM, not
        # applicable (imageready decides it at setup), whatever its item source would say
        unmet = unmet_requirement(check.kwargs.get("requires") if check is not None else None, state.capture)
    except ValueError as exc:
        # an unknown requirement: its source is not asked; the gatekeeper refuses the marker
        unmet = str(exc)
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
        if unmet is not None:
            values.append((vm, NOT_APPLICABLE_PARAM))
            ids.append(vm.key)
            continue
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
