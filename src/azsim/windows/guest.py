"""``WindowsGuest``: a Windows VM's inside as ARM sees it (``azsim.guestapi.GuestController``).

Two WinRM listeners on 127.0.0.1 (HTTPS with azsim's certificate, and plain HTTP for tests) in
front of one WS-Man service; commands run on worker threads against the machine model. Run
Command runs scripts as SYSTEM. When sysprep shuts the machine down from inside, the listeners
close and ``ctx.on_guest_shutdown()`` tells ARM, which then shows the VM *stopped*.
"""

from __future__ import annotations

import base64
import gzip
import logging
import re
import ssl
import threading
from collections.abc import Iterable
from typing import Any

from azsim.guestapi import GuestContext, Platform
from azsim.windows import cmdline
from azsim.windows.auth import Authenticator, channel_bindings_for
from azsim.windows.endpoint import WinRmListener
from azsim.windows.listener import HttpsListenerSetup
from azsim.windows.model import ScriptRun, WindowsMachine
from azsim.windows.powershell import (
    HandlerRegistry,
    PsError,
    ScriptCall,
    ScriptHandler,
    ScriptResult,
    ScriptView,
    clixml_stderr,
    default_handlers,
    format_error,
    sets_console_utf8,
    silences_progress,
    unknown_script,
)
from azsim.windows.spec import parse_spec
from azsim.windows.wsman import SIGNALLED_EXIT, Command, Shell, WsmanService

log = logging.getLogger(__name__)
SYSTEM_ACCOUNT = "NT AUTHORITY\\SYSTEM"


class GuestNotRunning(RuntimeError):
    """Run Command on a VM that is not running."""


#: imageready.guest.runcommand's PowerShell envelope (a scriptblock, then gzip + base64 of its output)
_RUN_COMMAND_ENVELOPE = re.compile(
    r"^\$irScript = \{\r?\n(.*)\r?\n\}  # imageready: end of script$.*GZipStream.*ToBase64String",
    re.DOTALL | re.MULTILINE,
)


def _drop_now(network: Any) -> bool:
    """A ``guest_drop`` fault of this VM fires now (consumed): the WinRM connection is reset."""
    fault = network.drop()
    return fault is not None and bool(network.consume(fault))


