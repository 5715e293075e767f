"""A small imageready project for pytester: three check modules, one action module, and a facts
provider that reads the fleet from a JSON file (the plugin's ``pytest_imageready_facts_provider``
hook), so the gate's rules are exercised without Azure. The Azure-backed provider is covered end
to end against azsim in tests/e2e."""

from __future__ import annotations

import json
import textwrap
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

SUB = "00000000-0000-0000-0000-0000000000aa"

PROJECT_CONFTEST = '''
import json
from pathlib import Path

import pytest

from imageready.facts import VmFacts


class FleetProvider:
    """Facts from fleet.json: {"rg/name": {"os": "Linux", "vmId": "...", "liveVmId": "..."}}."""

    def __init__(self, path):
        self.path = path

    def _vm(self, vm):
        return json.loads(self.path.read_text()).get(vm.key, {})

    def facts(self, vm):
        data = self._vm(vm)
        model = {"properties": {"vmId": data.get("vmId"),
                                "storageProfile": {"osDisk": {"osType": data.get("os", "Linux")}}}}
        return VmFacts(vm=vm.key, resource_id=vm.id, azure={"vm": model})

    def live_vm_id(self, vm):
        data = self._vm(vm)
        return data.get("liveVmId", data.get("vmId"))

    def operator(self):
        return {"upn": "tester@example.com", "tid": "t"}

    def close(self):
        pass


def pytest_imageready_facts_provider(config):
    return FleetProvider(Path(config.rootpath, "fleet.json"))


@pytest.fixture
def acted(request, vm):
    """Records that an action's fixture ran (blocked actions must not reach this)."""
    marker = Path(request.config.rootpath, "fixture-ran", vm.name)
    marker.parent.mkdir(exist_ok=True)
    marker.write_text("set up")
    return marker
'''

CHECKS_BASIC = """
import pytest

DOC = "https://learn.microsoft.com/azure/virtual-machines/generalize"


@pytest.mark.check(id="T-001", title="always passes", severity="high", os="any", doc=DOC)
def test_always(vm):
    pass


@pytest.mark.check(id="T-002", title="VM is not bad", severity="critical", os="any", doc=DOC)
def test_not_bad(vm):
    assert "bad" not in vm.name, f"{vm.key} is bad"


@pytest.mark.check(id="T-003", title="Windows only", severity="low", os="Windows", doc=DOC)
def test_windows_only(vm):
    pass
"""

CHECKS_MORE = """
import pytest

DOC = "https://example.com/more"


@pytest.mark.check(id="T-010", title="another module", severity="medium", os="Linux", doc=DOC)
def test_more(vm):
    pass
"""

ACTIONS = """
from pathlib import Path

import pytest

pytestmark = pytest.mark.action(step="touch")


def test_act(vm, acted, request):
    target = Path(request.config.rootpath, "acted", vm.name)
    if not request.config.getoption("apply"):
        pytest.skip(f"plan: would touch {target}")
    target.parent.mkdir(exist_ok=True)
    target.write_text("done")
"""


class Project:
    """A pytester project with helpers to run it and look at what the actions did."""

    def __init__(self, pytester: pytest.Pytester) -> None:
        self.pytester = pytester
        self.root = pytester.path

    def fleet(self, **vms: dict[str, Any]) -> None:
        data = {f"rg/{name}": spec for name, spec in vms.items()}
        (self.root / "fleet.json").write_text(json.dumps(data))

    def write(self, relpath: str, text: str) -> Path:
        path = self.root / relpath
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(textwrap.dedent(text))
        return path

    def run(self, *args: str, subprocess: bool = False) -> pytest.RunResult:
        full = [f"--subscription={SUB}", "-p", "no:cacheprovider", "-p", "no:randomly", *args]
        if subprocess:
            return self.pytester.runpytest_subprocess(*full)
        return self.pytester.runpytest(*full)

    def acted(self, name: str) -> bool:
        return (self.root / "acted" / name).exists()

    def fixture_ran(self, name: str) -> bool:
        return (self.root / "fixture-ran" / name).exists()

    def verdict(self, name: str) -> dict[str, Any]:
        path = self.root / "reports" / "out" / "verdicts" / f"verdict-rg__{name}.json"
        data: dict[str, Any] = json.loads(path.read_text())
        return data


#: the pipeline's verdict key (docs/gate.md): both stages of a project hold it, as CI would
VERDICT_KEY = "k" * 8 + "0123456789abcdef0123456789abcdef"


@pytest.fixture
def project(pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch) -> Project:
    monkeypatch.setenv("IMAGEREADY_VERDICT_KEY", VERDICT_KEY)
    pytester.makeini(
        """
        [pytest]
        testpaths = checks actions
        addopts = --strict-markers
        imageready_checks_dir = checks
        """
    )
    proj = Project(pytester)
    proj.write("conftest.py", PROJECT_CONFTEST)
    proj.write("checks/test_basic.py", CHECKS_BASIC)
    proj.write("checks/test_more.py", CHECKS_MORE)
    proj.write("actions/test_act.py", ACTIONS)
    proj.fleet(good={"os": "Linux", "vmId": "vmid-good"}, bad={"os": "Linux", "vmId": "vmid-bad"})
    return proj


RunFn = Callable[..., pytest.RunResult]


def write_signed(path: Path, document: dict[str, Any]) -> None:
    """Write a verdict signed with the project's key: what a holder of the key could write. Tests
    of the gate's rules beneath the signature (freshness, consistency, coverage) edit verdicts
    this way; tests/reliability shows an edit without the key refused."""
    from imageready.signing import sign

    path.write_text(json.dumps(sign(document, VERDICT_KEY.encode())))


def signed_step_tag(body: str, vm_id: str, step: str = "guest") -> str:
    """A step tag as a run of this project writes it: signed with the project's key for the VM
    (the project's fake VMs have no OS disk id)."""
    from imageready.gate import sign_step_tag

    return sign_step_tag(body, step, {"properties": {"vmId": vm_id}}, VERDICT_KEY.encode())
