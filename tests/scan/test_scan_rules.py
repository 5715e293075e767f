"""The rules as data and the engine around them: loading, dialects, globs, removal, keys, results."""

from __future__ import annotations

import base64
import os
import re
import shutil
import stat
import subprocess
from pathlib import Path

import pytest

from imageready import scan
from imageready.guest.base import CommandResult, Guest, GuestIdentity, GuestTimeout
from imageready.scan import (
    DeprovisionContext,
    Finding,
    ScanKeyError,
    ScanResult,
    ScanRulesError,
    fingerprint_key,
    load_rules,
    rules_for,
    scan_guest,
)
from imageready.scan.findings import parse_scan_output
from imageready.scan.patterns import compile_glob, ere_for_grep
from imageready.scan.rules import pattern_problem

RULES = load_rules()
PATTERNS = [(r.id, name, getattr(r, name)) for r in RULES for name in ("pattern", "ignore_values")]
PATTERNS = [p for p in PATTERNS if p[2] is not None]
CHECKLIST = [f"L{i}" for i in range(1, 24)] + [f"W{i}" for i in range(1, 14)]


def test_every_rule_says_what_why_and_where_from() -> None:
    assert len({r.id for r in RULES}) == len(RULES)
    for rule in RULES:
        assert rule.title and rule.rationale and rule.source and rule.checklist, rule.id
        assert rule.severity in ("critical", "high", "medium", "low")


def test_every_checklist_row_has_a_rule() -> None:
    """L24 (the temp disk) is an exclusion and L25 (deleted blocks) cannot be seen by a file
    scan; both are documented in docs/scan-rules.md. Every other row has a rule."""
    covered = {row for rule in RULES for row in rule.checklist}
    assert sorted(set(CHECKLIST) - covered) == []


@pytest.mark.parametrize(("rule", "field", "pattern"), PATTERNS, ids=[f"{p[0]}.{p[1]}" for p in PATTERNS])
def test_patterns_stay_in_the_portable_subset(rule: str, field: str, pattern: str) -> None:
    assert pattern_problem(pattern) is None
    grep = subprocess.run(
        ["grep", "-E", "-e", pattern, "/dev/null"], capture_output=True, env={"LC_ALL": "C"}, check=False
    )
    assert grep.returncode == 1 and grep.stderr == b"", grep.stderr  # compiles, no "stray \" warning


@pytest.mark.parametrize(
    ("pattern", "problem"),
    [
        (r"\d{4}", "escape"),
        (r"[\w.]+", "backslash inside"),
        ("(?i)secret", "(?...)"),
        ("a+?", "lazy"),
        ("a{,3}", "braces"),
        ("(a|)", "empty"),
        ("[[:alpha:]]", "POSIX classes"),
        ("(unclosed", "does not compile"),
    ],
)
def test_non_portable_patterns_are_refused(pattern: str, problem: str) -> None:
    assert problem in (pattern_problem(pattern) or "")


DOTNET_CHECK = r"""
using System; using System.Text.RegularExpressions;
class Check { static void Main() {
  var patterns = new System.Collections.Generic.List<Regex>(); string line;
  while ((line = Console.ReadLine()) != "---") {
    var opts = RegexOptions.CultureInvariant | (line[0] == 'i' ? RegexOptions.IgnoreCase : 0);
    patterns.Add(new Regex(line.Substring(2), opts)); }
  while ((line = Console.ReadLine()) != null) {
    var bits = new System.Text.StringBuilder();
    foreach (var rx in patterns) bits.Append(rx.IsMatch(line) ? '1' : '0');
    Console.WriteLine(bits.ToString()); } } }
"""


