"""The guest's WS-Man endpoint against clients we did not write: pypsrp and raw pywinrm.

pypsrp builds its own envelopes (ElementTree, upper-case MessageIDs, its own Negotiate/SPNEGO
auth and encryption) and checks RelatesTo itself, so these prove the endpoint speaks WS-Man,
not just what our transport happens to send.
"""

from __future__ import annotations

import base64
import uuid

import pytest
import requests
import winrm
from conftest_windows import ADMIN, PASSWORD, Booted, boot_windows, windows_tls
from pypsrp.client import Client
from pypsrp.exceptions import AuthenticationError, WSManFaultError
from winrm.exceptions import InvalidCredentialsError, WinRMTransportError

__all__ = ["boot_windows", "windows_tls"]
pytestmark = pytest.mark.azsim


def _pypsrp(booted: Booted, scheme: str, password: str = PASSWORD) -> Client:
    https = scheme == "https"
    return Client(
        "127.0.0.1",
        port=booted.port(scheme),
        ssl=https,
        cert_validation=str(booted.tls.ca_cert) if https else False,
        username=ADMIN,
        password=password,
        auth="negotiate",
        no_proxy=True,
    )


@pytest.mark.parametrize("scheme", ["https", "http"])
def test_pypsrp_execute_cmd(boot_windows, scheme: str) -> None:
    booted = boot_windows()
    with _pypsrp(booted, scheme) as client:
        stdout, stderr, rc = client.execute_cmd("whoami")
        assert (stdout, stderr, rc) == (f"win-vm\\{ADMIN}\r\n", "", 0)
        stdout, _, rc = client.execute_cmd("hostname")
        assert (stdout, rc) == ("WIN-VM\r\n", 0)
        _, stderr, rc = client.execute_cmd("frobnicate.exe /now")
        assert rc == 1 and "'frobnicate.exe' is not recognized" in stderr
    assert booted.guest.service.open_shells() == 0
    assert [run.handler for run in booted.machine.history] == ["cmd", "cmd", "cmd"]


def test_pypsrp_wrong_password(boot_windows) -> None:
    booted = boot_windows()
    with pytest.raises(AuthenticationError):
        _pypsrp(booted, "http", password="wrong-password").execute_cmd("whoami")


def test_pypsrp_powershell_remoting_is_not_served(boot_windows) -> None:
    # the PSRP resource URI is a different WinRM plugin; azsim serves the cmd shell only
    booted = boot_windows()
    with pytest.raises(WSManFaultError) as caught:
        _pypsrp(booted, "https").execute_ps("Get-Date")
    assert "resource URI" in str(caught.value)


def test_pywinrm_run_cmd_and_plain_encoded_powershell(boot_windows) -> None:
    booted = boot_windows()
    session = booted.raw_session("https")
    assert session.run_cmd("echo", ["hello", "world"]).std_out == b"hello world\r\n"
    response = session.run_ps("[Console]::Out.Write('encoded')")
    assert (response.status_code, response.std_out) == (0, b"encoded")


def test_pywinrm_wrong_password(boot_windows) -> None:
    booted = boot_windows()
    session = winrm.Session(
        booted.url("http"), auth=(ADMIN, "nope-nope"), transport="ntlm", proxy=None, ca_trust_path=None
    )
    with pytest.raises(InvalidCredentialsError):
        session.run_cmd("whoami")


def test_unencrypted_http_is_refused(boot_windows) -> None:
    # AllowUnencrypted=false: NTLM over HTTP must seal the messages
    booted = boot_windows()
    session = winrm.Session(
        booted.url("http"),
        auth=(ADMIN, PASSWORD),
        transport="ntlm",
        message_encryption="never",
        proxy=None,
        ca_trust_path=None,
    )
    with pytest.raises(WinRMTransportError) as caught:
        session.run_cmd("whoami")
    assert caught.value.code == 400


def test_basic_over_http_only_with_allow_unencrypted(boot_windows) -> None:
    closed = boot_windows({"winrm": {"basic": True}})
    session = winrm.Session(
        closed.url("http"), auth=(ADMIN, PASSWORD), transport="basic", proxy=None, ca_trust_path=None
    )
    with pytest.raises(InvalidCredentialsError):
        session.run_cmd("whoami")
    opened = boot_windows({"winrm": {"basic": True, "allow_unencrypted": True}}, name="win-open")
    session = winrm.Session(
        opened.url("http"), auth=(ADMIN, PASSWORD), transport="basic", proxy=None, ca_trust_path=None
    )
    assert session.run_cmd("hostname").std_out == b"WIN-OPEN\r\n"


