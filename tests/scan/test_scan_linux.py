"""The Linux scan program (python3 and the POSIX sh fallback) on planted trees, run as on a guest.

Each tree is a directory under tmp_path that the program treats as ``/`` (its ``root`` option);
the host's own file system is never scanned. Fake secrets are generated per run.
"""

from __future__ import annotations

import base64
import bz2
import gzip
import hashlib
import io
import json
import lzma
import os
import random
import shutil
import string
import subprocess
import tarfile
import time
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from imageready.scan import DeprovisionContext, load_rules, rules_for
from imageready.scan.findings import parse_scan_output
from imageready.scan.remote import linux_program, linux_script

LINUX_RULES = rules_for("Linux", load_rules())
KEY = bytes(range(32))
TOOLS = ("sh", "date", "sed", "grep", "awk", "find", "xargs", "sha256sum", "md5sum", "base64", "wc", "tr")
TOOLS += ("cut", "cat", "timeout", "printf", "stat", "readlink", "ls", "paste", "head", "tail", "od")
TOOLS += ("gzip", "xz", "bzip2")


@dataclass
class Plants:
    """What was planted: per rule the path expected in its finding, and every secret value."""

    files: dict[str, bytes] = field(default_factory=dict)
    expected: dict[str, str] = field(default_factory=dict)
    secrets: list[str] = field(default_factory=list)
    #: symbolic links: path -> target
    links: dict[str, str] = field(default_factory=dict)
    #: (rule, path) found beyond each rule's own plant: archive members, UTF-16, links, escapes
    extra: set[tuple[str, str]] = field(default_factory=set)
    #: what the sh fallback lists as not scanned instead of reading it
    sh_unread: set[str] = field(default_factory=set)


def fake(n: int, alphabet: str = string.ascii_letters + string.digits) -> str:
    rng = random.SystemRandom()
    return "".join(rng.choice(alphabet) for _ in range(n))


def pem(kind: str = "OPENSSH ") -> tuple[str, str]:
    # lines that end in "+" and "/" (base64, not concatenation): both engines must keep them
    ends = ["+", "/", "=", "", "", ""]
    alphabet = string.ascii_letters + string.digits + "+/"
    body = "\n".join(fake(64 - len(end), alphabet) + end for end in ends)
    return f"-----BEGIN {kind}PRIVATE KEY-----\n{body}\n-----END {kind}PRIVATE KEY-----\n", body