def test_patterns_mean_the_same_in_dotnet(tmp_path: Path) -> None:
    """Every pattern compiles in a .NET regex engine (Mono) and matches the same sample lines
    as Python's ``re``: the Windows script and the Linux program apply the same rules."""
    if shutil.which("mcs") is None or shutil.which("mono") is None:
        pytest.skip("Mono (Debian mono-mcs) is needed to check the .NET dialect")
    source = tmp_path / "check.cs"
    source.write_text(DOTNET_CHECK)
    subprocess.run(
        ["mcs", "-out:" + str(tmp_path / "check.exe"), str(source)], check=True, capture_output=True
    )
    from test_scan_linux import clean_files, linux_plants

    lines = [
        ln
        for content in linux_plants().files.values()
        for ln in content.decode(errors="replace").splitlines()
    ]
    lines += [ln for content in clean_files().values() for ln in content.decode().splitlines()]
    rules = [r for r in RULES if r.pattern is not None]
    feed = "".join(f"{'i' if r.ignore_case else 'c'} {r.pattern}\n" for r in rules) + "---\n"
    proc = subprocess.run(
        ["mono", str(tmp_path / "check.exe")], input=feed + "\n".join(lines) + "\n", capture_output=True,
        text=True, timeout=120, check=True,
    )  # fmt: skip
    compiled = [re.compile(r.pattern, re.IGNORECASE if r.ignore_case else 0) for r in rules]  # type: ignore[arg-type]
    expected = ["".join("1" if rx.search(line) else "0" for rx in compiled) for line in lines]
    assert proc.stdout.splitlines() == expected
    assert any("1" in row for row in expected)


def test_case_folded_eres_keep_each_rules_case(tmp_path: Path) -> None:
    sample = tmp_path / "s.txt"
    sample.write_text("DB_PASSWORD = Hunter2-Hunter2\nakia1234567890123456\n")
    for rule_id, expected in (("password-assignment", b"DB_PASSWORD"), ("aws-access-key", b"")):
        rule = next(r for r in RULES if r.id == rule_id)
        out = subprocess.run(
            ["grep", "-E", "-e", ere_for_grep(rule), str(sample)], capture_output=True, check=False
        )
        assert out.stdout.startswith(expected) and (expected or out.stdout == b"")


# --- user rule files ---------------------------------------------------------------------------


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "rules.yaml"
    path.write_text(text)
    return path


USER_RULE = """
rules:
  - id: contoso-api-key
    title: Contoso API keys
    severity: high
    os: any
    kind: content
    pattern: "ctso_[A-Za-z0-9]{32}"
    keywords: ["ctso_"]
    rationale: Contoso keys grant tenant access.
    source: Contoso security team
disable:
  - {rule: cloud-init-user-data, reason: no cloud-init, approver: cab@contoso.example, expires: 2099-12-31}
known_examples:
  - value: ctso_00000000000000000000000000000000
"""


def test_a_user_file_adds_rules_and_disables_built_ins(tmp_path: Path) -> None:
    rules = load_rules(write(tmp_path, USER_RULE))
    ids = [r.id for r in rules]
    assert "contoso-api-key" in ids and "cloud-init-user-data" not in ids
    contoso = next(r for r in rules if r.id == "contoso-api-key")
    assert contoso.origin == str(tmp_path / "rules.yaml") and contoso.mode == "grep"
    assert "ctso_00000000000000000000000000000000" in contoso.examples


def test_a_user_file_edited_between_two_loads_is_read_again(tmp_path: Path) -> None:
    """Parsed rule files are kept by their text, never by their name: an edit is seen."""
    path = write(tmp_path, USER_RULE)
    assert "contoso-api-key" in {r.id for r in load_rules(path)}
    path.write_text(USER_RULE.replace("contoso-api-key", "contoso-api-key-v2"), encoding="utf-8")
    ids = {r.id for r in load_rules(path)}
    assert "contoso-api-key-v2" in ids and "contoso-api-key" not in ids
    path.write_text("rules: [", encoding="utf-8")
    with pytest.raises(ScanRulesError, match="not valid YAML"):
        load_rules(path)


def _detail(pattern: str, detail: int, secret: int) -> str:
    """USER_RULE with its own pattern and groups."""
    return USER_RULE.replace(
        '    pattern: "ctso_[A-Za-z0-9]{32}"\n',
        f"    pattern: '{pattern}'\n    secret_group: {secret}\n    detail_group: {detail}\n",
    )


