"""``azsim``: start, stop and inspect the local Azure.

    azsim up --scenario FILE [--state-dir DIR] [--guests all|none]
    . DIR/env                      # then: pytest --vm RG/NAME, az, the harness's commands
    azsim status | requests | fault add KIND key=value... | fault list | fault clear
    azsim down

The state directory (default ``$AZSIM_STATE_DIR`` or ``.azsim``) holds everything one instance
generates: CA, server certificate, SSH key pair, secrets, the env file, pid and log.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import secrets
import shlex
import signal
import ssl
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import yaml
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519

from azsim.faults import FaultError, parse_fault
from azsim.scenario import ScenarioError, load_scenario
from azsim.server import StateDir, serve
from azsim.tls import client_context, make_ca_and_server_cert, write_private

UP_TIMEOUT = 300.0
DOWN_TIMEOUT = 30.0


class CliError(Exception):
    """A one-line failure for the user; ``code`` is the exit status."""

    def __init__(self, message: str, code: int = 1) -> None:
        super().__init__(message)
        self.code = code


def default_state_dir() -> Path:
    return Path(os.environ.get("AZSIM_STATE_DIR") or ".azsim")


# -- state directory ---------------------------------------------------------------------------


def _secret(nbytes: int) -> str:
    """A URL-safe random secret that does not start with '-' (command lines would take it for
    an option, as `az login -p @file` does)."""
    while True:
        value = secrets.token_urlsafe(nbytes)
        if value[0].isalnum():
            return value


def prepare_state(state: StateDir) -> None:
    """Fresh CA, server certificate, SSH key pair and secrets for this state directory."""
    state.root.mkdir(parents=True, exist_ok=True)
    state.root.chmod(0o700)
    make_ca_and_server_cert(state.tls)
    key = ed25519.Ed25519PrivateKey.generate()
    write_private(
        state.ssh_key,
        key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.OpenSSH, serialization.NoEncryption()
        ),
    )
    public = key.public_key().public_bytes(serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH)
    state.ssh_key.with_suffix(".pub").write_bytes(public + b" azsim\n")
    generated = {
        "client_secret": _secret(32),
        "admin_token": _secret(32),
        # Windows' complexity rule wants three character classes; the suffix guarantees four
        "admin_password": _secret(18) + "aZ9!",
        "signing_key": secrets.token_hex(32),
    }
    write_private(state.secrets_file, json.dumps(generated).encode())


def write_env(state: StateDir, scenario_tenant: str, scenario_sub: str, client_id: str, port: int) -> None:
    found = state.secrets()
    root = state.root.resolve()
    values = {
        "AZURE_TENANT_ID": scenario_tenant,
        "AZURE_CLIENT_ID": client_id,
        "AZURE_CLIENT_SECRET": found.client_secret,
        "AZURE_AUTHORITY_HOST": f"https://localhost:{port}",
        "AZURE_SUBSCRIPTION_ID": scenario_sub,
        "IMAGEREADY_ARM_ENDPOINT": f"https://127.0.0.1:{port}/",
        "IMAGEREADY_CA_BUNDLE": str(root / "ca.pem"),
        "IMAGEREADY_SSH_KEY": str(root / "ssh" / "id_ed25519"),
        "IMAGEREADY_WINRM_PASSWORD": found.admin_password,
        "IMAGEREADY_GUEST_ADDRESSES": str(root / "guest-addresses.json"),
        "AZSIM_URL": f"https://127.0.0.1:{port}",
        "AZSIM_STATE_DIR": str(root),
        "AZSIM_ADMIN_TOKEN": found.admin_token,
        # MSAL would otherwise ask login.microsoftonline.com about the authority (az CLI)
        "AZURE_CORE_INSTANCE_DISCOVERY": "false",
    }
    lines = [f"# azsim environment for {root} (written by `azsim up`; source it: . {state.env_file})"]
    lines += [f"export {name}={shlex.quote(value)}" for name, value in values.items()]
    write_private(state.env_file, ("\n".join(lines) + "\n").encode())


# -- talking to a running instance ---------------------------------------------------------------


def _pid_alive(pid: int) -> bool:
    """True while ``pid`` runs (a zombie waiting for a reaper counts as gone)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