def linux_plants() -> Plants:
    """One target of every Linux rule, where such things turn up."""
    p = Plants()

    def put(rule: str, path: str, content: str | bytes, *secrets: str) -> None:
        p.files[path] = content.encode() if isinstance(content, str) else content
        p.expected.setdefault(rule, path)
        p.secrets.extend(secrets)

    history_pw = fake(14)
    put("bash-history", "/home/builder/.bash_history", f"mysql -u root -p{history_pw}\n", history_pw)
    put("other-histories", "/home/builder/.psql_history", "select 1;\n")
    put("ssh-authorized-keys", "/home/builder/.ssh/authorized_keys", f"ssh-ed25519 AAAA{fake(64)} b\n")
    user_key, user_body = pem()
    put("ssh-user-private-key", "/home/builder/.ssh/id_ed25519", user_key, user_body)
    host_key, host_body = pem()
    put("ssh-host-private-key", "/etc/ssh/ssh_host_ed25519_key", host_key, host_body)
    put("waagent-provisioning-data", "/var/lib/waagent/CustomData", base64.b64encode(b"#!/bin/sh\n"))
    put(
        "waagent-extension-secrets",
        "/var/lib/waagent/Microsoft.Azure.Extensions.CustomScript-2.1.10/config/0.settings",
        '{"runtimeSettings": []}\n',
    )
    put("cloud-init-user-data", "/var/lib/cloud/instances/i-1/user-data.txt", "#cloud-config\n")
    put("azure-agent-logs", "/var/log/azure/custom-script/handler.log", "enabled\n")
    shadow_hash = f"$6${fake(8)}${fake(86)}"
    put(
        "shadow-unlocked-password",
        "/etc/shadow",
        f"root:*:19000:0:99999:7:::\nbuilder:{shadow_hash}:19000:0:99999:7:::\nsvc:!:19000::::::\n",
        shadow_hash,
    )
    put("keystore-files", "/opt/app/keystore.p12", b"\x30\x82\x01\x00" + os.urandom(64))
    put("app-secret-files", "/srv/app/.env", "DEBUG=1\n")
    smtp = fake(16)
    put(
        "app-config-credentials", "/srv/app/appsettings.json", f'{{"Smtp": {{"Password": "{smtp}"}}}}\n', smtp
    )
    put("tmp-leftovers", "/tmp/script_4711.sh", "#!/bin/sh\necho provisioning\n")
    token = fake(24)
    put("shell-rc-secret-export", "/home/builder/.bashrc", f"export DEPLOY_TOKEN={token}\n", token)
    put("container-state", "/var/lib/docker/containers/abc123/config.v2.json", '{"Config": {}}\n')
    put("azure-cli-credentials", "/home/builder/.azure/msal_token_cache.json", '{"AccessToken": {}}\n')
    put("aws-cli-credentials", "/home/builder/.aws/credentials", "[default]\nregion = x\n")
    put("gcloud-credentials", "/home/builder/.config/gcloud/credentials.db", b"SQLite format 3\0")
    put("kube-config", "/home/builder/.kube/config", "apiVersion: v1\nkind: Config\n")
    auth = base64.b64encode(f"builder:{fake(12)}".encode()).decode()
    put(
        "container-registry-auth",
        "/home/builder/.config/containers/auth.json",  # podman, buildah, skopeo
        f'{{"auths": {{"r.io": {{"auth": "{auth}"}}}}}}\n',
        auth,
    )
    docker = base64.b64encode(f"ci:{fake(12)}".encode()).decode()
    put("extra", "/home/builder/.docker/config.json", f'{{"auths": {{"r": {{"auth": "{docker}"}}}}}}', docker)
    p.extra.add(("container-registry-auth", "/home/builder/.docker/config.json"))
    git_pw = fake(16)
    put(
        "credential-dotfiles",
        "/home/builder/.git-credentials",
        f"https://builder:{git_pw}@git.example\n",
        git_pw,
    )
    rdp = fake(48, "0123456789ABCDEF")
    put("rdp-file-password", "/home/builder/jump.rdp", f"full address:s:10.0.0.4\npassword 51:b:{rdp}\n", rdp)
    code_key, code_body = pem("RSA ")
    put("private-key-block", "/opt/app/deploy.py", f"DEPLOY_KEY = '''{code_key}'''\n", code_body)
    account_key = fake(86, string.ascii_letters + string.digits + "+/") + "=="
    put(
        "azure-storage-connection-string",
        "/etc/app/storage.conf",
        f"conn = DefaultEndpointsProtocol=https;AccountName=st;AccountKey={account_key};"
        "EndpointSuffix=core.windows.net\n",
        account_key,
    )
    sig = fake(43, string.ascii_letters + string.digits + "+/") + "%3D"
    put(
        "azure-sas-signature",
        "/var/log/app/deploy.log",
        f"GET https://st.blob.core.windows.net/c/b?sv=2022-11-02&sig={sig}\n",
        sig,
    )
    entra = f"{fake(3)}8Q~{fake(34)}"
    put("entra-client-secret", "/opt/app/entra.yaml", f"client_secret_value: {entra}\n", entra)
    key_id = "AKIA" + fake(16, string.ascii_uppercase + string.digits)
    aws_secret = fake(40, string.ascii_letters + string.digits + "/+")
    put(
        "aws-access-key",
        "/opt/app/aws.py",
        f'KEY_ID = "{key_id}"\naws_secret_access_key = "{aws_secret}"\n',
        key_id,
        aws_secret,
    )
    p.expected["aws-secret-access-key"] = "/opt/app/aws.py"
    github = "ghp_" + fake(36)
    put("github-token", "/usr/local/bin/clone.sh", f"git clone https://x:{github}@github.com/o/r\n", github)
    gitlab = "glpat-" + fake(20)
    put("gitlab-token", "/etc/gitlab-runner/config.toml", f'token = "{gitlab}"\n', gitlab)
    slack = "xoxb-" + fake(40)
    put("slack-token", "/opt/app/notify.py", f'SLACK = "{slack}"\n', slack)
    npm = "npm_" + fake(36)
    put("npm-token", "/home/builder/.npmrc", f"//registry.npmjs.org/:_authToken={npm}\n", npm)
    pypi = "pypi-AgEIcHlwaS5vcmc" + fake(60)
    put("pypi-token", "/root/.pypirc", f"[pypi]\nusername = __token__\npassword = {pypi}\n", pypi)
    key_hex = fake(40, "0123456789abcdef")
    put(
        "gcp-service-account-key",
        "/opt/app/sa.json",
        f'{{"type": "service_account", "private_key_id": "{key_hex}"}}\n',
        key_hex,
    )
    jwt = f"eyJhbGciOiJSUzI1NiJ9.eyJ{fake(40)}.{fake(43)}"
    put("jwt", "/var/lib/app/session.json", f'{{"token": "{jwt}"}}\n', jwt)
    db_pw = f"{fake(10)}-{fake(4)}"
    put("password-assignment", "/etc/app/db.conf", f"[db]\ndb_password = {db_pw}\n", db_pw)
    hidden = base64.b64encode((fake(12) + "AdministratorPassword").encode("utf-16-le")).decode()
    put(
        "unattend-encoded-password",
        "/opt/images/unattend.xml",
        f"<AdministratorPassword>\n  <Value>{hidden}</Value>\n"
        "  <PlainText>false</PlainText>\n</AdministratorPassword>\n",
        hidden,
    )
    new_rule_plants(p, put)
    class_plants(p, put)
    p.files["/etc/passwd"] = b"root:x:0:0::/root:/bin/bash\nbuilder:x:1000:1000::/home/builder:/bin/bash\n"
    return p


