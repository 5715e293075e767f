"""The Windows scan: scan_windows.ps1 answered by azsim's Windows model (scan_handler), directly and
end to end over real WinRM through ``scan_guest``.

The model has no certificate store, so ``certificate-private-keys`` (W11) cannot be planted here;
every other Windows rule is.
"""

from __future__ import annotations

import base64
import json
import random
import string
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from azsim.windows import powershell
from azsim.windows.model import build_machine
from azsim.windows.powershell import ScriptCall, ScriptView
from azsim.windows.scan_handler import ScanScript
from azsim.windows.spec import parse_spec
from imageready.scan import (
    DeprovisionContext,
    load_rules,
    parse_scan_output,
    rules_for,
    scan_guest,
    windows_script,
)

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "guests"))
from conftest_windows import ADMIN, boot_windows, windows_tls, winrm_password

__all__ = ["boot_windows", "windows_tls", "winrm_password"]

WINDOWS_RULES = rules_for("Windows", load_rules())
# planted through the model's certificate store (registry), which this module's guest does not
# stage; tests/e2e/test_scan_findings.py plants and finds it
NOT_MODELLED = {"certificate-private-keys"}
KEY = bytes(range(32, 64))
USER = "C:\\Users\\builder"
WINLOGON = "HKLM\\SOFTWARE\\Microsoft\\Windows NT\\CurrentVersion\\Winlogon"


def fake(n: int, alphabet: str = string.ascii_letters + string.digits) -> str:
    rng = random.SystemRandom()
    return "".join(rng.choice(alphabet) for _ in range(n))


