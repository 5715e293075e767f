"""The first-boot provisioning script: what Azure's agent does to a fresh VM, plus scenario staging.

The script is POSIX ``sh`` run as root inside the sandbox at its first boot (so ``useradd``,
``ssh-keygen`` and ``dpkg`` are the guest's own) and travels over the boot process's stdin, never
its argv: planted files may hold staged secrets and password hashes. Everything it writes lands
in the VM's overlay upper layer, so later boots find the disk as the first one left it.
"""

from __future__ import annotations

import base64
import hashlib
import re
import shlex
from importlib import resources
from pathlib import PurePosixPath
from string import Template
from xml.sax.saxutils import escape

from azsim.linux.spec import LinuxGuestSpec

#: Azure's DHCP lease (the wire server address is option 245); waagent deletes it on deprovision
_DHCP_LEASE = """lease {
  interface "eth0";
  fixed-address 10.0.0.4;
  option subnet-mask 255.255.255.0;
  option routers 10.0.0.1;
  option dhcp-server-identifier 168.63.129.16;
  option domain-name-servers 168.63.129.16;
  option unknown-245 a8:3f:81:10;
  renew 4 2031/01/02 03:04:05;
}
"""

#: what an image builder typed as root before handing the VM over
_ROOT_HISTORY = "apt-get update\napt-get -y upgrade\nsystemctl status walinuxagent\n"

#: There is no systemd in the sandbox: these stand in for it. PID 1 (azsim's init) powers the
#: VM off or reboots it when signalled; /run/azsim/power says which.
_POWER_BUTTON = """#!/bin/sh
# azsim: the VM's power button (there is no systemd here; PID 1 is azsim's init).
action=poweroff
case "${0##*/}" in reboot) action=reboot ;; esac
for arg in "$@"; do
    case "$arg" in -r|--reboot) action=reboot ;; -c) exit 0 ;; esac
done
echo "$action" > /run/azsim/power
kill -TERM 1
"""

SWAP_FILE = "/swapfile"


_PLATFORM_SETTINGS = re.compile(r"\s*<wa:PlatformSettingsSection>.*</wa:PlatformSettingsSection>", re.DOTALL)


def ovf_env_xml(hostname: str, username: str, public_key: str, state: str = "provisioned") -> str:
    """The ovf-env.xml Azure hands the agent, with the PlatformSettingsSection waagent 2.7 needs.

    Staging (``guest.ovf_env.state``): "no-platform-settings" leaves that section out (waagent
    2.7's OvfEnv then refuses the file: "ovf-env.xml is not found", "Skip delete user", exit 0;
    WALinuxAgent azurelinuxagent/common/protocol/ovfenv.py and pa/deprovision/default.py);
    "unparseable" cuts the document short (not XML any more)."""
    template = resources.files("azsim").joinpath("data/ovf-env.xml").read_text()
    keys = ""
    if public_key:
        path = f"/home/{username}/.ssh/authorized_keys"
        keys = (
            "          <PublicKey>\n"
            f"            <Fingerprint>{escape(_key_fingerprint(public_key))}</Fingerprint>\n"
            f"            <Path>{escape(path)}</Path>\n"
            f"            <Value>{escape(public_key)}</Value>\n"
            "          </PublicKey>"
        )
    values = {"hostname": escape(hostname), "username": escape(username), "public_keys": keys}
    text = Template(template).substitute(values)
    if state == "no-platform-settings":
        text = _PLATFORM_SETTINGS.sub("", text)
    elif state == "unparseable":
        text = text[: text.index("</LinuxProvisioningConfigurationSet>")]
    return text


def _key_fingerprint(public_key: str) -> str:
    parts = public_key.split()
    blob = base64.b64decode(parts[1]) if len(parts) > 1 else public_key.encode()
    return hashlib.sha1(blob, usedforsecurity=False).hexdigest().upper()


def merged_waagent_conf(original: str, overrides: tuple[tuple[str, str], ...]) -> str:
    """``original`` with each ``Key=value`` of ``overrides`` replaced in place or appended."""
    lines = original.splitlines()
    for key, value in overrides:
        for i, line in enumerate(lines):
            if line.split("=", 1)[0].strip() == key and not line.lstrip().startswith("#"):
                lines[i] = f"{key}={value}"
                break
        else:
            lines.append(f"{key}={value}")
    return "\n".join(lines) + "\n"


class _Script:
    def __init__(self) -> None:
        self.lines: list[str] = ["set -eu", "umask 022"]

    def run(self, *argv: str) -> None:
        self.lines.append(shlex.join(argv))

    def raw(self, text: str) -> None:
        self.lines.append(text)

    def write(self, path: str, data: bytes, mode: int, owner: str = "") -> None:
        # base64 keeps any byte (and any "EOF" line) intact inside the heredoc
        encoded = base64.encodebytes(data).decode()
        q = shlex.quote(path)
        self.lines.append(f"base64 -d > {q} <<'AZSIM_EOF'\n{encoded}AZSIM_EOF")
        self.run("chmod", f"{mode:o}", path)
        if owner:
            self.run("chown", owner, path)

    def text(self) -> str:
        return "\n".join(self.lines) + "\n"


