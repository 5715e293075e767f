"""The benchmark's planted corpus: one plant for every rule, and a plant or a decoy for every way a
secret hides or a path is left out, each value fresh from ``random.SystemRandom`` on every run.

A plant says what the scan must do with it: ``found`` (a finding at that path), ``unread`` (listed
as not scanned) or ``decoy`` (neither a finding nor an unread entry: placeholders, published
examples, a package's unchanged test key, the resource disk). Classes group plants for the
per-class recall and precision table; the same classes are planted on Linux (a directory tree,
scanned as a guest by ``scripts/scan_linux.py`` inside a private mount namespace) and on Windows
(azsim's machine model, scanned by its answer to ``scripts/scan_windows.ps1``).
"""

from __future__ import annotations

import base64
import bz2
import gzip
import io
import lzma
import random
import string
import tarfile
import zipfile
from dataclasses import dataclass, field
from typing import Any

RNG = random.SystemRandom()
ALNUM = string.ascii_letters + string.digits
B64 = ALNUM + "+/"
HEX = "0123456789abcdef"


def chars(alphabet: str, n: int) -> str:
    return "".join(RNG.choice(alphabet) for _ in range(n))


def pem(kind: str = "RSA ") -> str:
    body = "\n".join(chars(B64, 64) for _ in range(8))
    return f"-----BEGIN {kind}PRIVATE KEY-----\n{body}\n-----END {kind}PRIVATE KEY-----\n"


def registry_auth() -> str:
    auth = base64.b64encode(b"ci:" + chars(ALNUM, 12).encode()).decode()
    return f'{{"auths": {{"r": {{"auth": "{auth}"}}}}}}\n'


def token() -> str:
    return "ghp_" + chars(ALNUM, 36)


@dataclass
class Plant:
    path: str
    cls: str
    expect: str  # found | unread | decoy
    content: bytes = b""
    rule: str = ""
    #: how it is staged: "" (a file), link (a symlink to ``target``), sparse (``size`` bytes),
    #: unreadable (mode 000), hidden (under a tmpfs), resource (on the resource disk)
    how: str = ""
    target: str = ""
    size: int = 0
    #: Windows model only: file attributes and whether the bytes are binary
    attrs: dict[str, Any] = field(default_factory=dict)


CLASSES = (
    "location rules", "content rules", "value shapes", "placeholders and examples", "compressed",
    "UTF-16", "binary-looking names", "symlinks", "escaped JSON keys", "beneath a mount",
    "resource disk", "not scanned",
)  # fmt: skip


def _zip(name: str, data: bytes) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as archive:
        archive.writestr(name, data)
    return buffer.getvalue()


def _tgz(name: str, data: bytes) -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as tar:
        info = tarfile.TarInfo(name)
        info.size = len(data)
        tar.addfile(info, io.BytesIO(data))
    return buffer.getvalue()


