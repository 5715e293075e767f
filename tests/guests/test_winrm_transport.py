"""The harness's WinRM transport (real pywinrm) against an azsim Windows guest."""

from __future__ import annotations

import base64
import socket
import threading
import time

import pytest
from conftest_windows import ADMIN, PASSWORD, VM_KEY, Booted, boot_windows, windows_tls, winrm_password

from imageready.facts import windows as windows_facts
from imageready.guest.base import (
    GuestAuthError,
    GuestDisconnected,
    GuestTimeout,
    GuestUnreachable,
)
from imageready.guest.winrm import (
    BOOTSTRAP_PS1,
    PASSWORD_ENV,
    POWERSHELL_ARGS,
    STDIN_CHUNK,
    WinRmGuest,
    clean_stderr,
    connect_winrm,
)

__all__ = ["boot_windows", "windows_tls", "winrm_password"]
pytestmark = pytest.mark.azsim


@pytest.mark.parametrize("scheme", ["https", "http"])
def test_facts_round_trip(boot_windows, winrm_password, scheme: str) -> None:
    # HTTPS validates the certificate against the CA; HTTP runs NTLM with message encryption
    booted: Booted = boot_windows()
    with booted.connect(scheme) as guest:
        result = guest.run(windows_facts.SCRIPT, timeout=30)
    assert result.exit_code == 0, result.stderr
    facts = windows_facts.parse(result.stdout)
    assert facts["hostname"] == "WIN-VM"
    assert facts["user"]["name"] == f"WIN-VM\\{ADMIN}"
    assert result.stderr == b""
    assert booted.handlers_run() == ["facts"]
    assert booted.guest.service.open_shells() == 0


def test_https_records_certificate_evidence(boot_windows, winrm_password) -> None:
    booted = boot_windows()
    guest = booted.connect("https")
    evidence = guest.identity.evidence["tls_cert_sha256"]
    assert len(evidence) == 64
    assert PASSWORD not in repr(guest) and PASSWORD not in str(guest.identity)


def test_bootstrap_is_short_and_script_travels_on_stdin(boot_windows, winrm_password) -> None:
    # a script far over cmd.exe's 8191 characters and over one envelope arrives whole
    booted = boot_windows()
    lines = [f"Write-Output 'line {i:06d}'" for i in range(20000)]
    script = "\n".join(lines)
    assert len(script) > 3 * STDIN_CHUNK
    assert len(" ".join(["powershell.exe", *POWERSHELL_ARGS])) < 1000
    with booted.connect("http") as guest:
        result = guest.run(script, timeout=60)
    assert result.exit_code == 0
    out = result.text().splitlines()
    assert out[0] == "line 000000" and out[-1] == "line 019999" and len(out) == 20000
    assert booted.machine.history[-1].script == script


def test_command_line_limit_is_enforced_by_the_guest(boot_windows) -> None:
    # what the harness avoids: a long script on the command line fails as on Windows
    booted = boot_windows()
    session = booted.raw_session()
    response = session.run_ps("Write-Output '" + "x" * 5000 + "'")
    assert response.status_code == 1
    assert b"The command line is too long." in response.std_err


def test_utf8_output_and_non_ascii(boot_windows, winrm_password) -> None:
    booted = boot_windows()
    with booted.connect("https") as guest:
        result = guest.run("Write-Output 'Grüße ✓ Ω'", timeout=10)
    assert result.text().strip() == "Grüße ✓ Ω"
    # without the bootstrap's [Console]::OutputEncoding, Windows PowerShell writes the OEM code page
    session = booted.raw_session()
    raw = session.run_ps("Write-Output 'Grüße ✓ Ω'")
    assert raw.std_out.decode("utf-8", "replace").strip() != "Grüße ✓ Ω"


def test_errors_arrive_without_clixml(boot_windows, winrm_password) -> None:
    booted = boot_windows()
    with booted.connect("http") as guest:
        result = guest.run("Write-Output 'before'\nWrite-Error 'the thing broke'", timeout=10)
    assert result.exit_code == 1
    assert result.text().strip() == "before"
    assert b"CLIXML" not in result.stderr
    assert result.stderr.startswith(b"the thing broke\r\n")


