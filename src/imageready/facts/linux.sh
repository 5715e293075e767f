#!/bin/sh
# imageready Linux facts (schema 1, see SCHEMA.md): one round trip, read-only, one JSON object.
# Run as root through `sudo -n sh` so /etc/shadow and `sshd -T` are readable. It writes nothing:
# no temp files (heredocs below stay under a pipe's size), no bytecode, no sudo timestamps.
# A probe that fails is null plus an entry in "errors"; the script always exits 0.
PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin
LC_ALL=C
PYTHONDONTWRITEBYTECODE=1
export PATH LC_ALL PYTHONDONTWRITEBYTECODE

# IMAGEREADY_FACTS_PYTHON: which interpreter to assemble with ("" forces the sh fallback).
python=${IMAGEREADY_FACTS_PYTHON-python3}
if [ -n "$python" ] && command -v "$python" >/dev/null 2>&1; then
"$python" - <<'PY' && exit 0
import json
import os
import pwd
import re
import shutil
import socket
import subprocess

ENV = {"PATH": os.environ["PATH"], "LC_ALL": "C", "PYTHONDONTWRITEBYTECODE": "1"}
errors = []


def probe(name, fn, default=None):
    try:
        return fn()
    except Exception as err:  # one broken probe never hides the others
        errors.append({"probe": name, "error": f"{type(err).__name__}: {err}"[:300]})
        return default


def run(*argv, timeout=20):
    return subprocess.run(
        argv, capture_output=True, text=True, timeout=timeout, env=ENV,
        stdin=subprocess.DEVNULL, check=False,
    )


def read(path):
    with open(path, encoding="utf-8", errors="replace") as f:
        return f.read()


def conf_lines(path):
    for line in read(path).splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            yield line


def user():
    name = os.environ.get("SUDO_USER") or pwd.getpwuid(os.getuid()).pw_name
    uid = pwd.getpwnam(name).pw_uid
    return {"name": name, "uid": uid, "is_root": uid == 0, "elevated": os.geteuid() == 0}


def os_release():
    fields = {}
    for line in conf_lines("/etc/os-release"):
        key, _, value = line.partition("=")
        fields[key] = value.strip().strip('"')
    return {
        "id": fields.get("ID"),
        "version_id": fields.get("VERSION_ID"),
        "pretty_name": fields.get("PRETTY_NAME"),
        "kernel": os.uname().release,
    }


def sudo_nopasswd():
    if os.geteuid() == 0 and os.environ.get("SUDO_USER"):
        return True  # we are running under `sudo -n`
    return run("sudo", "-n", "true").returncode == 0


def waagent():
    path = shutil.which("waagent")
    facts = {"installed": path is not None, "path": path, "version": None, "conf": {}}
    if path:
        out = run(path, "--version").stdout
        found = re.search(r"WALinuxAgent-(\S+)", out)
        facts["version"] = found.group(1) if found else None
    if os.path.exists("/etc/waagent.conf"):
        for line in conf_lines("/etc/waagent.conf"):
            key, sep, value = line.partition("=")
            if sep:
                facts["conf"][key.strip()] = value.strip()
    return facts


def cloud_init():
    path = shutil.which("cloud-init")
    status = None
    if path:
        found = re.search(r"status:\s*(\S+)", run(path, "status").stdout)
        status = found.group(1) if found else None
    instances = "/var/lib/cloud/instances"
    return {
        "installed": path is not None,
        "status": status,
        "disabled": os.path.exists("/etc/cloud/cloud-init.disabled"),
        "instance_dirs": sorted(os.listdir(instances)) if os.path.isdir(instances) else [],
    }


def seconds(text):
    found = re.fullmatch(r"(\d+)([smhSMH]?)", text.strip())
    if not found:
        return None
    return int(found.group(1)) * {"": 1, "s": 1, "m": 60, "h": 3600}[found.group(2).lower()]