def test_a_detail_group_beside_the_secret_is_accepted(tmp_path: Path) -> None:
    rules = load_rules(write(tmp_path, _detail("(ctso_)([A-Za-z0-9]{32})", 1, 2)))
    assert next(r for r in rules if r.id == "contoso-api-key").detail_group == 1


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("rules: [", r"not valid YAML \(line \d+\)"),
        ("rulez: []", "unknown key 'rulez'"),
        (USER_RULE.replace("contoso-api-key", "jwt"), "rule 'jwt' already exists"),
        (USER_RULE.replace("keywords", "keywordz"), "rule 'contoso-api-key': unknown key 'keywordz'"),
        (USER_RULE.replace('    keywords: ["ctso_"]\n', ""), "needs 'keywords'"),
        (USER_RULE.replace('"ctso_[A-Za-z0-9]{32}"', r"'ctso_\w{32}'"), r"pattern: escape \\w"),
        (USER_RULE.replace("severity: high", "severity: urgent"), "severity must be one of"),
        (USER_RULE.replace("rule: cloud-init-user-data", "rule: nope"), "disable: no rule 'nope'"),
        # switching a built-in rule off is a policy change: approved, like a waiver, and live
        (USER_RULE.split("disable:")[0] + "disable: [cloud-init-user-data]\n", "needs an approval"),
        (USER_RULE.replace(" approver: cab@contoso.example,", ""), "'approver' is required"),
        (USER_RULE.replace("2099-12-31", "2020-01-31"), "expired 2020-01-31: renew it"),
        (USER_RULE.replace("kind: content", "kind: location"), "needs 'paths'"),
        # the detail group is shown in full: never the secret, around it, inside it, or a lookaround
        (_detail("(ctso_)([A-Za-z0-9]{32})", 2, 2), "detail_group 2 overlaps secret group 2"),
        (_detail("(ctso_([A-Za-z0-9]{32}))", 1, 2), "detail_group 1 overlaps secret group 2"),
        (_detail("(ctso_([A-Za-z0-9]{32}))", 2, 1), "detail_group 2 overlaps secret group 1"),
        (
            _detail("(?=(ctso_[A-Za-z0-9]{4}))ctso_([A-Za-z0-9]{32})", 1, 2),
            r"no \(\?\.\.\.\) groups, flags or look-around",
        ),
        (_detail("ctso_([A-Za-z0-9]{32})", 1, 0), "overlaps the secret, which is the whole match"),
    ],
)
def test_bad_user_files_fail_in_one_line(tmp_path: Path, text: str, message: str) -> None:
    with pytest.raises(ScanRulesError, match=message) as caught:
        load_rules(write(tmp_path, text))
    assert "\n" not in str(caught.value) and str(tmp_path) in str(caught.value)


def test_rules_for_an_os() -> None:
    linux, windows = {r.id for r in rules_for("Linux", RULES)}, {r.id for r in rules_for("Windows", RULES)}
    assert "bash-history" in linux and "bash-history" not in windows
    assert "unattend-answer-files" in windows and "unattend-answer-files" not in linux
    assert {"private-key-block", "ssh-authorized-keys"} <= linux & windows


# --- globs ---------------------------------------------------------------------------------------


def test_globs_compile_to_what_the_guest_matches() -> None:
    home = compile_glob("~/.bash_history", "Linux")
    assert home == {
        "path_re": "^@HOME@/\\.bash_history$",
        "name": ".bash_history",
        "ancestors_re": "^(@HOME@)$",
    }
    kube = compile_glob("~/.kube/config", "Linux")
    assert kube is not None and kube["ancestors_re"] == "^(@HOME@|@HOME@/\\.kube)$"  # links followed there
    assert "ancestors_re" not in (compile_glob("**/*.p12", "Linux") or {})  # found by name anywhere
    wild = compile_glob("/etc/ssh/ssh_host_*_key", "Linux")
    assert wild is not None and wild["name_glob"] == "ssh_host_*_key"
    assert re.match(wild["path_re"], "/etc/ssh/ssh_host_rsa_key")
    assert not re.match(wild["path_re"], "/etc/ssh/ssh_host_rsa_key.pub")
    tree = compile_glob("/var/log/azure/**", "Linux")
    assert tree is not None and tree["recursive"] and re.match(tree["dir_re"], "/var/log/azure")
    anywhere = compile_glob("**/.env", "Linux")
    assert (
        anywhere is not None
        and re.match(anywhere["path_re"], "/.env")
        and re.match(anywhere["path_re"], "/a/b/.env")
    )
    windows = compile_glob("C:/Windows/Panther/unattend.xml", "Windows")
    assert windows is not None
    assert re.match(windows["path_re"].replace("@SYSDRIVE@", "C:"), "C:\\Windows\\Panther\\unattend.xml")
    assert compile_glob("C:/unattend.xml", "Linux") is None and compile_glob("/etc/shadow", "Windows") is None
    assert compile_glob("HKLM:/SOFTWARE/X/Winlogon/DefaultPassword", "Windows") == {
        "registry": "HKLM:\\SOFTWARE\\X\\Winlogon",
        "value": "DefaultPassword",
    }


