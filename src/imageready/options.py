"""imageready's options: declared once (``add_options``), read once at configure time into one
frozen ``RunOptions`` (``build``), kept in ``config.stash[OPTIONS]`` and passed to what needs it
(the facts provider, the copier, the actions) instead of ``pytest.Config``.

Bad input is a ``pytest.UsageError`` here, one line, before anything connects (exit 4). This is
the one module that reads pytest's option namespace: ``build`` for the run's options, and two
readers that must run before it exists: ``asked`` (whether imageready is asked into the session
at all: dormant otherwise) and ``choose_distribution`` (pytest_cmdline_main, before configure,
picks xdist's distribution mode).
"""

from __future__ import annotations

import datetime as dt
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, cast

import pytest

if TYPE_CHECKING:
    from imageready.azure import CloudSettings
    from imageready.gate import Waiver
    from imageready.scan import Rule
    from imageready.target import VmRef

#: the policy a pipeline approved (a verdict's policy_digest)
POLICY_PIN_ENV = "IMAGEREADY_POLICY_DIGEST"
#: a --copy-first suffix: what a VM name may carry
COPY_SUFFIX = re.compile(r"^[A-Za-z0-9_.\-]{1,20}$")
DEFAULT_REPORT_DIR = Path("reports") / "out"
#: --winrm-auth (its choices)
WinrmAuth = Literal["ntlm", "kerberos", "basic", "credssp"]


@dataclass(frozen=True)
class RunOptions:
    """The command line of one imageready run, parsed and validated (configure time)."""

    #: --vm, parsed: de-duplicated, sorted (copy-first may replace some by their copies: the
    #: run's targets are ``RunState.vms``)
    vms: tuple[VmRef, ...]
    apply: bool
    copy_first: bool
    copy_suffix: str
    verdict_paths: tuple[Path, ...]
    verdict_max_age: dt.timedelta
    accept_unsigned_verdicts: bool
    #: --waivers, the file and its waivers
    waiver_file: Path | None
    waivers: tuple[Waiver, ...]
    change_ticket: str | None
    #: absolute
    report_dir: Path
    #: the policy directory (the ini's imageready_checks_dir under the rootdir)
    checks_dir: Path
    #: as given (the nested checks run of --copy-first gets them as they are)
    cloud: str | None
    arm_endpoint: str | None
    ca_bundle: str | None
    #: the cloud and the CA bundle resolved from the options and the environment; None in a run
    #: without --vm (nothing connects)
    cloud_settings: CloudSettings | None
    ca_bundle_path: str | None
    lro_deadline: float
    max_parallel: int
    transport: str
    #: --guest-address values as given, and parsed (lower-cased rg/name -> host:port);
    #: $IMAGEREADY_GUEST_ADDRESSES is read by each facts provider (a copy adds to it)
    guest_address_values: tuple[str, ...]
    guest_addresses: Mapping[str, str]
    guest_timeout: float
    ssh_strict_host_keys: bool
    winrm_auth: WinrmAuth
    #: --capture-as as given, and parsed: ("image", NAME) | ("gallery", G, D, V) | None
    capture_as: str | None
    capture: tuple[str, ...] | None
    lease_ttl: dt.timedelta
    break_lease: bool
    #: --sysprep-args, split and checked (the step adds /quiet)
    sysprep_args: tuple[str, ...]
    sysprep_deadline: float
    #: --scan-rules, the file; every sensitive-data rule of the run (built-in and the file's,
    #: all OSes: ``scan.rules_for`` picks a VM's), and the built-in ones the file switched off
    scan_rules_file: Path | None
    scan_rules: tuple[Rule, ...]
    scan_rules_disabled: tuple[dict[str, str], ...]
    scan_deadline: float
    #: xdist runs each VM on one worker through --dist loadgroup (``choose_distribution``)
    loadgroup: bool
    #: pytest's python_files: a module of the policy directory matching these (or pytest's
    #: defaults) is policy
    python_files: tuple[str, ...] = field(default=())