def _is_azsim(pid: int) -> bool:
    try:
        argv = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    except OSError:
        return False
    return b"azsim" in argv and b"serve" in argv


def _recorded_pid(state: StateDir) -> int | None:
    try:
        return int(state.pid_file.read_text().strip())
    except (OSError, ValueError):
        return None


def admin_call(state: StateDir, method: str, path: str, body: Any = None, timeout: float = 10.0) -> Any:
    """Call the admin API of the instance in ``state``; raises CliError when it cannot."""
    info = state.server_info()
    if info is None:
        raise CliError(f"azsim is not running for {state.root} (no server.json); run `azsim up`")
    if not str(info.get("url", "")).startswith("https://127.0.0.1:"):
        raise CliError(f"{state.server_file}: unexpected url {info.get('url')!r}")
    token = state.secrets().admin_token
    data = None if body is None else json.dumps(body).encode()
    request = urllib.request.Request(  # noqa: S310 (https on loopback, checked above)
        f"{info['url']}{path}",
        data=data,
        method=method,
        headers={"X-Azsim-Admin": token, "Content-Type": "application/json"},
    )
    try:
        with urllib.request.urlopen(  # noqa: S310 (same)
            request, timeout=timeout, context=client_context(state.tls.ca_cert)
        ) as reply:
            return json.loads(reply.read() or b"null")
    except urllib.error.HTTPError as err:
        detail = json.loads(err.read() or b"null") or {}
        raise CliError(f"azsim refused {method} {path}: {detail.get('error', err.reason)}") from None
    except (urllib.error.URLError, ssl.SSLError, OSError) as err:
        reason = getattr(err, "reason", err)
        raise CliError(f"azsim at {info['url']} does not answer ({reason})") from None


# -- commands ------------------------------------------------------------------------------------------


def cmd_up(args: argparse.Namespace) -> int:
    state = StateDir(Path(args.state_dir))
    pid = _recorded_pid(state)
    if pid is not None and _pid_alive(pid) and _is_azsim(pid):
        raise CliError(f"azsim is already running for {state.root} (pid {pid}); run `azsim down` first")
    scenario_path = Path(args.scenario).resolve()
    try:
        load_scenario(scenario_path)  # a bad scenario fails here, in one line, before anything starts
    except ScenarioError as err:
        raise CliError(str(err), 2) from None
    for stale in (state.env_file, state.server_file, state.addresses_file, state.pid_file):
        stale.unlink(missing_ok=True)
    prepare_state(state)
    argv = [
        sys.executable,
        "-m",
        "azsim",
        "serve",
        "--scenario",
        str(scenario_path),
        "--state-dir",
        str(state.root.resolve()),
        "--guests",
        args.guests,
        "--port",
        str(args.port),
    ]
    with open(state.log_file, "ab") as log:
        process = subprocess.Popen(
            argv, stdin=subprocess.DEVNULL, stdout=log, stderr=log, start_new_session=True, close_fds=True
        )
    state.pid_file.write_text(f"{process.pid}\n")
    deadline = time.monotonic() + args.timeout
    status: dict[str, Any] | None = None
    while time.monotonic() < deadline:
        if process.poll() is not None:
            tail = state.log_file.read_text(errors="replace").strip().splitlines()[-5:]
            state.pid_file.unlink(missing_ok=True)
            raise CliError(f"azsim serve exited with status {process.returncode}: " + " | ".join(tail))
        if state.server_info() is not None:
            try:
                status = admin_call(state, "GET", "/azsim/status", timeout=5)
            except CliError:
                status = None
            if status and status.get("ready"):
                break
        time.sleep(0.1)
    else:
        _stop(state)
        _remove_instance_files(state)
        raise CliError(f"azsim did not become ready within {args.timeout:.0f} s (log: {state.log_file})")
    assert status is not None
    if status.get("guest_errors"):
        _stop(state)
        _remove_instance_files(state)
        problems = "; ".join(f"{k}: {v}" for k, v in sorted(status["guest_errors"].items()))
        raise CliError(f"guests failed to start, azsim stopped: {problems}")
    info = state.server_info() or {}
    if not state.env_file.exists():
        raise CliError(f"azsim is up but wrote no {state.env_file} (log: {state.log_file})")
    print(
        f"azsim is up at {info['url']} with {len(status['vms'])} VMs "
        f"(guests: {status['guests']}); use it with: . {state.env_file}"
    )
    return 0