def new_rule_plants(p: Plants, put: Any) -> None:
    """The rules of issue 12's gaps, where such things turn up."""
    psk = fake(10) + "-" + fake(6)
    put(
        "network-pre-shared-key",
        "/etc/NetworkManager/system-connections/office.nmconnection",
        f"[connection]\nid=office\n[wifi-security]\nkey-mgmt=wpa-psk\npsk={psk}\n",
        psk,
    )
    wg = base64.b64encode(os.urandom(32)).decode()
    put("wireguard-private-key", "/etc/wireguard/wg0.conf", f"[Interface]\nPrivateKey = {wg}\n", wg)
    static = "\n".join(fake(32, "0123456789abcdef") for _ in range(8))
    put(
        "openvpn-static-key",
        "/etc/openvpn/ta.key",
        f"-----BEGIN OpenVPN Static key V1-----\n{static}\n-----END OpenVPN Static key V1-----\n",
        *static.splitlines(),
    )
    client_key = base64.b64encode(pem("RSA ")[0].encode()).decode()
    put(
        "kubeconfig-client-key",
        "/etc/kubernetes/admin.conf",  # kubeadm's cluster-admin kubeconfig
        f"users:\n- name: kubernetes-admin\n  user:\n    client-key-data: {client_key}\n",
        client_key,
    )
    token = fake(40)
    put(
        "container-registry-token",
        "/home/builder/.config/helm/registry/config.json",
        f'{{"auths": {{"r.io": {{"identitytoken": "{token}"}}}}}}\n',
        token,
    )
    admin = fake(8) + "!" + fake(5)
    put(
        "answer-file-password",
        "/opt/images/autounattend.xml",
        "<UserAccounts>\n  <AdministratorPassword>\n    <Value>"
        f"{admin}</Value>\n    <PlainText>true</PlainText>\n  </AdministratorPassword>\n</UserAccounts>\n",
        admin,
    )
    maven = fake(14)
    put(
        "xml-password-element",
        "/home/builder/.m2/settings.xml",
        "<servers>\n  <server>\n    <id>corp</id>\n"
        f"    <password>{maven}</password>\n  </server>\n</servers>\n",
        maven,
    )
    dotnet = fake(9) + "#" + fake(5)
    put(
        "dotnet-config-password",
        "/srv/app/App.config",
        f'<appSettings>\n  <add key="SmtpPassword" value="{dotnet}" />\n</appSettings>\n',
        dotnet,
    )
    secure, account = fake(12), fake(11)
    put(
        "powershell-plaintext-password",
        "/opt/scripts/setup.ps1",
        f"$pw = ConvertTo-SecureString '{secure}' -AsPlainText -Force\nnet user builder {account} /add\n",
        secure,
        account,
    )
    p.expected["net-user-password"] = "/opt/scripts/setup.ps1"  # its line 2