OPTIONS = pytest.StashKey[RunOptions]()


def options_of(config: pytest.Config) -> RunOptions:
    """The run's options (built at configure time in a session imageready is asked into)."""
    return config.stash[OPTIONS]


def asked(config: pytest.Config) -> bool:
    """Whether this session is an imageready run. Installed in a virtualenv, the plugin stays
    dormant (as junitxml does without --junitxml) unless the run targets VMs (``--vm``) or the
    pytest configuration file names a policy directory (``imageready_checks_dir``, as this
    project's pytest.ini does): a ``checks/`` directory alone proves nothing, another project may
    have one. Dormant, it registers no marker, fixture, hook object or signal handler."""
    return bool(config.getoption("vm", None)) or bool(config.getini("imageready_checks_dir"))


def checks_dir_name(config: pytest.Config) -> str:
    """The policy directory's name, relative to the rootdir."""
    return str(config.getini("imageready_checks_dir") or "checks")


def choose_distribution(config: pytest.Config) -> None:
    """Keep each VM's checks and actions on one xdist worker, in order (pytest_cmdline_main,
    before configure: xdist reads the mode when it configures itself)."""
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


def build(config: pytest.Config) -> RunOptions:
    """Read and check every imageready option once; a bad value is a ``pytest.UsageError``
    (one line). Credentials in any option value are registered for masking first, so no error
    message prints one."""
    get = config.getoption
    vm_values = [str(v) for v in get("vm")]
    arm_endpoint = get("arm_endpoint")
    _guard_credentials(config, arm_endpoint, bool(vm_values))
    from imageready.target import TargetError, parse_vms

    try:
        vms = tuple(parse_vms(vm_values, get("subscription")))
    except TargetError as exc:
        raise pytest.UsageError(str(exc)) from None
    if vms:
        _refuse_policy_narrowing(
            override_ini=get("override_ini", None),
            pyargs=bool(get("pyargs", False)),
            inifilename=get("inifilename", None),
            rootdir=get("rootdir", None),
        )
    verdict_max_age = _duration("--verdict-max-age", get("verdict_max_age"))
    lease_ttl = _duration("--lease-ttl", get("lease_ttl"))
    capture_as = get("capture_as")
    capture = _capture(capture_as)
    sysprep_args = _sysprep_args(str(get("sysprep_args")))
    scan_rules_file = get("scan_rules")
    scan_rules, disabled = _scan_rules(scan_rules_file)
    verdict_paths = tuple(get("verdict"))
    for path in verdict_paths:
        if not path.exists():
            raise pytest.UsageError(f"--verdict {path}: no such file or directory")
    if vms:
        from imageready.signing import SigningKeyError, verdict_key

        try:
            verdict_key()
        except SigningKeyError as exc:
            raise pytest.UsageError(str(exc)) from None
    waiver_file = get("waivers")
    waivers = _waivers(waiver_file)
    guest_address_values = tuple(str(v) for v in get("guest_address"))
    guest_addresses = _guest_addresses(guest_address_values)
    max_parallel = int(get("max_parallel"))
    if max_parallel < 1:
        raise pytest.UsageError(f"--max-parallel {max_parallel}: expected 1 or more")
    cloud, ca_bundle = get("cloud"), get("ca_bundle")
    if cloud == "custom" and not (arm_endpoint or os.environ.get("IMAGEREADY_ARM_ENDPOINT")):
        raise pytest.UsageError("--cloud custom needs --arm-endpoint URL (or $IMAGEREADY_ARM_ENDPOINT)")
    cloud_settings, ca_bundle_path = _azure_settings(cloud, arm_endpoint, ca_bundle) if vms else (None, None)
    report_dir = Path(get("report_dir") or DEFAULT_REPORT_DIR).absolute()
    checks_dir = config.rootpath / checks_dir_name(config)
    if vms and not checks_dir.is_dir():
        raise pytest.UsageError(
            f"no {checks_dir.name}/ under pytest's rootdir {config.rootpath}: run from the imageready "
            "directory; write path options as --option=PATH (pytest takes a bare existing "
            "directory argument such as '--report-dir DIR' for its rootdir)"
        )
    copy_first = bool(get("copy_first"))
    copy_suffix = str(get("copy_suffix"))
    if copy_first and not COPY_SUFFIX.match(copy_suffix):
        raise pytest.UsageError(f"--copy-suffix {copy_suffix!r}: 1-20 letters, digits, '_', '-' or '.'")
    return RunOptions(
        vms=vms,
        apply=bool(get("apply")),
        copy_first=copy_first,
        copy_suffix=copy_suffix,
        verdict_paths=verdict_paths,
        verdict_max_age=verdict_max_age,
        accept_unsigned_verdicts=bool(get("accept_unsigned_verdicts", False)),
        waiver_file=waiver_file,
        waivers=waivers,
        change_ticket=get("change_ticket"),
        report_dir=report_dir,
        checks_dir=checks_dir,
        cloud=cloud,
        arm_endpoint=arm_endpoint,
        ca_bundle=ca_bundle,
        cloud_settings=cloud_settings,
        ca_bundle_path=ca_bundle_path,
        lro_deadline=float(get("lro_deadline")),
        max_parallel=max_parallel,
        transport=str(get("transport")),
        guest_address_values=guest_address_values,
        guest_addresses=guest_addresses,
        guest_timeout=float(get("guest_timeout")),
        ssh_strict_host_keys=bool(get("ssh_strict_host_keys")),
        winrm_auth=cast("WinrmAuth", str(get("winrm_auth"))),
        capture_as=capture_as,
        capture=capture,
        lease_ttl=lease_ttl,
        break_lease=bool(get("break_lease")),
        sysprep_args=sysprep_args,
        sysprep_deadline=float(get("sysprep_deadline")),
        scan_rules_file=scan_rules_file,
        scan_rules=scan_rules,
        scan_rules_disabled=disabled,
        scan_deadline=float(get("scan_deadline")),
        loadgroup=get("dist", "no") == "loadgroup",
        python_files=tuple(config.getini("python_files") or ()),
    )