def linux_corpus() -> list[Plant]:
    """Paths relative to the tree root (no leading slash)."""
    plants: list[Plant] = []

    def add(
        cls: str, path: str, text: str | bytes, expect: str = "found", rule: str = "", **how: Any
    ) -> None:
        data = text.encode() if isinstance(text, str) else text
        plants.append(Plant(path, cls, expect, data, rule, **how))

    # location rules: files that must not be in an image at all
    loc = "location rules"
    add(loc, "etc/shadow", f"root:*:19000::::::\ndev:$6${chars(ALNUM, 8)}${chars(B64, 86)}:19000::::::\n")
    add(loc, "home/dev/.bash_history", "ls\ncd /srv\n")
    add(loc, "root/.python_history", "import os\n")
    add(loc, "home/dev/.ssh/authorized_keys", f"ssh-ed25519 {chars(B64, 68)} dev\n")
    add(loc, "home/dev/.ssh/id_ed25519", pem("OPENSSH "))
    add(loc, "etc/ssh/ssh_host_ed25519_key", pem("OPENSSH "))
    add(loc, "var/lib/waagent/ovf-env.xml", "<Environment/>\n")
    add(loc, "var/lib/waagent/Microsoft.Azure.Extensions.CustomScript-2.1.10/config/0.settings", "{}\n")
    add(loc, "var/lib/cloud/instances/i-1/user-data.txt", "#cloud-config\n")
    add(loc, "var/log/azure/custom-script/handler.log", "enabled\n")
    add(loc, "opt/app/keystore.p12", b"\x30\x82" + RNG.randbytes(64))
    add(loc, "opt/infra/terraform.tfstate", "{}\n")
    add(loc, "tmp/packer-provision.sh", "#!/bin/sh\n")
    add(loc, "var/lib/docker/containers/abc/config.v2.json", '{"Config": {}}\n')
    add(loc, "home/dev/.azure/msal_token_cache.json", "{}\n")
    add(loc, "home/dev/.aws/credentials", "[default]\n")
    add(loc, "home/dev/.config/gcloud/credentials.db", b"SQLite format 3\0")
    add(loc, "home/dev/.kube/config", "apiVersion: v1\n")
    add(loc, "home/dev/.pgpass", f"db:5432:*:app:{chars(ALNUM, 14)}\n")
    # content rules: a value of every shape, where such things turn up
    con = "content rules"
    add(con, "opt/app/deploy.py", f"DEPLOY_KEY = '''{pem()}'''\n")
    add(con, "etc/app/storage.conf", f"AccountKey={chars(B64, 86)}==;EndpointSuffix=core.windows.net\n")
    add(
        con,
        "var/log/app/deploy.log",
        f"GET https://x.blob.core.windows.net/c?sv=2022&sig={chars(B64, 43)}%3D\n",
    )
    add(con, "opt/tool/config.yaml", f"client_secret_value: {chars(ALNUM, 3)}8Q~{chars(ALNUM, 34)}\n")
    add(con, "opt/app/keys.py", f'KEY = "AKIA{chars(string.ascii_uppercase, 16)}"\n')
    add(con, "opt/app/settings.py", f'AWS_SECRET_ACCESS_KEY = "{chars(B64, 40)}"\n')
    add(con, "usr/local/bin/ci-deploy.sh", f"git clone https://x:{token()}@github.com/o/r\n")
    add(con, "etc/gitlab-runner/config.toml", f'token = "glpat-{chars(ALNUM, 20)}"\n')
    add(con, "opt/monitor/alert.py", f'SLACK = "xoxb-{chars(ALNUM, 40)}"\n')
    add(con, "home/dev/.npmrc", f"//registry.npmjs.org/:_authToken=npm_{chars(ALNUM, 36)}\n")
    add(con, "root/.pypirc", f"[pypi]\npassword = pypi-AgEIcHlwaS5vcmc{chars(ALNUM, 60)}\n")
    add(con, "opt/app/sa.json", f'{{"type": "service_account", "private_key_id": "{chars(HEX, 40)}"}}\n')
    add(
        con,
        "var/lib/app/session.json",
        f'{{"t": "eyJhbGciOiJSUzI1NiJ9.eyJ{chars(ALNUM, 60)}.{chars(ALNUM, 43)}"}}\n',
    )
    add(con, "etc/app/db.conf", f"db_password = {chars(ALNUM, 10)}-{chars(ALNUM, 4)}\n")
    hidden = base64.b64encode((chars(ALNUM, 12) + "Password").encode("utf-16-le")).decode()
    add(
        con,
        "opt/images/unattend.xml",
        f"<Password>\n<Value>{hidden}</Value>\n<PlainText>false</PlainText>\n</Password>\n",
    )
    add(con, "home/dev/.bashrc", f"export OPENAI_API_KEY=sk-{chars(ALNUM, 40)}\n")
    add(
        con,
        "home/dev/.docker/config.json",
        registry_auth(),
    )
    add(
        con,
        "home/dev/.config/containers/auth.json",
        registry_auth(),
    )
    add(
        con,
        "home/dev/.config/helm/registry/config.json",
        f'{{"auths": {{"r": {{"identitytoken": "{chars(ALNUM, 40)}"}}}}}}\n',
    )
    add(con, "srv/app/appsettings.json", f'{{"Smtp": {{"Password": "{chars(ALNUM, 16)}"}}}}\n')
    add(con, "home/dev/jump.rdp", f"password 51:b:{chars('0123456789ABCDEF', 64)}\n")
    add(
        con,
        "etc/NetworkManager/system-connections/office.nmconnection",
        f"[wifi-security]\npsk={chars(ALNUM, 16)}\n",
    )
    add(
        con,
        "etc/wireguard/wg0.conf",
        f"[Interface]\nPrivateKey = {base64.b64encode(RNG.randbytes(32)).decode()}\n",
    )
    static = "\n".join(chars(HEX, 32) for _ in range(8))
    add(
        con,
        "etc/openvpn/ta.key",
        f"-----BEGIN OpenVPN Static key V1-----\n{static}\n-----END OpenVPN Static key V1-----\n",
    )
    add(
        con,
        "etc/kubernetes/admin.conf",
        f"    client-key-data: {base64.b64encode(pem().encode()).decode()}\n",
    )
    add(
        con,
        "opt/images/autounattend.xml",
        f"<AdministratorPassword>\n <Value>{chars(ALNUM, 14)}</Value>\n"
        " <PlainText>true</PlainText>\n</AdministratorPassword>\n",
    )
    add(con, "home/dev/.m2/settings.xml", f"<server>\n  <password>{chars(ALNUM, 14)}</password>\n</server>\n")
    add(con, "srv/app/App.config", f'<add key="DbPassword" value="{chars(ALNUM, 14)}" />\n')
    add(
        con,
        "opt/scripts/setup.ps1",
        f"$p = ConvertTo-SecureString '{chars(ALNUM, 14)}' -AsPlainText -Force\n",
    )
    add(con, "opt/scripts/users.cmd", f"net user builder {chars(ALNUM, 14)} /add\n")
    # what real passwords hold
    val = "value shapes"
    add(val, "etc/app/ldap.conf", f"bind_password=Sum;{chars(ALNUM, 6)}(x).${chars(ALNUM, 5)}\n")
    add(val, "etc/app/smtp.conf", f"smtp_password={chars(string.ascii_letters, 14)}\n")
    add(val, "srv/app/.config.yaml", f"password: {chars(string.ascii_letters, 12)}\n")
    add(val, "opt/app/static/app.min.js", "var a=1;" * 20000 + f'var cfg={{apiKey:"{chars(ALNUM, 32)}"}};\n')
    # what must stay quiet
    dec = "placeholders and examples"
    add(
        dec,
        "etc/app/placeholders.conf",
        "password = changeme\nsecret = ${APP_SECRET}\ntoken: {{ vault_token }}\n",
        "decoy",
    )
    add(
        dec,
        "srv/app/web.config",
        '<add key="DbPassword" value="__DbPassword__" />\n<password>%DB_PASS%</password>\n',
        "decoy",
    )
    add(
        dec,
        "usr/share/doc/aws/README",
        "AKIAIOSFODNN7EXAMPLE\naws_secret_access_key = wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY\n",
        "decoy",
    )
    add(
        dec,
        "opt/app/code.py",
        "password = getpass.getpass()\ntoken = self._next_token()\napi_key = os.environ['API_KEY']\n",
        "decoy",
    )
    add(dec, "opt/app/i18n.json", '{"password": "Password", "token": "Enter your token"}\n', "decoy")
    add(dec, "usr/lib/python3/dist-packages/testpkg/tests/key.pem", pem(), "decoy", how="package")
    add(
        dec,
        "srv/data/blob.bin",
        RNG.randbytes(4096) + f"AKIA{chars(string.ascii_uppercase, 16)}".encode() + b"\0" * 64,
        "decoy",
    )
    # compressed and archived
    com = "compressed"
    add(com, "var/log/app/app.log.1.gz", gzip.compress(f"start\nclone {token()}\n".encode()))
    add(com, "var/log/app/app.log.2.xz", lzma.compress(f"start\nclone {token()}\n".encode()))
    add(com, "var/log/app/app.log.3.bz2", bz2.compress(f"start\nclone {token()}\n".encode()))
    add(com, "opt/app/bundle.zip", _zip("conf/notify.py", f'SLACK = "xoxb-{chars(ALNUM, 40)}"\n'.encode()))
    add(com, "var/backups/etc.tar.gz", _tgz("etc/app.conf", f'token = "glpat-{chars(ALNUM, 20)}"\n'.encode()))
    add(
        com,
        "usr/share/doc/testpkg/changelog.gz",
        gzip.compress(f"fix {token()}\n".encode()),
        "decoy",
        how="package",
    )
    # UTF-16 text
    add("UTF-16", "opt/app/notes.txt", f"\ufeffdeploy\n{token()}\n".encode("utf-16-le"))
    add("UTF-16", "opt/app/notes-nobom.txt", f"deploy\n{token()}\n".encode("utf-16-le"))
    add("UTF-16", "opt/app/readme16.txt", "\ufeffpassword = changeme\n".encode("utf-16-le"), "decoy")
    # text with a binary-looking name
    add("binary-looking names", "opt/app/settings.dat", f"token {token()}\n")
    add("binary-looking names", "var/lib/app/state.bin", f"password={chars(ALNUM, 10)}9\n")
    # symlinks
    add("symlinks", "srv/kube/config", "apiVersion: v1\n", "decoy")  # its own path matches no rule
    add("symlinks", "root/.kube", "", how="link", target="/srv/kube")
    add("symlinks", "home/dev/.lesshst", "", "decoy", how="link", target="/dev/null")  # a link to nothing
    # keys inside JSON with escaped line breaks
    for name, escape in (("nested", "\\\\n"), ("crlf", "\\r\\n"), ("unicode", "\\u000a")):
        add(
            "escaped JSON keys",
            f"opt/app/{name}.json",
            f'{{"private_key": "{pem().replace(chr(10), escape)}"}}\n',
        )
    # mounts: beneath a tmpfs (read through a private bind), the resource disk (left out)
    add("beneath a mount", "var/cache/hidden/left.py", f'T = "{token()}"\n', how="hidden")
    add("resource disk", "mnt/leak.txt", f"{token()}\n", "decoy", how="resource")
    # what cannot be read in full
    add("not scanned", "var/log/app/huge.log", "start\n", "unread", how="sparse", size=9 * 1024**3)
    add("not scanned", "opt/app/locked.conf", f"{token()}\n", "unread", how="unreadable")
    add("not scanned", "var/log/app/bomb.log.gz", gzip.compress(b"A" * (300 * 1024 * 1024)), "unread")
    return plants