def _stop(state: StateDir, timeout: float = DOWN_TIMEOUT) -> bool:
    """Stop the instance: admin shutdown, then SIGTERM, then SIGKILL. True if one was running.

    ``timeout`` bounds the clean shutdown (guests stopping); SIGTERM gets as long, at most 10 s.
    """
    pid = _recorded_pid(state)
    info = state.server_info()
    if pid is None and info is not None:
        pid = int(info["pid"])
    if pid is None or not _pid_alive(pid) or not _is_azsim(pid):
        return False
    with contextlib.suppress(CliError):  # not answering: the signals below still stop it
        admin_call(state, "POST", "/azsim/shutdown", timeout=min(5.0, timeout))
    for sig, wait in ((None, timeout), (signal.SIGTERM, min(10.0, timeout)), (signal.SIGKILL, 5.0)):
        if sig is not None and _pid_alive(pid):
            # the session azsim up created: its guests' helpers go with it
            target = os.getpgid(pid) if os.getpgid(pid) == pid else None
            if target is not None:
                os.killpg(target, sig)
            else:
                os.kill(pid, sig)
        end = time.monotonic() + wait
        while _pid_alive(pid) and time.monotonic() < end:
            time.sleep(0.05)
        if not _pid_alive(pid):
            return True
    raise CliError(f"azsim (pid {pid}) did not stop")


def _remove_instance_files(state: StateDir) -> None:
    """What only a running instance needs (and its secrets); CA, keys and log stay."""
    for leftover in (
        state.pid_file,
        state.server_file,
        state.env_file,
        state.addresses_file,
        state.secrets_file,
    ):
        leftover.unlink(missing_ok=True)


def cmd_down(args: argparse.Namespace) -> int:
    state = StateDir(Path(args.state_dir))
    was_running = _stop(state, args.timeout)
    _remove_instance_files(state)
    print(f"azsim stopped ({state.root})" if was_running else f"azsim was not running ({state.root})")
    return 0


def cmd_status(args: argparse.Namespace) -> int:
    state = StateDir(Path(args.state_dir))
    print(json.dumps(admin_call(state, "GET", "/azsim/status"), indent=2, sort_keys=True))
    return 0


def cmd_requests(args: argparse.Namespace) -> int:
    state = StateDir(Path(args.state_dir))
    if args.clear:
        admin_call(state, "DELETE", "/azsim/requests")
        return 0
    print(json.dumps(admin_call(state, "GET", "/azsim/requests")["requests"], indent=2))
    return 0


def cmd_fault(args: argparse.Namespace) -> int:
    state = StateDir(Path(args.state_dir))
    if args.fault_command == "add":
        fault: dict[str, Any] = {"kind": args.kind}
        for item in args.settings:
            key, sep, value = item.partition("=")
            if not sep:
                raise CliError(f"fault setting {item!r}: expected KEY=VALUE", 2)
            fault[key] = yaml.safe_load(value)
        try:
            parse_fault(fault)
        except FaultError as err:
            raise CliError(str(err), 2) from None
        print(admin_call(state, "POST", "/azsim/faults", fault)["id"])
    elif args.fault_command == "list":
        print(json.dumps(admin_call(state, "GET", "/azsim/faults")["faults"], indent=2))
    elif args.fault_command == "remove":
        admin_call(state, "DELETE", f"/azsim/faults/{args.id}")
    else:
        admin_call(state, "DELETE", "/azsim/faults")
    return 0