def sshd_config_value(path, key, seen):
    import glob

    for line in conf_lines(path):
        words = line.split(None, 1)
        word = words[0].lower()
        if word == "match":
            return None  # Match blocks apply per connection; stop at the first one
        if word == "include" and len(words) == 2:
            for pattern in words[1].split():
                pattern = pattern if pattern.startswith("/") else f"/etc/ssh/{pattern}"
                for included in sorted(glob.glob(pattern)):
                    if included not in seen:
                        seen.add(included)
                        value = sshd_config_value(included, key, seen)
                        if value is not None:
                            return value
        elif word == key and len(words) == 2:
            return words[1]  # sshd keeps the first value it reads
    return None


def sshd():
    sshd_bin = shutil.which("sshd")
    if sshd_bin and os.geteuid() == 0:
        done = run(sshd_bin, "-T")
        for line in done.stdout.splitlines():
            key, _, value = line.partition(" ")
            if key == "clientaliveinterval":
                return {"client_alive_interval": seconds(value), "source": "sshd -T"}
    value = sshd_config_value("/etc/ssh/sshd_config", "clientaliveinterval", set())
    if value is None:
        return {"client_alive_interval": 0, "source": "default"}
    return {"client_alive_interval": seconds(value), "source": "config"}


def parent_disk(dev):
    link = f"/sys/dev/block/{os.major(dev)}:{os.minor(dev)}"
    real = os.path.realpath(link)
    if not os.path.exists(real):
        return None
    return real if not os.path.exists(os.path.join(real, "partition")) else os.path.dirname(real)


def swap():
    rows = []
    root_dev = os.stat("/").st_dev
    for line in read("/proc/swaps").splitlines()[1:]:
        fields = line.split()
        if len(fields) < 3:
            continue
        path = fields[0].replace("\\040", " ")
        if fields[1] == "file":
            on_os = os.stat(path).st_dev == root_dev
        else:
            disk = parent_disk(os.stat(path).st_rdev)
            on_os = disk is not None and disk == parent_disk(root_dev)
        rows.append({"path": path, "type": fields[1], "size_kb": int(fields[2]), "on_os_disk": on_os})
    return rows


def mounts():
    table = {}
    for line in read("/proc/self/mounts").splitlines():
        fields = line.split()
        if len(fields) >= 3:
            table.setdefault(fields[0], fields[1].replace("\\040", " "))
    return table


def crypt():
    volumes = {}
    mounted = mounts()
    if os.path.exists("/etc/crypttab"):
        for line in conf_lines("/etc/crypttab"):
            fields = line.split()
            if len(fields) >= 2:
                name = fields[0]
                volumes[name] = {
                    "name": name, "source": "crypttab", "device": fields[1],
                    "mountpoint": mounted.get(f"/dev/mapper/{name}"),
                }
    if shutil.which("dmsetup"):
        for line in run("dmsetup", "ls", "--target", "crypt").stdout.splitlines():
            name = line.split()[0] if line.split() else ""
            if name and name != "No" and name not in volumes:
                volumes[name] = {
                    "name": name, "source": "dm", "device": None,
                    "mountpoint": mounted.get(f"/dev/mapper/{name}"),
                }
    if shutil.which("lsblk") and os.path.isdir("/sys/block"):
        out = run("lsblk", "-J", "-l", "-o", "NAME,TYPE,MOUNTPOINT,PKNAME").stdout
        for dev in json.loads(out or "{}").get("blockdevices", []):
            if dev.get("type") == "crypt" and dev["name"] not in volumes:
                volumes[dev["name"]] = {
                    "name": dev["name"], "source": "lsblk",
                    "device": dev.get("pkname"), "mountpoint": dev.get("mountpoint"),
                }
    return sorted(volumes.values(), key=lambda v: v["name"])