# --- one checker per option ----------------------------------------------------------------------


def _guard_credentials(config: pytest.Config, arm_endpoint: Any, targets_vms: bool) -> None:
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
        ("--arm-endpoint", arm_endpoint),
        ("IMAGEREADY_ARM_ENDPOINT", os.environ.get("IMAGEREADY_ARM_ENDPOINT")),
        ("AZURE_AUTHORITY_HOST", os.environ.get("AZURE_AUTHORITY_HOST")),
    ]
    for source, value in endpoints if targets_vms else []:
        if value and url_credentials(str(value)):
            raise pytest.UsageError(
                f"{source} {redact(str(value))}: a URL with user:password@ is refused (Azure "
                "authenticates with tokens; credentials come from the environment, an agent or a "
                "key file, never from an endpoint)"
            )


def _refuse_policy_narrowing(
    *, override_ini: list[str] | None, pyargs: bool, inifilename: str | None, rootdir: str | None
) -> None:
    """The policy is what the project's own configuration collects: a command-line override of
    an option that decides what is collected would shrink what the gate expects."""
    from imageready.selection import refused_overrides

    refused = refused_overrides(override_ini, "imageready_checks_dir")
    if refused:
        raise pytest.UsageError(
            f"-o {refused[0]}: a run with --vm may not override what the policy collects "
            f"({refused[0]} comes from the project's pytest.ini, which the policy digest covers)"
        )
    if pyargs:
        raise pytest.UsageError("--pyargs cannot be combined with --vm: name checks and actions by path")
    # the rootdir and the ini file decide where the policy directory is: chosen by the command
    # line, a directory of one's own (one permissive check) would stand in for the policy. With
    # the policy pinned (IMAGEREADY_POLICY_DIGEST, as copy-first's nested checks run has it) they
    # cannot: the pin is compared before anything connects
    if os.environ.get(POLICY_PIN_ENV, "").strip():
        return
    for flag, value in (("-c/--config-file", inifilename), ("--rootdir", rootdir)):
        if value:
            raise pytest.UsageError(
                f"{flag} cannot be combined with --vm: run pytest from the policy directory, whose "
                "pytest.ini names the policy (the policy digest covers it)"
            )