def windows_corpus() -> list[Plant]:
    """The same classes on the Windows model (absolute Windows paths)."""
    plants: list[Plant] = []

    def add(cls: str, path: str, text: str, expect: str = "found", **attrs: Any) -> None:
        plants.append(Plant(path, cls, expect, text.encode(), attrs=attrs))

    u = "C:\\Users\\dev"
    add("location rules", u + "\\.ssh\\id_rsa", pem())
    add("location rules", "C:\\Windows\\Panther\\Unattend\\setup.xml", "<unattend/>\n")
    add("location rules", "C:\\AzureData\\CustomData.bin", "Write-Host bootstrap\n")
    add(
        "location rules",
        u + "\\AppData\\Roaming\\Microsoft\\Windows\\PowerShell\\PSReadLine\\ConsoleHost_history.txt",
        "ls\n",
    )
    add("location rules", u + "\\.aws\\credentials", "[default]\n")
    add("location rules", u + "\\.kube\\config", "apiVersion: v1\n")
    add(
        "content rules",
        "C:\\inetpub\\app\\web.config",
        f'<add name="db" connectionString="Server=s;Password={chars(ALNUM, 16)}" />\n',
    )
    add("content rules", "C:\\build\\ci.ps1", f"git clone https://x:{token()}@github.com/o/r\n")
    add("content rules", "C:\\build\\storage.txt", f"AccountKey={chars(B64, 86)}==;\n")
    add(
        "content rules",
        "C:\\ProgramData\\Microsoft\\Wlansvc\\Profiles\\Interfaces\\{A}\\{B}.xml",
        f"<keyMaterial>{chars(ALNUM, 16)}</keyMaterial>\n",
    )
    add(
        "content rules",
        "C:\\build\\images\\autounattend.xml",
        f"<Password>\n<Value>{chars(ALNUM, 12)}</Value>\n<PlainText>true</PlainText>\n</Password>\n",
    )
    add("content rules", "C:\\app\\App.config", f'<add key="DbPassword" value="{chars(ALNUM, 12)}" />\n')
    add(
        "content rules",
        "C:\\build\\setup.ps1",
        f"$p = ConvertTo-SecureString '{chars(ALNUM, 12)}' -AsPlainText -Force\n",
    )
    add(
        "content rules",
        "C:\\Windows\\Setup\\Scripts\\users.cmd",
        f"net user builder {chars(ALNUM, 12)} /add\n",
    )
    add("value shapes", "C:\\app\\db.ini", f"password=Sum;{chars(ALNUM, 6)}(x).$\n")
    add(
        "placeholders and examples",
        "C:\\app\\placeholders.config",
        '<add key="DbPassword" value="#{DbPassword}#" />\npassword = changeme\n',
        "decoy",
    )
    add(
        "placeholders and examples",
        "C:\\Windows\\Panther\\unattend.xml",
        "<AdministratorPassword>*SENSITIVE*DATA*DELETED*</AdministratorPassword>\n",
        "decoy",
    )
    add("compressed", "C:\\logs\\app.log.1.gz", f"start\n{token()}\n", compress="gzip")
    add("compressed", "C:\\logs\\bundle.zip", f"start\n{token()}\n", compress="zip")
    add("UTF-16", "C:\\build\\notes16.txt", f"start\n{token()}\n", encoding="utf-16le")
    add("binary-looking names", "C:\\build\\settings.dat", f"token {token()}\n")
    key = pem().replace("\n", "\\n")
    add("escaped JSON keys", "C:\\build\\sa.json", f'{{"private_key": "{key}"}}\n')
    add("value shapes", "C:\\app\\smtp.ini", f"smtp_password={chars(string.ascii_letters, 14)}\n")
    add("symlinks", "C:\\secrets\\kube\\config", "apiVersion: v1\n", "decoy")
    add("symlinks", "C:\\Users\\ops\\.kube", "", symlink="C:\\secrets\\kube")
    add("beneath a mount", "C:\\data\\app\\notes.txt", f"token {token()}\n")  # a volume mounted in C:\data
    add("resource disk", "D:\\scratch\\leftover.txt", f"token {token()}\n", "decoy")
    add("resource disk", "C:\\DATALOSS_WARNING_README.txt", "a note anyone can write\n", "decoy")
    add("not scanned", "C:\\logs\\huge.log", "x\n", "unread", size=9 * 1024**3)
    add(
        "not scanned",
        "C:\\build\\locked.txt",
        f"{token()}\n",
        "unread",
        unreadable="UnauthorizedAccessException",
    )
    add("not scanned", "C:\\logs\\app.log.2.xz", f"{token()}\n", "unread", compress="xz")
    return plants


