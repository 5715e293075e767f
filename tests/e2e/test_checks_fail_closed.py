"""Every check fails closed on missing data (issue 11, hole 5), proven generically.

1. The real facts of a clean Linux and a clean Windows copy are gathered from azsim by the real
   provider (a `--collect-only` run of the harness with a recorder plugin).
2. They are replayed to the repository's own checks/ for one VM per mutation: each fact the
   documents hold (guest and Azure, every object key and list element) removed, set to null, or
   given the wrong type, one at a time. The replayed documents record which check read which fact
   (at parametrization and while a case runs).
3. For each mutated VM, no case of a check that read the mutated fact may pass. The only
   exceptions are listed in ``ABSENCE_MEANS`` with what Azure or the guest means by the absence.

A new check gets the same guarantee without a line here: the test enumerates the facts, not the
checks. The unmutated copies must be green, so the test cannot pass by breaking everything.
"""

from __future__ import annotations

import copy
import fnmatch
import json
import textwrap
import xml.etree.ElementTree as ET
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from imageready import exitcodes

from .conftest import REPO, Azsim, harness

SCENARIO = "tests/scenarios/checks-fail-closed.yaml"
BASES = {"Linux": "rg-fc/lin-copy", "Windows": "rg-fc/win-copy"}
SCAN_MODULE = "checks/test_sensitive_data.py"  # has its own completeness tests (tests/e2e/test_scan_*)
#: the capture checks judge only with --capture-as: facts gathered and replayed with it (a gallery
#: target reads the most: the gallery, the definition, the version name)
CAPTURE = "--capture-as=gallery:galFC/{vm}/1.0.0"
OPS = ("remove", "null", "type")

#: facts a check may read and still pass when they are absent or null, because the absence is
#: itself an answer (fnmatch pattern of the fact's path -> what the absence means). Wrong types
#: are never excused, and nor is anything below these facts.
ABSENCE_MEANS = {
    "guest.waagent.conf.Provisioning.*": "not in /etc/waagent.conf: waagent's default (n), a finding",
    "guest.services.RdAgent": "the service is not installed: a finding",
    "guest.services.WindowsAzureGuestAgent": "the service is not installed: a finding",
    "guest.cloud_init.status": "read only when cloud-init is disabled, when its status does not matter",
    "azure.vm.tags": "the VM has no tags (ARM leaves the property out)",
    "azure.vm.properties.storageProfile.dataDisks": "the VM has no data disks",
    "azure.vm.properties.instanceView.vmAgent": "no agent reports (the check then fails)",
    "azure.disks.*.properties.encryptionSettingsCollection": "no Azure Disk Encryption (Disk_Get example)",
    "azure.disks.*.properties.encryption": "older api-versions leave it out: platform keys (informational)",
    "azure.sources.*.managedBy": "the source disk is not attached to a VM",
    "azure.vm.properties.osProfile": "a VM made from a copied (specialized) disk: Azure shows no "
    "osProfile; IR-LNX-007 then holds ovf-env.xml's user to the SSH login alone",
}

RECORDER = """
import json
import os
from pathlib import Path

import pytest


@pytest.hookimpl(trylast=True)
def pytest_collection_finish(session):
    from imageready.runstate import run_state

    state = run_state(session.config)
    found = {key: facts.to_json() for key, facts in state.facts_cache.items()}
    Path(os.environ["IMAGEREADY_RECORD_FACTS"]).write_text(json.dumps(found))
"""