def test_clean_stderr_strips_progress_records_from_real_output(boot_windows) -> None:
    # pywinrm's run_ps sends no $ProgressPreference: module loading shows up as CLIXML noise
    booted = boot_windows()
    session = booted.raw_session()
    shell = session.protocol.open_shell()
    script = "Write-Error 'bad'; Start-Sleep 0"
    command = session.protocol.run_command(
        shell, "powershell", ["-EncodedCommand", base64.b64encode(script.encode("utf-16-le")).decode()]
    )
    _out, err, _code = session.protocol.get_command_output(shell, command)
    session.protocol.close_shell(shell)
    assert err.startswith(b"#< CLIXML") and b'S="progress"' in err
    assert clean_stderr(err).startswith(b"bad\r\n")
    assert b"Preparing modules" not in clean_stderr(err)
    assert clean_stderr(b"PROGRESS 1/2\r\n" + err).startswith(b"PROGRESS 1/2\r\nbad")


def test_progress_lines_stream_before_the_command_ends(boot_windows, winrm_password) -> None:
    booted = boot_windows()
    seen: list[tuple[str, float]] = []
    script = (
        "[Console]::Error.WriteLine('PROGRESS scanning C:')\n"
        "Start-Sleep -Milliseconds 1500\n"
        "[Console]::Error.WriteLine('PROGRESS done')\n"
        "Write-Output 'ok'"
    )
    with booted.connect("http") as guest:
        started = time.monotonic()
        result = guest.run(
            script, timeout=20, on_progress=lambda line: seen.append((line, time.monotonic() - started))
        )
    assert [line for line, _ in seen] == ["scanning C:", "done"]
    assert seen[0][1] < 1.2 <= result.duration
    assert b"PROGRESS scanning C:" in result.stderr


def test_deadline_terminates_the_command(boot_windows, winrm_password) -> None:
    booted = boot_windows()
    with booted.connect("https") as guest:
        started = time.monotonic()
        with pytest.raises(GuestTimeout) as caught:
            guest.run("Start-Sleep -Seconds 60", timeout=2)
        elapsed = time.monotonic() - started
    message = str(caught.value)
    assert "\n" not in message and "did not finish within 2 s" in message and VM_KEY in message
    assert 1.9 <= elapsed < 6
    assert booted.guest.service.open_shells() == 0
    # the model records a script when its handler returns: a terminated one, just after the client
    # has its answer (on a loaded machine, a moment later)
    deadline = time.monotonic() + 5
    while not booted.machine.history and time.monotonic() < deadline:
        time.sleep(0.05)
    assert booted.machine.history[-1].script == "Start-Sleep -Seconds 60"


def test_long_polls_time_out_on_the_server_and_are_repeated(boot_windows, winrm_password) -> None:
    booted = boot_windows()
    with booted.connect("http", operation_timeout=1) as guest:
        result = guest.run("Start-Sleep -Milliseconds 2600\nWrite-Output 'awake'", timeout=20)
    assert result.text().strip() == "awake"
    assert booted.guest.service.stats["receive_timeouts"] >= 2


def test_wrong_password_is_one_line(boot_windows, monkeypatch: pytest.MonkeyPatch) -> None:
    booted = boot_windows()
    monkeypatch.setenv(PASSWORD_ENV, "not-the-password")
    for scheme in ("https", "http"):
        with pytest.raises(GuestAuthError) as caught:
            booted.connect(scheme)
        message = str(caught.value)
        assert "\n" not in message and "refused the credentials" in message
        assert "not-the-password" not in message


def test_missing_password_says_where_to_put_it(boot_windows, monkeypatch: pytest.MonkeyPatch) -> None:
    booted = boot_windows()
    monkeypatch.delenv(PASSWORD_ENV, raising=False)
    with pytest.raises(GuestAuthError, match=PASSWORD_ENV):
        booted.connect("https")


def test_password_from_a_source_callable(boot_windows, monkeypatch: pytest.MonkeyPatch) -> None:
    booted = boot_windows()
    monkeypatch.delenv(PASSWORD_ENV, raising=False)
    calls: list[int] = []

    def key_vault() -> str:
        calls.append(1)
        return PASSWORD

    with booted.connect("https", password_source=key_vault) as guest:
        assert guest.run("Write-Output 'kv'", timeout=10).text().strip() == "kv"
    assert calls == [1]