# --- deprovision-awareness -----------------------------------------------------------------------


def test_waagent_removes_only_what_it_removes() -> None:
    facts = {
        "os_family": "Linux",
        "ovf_env_present": True,
        "waagent": {
            "conf": {"Provisioning.RegenerateSshHostKeyPair": "y", "Provisioning.DeleteRootPassword": "n"}
        },
        "users": [{"name": "azureuser", "home": "/home/azureuser"}],
    }
    context = DeprovisionContext.from_facts(facts, "azureuser")
    assert context.regenerate_host_keys and not context.delete_root_password
    removed = [
        "/var/lib/waagent/ovf-env.xml",
        "/var/log/azure/ext/handler.log",
        "/var/log/waagent.log",
        "/root/.bash_history",
        "/etc/ssh/ssh_host_ed25519_key",
        "/home/azureuser/.bash_history",
    ]
    kept = [
        "/home/builder/.bash_history",
        "/root/.python_history",
        "/var/lib/cloud/instances/i/user-data.txt",
    ]
    assert all(context.removal(p) for p in removed)
    assert not any(context.removal(p) for p in kept)
    assert context.removal("/etc/shadow", "account=azureuser")
    assert not context.removal("/etc/shadow", "account=root")  # DeleteRootPassword=n
    no_ovf = DeprovisionContext.from_facts({**facts, "ovf_env_present": False}, "azureuser")
    assert not no_ovf.removal("/home/azureuser/.bash_history")  # waagent skips deleting the user
    keys_kept = DeprovisionContext.from_facts({**facts, "waagent": {"conf": {}}}, "azureuser")
    assert not keys_kept.removal("/etc/ssh/ssh_host_ed25519_key")


def test_sysprep_step_removes_panther_and_the_sysprep_answer_file() -> None:
    context = DeprovisionContext.from_facts({"os_family": "Windows"}, "azureuser")
    assert context.removal("C:\\Windows\\Panther\\unattend.xml")
    assert context.removal("C:\\Windows\\System32\\Sysprep\\unattend.xml")
    assert not context.removal("C:\\unattend.xml")
    assert not context.removal("C:\\Users\\builder\\AppData\\Roaming\\x_history.txt")


def finding(rule: str, path: str, line: int | None, prefix: str, fp: str) -> dict[str, object]:
    length = 3 if line is None else 90
    return {
        "rule": rule,
        "path": path,
        "line": line,
        "length": length,
        "prefix": prefix,
        "fp": fp * 16,
        "detail": "",
    }


def test_results_list_what_persists_and_honour_fingerprint_waivers() -> None:
    document = {
        "schema": 1,
        "complete": True,
        "findings": [
            finding("bash-history", "/root/.bash_history", None, "", "a"),
            finding("jwt", "/opt/s.json", 2, "eyJh", "b"),
            finding("jwt", "/opt/t.json", 9, "eyJh", "c"),
        ],
    }
    result = parse_scan_output(document, "Linux", DeprovisionContext("waagent-deprovision+user"))
    assert result.complete and len(result.for_rule("jwt")) == 2
    assert [f.path for f in result.blocking()] == ["/opt/s.json", "/opt/t.json"]
    assert [f.path for f in result.blocking(waived={"b" * 16})] == ["/opt/t.json"]
    summary = result.findings[1].summary()
    assert summary == "[jwt] /opt/s.json:2 (len=90, starts 'eyJh', fp bbbbbbbbbbbbbbbb) persists in image"
    assert "removed: waagent deletes /root/.bash_history" in result.findings[0].summary()
    assert not parse_scan_output(
        {**document, "complete": False}, "Linux", DeprovisionContext("none")
    ).complete


# --- the key -------------------------------------------------------------------------------------