def windows_plants() -> tuple[dict[str, Any], dict[str, str], list[str]]:
    """A scenario ``guest:`` mapping with one target of every modelled Windows rule."""
    files: list[dict[str, str]] = []
    expected: dict[str, str] = {}
    secrets: list[str] = []

    def put(rule: str, path: str, content: str, *values: str) -> None:
        files.append({"path": path, "content": content})
        expected.setdefault(rule, path)
        secrets.extend(values)

    body = "\n".join(fake(64, string.ascii_letters + string.digits + "+/") for _ in range(6))
    key = f"-----BEGIN RSA PRIVATE KEY-----\n{body}\n-----END RSA PRIVATE KEY-----\n"
    put("ssh-authorized-keys", "C:\\ProgramData\\ssh\\administrators_authorized_keys", "ssh-ed25519 AAAA b\n")
    put("ssh-user-private-key", f"{USER}\\.ssh\\id_rsa", key, body)
    expected["private-key-block"] = f"{USER}\\.ssh\\id_rsa"
    put("ssh-host-private-key", "C:\\ProgramData\\ssh\\ssh_host_ed25519_key", "host key\n")
    put("keystore-files", "C:\\build\\signing.pfx", "0\x82pfx")
    put("app-secret-files", "C:\\inetpub\\app\\.env", "DEBUG=1\n")
    db = fake(16)
    put(
        "app-config-credentials",
        "C:\\inetpub\\app\\web.config",
        f'<connectionStrings><add name="db" connectionString="Server=sql;Password={db}" />\n',
        db,
    )
    put("azure-cli-credentials", f"{USER}\\.azure\\msal_token_cache.json", '{"RefreshToken": {}}\n')
    put("aws-cli-credentials", f"{USER}\\.aws\\credentials", "[default]\n")
    put("gcloud-credentials", f"{USER}\\AppData\\Roaming\\gcloud\\credentials.db", "SQLite format 3")
    put("kube-config", f"{USER}\\.kube\\config", "apiVersion: v1\n")
    auth = base64.b64encode(f"builder:{fake(12)}".encode()).decode()
    put(
        "docker-registry-auth",
        f"{USER}\\.docker\\config.json",
        f'{{"auths": {{"r": {{"auth": "{auth}"}}}}}}',
        auth,
    )
    git = fake(16)
    put("credential-dotfiles", f"{USER}\\.git-credentials", f"https://builder:{git}@git.example\n", git)
    plain = fake(14)
    put("unattend-answer-files", "C:\\unattend.xml", f"<AutoLogon><Password><Value>{plain}</Value>", plain)
    put("azure-custom-data-windows", "C:\\AzureData\\CustomData.bin", "Write-Host bootstrap\n")
    history = fake(14)
    put(
        "psreadline-history",
        f"{USER}\\AppData\\Roaming\\Microsoft\\Windows\\PowerShell\\PSReadLine\\ConsoleHost_history.txt",
        f"Connect-Thing -Password {history}\n",
        history,
    )
    put(
        "saved-windows-credentials",
        f"{USER}\\AppData\\Roaming\\Microsoft\\Credentials\\DFBE70A7E5CC19A3",
        "blob",
    )
    rdp = fake(48, "0123456789ABCDEF")
    put("rdp-file-password", f"{USER}\\Desktop\\jump.rdp", f"password 51:b:{rdp}\n", rdp)
    put(
        "azure-extension-settings-windows",
        "C:\\Packages\\Plugins\\Microsoft.Compute.CustomScriptExtension\\1.10.15\\RuntimeSettings\\0.settings",
        '{"runtimeSettings": []}',
    )
    put("windows-setup-leftovers", "C:\\Windows\\Setup\\Scripts\\SetupComplete.cmd", "@echo off\n")
    put("powershell-transcripts", f"{USER}\\Documents\\PowerShell_transcript.WIN.x1.20240101.txt", "**\n")
    storage = fake(86, string.ascii_letters + string.digits + "+/") + "=="
    put("azure-storage-connection-string", "C:\\build\\storage.txt", f"AccountKey={storage};", storage)
    sig = fake(43) + "%3D"
    put(
        "azure-sas-signature",
        "C:\\WindowsAzure\\Logs\\ext.log",
        f"GET https://s.blob/c?sv=1&sig={sig}\n",
        sig,
    )
    entra = f"{fake(3)}8Q~{fake(34)}"
    put("entra-client-secret", "C:\\build\\entra.txt", f"secret: {entra}\n", entra)
    key_id = "AKIA" + fake(16, string.ascii_uppercase + string.digits)
    aws = fake(40)
    put(
        "aws-access-key",
        "C:\\build\\aws.ps1",
        f"$id = '{key_id}'\n$aws_secret_access_key = '{aws}'\n",
        key_id,
        aws,
    )
    expected["aws-secret-access-key"] = "C:\\build\\aws.ps1"
    tokens = {
        "github-token": "ghp_" + fake(36),
        "gitlab-token": "glpat-" + fake(20),
        "slack-token": "xoxb-" + fake(40),
        "npm-token": "npm_" + fake(36),
        "pypi-token": "pypi-AgEIcHlwaS5vcmc" + fake(60),
        "jwt": f"eyJhbGciOiJSUzI1NiJ9.eyJ{fake(40)}.{fake(43)}",
    }
    for rule, token in tokens.items():
        put(rule, f"C:\\build\\{rule}.txt", f"value {token}\n", token)
    key_hex = fake(40, "0123456789abcdef")
    put("gcp-service-account-key", "C:\\build\\sa.json", f'{{"private_key_id": "{key_hex}"}}', key_hex)
    pw = f"{fake(10)}-{fake(4)}"
    put("password-assignment", "C:\\Windows\\Temp\\setup.log", f"db_password={pw}\n", pw)
    hidden = base64.b64encode((fake(12) + "Password").encode("utf-16-le")).decode()
    put(
        "unattend-encoded-password", "C:\\build\\answer.xml", f"<Password>\n<Value>{hidden}</Value>\n", hidden
    )
    autologon = fake(15)
    expected["autologon-password"] = (
        "HKLM:\\SOFTWARE\\Microsoft\\Windows NT\\CurrentVersion\\Winlogon\\DefaultPassword"
    )
    secrets.append(autologon)
    spec = {"files": files, "registry": {WINLOGON: {"AutoAdminLogon": "1", "DefaultPassword": autologon}}}
    return spec, expected, secrets