def _envelope(action: str, body: str, message_id: str, shell_id: str | None = None) -> bytes:
    selector = (
        f'<w:SelectorSet><w:Selector Name="ShellId">{shell_id}</w:Selector></w:SelectorSet>'
        if shell_id
        else ""
    )
    return (
        '<s:Envelope xmlns:s="http://www.w3.org/2003/05/soap-envelope" '
        'xmlns:a="http://schemas.xmlsoap.org/ws/2004/08/addressing" '
        'xmlns:w="http://schemas.dmtf.org/wbem/wsman/1/wsman.xsd" '
        'xmlns:rsp="http://schemas.microsoft.com/wbem/wsman/1/windows/shell"><s:Header>'
        f"<a:Action>{action}</a:Action><a:MessageID>{message_id}</a:MessageID>"
        "<w:ResourceURI>http://schemas.microsoft.com/wbem/wsman/1/windows/shell/cmd</w:ResourceURI>"
        f"<w:OperationTimeout>PT1S</w:OperationTimeout>{selector}</s:Header><s:Body>{body}</s:Body></s:Envelope>"
    ).encode()


def test_faults_and_relates_to_over_basic_https(boot_windows) -> None:
    # a hand-made client: every answer relates to its request, errors are SOAP faults with HTTP 500
    booted = boot_windows({"winrm": {"basic": True}})
    session = requests.Session()
    session.verify = str(booted.tls.ca_cert)
    session.auth = (ADMIN, PASSWORD)
    session.trust_env = False
    headers = {"Content-Type": "application/soap+xml;charset=UTF-8"}
    shell_ns = "http://schemas.microsoft.com/wbem/wsman/1/windows/shell"

    def post(action: str, body: str, shell: str | None = None) -> tuple[int, str, str]:
        message_id = f"uuid:{uuid.uuid4()}"
        response = session.post(
            booted.url("https"), data=_envelope(action, body, message_id, shell), headers=headers
        )
        return response.status_code, response.text, message_id

    status, text, mid = post(
        "http://schemas.xmlsoap.org/ws/2004/09/transfer/Create",
        "<rsp:Shell><rsp:InputStreams>stdin</rsp:InputStreams><rsp:OutputStreams>stdout stderr"
        "</rsp:OutputStreams></rsp:Shell>",
    )
    assert status == 200 and f"<a:RelatesTo>{mid}</a:RelatesTo>" in text
    shell_id = text.split('Name="ShellId">')[1].split("<")[0]

    status, text, mid = post(
        f"{shell_ns}/Command",
        "<rsp:CommandLine><rsp:Command>powershell -Command -</rsp:Command></rsp:CommandLine>",
        shell_id,
    )
    command_id = text.split("<rsp:CommandId>")[1].split("<")[0]
    # stdin not closed yet: the long poll ends with w:TimedOut after OperationTimeout (1 s)
    receive = (
        f'<rsp:Receive><rsp:DesiredStream CommandId="{command_id}">stdout stderr'
        "</rsp:DesiredStream></rsp:Receive>"
    )
    status, text, mid = post(f"{shell_ns}/Receive", receive, shell_id)
    assert status == 500 and "w:TimedOut" in text and 'Code="2150858793"' in text and mid in text

    script = base64.b64encode(b"Write-Output 'from stdin'").decode()
    send = (
        f'<rsp:Send><rsp:Stream Name="stdin" CommandId="{command_id}" End="true">{script}'
        "</rsp:Stream></rsp:Send>"
    )
    assert post(f"{shell_ns}/Send", send, shell_id)[0] == 200
    output = b""
    for _ in range(10):
        status, text, _ = post(f"{shell_ns}/Receive", receive, shell_id)
        for chunk in text.split('Name="stdout"')[1:]:
            payload = chunk.split(">", 1)[1].split("<", 1)[0]
            output += base64.b64decode(payload)
        if "CommandState/Done" in text:
            break
    assert output == b"from stdin\r\n" and "<rsp:ExitCode>0</rsp:ExitCode>" in text

    status, text, _ = post("http://schemas.xmlsoap.org/ws/2004/09/transfer/Delete", "", shell_id)
    assert status == 200
    status, text, _ = post(f"{shell_ns}/Receive", receive, shell_id)
    assert status == 500 and "w:InvalidSelectors" in text and "shell was not found" in text
    status, text, _ = post("http://schemas.xmlsoap.org/ws/2004/09/enumeration/Enumerate", "", None)
    assert status == 500 and "ActionNotSupported" in text