def test_the_key_file_is_created_once_private_and_stable(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv(scan.KEY_ENV, raising=False)
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path))
    first = fingerprint_key()
    path = tmp_path / "imageready" / "fingerprint.key"
    assert stat.S_IMODE(path.stat().st_mode) == 0o600 and len(first) == 32
    assert fingerprint_key() == first


def test_the_key_file_made_by_threads_at_once_is_one_whole_key(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A fleet's scans start together: on the first run every thread asks for the key at once and
    each must read the same whole key (none an empty or half-written file)."""
    import secrets
    import time
    from concurrent.futures import ThreadPoolExecutor

    token_hex = secrets.token_hex

    def slow_token_hex(n: int) -> str:  # a slow disk or a busy machine: the write takes a while
        time.sleep(0.05)
        return token_hex(n)

    monkeypatch.setattr(secrets, "token_hex", slow_token_hex)
    monkeypatch.delenv(scan.KEY_ENV, raising=False)
    for attempt in range(3):
        monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / str(attempt)))
        with ThreadPoolExecutor(16) as pool:
            keys = list(pool.map(lambda _: fingerprint_key(), range(16)))
        assert len(set(keys)) == 1 and len(keys[0]) == 32
        directory = tmp_path / str(attempt) / "imageready"
        assert [p.name for p in directory.iterdir()] == ["fingerprint.key"]  # no leftover


def test_the_key_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    raw = os.urandom(32)
    monkeypatch.setenv(scan.KEY_ENV, raw.hex())
    assert fingerprint_key() == raw
    monkeypatch.setenv(scan.KEY_ENV, base64.b64encode(raw).decode())
    assert fingerprint_key() == raw
    monkeypatch.setenv(scan.KEY_ENV, "not-a-key-at-all")
    with pytest.raises(ScanKeyError) as caught:
        fingerprint_key()
    assert "not-a-key-at-all" not in str(caught.value)


# --- scan_guest when the guest fails --------------------------------------------------------------


class _BrokenGuest(Guest):
    """A transport that fails the way real ones do (their own tests cover the wire)."""

    os_type = "Linux"
    transport = "ssh"

    def __init__(self, outcome: CommandResult | Exception) -> None:
        self.outcome = outcome

    @property
    def identity(self) -> GuestIdentity:
        return GuestIdentity("ssh", "127.0.0.1:22")

    def run(
        self, script: str, *, timeout: float, stdin: bytes = b"", elevated: bool = False, on_progress=None
    ) -> CommandResult:  # type: ignore[no-untyped-def]
        if isinstance(self.outcome, Exception):
            raise self.outcome
        return self.outcome


@pytest.mark.parametrize(
    ("outcome", "error"),
    [
        (GuestTimeout("rg/vm (127.0.0.1:22): command timed out after 60 s"), "scan: rg/vm"),
        (
            CommandResult(3, b"", b"ERROR scan failed: MemoryError \n", 1.0),
            "scan produced no result: ERROR scan",
        ),
        (CommandResult(0, b"not json", b"", 1.0), "scan produced no result: exit code 0, no JSON"),
    ],
)
def test_a_failed_scan_is_incomplete_never_clean(outcome: CommandResult | Exception, error: str) -> None:
    import time

    result = scan_guest(
        _BrokenGuest(outcome),
        RULES,
        key=b"k" * 32,
        deadline=time.monotonic() + 120,
        context=DeprovisionContext("none"),
    )
    assert not result.complete and result.findings == []
    assert result.errors and result.errors[0].startswith(error)


def test_no_time_left_is_incomplete() -> None:
    import time

    result = scan_guest(
        _BrokenGuest(CommandResult(0, b"{}", b"", 0.0)), RULES, key=b"k" * 32, deadline=time.monotonic() + 5,
        context=DeprovisionContext("none"),
    )  # fmt: skip
    assert not result.complete and "no time left" in result.errors[0]


def test_finding_summary_is_one_line() -> None:
    finding = Finding("jwt", "/a", 1, 40, "eyJh", "f" * 16, True, "waagent deletes /var/lib/waagent", "")
    assert "\n" not in finding.summary() and "removed: waagent deletes" in finding.summary()
    assert isinstance(ScanResult("Linux").complete, bool) and not ScanResult("Linux").complete