def expected_windows(plant: Plant) -> str:
    """Where a Windows plant's finding is reported (a junction: through the link)."""
    if plant.attrs.get("symlink"):
        return plant.path + "\\config"
    if plant.attrs.get("compress") == "zip":
        return plant.path + "!\\" + plant.path.rsplit("\\", 1)[-1].removesuffix(".zip")
    return plant.path


def expected_linux(plant: Plant) -> str:
    if plant.how == "link":
        return plant.path + "/config"
    if plant.path.endswith("bundle.zip"):
        return plant.path + "!/conf/notify.py"
    if plant.path.endswith("etc.tar.gz"):
        return plant.path + "!/etc/app.conf"
    return plant.path


@dataclass
class Score:
    cls: str
    plants: int = 0
    decoys: int = 0
    hits: int = 0
    false: int = 0

    @property
    def recall(self) -> float:
        return self.hits / self.plants if self.plants else 1.0

    @property
    def precision(self) -> float:
        reported = self.hits + self.false
        return self.hits / reported if reported else 1.0


def score(plants: list[Plant], found: set[str], unread: set[str], where: Any) -> tuple[list[Score], set[str]]:
    """Per class: plants seen as they should be, decoys reported; and what was reported of no plant."""
    scores = {cls: Score(cls) for cls in CLASSES}
    known: set[str] = set()
    for plant in plants:
        entry = scores[plant.cls]
        path = where(plant)
        known |= {path, plant.path}
        if plant.expect == "decoy":
            entry.decoys += 1
            entry.false += path in found or plant.path in found or path in unread
        else:
            entry.plants += 1
            entry.hits += (path in unread) if plant.expect == "unread" else (path in found)
    stray = (found | unread) - known
    return [s for s in scores.values() if s.plants or s.decoys], stray