def root_fs():
    device = fstype = None
    for line in read("/proc/self/mountinfo").splitlines():
        left, _, right = line.partition(" - ")
        if left.split()[4] == "/":
            fstype, device = right.split()[:2]  # the last mount on / is the one in effect
    return {"device": device, "fstype": fstype}


def users():
    shells = {line for line in conf_lines("/etc/shells")} if os.path.exists("/etc/shells") else set()
    status = probe("users.password", shadow_status, {})
    rows = []
    for entry in sorted(pwd.getpwall(), key=lambda e: e.pw_uid):
        login = entry.pw_shell in shells and not entry.pw_shell.endswith(("nologin", "false"))
        if login or (entry.pw_uid >= 1000 and entry.pw_uid != 65534):
            rows.append({
                "name": entry.pw_name, "uid": entry.pw_uid, "home": entry.pw_dir,
                "shell": entry.pw_shell, "password": status.get(entry.pw_name),
            })
    return rows


IMDS_COMPUTE = "http://169.254.169.254/metadata/instance/compute?api-version=2021-02-01"


def identity():
    """Which VM this is: IMDS compute (never through a proxy: Microsoft's IMDS page) and the
    SMBIOS system UUID. The harness compares both with ARM's vmId (guest/identity.py)."""
    import urllib.request

    found = {"imds": None, "imds_error": None, "smbios_uuid": None, "smbios_error": None}
    try:
        opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
        request = urllib.request.Request(IMDS_COMPUTE, headers={"Metadata": "true"})
        with opener.open(request, timeout=5) as response:
            compute = json.load(response)
        found["imds"] = {key: compute.get(key) for key in ("vmId", "name", "resourceId")}
    except Exception as err:  # unreachable, refused, not JSON: say why, in one line
        found["imds_error"] = " ".join(f"{type(err).__name__}: {err}".split())[:200]
    try:
        found["smbios_uuid"] = read("/sys/class/dmi/id/product_uuid").strip()[:64]
    except OSError as err:
        found["smbios_error"] = f"{type(err).__name__}: {err.strerror}"
    return found


# Run by waagent's own interpreter with waagent's own parser (WALinuxAgent's OvfEnv, as
# `waagent -deprovision+user` reads the file): only the user name leaves it, never the password.
WAAGENT_OVF = r"""
import json, sys
from xml.parsers.expat import ExpatError
from azurelinuxagent.common.exception import ProtocolError
from azurelinuxagent.common.protocol.ovfenv import OvfEnv
from azurelinuxagent.common.utils import fileutil
try:
    env = OvfEnv(fileutil.read_file(sys.argv[1]))
    print(json.dumps({"user_name": env.username, "error": None}))
except ProtocolError as err:  # its text names itself: "[ProtocolError] Failed to validate OVF: ..."
    print(json.dumps({"user_name": None, "error": str(err)}))
except ExpatError as err:
    print(json.dumps({"user_name": None, "error": "ExpatError: " + str(err)}))
except Exception as err:
    print(json.dumps({"user_name": None, "error": type(err).__name__}))
"""


def waagent_interpreter(path):
    """The interpreter of waagent's #! line, if it is a Python."""
    import shlex

    with open(path, "rb") as f:
        first = f.readline(200).decode("utf-8", "replace")
    argv = shlex.split(first[2:]) if first.startswith("#!") else []
    return argv if any("python" in word for word in argv) else None