REPLAY = """
import copy
import fnmatch
import json
from pathlib import Path

import pytest

from imageready.facts import VmFacts

HERE = Path(__file__).parent
READS = {}
CURRENT = ["collection"]


def record(vm, path):
    READS.setdefault(vm, {}).setdefault(path, set()).add(CURRENT[0])


class TDict(dict):
    def __init__(self, data, vm, prefix):
        super().__init__((k, track(v, vm, f"{prefix}{k}.")) for k, v in data.items())
        self._vm, self._prefix = vm, prefix

    def __getitem__(self, key):
        record(self._vm, f"{self._prefix}{key}")
        return super().__getitem__(key)

    def get(self, key, default=None):
        record(self._vm, f"{self._prefix}{key}")
        return super().get(key, default)

    def __contains__(self, key):
        record(self._vm, f"{self._prefix}{key}")
        return super().__contains__(key)


class TList(list):
    def __init__(self, data, vm, prefix):
        super().__init__(track(v, vm, f"{prefix}{i}.") for i, v in enumerate(data))
        self._vm, self._prefix = vm, prefix

    def __getitem__(self, index):
        if isinstance(index, int):
            record(self._vm, f"{self._prefix}{index % max(len(self), 1)}")
        return super().__getitem__(index)

    def __iter__(self):
        for index in range(len(self)):
            yield self[index]


def track(value, vm, prefix):
    if isinstance(value, dict):
        return TDict(value, vm, prefix)
    if isinstance(value, list):
        return TList(value, vm, prefix)
    return value


WRONG = {bool: "yes", int: "seven", float: "7.5%", str: 7, list: {"not": "a list"}, dict: ["not an object"]}


def mutate(document, path, op):
    parent = document
    for step in path[:-1]:
        parent = parent[step]
    last = path[-1]
    if op == "remove":
        del parent[last]
    elif op == "null":
        parent[last] = None
    else:
        parent[last] = WRONG[type(parent[last])]


class Replay:
    def __init__(self):
        self.bases = json.loads((HERE / "facts-base.json").read_text())
        self.plan = json.loads((HERE / "plan.json").read_text())

    def facts(self, vm):
        entry = self.plan[vm.key]
        data = copy.deepcopy(self.bases[entry["base"]])
        if entry["path"]:
            mutate(data[entry["part"]], entry["path"], entry["op"])
        azure = data["azure"]
        guest = data["guest"]
        return VmFacts(
            vm=vm.key,
            resource_id=vm.id,
            azure=None if azure is None else track(azure, vm.key, "azure."),
            guest=None if guest is None else track(guest, vm.key, "guest."),
            # how the guest was reached and proved its identity (not a fact the mutations touch)
            guest_identity=data.get("guest_identity") or {},
        )

    def live_vm_id(self, vm):
        return None

    def operator(self):
        return {"upn": "fail-closed@example.com"}

    def close(self):
        pass


def pytest_imageready_facts_provider(config):
    return Replay()


@pytest.hookimpl(wrapper=True)
def pytest_generate_tests(metafunc):
    CURRENT[0] = metafunc.definition.nodeid
    try:
        return (yield)
    finally:
        CURRENT[0] = "collection"


@pytest.hookimpl(wrapper=True)
def pytest_fixture_setup(fixturedef, request):
    # a check's fixtures read for it; imageready's own hooks (resume, OS type) do not count
    previous, CURRENT[0] = CURRENT[0], getattr(request.node, "nodeid", "run")
    try:
        return (yield)
    finally:
        CURRENT[0] = previous


@pytest.hookimpl(wrapper=True)
def pytest_runtest_call(item):
    CURRENT[0] = item.nodeid
    try:
        return (yield)
    finally:
        CURRENT[0] = "run"


def pytest_sessionfinish(session):
    out = {vm: {path: sorted(readers) for path, readers in paths.items()} for vm, paths in READS.items()}
    (HERE / "reads.json").write_text(json.dumps(out))
"""


def leaf_paths(value: Any, path: tuple[Any, ...] = ()) -> Iterator[tuple[Any, ...]]:
    """Every object key and list element of a JSON document, parents before children."""
    if isinstance(value, dict):
        for key, child in value.items():
            if not path and key in ("errors", "schema", "os_family"):
                continue  # the document's own envelope, checked by its parser
            yield (*path, key)
            yield from leaf_paths(child, (*path, key))
    elif isinstance(value, list):
        for index, child in enumerate(value):
            yield (*path, index)
            yield from leaf_paths(child, (*path, index))


def dotted(part: str, path: tuple[Any, ...]) -> str:
    return ".".join([part, *map(str, path)])


def excused(path: str, op: str) -> bool:
    return op != "type" and any(fnmatch.fnmatchcase(path, pattern) for pattern in ABSENCE_MEANS)


@pytest.fixture(scope="module")
def recorded(azsim: Azsim, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """The clean copies' facts, gathered by the real provider from azsim."""
    where = tmp_path_factory.mktemp("recorder")
    (where / "fc_recorder.py").write_text(RECORDER)
    out = where / "facts.json"
    run = harness(
        azsim,
        "checks",
        *[a for vm in BASES.values() for a in ("--vm", vm)],
        "--collect-only",
        CAPTURE,
        "-p",
        "fc_recorder",
        report_dir=where / "reports",
        env={"PYTHONPATH": str(where), "IMAGEREADY_RECORD_FACTS": str(out)},
    )
    assert out.exists(), run.output[-3000:]
    facts: dict[str, Any] = json.loads(out.read_text())
    for os_name, key in BASES.items():
        assert facts[key]["guest"] is not None, f"{key}: no guest facts: {facts[key]['guest_error']}"
        assert facts[key]["guest"]["os_family"] == os_name
        capture = facts[key]["azure"]["capture"]
        assert set(capture["found"]) == {"gallery", "definition"} and capture["not_found"] == ["artifact"]
    return facts


def run_policy(project: Path, plan: dict[str, dict[str, Any]], out: Path) -> tuple[dict[str, str], Any]:
    """Run the copied policy over the planned VMs: (JUnit outcome per case, facts read)."""
    import subprocess
    import sys

    (project / "plan.json").write_text(json.dumps(plan))
    out.mkdir()
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "pytest",
            "checks",
            f"--ignore={SCAN_MODULE}",
            CAPTURE,
            *[a for vm in plan for a in ("--vm", vm)],
            "--subscription=00000000-0000-0000-0000-0000000000fc",
            "-p",
            "no:cacheprovider",
            "-q",
            "--no-header",
            "-o",
            "console_output_style=classic",
            f"--junitxml={out / 'junit.xml'}",
            f"--report-dir={out / 'reports'}",
        ],
        cwd=project,
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert done.returncode in (exitcodes.RED_CHECKS, exitcodes.INFRASTRUCTURE_ERROR), done.stdout[-3000:]
    assert (project / "reads.json").exists(), (done.stdout + done.stderr)[-3000:]
    reads = json.loads((project / "reads.json").read_text())
    (project / "reads.json").unlink()
    return junit_outcomes(out / "junit.xml"), reads