@pytest.fixture(scope="module")
def planted() -> tuple[dict[str, Any], dict[str, str], list[str], dict[str, Any]]:
    spec, expected, secrets = windows_plants()
    machine = build_machine(parse_spec(spec, "win-vm", ADMIN), ADMIN)
    view = ScriptView(windows_script(WINDOWS_RULES, KEY, deadline=300))
    handler = ScanScript()
    assert handler.matches(view)
    result = handler.run(ScriptCall(view, machine, account=f"WIN-VM\\{ADMIN}", is_system=False, via="winrm"))
    assert result.exit_code == 0, result.errors
    return spec, expected, secrets, json.loads(result.stdout)


@pytest.mark.parametrize("rule", [r.id for r in WINDOWS_RULES if r.id not in NOT_MODELLED])
def test_every_windows_rule_finds_its_plant(planted: tuple[Any, ...], rule: str) -> None:
    _, expected, _, document = planted
    paths = {f["path"] for f in document["findings"] if f["rule"] == rule}
    assert expected[rule] in paths


def test_a_clean_windows_machine_has_only_what_azure_leaves_in_panther() -> None:
    machine = build_machine(parse_spec({}, "win-vm", ADMIN), ADMIN)
    view = ScriptView(windows_script(WINDOWS_RULES, KEY, deadline=300))
    result = ScanScript().run(ScriptCall(view, machine, account="x", is_system=False, via="winrm"))
    document = json.loads(result.stdout)
    parsed = parse_scan_output(document, "Windows", DeprovisionContext("sysprep"))
    # Azure's cached answer file is there on every VM, and our sysprep step deletes it
    assert [(f.rule_id, f.path) for f in parsed.findings] == [
        ("unattend-answer-files", "C:\\Windows\\Panther\\unattend.xml")
    ]
    assert parsed.blocking() == [] and parsed.findings[0].removed_by_action


def test_windows_values_never_leave_the_model(planted: tuple[Any, ...]) -> None:
    _, _, secrets, document = planted
    text = json.dumps(document)
    result = parse_scan_output(document, "Windows", DeprovisionContext("sysprep"))
    outputs = [text, repr(result)] + [f.summary() for f in result.findings]
    for secret in secrets:
        assert all(secret[:12] not in out and secret[-12:] not in out for out in outputs)


@pytest.fixture
def scan_handler_plugged(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    monkeypatch.setattr(powershell, "_PLUGGED", [ScanScript()])
    yield


@pytest.mark.slow
def test_scan_guest_over_winrm(boot_windows, winrm_password, scan_handler_plugged) -> None:  # type: ignore[no-untyped-def]
    spec, expected, secrets = windows_plants()
    booted = boot_windows(spec=spec)
    seen: list[str] = []
    with booted.connect("http") as guest:
        result = scan_guest(
            guest,
            load_rules(),
            key=KEY,
            deadline=time.monotonic() + 120,
            context=DeprovisionContext("sysprep"),
            progress=seen.append,
        )
    assert result.complete, result.errors
    assert booted.handlers_run()[-1] == "scan"
    found = {(f.rule_id, f.path) for f in result.findings}
    for rule, path in expected.items():
        assert (rule, path) in found
    panther = [f for f in result.findings if f.path == "C:\\Windows\\Panther\\unattend.xml"]
    assert panther and all(f.removed_by_action for f in panther)
    assert not next(f for f in result.findings if f.path == "C:\\unattend.xml").removed_by_action
    assert seen and seen[-1].startswith("phase=done")
    for secret in secrets:
        assert all(secret[:12] not in f.summary() for f in result.findings)