def builtin_ovf(path):
    """WALinuxAgent 2.7's OvfEnv rules, for a guest whose waagent cannot be asked: every section
    it requires (a missing PlatformSettingsSection makes it skip the user), the UserName."""
    import xml.etree.ElementTree as ET

    ovf, wa = "{http://schemas.dmtf.org/ovf/environment/1}", "{http://schemas.microsoft.com/windowsazure}"
    try:
        root = ET.parse(path).getroot()
    except ET.ParseError as err:
        return {"user_name": None, "error": f"ParseError: {err}"}

    def first(node, tag):
        return next(iter(node.iter(tag)), None) if node is not None else None

    environment = root if root.tag == f"{ovf}Environment" else first(root, f"{ovf}Environment")
    section = first(environment, f"{wa}ProvisioningSection")
    conf_set = first(section, f"{wa}LinuxProvisioningConfigurationSet")
    platform = first(first(environment, f"{wa}PlatformSettingsSection"), f"{wa}PlatformSettings")
    required = [
        ("Environment", environment),
        ("ProvisioningSection", section),
        ("Version", first(environment, f"{wa}Version")),
        ("LinuxProvisioningConfigurationSet", conf_set),
        ("HostName", first(conf_set, f"{wa}HostName")),
        ("UserName", first(conf_set, f"{wa}UserName")),
        ("PlatformSettings", platform),
        ("ProvisionGuestAgent", first(platform, f"{wa}ProvisionGuestAgent")),
    ]
    missing = next((name for name, node in required if node is None), None)
    if missing:
        return {"user_name": None, "error": f"[ProtocolError] Failed to validate OVF: {missing} not found"}
    return {"user_name": (first(conf_set, f"{wa}UserName").text or "").strip(), "error": None}


def ovf_env(agent):
    """The user `waagent -deprovision+user` deletes: ovf-env.xml's UserName as waagent parses it."""
    lib = ((agent or {}).get("conf") or {}).get("Lib.Dir") or "/var/lib/waagent"
    path = os.path.join(lib, "ovf-env.xml")
    try:
        os.stat(path)
        present = True
    except FileNotFoundError:
        present = False
    # a PermissionError (no root: /var/lib/waagent is root's) leaves the probe null: the file is
    # then unknown, not absent
    found = {"path": path, "present": present, "parses": None, "parser": None,
             "user_name": None, "error": None}
    if not found["present"]:
        return found
    answer = None
    waagent_path = (agent or {}).get("path")
    interpreter = waagent_interpreter(waagent_path) if waagent_path else None
    if interpreter:
        done = run(*interpreter, "-c", WAAGENT_OVF, path)
        lines = done.stdout.strip().splitlines()
        if done.returncode == 0 and lines:
            answer = json.loads(lines[-1])
            found["parser"] = f"waagent {(agent or {}).get('version') or ''}".strip()
    if answer is None:
        answer = builtin_ovf(path)
        found["parser"] = "imageready (WALinuxAgent 2.7 rules)"
    found["user_name"] = answer.get("user_name") or None
    found["error"] = answer.get("error")
    found["parses"] = found["error"] is None and bool(found["user_name"])
    return found


def shadow_status():
    status = {}
    for line in read("/etc/shadow").splitlines():
        fields = line.split(":")
        if len(fields) >= 2:
            secret = fields[1]  # only its kind leaves this function, never the value
            status[fields[0]] = (
                "none" if secret == "" else "locked" if secret[:1] in "!*" else "set"
            )
    return status


facts = {
    "schema": 1,
    "os_family": "Linux",
    "hostname": probe("hostname", socket.gethostname),
    "user": probe("user", user),
    "os": probe("os", os_release),
    "sudo_nopasswd": probe("sudo_nopasswd", sudo_nopasswd),
    "waagent": probe("waagent", waagent),
    "ovf_env_present": probe("ovf_env_present", lambda: os.path.exists("/var/lib/waagent/ovf-env.xml")),
    "cloud_init": probe("cloud_init", cloud_init),
    "sshd": probe("sshd", sshd),
    "swap": probe("swap", swap),
    "crypt": probe("crypt", crypt),
    "root_fs": probe("root_fs", root_fs),
    "users": probe("users", users),
    "identity": probe("identity", identity),
}
facts["ovf_env"] = probe("ovf_env", lambda: ovf_env(facts["waagent"]))
facts["errors"] = errors
print(json.dumps(facts))
PY
fi

