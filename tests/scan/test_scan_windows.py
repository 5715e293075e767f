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
from imageready.scan import DeprovisionContext, load_rules, rules_for, scan_guest
from imageready.scan.findings import parse_scan_output
from imageready.scan.remote import windows_script

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
        "container-registry-auth",
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
    new_rule_plants(put)
    autologon = fake(15)
    expected["autologon-password"] = (
        "HKLM:\\SOFTWARE\\Microsoft\\Windows NT\\CurrentVersion\\Winlogon\\DefaultPassword"
    )
    secrets.append(autologon)
    spec = {"files": files, "registry": {WINLOGON: {"AutoAdminLogon": "1", "DefaultPassword": autologon}}}
    return spec, expected, secrets


def new_rule_plants(put: Any) -> None:
    psk = fake(12)
    put(
        "network-pre-shared-key",
        "C:\\ProgramData\\Microsoft\\Wlansvc\\Profiles\\Interfaces\\{4A1B}\\{9C2D}.xml",
        f"<sharedKey>\n<keyType>passPhrase</keyType>\n<protected>false</protected>\n<keyMaterial>{psk}</keyMaterial>",
        psk,
    )
    wg = base64.b64encode(bytes(random.SystemRandom().getrandbits(8) for _ in range(32))).decode()
    put("wireguard-private-key", "C:\\Program Files\\WireGuard\\Data\\wg0.conf", f"PrivateKey = {wg}\n", wg)
    static = "\n".join(fake(32, "0123456789abcdef") for _ in range(8))
    put(
        "openvpn-static-key",
        f"{USER}\\OpenVPN\\config\\ta.key",
        f"-----BEGIN OpenVPN Static key V1-----\n{static}\n-----END OpenVPN Static key V1-----\n",
        *static.splitlines(),
    )
    client = base64.b64encode(f"-----BEGIN RSA PRIVATE KEY-----\n{fake(64)}\n".encode()).decode()
    put("kubeconfig-client-key", f"{USER}\\.kube\\admin.conf", f"    client-key-data: {client}\n", client)
    token = fake(40)
    put(
        "container-registry-token",
        f"{USER}\\AppData\\Roaming\\helm\\registry\\config.json",
        f'{{"auths": {{"r": {{"identitytoken": "{token}"}}}}}}',
        token,
    )
    admin = fake(10) + "!"
    put(
        "answer-file-password",
        "C:\\build\\images\\answer.xml",  # an answer file far from Sysprep and Panther
        f"<AdministratorPassword>\n  <Value>{admin}</Value>\n"
        "  <PlainText>true</PlainText>\n</AdministratorPassword>",
        admin,
    )
    xml = fake(12)
    put(
        "xml-password-element",
        "C:\\tools\\FileZilla\\sitemanager.xml",
        f"<Pass>x</Pass><password>{xml}</password>",
        xml,
    )
    dotnet = fake(9) + "$" + fake(4)
    put("dotnet-config-password", "C:\\app\\App.config", f'<add key="DbPassword" value="{dotnet}" />', dotnet)
    secure = fake(12)
    put(
        "powershell-plaintext-password",
        "C:\\build\\setup.ps1",
        f"$p = ConvertTo-SecureString -String '{secure}' -AsPlainText -Force\n",
        secure,
    )
    account = fake(10) + "#"
    put(
        "net-user-password",
        "C:\\Windows\\Setup\\Scripts\\users.cmd",
        f"net user builder {account} /add\n",
        account,
    )