def _duration(flag: str, value: Any) -> dt.timedelta:
    from imageready.gate import parse_duration

    try:
        return parse_duration(value)
    except ValueError as exc:
        raise pytest.UsageError(f"{flag} {exc}") from None


def _capture(value: str | None) -> tuple[str, ...] | None:
    from imageready.steps.capture import CaptureSpecError, parse_capture

    try:
        return parse_capture(value)
    except CaptureSpecError as exc:
        raise pytest.UsageError(str(exc)) from None


def _sysprep_args(value: str) -> tuple[str, ...]:
    from imageready.steps import StepFailed
    from imageready.steps.sysprep_run import sysprep_arguments

    configured = tuple(value.split())
    try:
        sysprep_arguments(configured)
    except StepFailed as exc:
        raise pytest.UsageError(str(exc)) from None
    return configured


def _scan_rules(path: Path | None) -> tuple[tuple[Rule, ...], tuple[dict[str, str], ...]]:
    """Every rule of the run (built-in and ``path``'s) and the built-in ones ``path`` switches
    off, with their approvals (the audit shows them like waivers)."""
    from imageready.scan import ScanRulesError, approved_disables, load_rules

    try:
        rules = tuple(load_rules(path))
    except ScanRulesError as exc:
        raise pytest.UsageError(str(exc)) from None
    except UnicodeDecodeError as exc:
        raise pytest.UsageError(f"--scan-rules {path}: not UTF-8 text (byte {exc.start})") from None
    if path is None:
        return rules, ()
    import yaml

    try:
        data = yaml.safe_load(Path(path).read_text(encoding="utf-8")) or {}
        disabled = approved_disables(list(data.get("disable") or []), f"--scan-rules {path}")
    except (OSError, ValueError, yaml.YAMLError, ScanRulesError, AttributeError):
        return rules, ()  # load_rules read the same file: what it accepted, it switched off
    return rules, tuple(disabled.values())


def _waivers(path: Path | None) -> tuple[Waiver, ...]:
    from imageready.gate import WaiverError, load_waivers

    if path is None:
        return ()
    try:
        return tuple(load_waivers(path))
    except WaiverError as exc:
        raise pytest.UsageError(str(exc)) from None


def _guest_addresses(values: tuple[str, ...]) -> dict[str, str]:
    """The --guest-address values, parsed; $IMAGEREADY_GUEST_ADDRESSES is checked here too, and
    read again by each facts provider (a VM made during the run, a copy, adds its address)."""
    from imageready.guest.addresses import GuestConfigError, parse_guest_addresses

    try:
        parse_guest_addresses(list(values), os.environ.get("IMAGEREADY_GUEST_ADDRESSES"))
        return parse_guest_addresses(list(values), None)
    except GuestConfigError as exc:
        raise pytest.UsageError(str(exc)) from None


def _azure_settings(
    cloud: str | None, arm_endpoint: str | None, ca_bundle: str | None
) -> tuple[CloudSettings, str | None]:
    """The cloud, its endpoints and the CA bundle, found unusable before anything connects (a
    usage error) rather than by every check of every VM."""
    from imageready.azure import AzureError, resolve_ca_bundle, resolve_cloud

    try:
        return resolve_cloud(cloud, arm_endpoint), resolve_ca_bundle(ca_bundle)
    except AzureError as exc:
        raise pytest.UsageError(str(exc)) from None