def class_plants(p: Plants, put: Any) -> None:
    """Beyond one plant per rule: the ways a secret hides from a naive scan (compressed,
    archived, UTF-16, a binary-looking name, a symlinked directory, escaped newlines in JSON,
    values with $ ; ( . or letters alone)."""
    ldap = f"Sum;{fake(4)}(x).$y{fake(3)}"
    put("extra", "/etc/app/ldap.conf", f"bind_password={ldap}\n", ldap)
    letters = fake(12, string.ascii_letters)
    put("extra", "/etc/app/smtp.conf", f"smtp_password={letters}\n", letters)
    p.extra |= {("password-assignment", "/etc/app/ldap.conf"), ("password-assignment", "/etc/app/smtp.conf")}
    compressed = {
        "/var/log/app/app.log.1.gz": gzip.compress,
        "/var/log/app/app.log.2.xz": lzma.compress,
        "/var/log/app/app.log.3.bz2": bz2.compress,
    }
    for path, pack in compressed.items():
        token = "ghp_" + fake(36)
        put("extra", path, pack(f"{fake(20)}\nclone {token}\n".encode()), token)
        p.extra.add(("github-token", path))
    slack = "xoxb-" + fake(40)
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as archive:
        archive.writestr("conf/notify.py", f'SLACK = "{slack}"\n')
    put("extra", "/opt/app/bundle.zip", buffer.getvalue(), slack)
    gitlab = "glpat-" + fake(20)
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as tar:
        data = f'token = "{gitlab}"\n'.encode()
        info = tarfile.TarInfo("etc/gitlab-runner/config.toml")
        info.size = len(data)
        tar.addfile(info, io.BytesIO(data))
    put("extra", "/var/backups/etc.tar.gz", buffer.getvalue(), gitlab)
    npm = "npm_" + fake(36)
    put(
        "extra",
        "/opt/app/notes.txt",
        f"\ufeffdeploy\n//registry/:_authToken={npm}\n".encode("utf-16-le"),
        npm,
    )
    p.extra |= {
        ("slack-token", "/opt/app/bundle.zip!/conf/notify.py"),
        ("gitlab-token", "/var/backups/etc.tar.gz!/etc/gitlab-runner/config.toml"),
        ("npm-token", "/opt/app/notes.txt"),
    }
    p.sh_unread |= {"/opt/app/bundle.zip", "/var/backups/etc.tar.gz", "/opt/app/notes.txt"}
    binary_named = "ghp_" + fake(36)
    put("extra", "/opt/app/settings.dat", f"token {binary_named}\n", binary_named)
    p.extra.add(("github-token", "/opt/app/settings.dat"))
    put("extra", "/srv/kube/config", "apiVersion: v1\nkind: Config\n")
    p.links["/root/.kube"] = "/srv/kube"  # the location rule sees ~/.kube/config through the link
    p.extra.add(("kube-config", "/root/.kube/config"))
    for name, escape in (("nested", "\\\\n"), ("crlf", "\\r\\n"), ("unicode", "\\u000a")):
        key, body = pem()
        escaped = key.replace("\n", escape)
        put("extra", f"/opt/app/{name}.json", f'{{"private_key": "{escaped}"}}\n', body)
        p.extra.add(("private-key-block", f"/opt/app/{name}.json"))