def test_no_check_passes_on_missing_null_or_mistyped_facts(recorded: dict[str, Any], tmp_path: Path) -> None:
    import shutil

    project = tmp_path / "policy"
    project.mkdir()
    (project / "pytest.ini").write_text((REPO / "pytest.ini").read_text())
    (project / "conftest.py").write_text(textwrap.dedent(REPLAY))
    shutil.copytree(REPO / "checks", project / "checks", ignore=shutil.ignore_patterns("__pycache__"))
    (project / "actions").mkdir()
    (project / "facts-base.json").write_text(json.dumps(recorded))

    # 1. the clean copies: green, and which facts the checks read
    bases = {f"rg-fc/{os_name[:3].lower()}-base": base for os_name, base in BASES.items()}
    plan: dict[str, dict[str, Any]] = {
        vm: {"base": base, "part": "guest", "path": [], "op": "", "dotted": ""} for vm, base in bases.items()
    }
    outcomes, reads = run_policy(project, plan, tmp_path / "clean")
    for vm in bases:
        cases = {c: o for c, o in outcomes.items() if f"[{vm}]" in c or f"[{vm}-" in c}
        assert cases, f"no case ran for {vm}"
        bad = {c: o for c, o in cases.items() if o not in ("passed", "skipped")}
        assert not bad, f"the clean copy {vm} is not green: {bad}"

    # 2. each fact a check read, removed, nulled and mistyped, one VM each
    plan = {}
    for vm, base in bases.items():
        read = set(reads.get(vm, {}))
        for part in ("guest", "azure"):
            for path in leaf_paths(recorded[base][part]):
                name = dotted(part, path)
                if name not in read:
                    continue
                for op in OPS:
                    if op == "remove" and isinstance(path[-1], int):
                        continue  # one element fewer is another list, not a missing fact
                    plan[f"rg-fc/{vm[6:9]}-{len(plan):04d}"] = {
                        "base": base,
                        "part": part,
                        "path": list(path),
                        "op": op,
                        "dotted": name,
                    }
        # the tracking sees the checks read a fair part of each document (or this proves nothing)
        assert len(read) >= 15, f"only {len(read)} facts of {base} were read: {sorted(read)}"
    outcomes, reads = run_policy(project, plan, tmp_path / "mutated")

    violations = []
    for vm, entry in plan.items():
        if excused(entry["dotted"], entry["op"]):
            continue
        readers = reads.get(vm, {}).get(entry["dotted"], [])
        mine = {c: o for c, o in outcomes.items() if f"[{vm}]" in c or f"[{vm}-" in c}
        for reader in readers:
            if "[" in reader:  # read while this very case ran: it may not pass
                if mine.get(reader) == "passed":
                    violations.append(f"{entry['op']} {entry['dotted']} ({entry['base']}): {reader} passed")
            elif "::" in reader:  # read to parametrize the check: not every case of it may pass
                cases = [o for c, o in mine.items() if c.split("[", 1)[0] == reader]
                if cases and all(o == "passed" for o in cases):
                    violations.append(
                        f"{entry['op']} {entry['dotted']} ({entry['base']}): every {reader} passed"
                    )
    assert not violations, (
        f"{len(violations)} check case(s) passed without the fact they read:\n" + "\n".join(violations[:80])
    )


def junit_outcomes(path: Path) -> dict[str, str]:
    found = {}
    root = ET.parse(path).getroot()  # noqa: S314 - our own output
    for case in root.iter("testcase"):
        name = f"{case.get('classname', '').replace('.', '/')}.py::{case.get('name')}"
        kinds = {child.tag for child in case}
        outcome = "passed"
        for tag, word in (("failure", "failed"), ("error", "error"), ("skipped", "skipped")):
            if tag in kinds:
                outcome = word
        found[name] = outcome
    return found


def test_the_mutation_helper_covers_nested_paths() -> None:
    document = {"a": {"b": [1, {"c": None}]}, "errors": []}
    assert list(leaf_paths(document)) == [
        ("a",),
        ("a", "b"),
        ("a", "b", 0),
        ("a", "b", 1),
        ("a", "b", 1, "c"),
    ]
    assert copy.deepcopy(document) == document