class WindowsGuest:
    """One Windows VM's guest: WinRM endpoints over a machine model."""

    def __init__(self, ctx: GuestContext, *, handlers: Iterable[ScriptHandler] = ()) -> None:
        if not ctx.admin_password:
            raise ValueError(f"{ctx.resource_group}/{ctx.vm_name}: a Windows guest needs an admin password")
        spec = parse_spec(ctx.spec, ctx.vm_name, ctx.admin_user)
        ctx.state_dir.mkdir(parents=True, exist_ok=True)
        ctx.content_dir.mkdir(parents=True, exist_ok=True)
        self.ctx = ctx
        # the machine is what is on the OS disk: a copy of a disk boots the source's machine
        self.machine = WindowsMachine.open(spec, ctx.admin_user, ctx.content_dir)
        self.machine.power = self
        if ctx.platform is None:
            ctx.platform = Platform.for_vm(ctx.resource_group, ctx.vm_name, "Windows")
        self.machine.platform = ctx.platform
        self.handlers = HandlerRegistry([*handlers, HttpsListenerSetup(ctx.tls_cert), *default_handlers()])
        self.service = WsmanService(self.machine.hostname, self._start_command, self.machine.close_shell)
        network = ctx.network
        if network is not None:
            self.service.drop_receive = lambda: _drop_now(network)
        auth = Authenticator(
            user=ctx.admin_user,
            password=ctx.admin_password,
            hostname=self.machine.hostname,
            store=ctx.state_dir / "winrm" / "ntlm-users",
            basic=spec.winrm_basic,
            allow_unencrypted=spec.winrm_allow_unencrypted,
        )
        tls = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        tls.minimum_version = ssl.TLSVersion.TLSv1_2
        tls.load_cert_chain(ctx.tls_cert, ctx.tls_key)
        self.https = WinRmListener(
            self.service, auth, tls=tls, channel_bindings=channel_bindings_for(ctx.tls_cert)
        )
        self.http = WinRmListener(self.service, auth)
        self._lock = threading.Lock()
        self._running = False
        self._workers: set[threading.Thread] = set()
        self._workers_lock = threading.Lock()

    def __repr__(self) -> str:
        return f"WindowsGuest({self.ctx.resource_group}/{self.ctx.vm_name}, running={self._running})"

    # --- GuestController

    def start(self) -> None:
        with self._lock:
            if self._running:
                return
            self.service.start()
            self.machine.boot()
            self.https.start()
            self.http.start()
            self._running = True

    def stop(self) -> None:
        self._stop()

    def _stop(self) -> bool:
        """Power off; False if it was off already."""
        with self._lock:
            if not self._running:
                return False
            self._running = False
            self.service.stop()
            self.machine.power_off()
            self.https.stop()
            self.http.stop()
            with self._workers_lock:
                workers = [w for w in self._workers if w is not threading.current_thread()]
            for worker in workers:
                worker.join(timeout=5)
            return True

    @property
    def running(self) -> bool:
        return self._running

    def endpoints(self) -> dict[str, str]:
        return {"winrm_https": self.https.address, "winrm_http": self.http.address}

    def run_command(self, script: str, timeout: float) -> tuple[int, str, str]:
        """Azure Run Command: the script runs as SYSTEM through the guest agent."""
        if not self._running:
            raise GuestNotRunning(f"{self.ctx.vm_name} is not running")
        envelope = _RUN_COMMAND_ENVELOPE.search(script)
        if envelope is not None:
            # the harness's envelope: run the script it holds, then do what its tail does with the
            # output (gzip, base64, markers), as PowerShell would
            code, out, err = self.run_command(envelope.group(1), timeout)
            packed = base64.b64encode(gzip.compress(out.strip().encode("utf-8"))).decode("ascii")
            return 0, f"IR-B64:{packed}\r\nIR-RC={code}\r\n", err
        cancelled = threading.Event()
        outcome: list[ScriptResult] = []
        stderr: list[str] = []

        def work() -> None:
            outcome.append(
                self.run_script(
                    ScriptView(script),
                    account=SYSTEM_ACCOUNT,
                    is_system=True,
                    via="run-command",
                    cancelled=cancelled,
                    on_stderr=stderr.append,
                )
            )

        worker = self._spawn(work, "run-command")
        worker.join(timeout)
        if worker.is_alive():
            cancelled.set()
            raise TimeoutError(f"Run Command on {self.ctx.vm_name} did not finish within {timeout:g} s")
        result = outcome[0]
        return result.exit_code, result.stdout, "".join(stderr) + "".join(map(format_error, result.errors))

    def summary(self) -> dict[str, Any]:
        with self.machine.lock:
            return {
                "os": "Windows",
                "running": self._running,
                "hostname": self.machine.hostname,
                "vm_id_shown": self.ctx.vm_platform.shown_vm_id,
                "imds": self.ctx.vm_platform.imds,
                "smbios": self.ctx.vm_platform.smbios,
                "endpoints": self.endpoints(),
                "image_state": self.machine.image_state,
                "sysprep_running": bool(self.machine.running_processes("sysprep")),
                "open_shells": self.service.open_shells(),
                "scripts_run": len(self.machine.history),
                "disk": str(self.ctx.content_dir),
            }

    def close(self) -> None:
        self.stop()

    # --- model.Power: the machine turning itself off

    def shutdown_from_inside(self) -> None:
        if self._stop():
            self.ctx.on_guest_shutdown()

    def reboot_from_inside(self) -> None:
        if self._stop():
            self.start()

    # --- running scripts

    def run_script(
        self,
        view: ScriptView,
        *,
        account: str,
        is_system: bool,
        via: str,
        cancelled: threading.Event,
        on_stderr: Any = None,
        shell_id: str | None = None,
    ) -> ScriptResult:
        """Answer one PowerShell script with the first handler that understands it."""
        handler = self.handlers.find(view)
        if handler is None:
            result, name = unknown_script(view), "unknown"
        else:
            name = handler.name
            call = ScriptCall(
                view,
                self.machine,
                account=account,
                is_system=is_system,
                via=via,
                cancelled=cancelled,
                on_stderr=on_stderr,
                shell_id=shell_id,
            )
            try:
                result = handler.run(call)
            except Exception as err:  # a model bug must fail the script, loudly
                log.exception("Windows model handler %s failed", name)
                result = ScriptResult(errors=[PsError(f"azsim: handler {name} failed: {err}")], exit_code=1)
        self.machine.record(ScriptRun(account, via, name, view.text, result.exit_code))
        return result

    def _spawn(self, target: Any, name: str) -> threading.Thread:
        def run() -> None:
            try:
                target()
            finally:
                with self._workers_lock:
                    self._workers.discard(threading.current_thread())

        worker = threading.Thread(target=run, name=f"{self.ctx.vm_name}-{name}", daemon=True)
        with self._workers_lock:
            self._workers.add(worker)
        worker.start()
        return worker

    def _start_command(self, shell: Shell, command: Command) -> None:
        self._spawn(lambda: self._execute(shell, command), f"cmd-{command.id[:8]}")

    def _execute(self, shell: Shell, command: Command) -> None:
        codepage = "utf-8" if shell.codepage == 65001 else "cp437"
        try:
            program, arguments = command.command_line
            try:
                call = cmdline.parse(program, arguments)
            except cmdline.CommandLineError as err:
                command.write("stderr", f"{err}\r\n".encode(codepage, errors="replace"))
                command.finish(err.exit_code)
                return
            if isinstance(call, cmdline.CmdCall):
                out, err_text, code = cmdline.run_builtin(call, self.machine, shell.owner)
                self.machine.record(ScriptRun(shell.owner, "winrm", "cmd", call.line, code))
                command.write("stdout", out.encode(codepage, errors="replace"))
                command.write("stderr", err_text.encode(codepage, errors="replace"))
                command.finish(code)
                return
            self._execute_powershell(shell, command, call)
        except Exception as err:
            log.exception("WinRS command failed in the model")
            command.write("stderr", f"azsim: internal error: {err}\r\n".encode())
            command.finish(1)

    def _execute_powershell(self, shell: Shell, command: Command, call: cmdline.PowerShellCall) -> None:
        script, settings = call.script, call.script
        if call.from_stdin:
            data = command.read_stdin()
            if data is None:
                command.finish(SIGNALLED_EXIT)
                return
            utf8_in = shell.codepage == 65001 or sets_console_utf8(call.script, "Input")
            script = data.decode("utf-8" if utf8_in else "cp437", errors="replace")
            settings = call.script + "\n" + script
        # Windows PowerShell writes the console's OEM code page unless told to write UTF-8
        utf8_out = shell.codepage == 65001 or sets_console_utf8(settings, "Output")
        encoding = "utf-8" if utf8_out else "cp437"
        view = ScriptView(script)
        result = self.run_script(
            view,
            account=shell.owner,
            is_system=False,
            via="winrm",
            cancelled=command.cancelled,
            on_stderr=lambda text: command.write("stderr", text.encode(encoding, errors="replace")),
            shell_id=shell.id,
        )
        if call.encoded:  # -EncodedCommand: stderr carries serialized records (CLIXML)
            noise = not silences_progress(settings) and bool(view.cmdlets())
            stderr = clixml_stderr(result.errors, progress_noise=noise)
        else:
            stderr = "".join(map(format_error, result.errors))
        command.write("stdout", result.stdout.encode(encoding, errors="replace"))
        command.write("stderr", stderr.encode(encoding, errors="replace"))
        command.finish(SIGNALLED_EXIT if command.cancelled.is_set() else result.exit_code)