def clean_files() -> dict[str, bytes]:
    """What a clean image holds: nothing any rule should flag (decoys included)."""
    return {
        "/etc/passwd": b"root:x:0:0::/root:/bin/bash\nbuilder:x:1000:1000::/home/builder:/bin/bash\n",
        "/etc/shadow": b"root:*:19000:0:99999:7:::\nbuilder:!:19000:0:99999:7:::\n",
        "/etc/app/app.conf": b"password_file = /etc/app/password.txt\ntoken_lifetime = 3600\n",
        "/usr/lib/tool/keys.py": b'PEM = "-----BEGIN RSA PRIVATE KEY-----"\npassword = getpass.getpass()\n',
        "/usr/share/doc/aws/README": (
            b"example: AKIAIOSFODNN7EXAMPLE\n"
            b"aws_secret_access_key = wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY\n"
        ),
        "/opt/azurite/conn.txt": (
            b"AccountKey=Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr"
            b"/KBHBeksoGMGw==\n"
        ),
        "/home/builder/.profile": b'export PATH="$HOME/bin:$PATH"\n',
        "/home/builder/.ssh/id_ed25519.pub": b"ssh-ed25519 AAAAC3Nza builder\n",
        "/srv/app/.env.example": b"API_KEY=\n",
        "/root/.bash_history": b"",
    }


def write_tree(root: Path, files: dict[str, bytes], links: dict[str, str] | None = None) -> None:
    for path, content in files.items():
        target = root / path.lstrip("/")
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(content)
    for path, points_to in (links or {}).items():
        target = root / path.lstrip("/")
        target.parent.mkdir(parents=True, exist_ok=True)
        target.symlink_to(points_to)


@dataclass
class Run:
    document: dict[str, Any]
    stdout: bytes
    stderr: bytes


def run_program(root: Path, *, engine: str, budget: float = 120, env: dict[str, str] | None = None) -> Run:
    """The scan as the engine runs it on a guest: ``sh -c SCRIPT`` with the program on stdin."""
    program = linux_program(LINUX_RULES, KEY, root=str(root), deadline=budget)
    script = linux_script()
    if engine == "sh":
        tools = root.parent / f"{root.name}-tools"
        tools.mkdir(exist_ok=True)
        for tool in TOOLS:  # a PATH with everything the fallback needs, and no python3
            found = shutil.which(tool)
            assert found, f"{tool} is needed for the fallback test"
            (tools / tool).unlink(missing_ok=True)
            (tools / tool).symlink_to(found)
        argv, environment = [str(tools / "sh"), "-c", script], {"PATH": str(tools)}
    else:
        argv, environment = ["sh", "-c", script], {"PATH": os.environ["PATH"]}
    environment.update(env or {})
    proc = subprocess.run(argv, input=program, capture_output=True, env=environment, timeout=300, check=False)
    assert proc.returncode == 0, proc.stderr.decode(errors="replace")[-500:]
    return Run(json.loads(proc.stdout), proc.stdout, proc.stderr)


ENGINES = ["python", "sh"]


@pytest.fixture(scope="module")
def planted(tmp_path_factory: pytest.TempPathFactory) -> tuple[Plants, dict[str, Run]]:
    plants = linux_plants()
    root = tmp_path_factory.mktemp("planted") / "root"
    write_tree(root, plants.files, plants.links)
    return plants, {engine: run_program(root, engine=engine) for engine in ENGINES}