def test_untrusted_certificate_is_refused(boot_windows, winrm_password, tmp_path) -> None:
    from azsim.tls import TlsFiles, make_ca_and_server_cert

    other = TlsFiles.in_state_dir(tmp_path / "other-ca")
    make_ca_and_server_cert(other)
    booted = boot_windows()
    with pytest.raises(GuestUnreachable) as caught:
        booted.connect("https", ca_bundle=other.ca_cert)
    assert "certificate" in str(caught.value) and "\n" not in str(caught.value)


def test_stopped_guest_is_unreachable(boot_windows, winrm_password) -> None:
    booted = boot_windows()
    booted.guest.stop()
    with pytest.raises(GuestUnreachable, match="connection refused"):
        booted.connect("http")


def test_guest_going_down_mid_command_is_a_disconnect(boot_windows, winrm_password) -> None:
    booted = boot_windows()
    guest = booted.connect("http")
    threading.Timer(0.7, booted.guest.stop).start()
    with pytest.raises(GuestDisconnected, match="dropped while the command ran"):
        guest.run("Start-Sleep -Seconds 30", timeout=20)


def test_connection_is_reused_and_survives_a_guest_restart(boot_windows, winrm_password) -> None:
    booted = boot_windows()
    guest = booted.connect("http")
    assert guest.run("Write-Output 'one'", timeout=10).text().strip() == "one"
    booted.guest.stop()
    booted.guest.start()
    assert booted.address("http") == guest.endpoint.split("//")[1].split("/")[0]
    assert guest.run("Write-Output 'two'", timeout=10).text().strip() == "two"
    guest.close()


def test_unknown_script_fails_loudly(boot_windows, winrm_password) -> None:
    booted = boot_windows()
    with booted.connect("http") as guest:
        result = guest.run("Get-Frobnicator -All | Set-Widget", timeout=10)
    assert result.exit_code == 1
    assert b"no handler of the Windows model answers this script" in result.stderr
    assert b"Get-Frobnicator" in result.stderr


def test_stdin_is_refused_for_windows(boot_windows, winrm_password) -> None:
    booted = boot_windows()
    with booted.connect("http") as guest, pytest.raises(ValueError, match="no stdin"):
        guest.run("Write-Output 1", timeout=5, stdin=b"data")


def test_basic_auth_over_https_when_enabled(boot_windows, winrm_password) -> None:
    booted = boot_windows({"winrm": {"basic": True}})
    with booted.connect("https", auth="basic") as guest:
        assert guest.run("Write-Output 'basic'", timeout=10).text().strip() == "basic"
    # Basic over plain HTTP is refused unless AllowUnencrypted
    with pytest.raises(GuestAuthError):
        booted.connect("http", auth="basic")


def test_address_parsing() -> None:
    guest = WinRmGuest("::1", 5986, ADMIN, vm_key=VM_KEY)
    assert guest.endpoint == "https://[::1]:5986/wsman"
    with pytest.raises(ValueError, match="HOST or HOST:PORT"):
        connect_winrm("host:notaport", ADMIN, vm_key=VM_KEY)


def test_bootstrap_decodes_to_the_documented_script() -> None:
    assert base64.b64decode(POWERSHELL_ARGS[-1]).decode("utf-16-le") == BOOTSTRAP_PS1
    assert POWERSHELL_ARGS[:4] == ("-NoProfile", "-NonInteractive", "-ExecutionPolicy", "Bypass")


def test_nothing_listens_off_loopback(boot_windows) -> None:
    booted = boot_windows()
    for scheme in ("https", "http"):
        host, port = booted.address(scheme).rsplit(":", 1)
        assert host == "127.0.0.1"
        with socket.create_connection((host, int(port)), timeout=2):
            pass


def test_an_error_whose_reason_is_a_string_is_classified_not_crashed() -> None:
    """urllib3's MaxRetryError carries its reason as an exception or as a string; following a
    string as a cause crashed the classification ('str' object has no attribute '__cause__'),
    which turned every guest of a 200-VM fleet into 'guest unreachable'."""
    from imageready.guest.winrm import _refused

    class Wrapped(Exception):
        def __init__(self, reason: object) -> None:
            super().__init__("max retries exceeded")
            self.reason = reason

    assert _refused(Wrapped("Connection aborted")) is False
    assert _refused(Wrapped(ConnectionRefusedError(111, "Connection refused"))) is True