def cmd_serve(args: argparse.Namespace) -> int:
    state = StateDir(Path(args.state_dir))
    if not state.secrets_file.exists():
        prepare_state(state)
    try:
        return serve(
            Path(args.scenario),
            state,
            guests=args.guests,
            port=args.port,
            on_ready=lambda scenario, port: write_env(
                state, scenario.tenant, scenario.subscription_id, scenario.principal.client_id, port
            ),
        )
    except ScenarioError as err:
        raise CliError(str(err), 2) from None


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="azsim", description="A local Azure (ARM + Entra ID over HTTPS, with guests) for imageready."
    )
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument(
        "--state-dir",
        default=str(default_state_dir()),
        help="instance directory (default: $AZSIM_STATE_DIR or .azsim)",
    )
    sub = parser.add_subparsers(dest="command", required=True)

    def guests_option(p: argparse.ArgumentParser) -> None:
        p.add_argument("--scenario", required=True, help="scenario YAML (see scenarios/README.md)")
        p.add_argument(
            "--guests",
            choices=("all", "none"),
            default="all",
            help="'none' serves ARM only, with no guest OS behind the VMs; 'all' (default) "
            "runs the guests the scenario has (unless it says guests: none)",
        )
        p.add_argument("--port", type=int, default=0, help="HTTPS port on 127.0.0.1 (default: a free one)")

    def timeout_option(p: argparse.ArgumentParser, default: float, what: str) -> None:
        p.add_argument("--timeout", type=float, default=default, help=f"seconds {what} (default %(default)s)")

    up = sub.add_parser("up", parents=[common], help="start azsim in the background and write STATE/env")
    guests_option(up)
    timeout_option(up, UP_TIMEOUT, "to wait for ARM and the guests")
    up.set_defaults(func=cmd_up)
    serve_parser = sub.add_parser(
        "serve", parents=[common], help="run azsim in the foreground (what `up` starts)"
    )
    guests_option(serve_parser)
    serve_parser.set_defaults(func=cmd_serve)
    down = sub.add_parser("down", parents=[common], help="stop azsim and its guests")
    timeout_option(down, DOWN_TIMEOUT, "for a clean shutdown before signals")
    down.set_defaults(func=cmd_down)
    sub.add_parser(
        "status",
        parents=[common],
        help="JSON of every VM: power state, OS state, tags, disks, guest endpoints",
    ).set_defaults(func=cmd_status)
    requests_parser = sub.add_parser("requests", parents=[common], help="the request log (JSON)")
    requests_parser.add_argument("--clear", action="store_true", help="empty the log instead")
    requests_parser.set_defaults(func=cmd_requests)
    fault = sub.add_parser("fault", help="add, list or clear injected faults at runtime")
    fault_sub = fault.add_subparsers(dest="fault_command", required=True)
    add = fault_sub.add_parser(
        "add",
        parents=[common],
        help="add a fault, e.g. `azsim fault add throttle count=2 "
        "retry_after=1` (keys as in scenarios/README.md)",
    )
    add.add_argument(
        "kind",
        help="latency | throttle | error | lro_failed | lro_never_ends | "
        "delete_vm | token_expiry | forbidden",
    )
    add.add_argument("settings", nargs="*", metavar="KEY=VALUE")
    fault_sub.add_parser("list", parents=[common], help="the live faults")
    fault_sub.add_parser("clear", parents=[common], help="remove every fault")
    remove = fault_sub.add_parser("remove", parents=[common], help="remove one fault by id")
    remove.add_argument("id")
    fault.set_defaults(func=cmd_fault)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        code: int = args.func(args)
    except CliError as err:
        print(f"azsim: {err}", file=sys.stderr)
        return err.code
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:  # `azsim requests | head`: the reader left, which is fine
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0
    return code