@pytest.mark.parametrize("engine", ENGINES)
@pytest.mark.parametrize("rule", [r.id for r in LINUX_RULES])
def test_every_linux_rule_finds_its_plant(
    planted: tuple[Plants, dict[str, Run]], engine: str, rule: str
) -> None:
    plants, runs = planted
    document = runs[engine].document
    assert document["complete"] is True, document["errors"]
    paths = {f["path"] for f in document["findings"] if f["rule"] == rule}
    assert plants.expected[rule] in paths


@pytest.mark.parametrize("engine", ENGINES)
def test_hidden_shapes_are_found_or_listed_as_not_scanned(
    planted: tuple[Plants, dict[str, Run]], engine: str
) -> None:
    """Compressed logs, archive members, UTF-16 text, a binary-looking name, a symlinked
    directory, keys in JSON with escaped newlines: the python engine finds each; the sh fallback
    finds what it can read and lists the rest as not scanned, never passing it in silence."""
    plants, runs = planted
    document = runs[engine].document
    found = {(f["rule"], f["path"]) for f in document["findings"]}
    unread = {n["path"]: n["reason"] for n in document["not_scanned"]}
    for rule, path in sorted(plants.extra):
        archive = path.split("!/")[0]
        if engine == "sh" and archive in plants.sh_unread:
            assert archive in unread, (rule, path, unread)
        else:
            assert (rule, path) in found, (rule, path)
    if engine == "python":
        assert not unread
    assert document["not_scanned_total"] == len(unread)
    link = next(f for f in document["findings"] if f["path"] == "/root/.kube/config")
    assert link["detail"] == "via symlink /root/.kube -> /srv/kube"


def test_both_engines_agree_finding_for_finding(planted: tuple[Plants, dict[str, Run]]) -> None:
    plants, runs = planted

    def shape(run: Run) -> set[tuple[Any, ...]]:
        return {
            tuple(sorted(f.items()))
            for f in run.document["findings"]
            if f["path"].split("!/")[0] not in plants.sh_unread
        }

    assert shape(runs["python"]) == shape(runs["sh"])
    assert runs["python"].document["stats"]["engine"] == "python"
    assert runs["sh"].document["stats"]["engine"] == "sh"


def test_findings_are_masked_on_the_guest(planted: tuple[Plants, dict[str, Run]]) -> None:
    _, runs = planted
    for run in runs.values():
        for finding in run.document["findings"]:
            assert len(finding["prefix"]) <= 4 and len(finding["fp"]) == 16
            if finding["line"] is None:
                assert finding["prefix"] == ""  # a location finding shows nothing of the file
            elif finding["length"] < 12:
                assert finding["prefix"] == ""
        db = next(
            f
            for f in run.document["findings"]
            if f["rule"] == "password-assignment" and f["path"] == "/etc/app/db.conf"
        )
        assert db["line"] == 2 and db["length"] == 15
        shadow = next(f for f in run.document["findings"] if f["rule"] == "shadow-unlocked-password")
        assert shadow["detail"] == "account=builder"  # the account, never the hash


def test_no_planted_value_leaves_the_guest(planted: tuple[Plants, dict[str, Run]]) -> None:
    plants, runs = planted
    context = DeprovisionContext(action="waagent-deprovision+user", provisioned_user="builder")
    for run in runs.values():
        result = parse_scan_output(run.document, "Linux", context, stderr=run.stderr.decode())
        outputs = [run.stdout.decode(), run.stderr.decode(), repr(result)]
        outputs += [f.summary() for f in result.findings]
        for secret in plants.secrets:
            for text in outputs:
                for chunk in {secret[i : i + 12] for i in range(0, max(1, len(secret) - 11), 6)}:
                    assert chunk not in text, "a planted value reached an output"