def class_plants() -> tuple[dict[str, Any], set[tuple[str, str]], dict[str, str], list[str]]:
    """The hiding shapes on Windows: a DATALOSS note dropped on C:, a volume mounted in a folder,
    D: on the resource disk, an unreadable file, a huge one, gzip/zip/xz, UTF-16, a text file
    with a binary-looking name, a junction to where a location rule looks."""
    secrets: list[str] = []
    found: set[tuple[str, str]] = set()
    unread: dict[str, str] = {}

    def tok() -> str:
        value = "ghp_" + fake(36)
        secrets.append(value)
        return value

    files = [
        {"path": "C:\\DATALOSS_WARNING_README.txt", "content": "not a temporary disk\n"},
        {"path": "C:\\build\\ci.txt", "content": f"token {tok()}\n"},
        {"path": "C:\\data\\app\\notes.txt", "content": f"token {tok()}\n"},  # folder-mounted volume
        {"path": "D:\\scratch\\leftover.txt", "content": f"token {tok()}\n"},  # the resource disk: excluded
        {
            "path": "E:\\labelled\\notes.txt",
            "content": f"token {tok()}\n",
        },  # a data disk labelled Temporary Storage
        {
            "path": "C:\\build\\locked.txt",
            "content": f"token {tok()}\n",
            "unreadable": "UnauthorizedAccessException",
        },
        {"path": "C:\\build\\bad.txt", "content": "x\n", "unreadable": "IOException"},
        {"path": "C:\\logs\\huge.log", "content": "x\n", "size": 9 * 1024**3},
        {"path": "C:\\logs\\app.log.1.gz", "content": f"line\n{tok()}\n", "compress": "gzip"},
        {"path": "C:\\logs\\bundle.zip", "content": f"line\n{tok()}\n", "compress": "zip"},
        {"path": "C:\\logs\\app.log.2.xz", "content": f"line\n{tok()}\n", "compress": "xz"},
        {"path": "C:\\build\\notes16.txt", "content": f"line\n{tok()}\n", "encoding": "utf-16le"},
        {"path": "C:\\build\\settings.dat", "content": f"token {tok()}\n"},
        {"path": "C:\\AzureData\\setup.bin", "content": f"token {tok()}\n"},
        {"path": "C:\\secrets\\kube\\config", "content": "apiVersion: v1\n"},
        {"path": "C:\\Users\\ops\\.kube", "symlink": "C:\\secrets\\kube"},
    ]
    found |= {
        ("github-token", "C:\\build\\ci.txt"),
        ("github-token", "C:\\data\\app\\notes.txt"),
        ("github-token", "E:\\labelled\\notes.txt"),
        ("github-token", "C:\\logs\\app.log.1.gz"),
        ("github-token", "C:\\logs\\bundle.zip!\\bundle"),
        ("github-token", "C:\\build\\notes16.txt"),
        ("github-token", "C:\\build\\settings.dat"),
        ("github-token", "C:\\AzureData\\setup.bin"),
        ("kube-config", "C:\\Users\\ops\\.kube\\config"),
    }
    unread |= {
        "C:\\build\\locked.txt": "permission denied",
        "C:\\build\\bad.txt": "I/O error: IOException",
        "C:\\logs\\huge.log": "larger than the",
        "C:\\logs\\app.log.2.xz": "compressed (xz or bzip2)",
    }
    spec = {
        "files": files,
        "users": [{"name": "ops"}],
        "volumes": [
            {"mount": "C:", "disk": "os"},
            {"mount": "C:\\data", "disk": "data"},
            {"mount": "D:", "disk": "resource", "label": "Temporary Storage"},
            {"mount": "E:", "disk": "data", "label": "Temporary Storage"},
        ],
    }
    return spec, found, unread, secrets


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


def scan_model(spec: dict[str, Any]) -> dict[str, Any]:
    machine = build_machine(parse_spec(spec, "win-vm", ADMIN), ADMIN)
    view = ScriptView(windows_script(WINDOWS_RULES, KEY, deadline=300))
    result = ScanScript().run(ScriptCall(view, machine, account="x", is_system=False, via="winrm"))
    assert result.exit_code == 0, result.errors
    document: dict[str, Any] = json.loads(result.stdout)
    return document


def test_nothing_is_skipped_in_silence_on_windows() -> None:
    """The resource disk is left out by where Azure attached it, not by its label or a DATALOSS
    note (dropped on C: here, and a data disk labelled "Temporary Storage"); a volume mounted in
    a folder is walked; compressed, UTF-16 and binary-named text is read; a junction shows a
    location rule its target; what cannot be read is listed with the reason."""
    spec, expected_found, expected_unread, secrets = class_plants()
    document = scan_model(spec)
    found = {(f["rule"], f["path"]) for f in document["findings"]}
    assert expected_found <= found, sorted(expected_found - found)
    assert not any(path.startswith("D:\\") for _, path in found)
    excluded = {e["path"]: e["reason"] for e in document["excluded"]}
    assert list(excluded) == ["D:\\"]
    assert "LUN 1 of SCSI controller {f8b3781a-1e82-4818-a1c3-63d806ec15bb}" in excluded["D:\\"]
    unread = {n["path"]: n["reason"] for n in document["not_scanned"]}
    for path, reason in expected_unread.items():
        assert unread.get(path, "").startswith(reason), (path, unread)
    assert document["not_scanned_total"] == len(unread) == len(expected_unread)
    link = next(f for f in document["findings"] if f["path"] == "C:\\Users\\ops\\.kube\\config")
    assert link["detail"] == "via symlink C:\\Users\\ops\\.kube -> C:\\secrets\\kube"
    result = parse_scan_output(document, "Windows", DeprovisionContext("sysprep"))
    assert not result.coverage(None, "rg/win").complete
    text = json.dumps(document)
    assert all(secret[4:16] not in text for secret in secrets)


def test_without_a_resource_disk_d_is_scanned_whatever_it_is_called() -> None:
    """A VM size without a temporary disk: D: is a data disk, even labelled and with the note."""
    value = "ghp_" + fake(36)
    spec = {
        "volumes": [
            {"mount": "C:", "disk": "os"},
            {"mount": "D:", "disk": "data", "label": "Temporary Storage"},
        ],
        "files": [
            {"path": "D:\\DATALOSS_WARNING_README.txt", "content": "WARNING: THIS IS A TEMPORARY DISK.\n"},
            {"path": "D:\\build\\ci.txt", "content": f"token {value}\n"},
        ],
    }
    document = scan_model(spec)
    assert document["excluded"] == []
    assert ("github-token", "D:\\build\\ci.txt") in {(f["rule"], f["path"]) for f in document["findings"]}