def provisioning_script(
    spec: LinuxGuestSpec, *, admin_user: str, public_key: str, waagent_conf: str | None
) -> str:
    """The script for the first boot. ``waagent_conf`` is the image's file (None: not present)."""
    s = _Script()
    s.raw("# identity")
    s.write("/etc/hostname", f"{spec.hostname}\n".encode(), 0o644)
    hosts = f"127.0.0.1\tlocalhost\n127.0.1.1\t{spec.hostname}\n::1\tlocalhost ip6-localhost\n"
    s.write("/etc/hosts", hosts.encode(), 0o644)
    s.write("/etc/resolv.conf", b"nameserver 168.63.129.16\nsearch reddog.microsoft.com\n", 0o644)

    s.raw("# the admin user as the agent provisions it; '*' (not '!') so sshd takes its key")
    s.run("useradd", "--create-home", "--shell", "/bin/bash", "--password", "*", admin_user)
    home = f"/home/{admin_user}"
    s.run("install", "-d", "-m", "700", "-o", admin_user, "-g", admin_user, f"{home}/.ssh")
    if public_key:
        s.write(f"{home}/.ssh/authorized_keys", f"{public_key}\n".encode(), 0o600, admin_user)
    s.write("/etc/sudoers.d/waagent", f"{admin_user} ALL=(ALL) NOPASSWD: ALL\n".encode(), 0o440)
    s.run("install", "-d", "-m", "700", "/var/lib/waagent")
    if spec.ovf_env.state != "missing":
        named = spec.ovf_env.user or admin_user
        ovf = ovf_env_xml(spec.hostname, named, public_key, spec.ovf_env.state).encode()
        s.write("/var/lib/waagent/ovf-env.xml", ovf, 0o600)
    s.write("/var/lib/waagent/provisioned", b"", 0o644)
    if waagent_conf is not None:
        s.write(
            "/etc/waagent.conf",
            merged_waagent_conf(waagent_conf, spec.waagent_conf).encode(),
            0o644,
        )

    s.raw("# fresh host keys for this VM (the cached image has none)")
    s.raw("rm -f /etc/ssh/ssh_host_*")
    s.run("ssh-keygen", "-A")
    if spec.client_alive_interval is not None:
        conf = f"ClientAliveInterval {spec.client_alive_interval}\n".encode()
        s.write("/etc/ssh/sshd_config.d/50-azure.conf", conf, 0o644)

    s.raw("# state a used VM carries")
    s.run("install", "-d", "/var/lib/dhcp")
    s.write("/var/lib/dhcp/dhclient.eth0.leases", _DHCP_LEASE.encode(), 0o644)
    s.write("/root/.bash_history", _ROOT_HISTORY.encode(), 0o600)
    for name in ("poweroff", "halt", "shutdown", "reboot"):
        s.write(f"/usr/sbin/{name}", _POWER_BUTTON.encode(), 0o755)

    if spec.remove_packages:
        s.raw("# no init system to stop services with: tell maintainer scripts not to try")
        s.write("/usr/sbin/policy-rc.d", b"#!/bin/sh\nexit 101\n", 0o755)
        s.run("dpkg", "--purge", *spec.remove_packages)
        s.run("rm", "-f", "/usr/sbin/policy-rc.d")

    for user in spec.users:
        s.run("useradd", "--create-home", "--shell", user.shell, user.name)
        if user.password_hash:
            # over stdin: a hash never goes on a command line
            s.raw(f"chpasswd -e <<'AZSIM_EOF'\n{user.name}:{user.password_hash}\nAZSIM_EOF")

    for planted in spec.files:
        # "user" alone means the user's login group too, as `chown user:` does
        owner = planted.owner if ":" in planted.owner or not planted.owner else f"{planted.owner}:"
        for parent in reversed(PurePosixPath(planted.path).parents):
            if str(parent) == "/":
                continue
            q = shlex.quote(str(parent))
            chown = f" && chown {shlex.quote(owner)} {q}" if owner else ""
            s.raw(f"[ -d {q} ] || {{ mkdir {q}{chown}; }}")
        if planted.symlink:
            s.run("ln", "-sfn", planted.symlink, planted.path)
            if owner:
                s.run("chown", "-h", owner, planted.path)
            continue
        s.write(planted.path, planted.content, planted.mode, owner)
        if planted.size is not None:
            s.run("truncate", "-s", str(planted.size), planted.path)  # a hole: no disk space taken

    if spec.swap_on_os_disk:
        s.raw("# a swap file on the OS disk; azsim's init lists fstab swap in /proc/swaps")
        s.run("dd", "if=/dev/zero", f"of={SWAP_FILE}", "bs=1024", "count=1024", "status=none")
        s.run("chmod", "600", SWAP_FILE)
        s.run("mkswap", SWAP_FILE)
        s.raw(f"echo '{SWAP_FILE} none swap sw 0 0' >> /etc/fstab")
    return s.text()
