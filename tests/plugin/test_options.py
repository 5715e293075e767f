"""The options are read once, at configure time, into one frozen object in the stash
(``imageready.options``): a bad value is one usage line (exit 4) before anything connects, and
what the run's parts read is that object, parsed."""

from __future__ import annotations

import dataclasses

import pytest

from imageready import exitcodes
from imageready.options import RunOptions

from .conftest import Project


@pytest.mark.parametrize(
    ("args", "line"),
    [
        (("--max-parallel", "0"), "ERROR: --max-parallel 0: expected 1 or more"),
        (("--lease-ttl", "forever"), "ERROR: --lease-ttl 'forever' is not a duration*"),
        (("--capture-as", "disk:x"), "ERROR: --capture-as 'disk:x'*"),
        (
            ("--guest-address", "rg/good"),
            "ERROR: --guest-address 'rg/good': expected RG/NAME=HOST[[]:PORT[]]",
        ),
        (("--verdict=nowhere.json",), "ERROR: --verdict nowhere.json: no such file or directory"),
        (("--copy-first", "--copy-suffix", "a b"), "ERROR: --copy-suffix 'a b': 1-20 letters, digits*"),
        (("--cloud", "custom"), "ERROR: --cloud custom needs --arm-endpoint URL*"),
    ],
)
def test_a_bad_value_is_one_usage_line(project: Project, args: tuple[str, ...], line: str) -> None:
    result = project.run("--vm", "rg/good", *args)
    assert result.ret == exitcodes.USAGE_ERROR
    errors = [text for text in result.errlines if text.strip()]
    assert len(errors) == 1, errors
    result.stderr.fnmatch_lines([line])


def test_a_bad_scan_rules_file_is_one_usage_line(project: Project) -> None:
    project.write("rules.yaml", "rules: [{id: x}]\n")
    result = project.run("--vm", "rg/good", "--scan-rules=rules.yaml")
    assert result.ret == exitcodes.USAGE_ERROR
    assert len([text for text in result.errlines if text.strip()]) == 1, result.errlines
    result.stderr.fnmatch_lines(["ERROR: *rules.yaml*"])


PROBE = """
import json
from pathlib import Path

import pytest

from imageready.options import options_of


@pytest.hookimpl(trylast=True)
def pytest_configure(config):
    options = options_of(config)
    Path(config.rootpath, "options.json").write_text(json.dumps({
        "vms": [vm.key for vm in options.vms],
        "capture": list(options.capture or ()),
        "sysprep_args": list(options.sysprep_args),
        "guest_addresses": dict(options.guest_addresses),
        "lease_ttl": options.lease_ttl.total_seconds(),
        "report_dir_absolute": options.report_dir.is_absolute(),
        "rules": len(options.scan_rules),
    }))
"""


def test_the_options_are_parsed_once_into_the_stash(project: Project) -> None:
    import json

    project.write("probe_plugin.py", PROBE)
    project.pytester.syspathinsert()
    result = project.run(
        "-p",
        "probe_plugin",
        "--vm",
        "rg/good",
        "--vm",
        "rg/bad",
        "--capture-as",
        "gallery:g/d/1.0.0",
        "--sysprep-args",
        "/generalize /oobe /quit",
        "--guest-address",
        "RG/Good=10.0.0.4:2222",
        "--lease-ttl",
        "10m",
        "--co",
    )
    assert result.ret == exitcodes.GREEN, result.stderr.str()
    seen = json.loads((project.root / "options.json").read_text())
    assert seen == {
        "vms": ["rg/bad", "rg/good"],
        "capture": ["gallery", "g", "d", "1.0.0"],
        "sysprep_args": ["/generalize", "/oobe", "/quit"],
        "guest_addresses": {"rg/good": "10.0.0.4:2222"},
        "lease_ttl": 600.0,
        "report_dir_absolute": True,
        "rules": seen["rules"],
    }
    assert seen["rules"] > 0  # the built-in rules, loaded once for the run


def test_the_options_object_is_frozen() -> None:
    assert dataclasses.is_dataclass(RunOptions)
    assert RunOptions.__dataclass_params__.frozen  # type: ignore[attr-defined]


def test_no_part_below_the_plugin_reads_pytest_s_options() -> None:
    """``getoption`` and ``getini`` appear in imageready.options only (issue 17)."""
    from pathlib import Path

    import imageready

    package = Path(imageready.__file__).parent
    readers = sorted(
        str(path.relative_to(package))
        for path in package.rglob("*.py")
        if "getoption(" in path.read_text(encoding="utf-8") or "getini(" in path.read_text(encoding="utf-8")
    )
    assert readers == ["options.py"]