# No python3: a smaller set of facts assembled in sh; the rest are null with an error each.
json_str() {
    if [ $# -eq 0 ] || [ -z "${1+set}" ]; then printf 'null'; return; fi
    printf '"%s"' "$(printf '%s' "$1" | sed -e 's/\\/\\\\/g' -e 's/"/\\"/g' -e 's/\t/\\t/g' | tr -d '\000-\037')"
}
json_bool() { if "$@" >/dev/null 2>&1; then printf true; else printf false; fi; }
os_field() { [ -r /etc/os-release ] && sed -n "s/^$1=//p" /etc/os-release | tr -d '"' | head -n 1; }

name=${SUDO_USER:-$(id -un)}
uid=$(id -u "$name" 2>/dev/null || echo null)
waagent_path=$(command -v waagent 2>/dev/null)
printf '{"schema": 1, "os_family": "Linux", "hostname": %s, ' "$(json_str "$(hostname)")"
printf '"user": {"name": %s, "uid": %s, "is_root": %s, "elevated": %s}, ' \
    "$(json_str "$name")" "$uid" "$(json_bool test "$uid" = 0)" "$(json_bool test "$(id -u)" = 0)"
printf '"os": {"id": %s, "version_id": %s, "pretty_name": %s, "kernel": %s}, ' \
    "$(json_str "$(os_field ID)")" "$(json_str "$(os_field VERSION_ID)")" \
    "$(json_str "$(os_field PRETTY_NAME)")" "$(json_str "$(uname -r)")"
if [ "$(id -u)" = 0 ] && [ -n "${SUDO_USER:-}" ]; then sudo_ok=true; else sudo_ok=$(json_bool sudo -n true); fi
printf '"sudo_nopasswd": %s, ' "$sudo_ok"
if [ -n "$waagent_path" ]; then
    printf '"waagent": {"installed": true, "path": %s, "version": null, "conf": {}}, ' "$(json_str "$waagent_path")"
else
    printf '"waagent": {"installed": false, "path": null, "version": null, "conf": {}}, '
fi
printf '"ovf_env_present": %s, ' "$(json_bool test -e /var/lib/waagent/ovf-env.xml)"
printf '"cloud_init": {"installed": %s, "status": null, "disabled": %s, "instance_dirs": []}, ' \
    "$(json_bool command -v cloud-init)" "$(json_bool test -e /etc/cloud/cloud-init.disabled)"
# identity without python3: the vmId as text through curl or wget, and the SMBIOS UUID
imds_vmid='http://169.254.169.254/metadata/instance/compute/vmId?api-version=2021-02-01&format=text'
hex() { tr -cd '0-9A-Fa-f-' | cut -c1-64; }
vmid=$( (curl -s -f --noproxy '*' -m 5 -H Metadata:true "$imds_vmid" 2>/dev/null ||
    wget -q -O - --no-proxy -T 5 --header=Metadata:true "$imds_vmid" 2>/dev/null) | hex)
smbios=$(cat /sys/class/dmi/id/product_uuid 2>/dev/null | hex)
if [ -n "$vmid" ]; then
    printf '"identity": {"imds": {"vmId": "%s", "name": null, "resourceId": null}, "imds_error": null, ' "$vmid"
else
    printf '"identity": {"imds": null, "imds_error": "no answer (curl and wget failed)", '
fi
if [ -n "$smbios" ]; then
    printf '"smbios_uuid": "%s", "smbios_error": null}, ' "$smbios"
else
    printf '"smbios_uuid": null, "smbios_error": "not readable"}, '
fi
printf '"sshd": null, "swap": null, "crypt": null, "root_fs": null, "users": null, "ovf_env": null, "errors": ['
sep=''
for probe in waagent.version waagent.conf cloud_init.instance_dirs sshd swap crypt root_fs users ovf_env; do
    printf '%s{"probe": "%s", "error": "python3 is not available"}' "$sep" "$probe"
    sep=', '
done
printf ']}\n'
exit 0
