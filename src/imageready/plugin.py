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
from imageready.categories import Category
from imageready.facts import ITEM_SOURCES, FactsUnavailable, VmFacts
from imageready.facts.view import recording_reads
from imageready.gate import WaiverBook
from imageready.gatekeeper import GateKeeper
from imageready.inventory import Sorter
from imageready.option_group import add_options
from imageready.options import OPTIONS, POLICY_PIN_ENV, asked, choose_distribution
from imageready.options import build as build_options
from imageready.runstate import RUN, RunState, run_state
from imageready.target import VmRef

# Allure's defaults must be set before allure-pytest configures itself, and the record's guard
# after the run's state is built (trylast), so those modules are loaded with this one; their hooks
# do nothing in a session imageready is not asked into (``wanted``).
pytest_plugins = ["imageready.allure_support", "imageready.recording"]
#: the fixtures checks and actions request, and the item sources their `each=` names: registered
#: only in a session imageready is asked into
SESSION_PLUGINS = (
    "imageready.fixtures",
    "imageready.action_fixtures",
    "imageready.facts.items",
    # the end of the session, in one order (verdicts, audit, exit code, report environment)
    "imageready.session_end",
)

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
    add_options(parser)


@pytest.hookimpl(tryfirst=True)
def pytest_cmdline_main(config: pytest.Config) -> None:
    """Keep each VM's checks and actions on one xdist worker, in order."""
    choose_distribution(config)


def wanted(config: pytest.Config) -> bool:
    """Whether imageready is asked into this session (``imageready.options.asked``)."""
    return asked(config)


@pytest.hookimpl(tryfirst=True, specname="pytest_configure")
def pytest_configure_options(config: pytest.Config) -> None:
    """First of every plugin's configuration: the options, read and checked once (a usage error
    before anything connects), and the default paths of Allure's and JUnit's output (before
    allure-pytest and junitxml configure themselves)."""
    if not wanted(config):
        return
    _refuse_blocked_parts(config)
    options = build_options(config)
    config.stash[OPTIONS] = options
    from imageready.allure_support import default_outputs

    default_outputs(config, options)


def pytest_configure(config: pytest.Config) -> None:
    options = config.stash.get(OPTIONS, None)
    if options is None:
        return  # dormant
    for line in MARKERS:
        config.addinivalue_line("markers", line)
    for name in SESSION_PLUGINS:
        config.pluginmanager.import_plugin(name)
    policy = (
        policy_paths(options.checks_dir, config)
        + ([options.scan_rules_file] if options.scan_rules_file is not None else [])
        + ([options.waiver_file] if options.waiver_file is not None else [])
    )
    digest = None
    if options.vms:
        digest = RunState.policy_digest_of(policy)
        _check_policy_pin(digest)
    from imageready.copyfirst import copy_first

    # last of the configuration: it may run checks and make copies, once the options are sound
    vms = copy_first(config, options, list(options.vms), policy_digest=digest)
    book = WaiverBook(waivers=list(options.waivers))
    state = RunState(
        config=config,
        options=options,
        vms=vms,
        waivers=book,
        policy_paths=policy,
    )
    state._digest = digest  # hashed once, before anything connected (None: on first use)
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
    gone without a word. None of them may be switched off in a run imageready is asked into."""
    for name in (*pytest_plugins, *SESSION_PLUGINS, GATEKEEPER, SORTER):
        if config.pluginmanager.is_blocked(name):
            raise pytest.UsageError(
                f"-p no:{name}: a part of imageready (its gate, record, redaction or fixtures) "
                "cannot be switched off in a run imageready is asked into"
            )


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
    node.workerinput["imageready_loadgroup"] = state.options.loadgroup


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
                items = source(facts, state.options)
        except FactsUnavailable as exc:
            values.append((vm, Sentinel("facts-unavailable", exc)))
            ids.append(f"{vm.key}-facts-unavailable")
            continue
        except (AttributeError, KeyError, TypeError, ValueError, IndexError) as exc:
            # facts of an unexpected shape: this VM's cases error, the run goes on for the others
            error = FactsUnavailable(
                f"{vm.key}: the facts {each!r} is read from are malformed ({type(exc).__name__}: {exc})",
                Category.GUEST_FACTS,
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