def test_fingerprints_are_keyed_hmacs(planted: tuple[Plants, dict[str, Run]]) -> None:
    import hmac

    plants, runs = planted
    github = next(s for s in plants.secrets if s.startswith("ghp_"))
    finding = next(
        f
        for f in runs["python"].document["findings"]
        if f["rule"] == "github-token" and f["path"] == plants.expected["github-token"]
    )
    assert finding["fp"] == hmac.new(KEY, github.encode(), hashlib.sha256).hexdigest()[:16]
    assert finding["fp"] != hashlib.sha256(github.encode()).hexdigest()[:16]


@pytest.mark.parametrize("engine", ENGINES)
def test_a_clean_tree_has_no_finding(tmp_path: Path, engine: str) -> None:
    root = tmp_path / "root"
    write_tree(root, clean_files())
    run = run_program(root, engine=engine)
    assert run.document["complete"] is True
    assert run.document["findings"] == []
    assert run.document["stats"]["suppressed_examples"] >= 3  # AWS id, AWS secret, Azurite key


@pytest.mark.parametrize("engine", ENGINES)
def test_unchanged_package_files_are_dropped_and_changed_ones_kept(tmp_path: Path, engine: str) -> None:
    root = tmp_path / "root"
    key, _ = pem("RSA ")
    token = "ghp_" + fake(36)
    files = {
        "/etc/passwd": b"root:x:0:0::/root:/bin/bash\n",
        "/usr/lib/python3/dist-packages/lib/tests/key.pem": key.encode(),
        "/usr/lib/python3/dist-packages/lib/settings.py": f'TOKEN = "{token}"\n'.encode(),
    }
    write_tree(root, files)
    md5sums = "".join(
        f"{hashlib.md5(content).hexdigest() if 'tests' in path else '0' * 32}  {path[1:]}\n"  # noqa: S324
        for path, content in files.items()
        if path.startswith("/usr/")
    )
    write_tree(root, {"/var/lib/dpkg/info/lib.md5sums": md5sums.encode()})
    document = run_program(root, engine=engine).document
    assert {f["path"] for f in document["findings"]} == {"/usr/lib/python3/dist-packages/lib/settings.py"}
    assert document["stats"]["suppressed_package_files"] == 1


def test_a_passed_deadline_reports_an_incomplete_scan(tmp_path: Path) -> None:
    root = tmp_path / "root"
    write_tree(root, {"/etc/passwd": b"root:x:0:0::/root:/bin/bash\n", "/opt/a.txt": b"x\n"})
    started = str(int(time.time()) - 100)  # the budget ran out before the program started
    for engine in ENGINES:
        document = run_program(root, engine=engine, budget=30, env={"IMAGEREADY_T0": started}).document
        assert document["complete"] is False
        assert "deadline passed: scan stopped early" in document["errors"]


def test_progress_lines_go_to_stderr(tmp_path: Path) -> None:
    root = tmp_path / "root"
    write_tree(root, {"/etc/passwd": b"root:x:0:0::/root:/bin/bash\n"})
    for engine in ENGINES:
        run = run_program(root, engine=engine)
        assert all(line.startswith(b"PROGRESS ") for line in run.stderr.splitlines())
    assert run.stderr.startswith(b"PROGRESS phase=mounts")  # the sh fallback says each phase
    assert b"PROGRESS phase=walk" in run.stderr


def test_run_first_output_and_exit_code_reach_the_result(tmp_path: Path) -> None:
    root = tmp_path / "root"
    write_tree(root, {"/etc/passwd": b"root:x:0:0::/root:/bin/bash\n"})
    program = linux_program(LINUX_RULES, KEY, root=str(root), deadline=60)
    script = linux_script("echo 'IR-POST user_present no'; read x; echo \"stdin:$x\"; sh -c 'exit 3'")
    proc = subprocess.run(["sh", "-c", script], input=program, capture_output=True, timeout=60, check=True)
    result = parse_scan_output(
        json.loads(proc.stdout), "Linux", DeprovisionContext("none"), stderr=proc.stderr.decode()
    )
    assert result.complete
    assert result.stats["run_first_lines"] == ["IR-POST user_present no", "stdin:"]  # stdin closed
    assert result.stats["run_first_exit"] == 3
