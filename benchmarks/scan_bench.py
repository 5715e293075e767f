"""Sensitive-data scan benchmark: speed, recall and precision on one synthetic tree.

Builds a tree of >= 100,000 files / 1 GB (text, binaries, large logs, a fake dpkg database) with
fake secrets planted by rule, then measures on that same tree, warm and cold cache:

* the imageready scan (``scripts/scan_linux.py`` run as on a guest: ``python3 -I -``, program
  and configuration on stdin, ``root`` pointed at the tree);
* ``grep -rIlE`` with the same content patterns (case-insensitive rules folded into bracket
  expressions, so one pass has the rules' exact semantics) and ripgrep, as speed floors;
* detect-secrets on a subset (it runs at about 1 MB/s), as a peer;

and prints files/s, MB/s, recall of the text-format plants and file-level precision for each.

Reproduce (as root, for the cold-cache runs; about 3-4 minutes on 2 cores):

    .venv/bin/python benchmarks/scan_bench.py            # full size, warm + cold
    .venv/bin/python benchmarks/scan_bench.py --files 5000 --size-mb 50 --no-cold   # quick

detect-secrets is installed on first use into a throwaway venv under ~/.cache (``pip install
detect-secrets==1.5.0`` from PyPI); ``--no-detect-secrets`` skips it. The tree is deleted at the
end unless ``--keep``.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import random
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from imageready.scan import Rule, ere_for_grep, linux_program, load_rules, rules_for

DETECT_SECRETS = "detect-secrets==1.5.0"
DS_VENV = Path.home() / ".cache" / "imageready" / "bench-detect-secrets"
SUBSET_AREAS = ("etc", "home", "root", "opt", "srv")
WORDS = (
    "alpha", "beta", "gamma", "delta", "value", "config", "server", "client", "request", "response",
    "handler", "module", "function", "return", "import", "class", "object", "string", "number", "list",
    "dict", "error", "warning", "info", "debug", "service", "daemon", "socket", "buffer", "stream",
    "thread", "process", "queue", "cache", "index", "table", "column", "row", "user", "group", "mode",
    "path", "file", "directory", "mount", "device", "kernel", "network", "address", "port", "timeout",
)  # fmt: skip


@dataclass
class Plant:
    path: str
    rule: str
    kind: str  # "content": the file holds a secret value; "location": the file is the finding
    text: bool = True  # binary plants are not expected to be found by line-oriented tools
    expected: bool = True  # False: a decoy that must not be reported (package-owned, unchanged)


@dataclass
class Tree:
    root: Path
    files: int = 0
    size: int = 0
    plants: list[Plant] = field(default_factory=list)

    def expected(self, kinds: tuple[str, ...] = ("content", "location")) -> set[str]:
        return {p.path for p in self.plants if p.expected and p.text and p.kind in kinds}


# --- building the tree --------------------------------------------------------------------------


class Fake:
    """Fake secrets in the right shapes (random at run time: nothing real is ever planted)."""

    def __init__(self, rng: random.Random) -> None:
        self.rng = rng

    def chars(self, alphabet: str, n: int) -> str:
        return "".join(self.rng.choice(alphabet) for _ in range(n))

    def alnum(self, n: int) -> str:
        return self.chars("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789", n)

    def b64(self, n: int) -> str:
        return self.chars("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/", n)

    def pem(self, kind: str = "RSA ") -> str:
        body = "\n".join(self.b64(64) for _ in range(12))
        return f"-----BEGIN {kind}PRIVATE KEY-----\n{body}\n-----END {kind}PRIVATE KEY-----\n"

    def jwt(self) -> str:
        return f"eyJhbGciOiJSUzI1NiJ9.eyJ{self.alnum(60)}.{self.alnum(43)}"


def text_pool(rng: random.Random, kind: str, size: int) -> str:
    """Low-entropy filler with realistic keyword decoys (lines that are not secrets)."""
    decoys = {
        "code": [
            "    password = getpass.getpass(prompt)",
            "    token = self._next_token()",
            "    if not password:",
            '    api_key = os.environ["API_KEY"]',
            "    secret_key = None",
            '    PEM_HEADER = "-----BEGIN RSA PRIVATE KEY-----"',
            '    token_url = "https://login.example.com/oauth2/v2.0/token"',
            "    tokenizer = Tokenizer(vocabulary)",
            '    example = "AKIAIOSFODNN7EXAMPLE"',
            "    def check_password(self, password, hashed):",
        ],
        "conf": [
            "password_file = /etc/app/password.txt",
            "# password = changeme",
            "token_lifetime = 3600",
            "secret = ${APP_SECRET}",
            "auth_token: {{ vault_token }}",
            "signing_url = https://example.net/download?sig=abc",
        ],
        "log": [
            "INFO token refreshed for user alice",
            "WARN password policy: minimum length 12",
            "DEBUG GET /api/items?page=2&sig=short",
            "INFO secret rotation scheduled",
        ],
    }[kind]
    lines, total = [], 0
    while total < size:
        if rng.random() < 0.015:
            line = rng.choice(decoys)
        elif kind == "code":
            words = rng.choices(WORDS, k=rng.randint(2, 8))
            line = "    " * rng.randint(0, 3) + f"{words[0]} = {'_'.join(words[1:])}()"
        elif kind == "conf":
            line = f"{rng.choice(WORDS)}_{rng.choice(WORDS)} = {rng.choice(WORDS)}"
        else:
            line = f"2024-05-{rng.randint(1, 28):02d} INFO " + " ".join(rng.choices(WORDS, k=10))
        lines.append(line)
        total += len(line) + 1
    return "\n".join(lines) + "\n"


def build_tree(base: Path, files: int, total: int, seed: int = 7) -> Tree:
    rng = random.Random(seed)
    tree = Tree(base)
    pools = {k: text_pool(rng, k, 4 << 20) for k in ("code", "conf", "log")}
    binary = os.urandom(8 << 20)
    areas = [
        ("usr/lib/python3/dist-packages", "code", ".py"),
        ("usr/share/doc", "conf", ".txt"),
        ("usr/lib/node_modules", "code", ".js"),
        ("var/lib/app", "conf", ".json"),
        ("var/log/app", "log", ".log"),
        ("usr/lib/x86_64-linux-gnu", "bin", ".so"),
        ("opt/vendor", "code", ".py"),
        ("etc/app", "conf", ".conf"),
        ("srv/data", "bin", ".bin"),
    ]
    plan: list[tuple[str, str, int]] = []
    for index in range(files):
        area, kind, ext = rng.choices(areas, weights=[30, 12, 20, 6, 4, 14, 3, 2, 9])[0]
        big = rng.random() < 0.0005
        size = rng.randint(2 << 20, 16 << 20) if big else int(rng.lognormvariate(8.4, 1.1))
        path = f"{area}/pkg{index // 40:04d}/d{index % 7}/f{index}{ext}"
        plan.append((path, kind if not big else "log", size))
    scale = total / max(1, sum(s for _, _, s in plan))
    md5sums: list[str] = []
    for path, kind, size in plan:
        size = max(64, int(size * scale))
        target = base / path
        target.parent.mkdir(parents=True, exist_ok=True)
        if kind == "bin":
            start = rng.randrange(0, len(binary) - size) if size < len(binary) else 0
            data = binary[start : start + size]
        else:
            pool = pools[kind]
            start = rng.randrange(0, max(1, len(pool) - size))
            start = pool.find("\n", start) + 1
            data = (pool[start : start + size] * (1 + size // len(pool)))[:size].encode()
        target.write_bytes(data)
        tree.files += 1
        tree.size += len(data)
        if path.startswith("usr/") and rng.random() < 0.3:
            md5sums.append(f"{hashlib.md5(data).hexdigest()}  {path}")  # noqa: S324 - dpkg's format
    plant_secrets(tree, rng, md5sums)
    info = base / "var/lib/dpkg/info"
    info.mkdir(parents=True, exist_ok=True)
    (info / "bench.md5sums").write_text("\n".join(md5sums) + "\n")
    return tree


def plant_secrets(tree: Tree, rng: random.Random, md5sums: list[str]) -> None:
    fake = Fake(rng)
    filler = text_pool(rng, "conf", 3000)

    def put(path: str, body: str, rule: str, kind: str = "content", **extra: bool) -> None:
        target = tree.root / path
        target.parent.mkdir(parents=True, exist_ok=True)
        text = body if kind == "location" else filler[:1500] + body + "\n" + filler[1500:]
        target.write_text(text)
        tree.files += 1
        tree.size += len(text)
        tree.plants.append(Plant(path, rule, kind, **extra))

    put("etc/passwd", "root:x:0:0::/root:/bin/bash\ndev:x:1000:1000::/home/dev:/bin/bash\n",
        "none", "location", expected=False)  # fmt: skip
    put("etc/shadow", f"root:*:19000::::::\ndev:$6${fake.alnum(8)}${fake.b64(86)}:19000::::::\n",
        "shadow-unlocked-password", "location")  # fmt: skip
    put("home/dev/.bash_history", "ls\ncd /srv\n", "bash-history", "location")
    put("root/.python_history", "import os\n", "other-histories", "location")
    put("home/dev/.ssh/authorized_keys", f"ssh-ed25519 {fake.b64(68)} dev\n",
        "ssh-authorized-keys", "location")  # fmt: skip
    put("home/dev/.ssh/id_ed25519", fake.pem("OPENSSH "), "ssh-user-private-key", "location")
    put("etc/ssh/ssh_host_ed25519_key", fake.pem("OPENSSH "), "ssh-host-private-key", "location")
    put("var/lib/waagent/ovf-env.xml", "<Environment/>\n", "waagent-provisioning-data", "location")
    put("var/lib/cloud/instances/i-1/user-data.txt", "#cloud-config\n", "cloud-init-user-data",
        "location")  # fmt: skip
    put("home/dev/.azure/msal_token_cache.json", "{}\n", "azure-cli-credentials", "location")
    put("home/dev/.aws/credentials", f"[default]\naws_access_key_id = AKIA{fake.alnum(16).upper()}\n",
        "aws-cli-credentials", "location")  # fmt: skip
    put("home/dev/.kube/config", "apiVersion: v1\n", "kube-config", "location")
    put("home/dev/.pgpass", "db:5432:*:app:pw\n", "credential-dotfiles", "location")
    put("opt/infra/terraform.tfstate", "{}\n", "app-secret-files", "location")
    put("tmp/packer-provision.sh", "#!/bin/sh\n", "tmp-leftovers", "location")
    # content plants, in the kinds of files where they turn up
    put("opt/app/deploy.py", f"DEPLOY_KEY = '''{fake.pem()}'''", "private-key-block")
    key_json = fake.pem().replace("\n", "\\n")
    put("opt/app/sa.json", f'{{"private_key_id": "{fake.chars("0123456789abcdef", 40)}", '
        f'"private_key": "{key_json}"}}', "gcp-service-account-key")  # fmt: skip
    put("etc/app/appsettings.json", f'"Storage": "DefaultEndpointsProtocol=https;AccountName=x;'
        f'AccountKey={fake.b64(86)}==;EndpointSuffix=core.windows.net"',
        "azure-storage-connection-string")  # fmt: skip
    put("var/log/app/deploy-big.log", f"GET https://x.blob.core.windows.net/c/b?sv=2022-11-02"
        f"&se=2030-01-01&sp=r&sig={fake.b64(43)}%3D", "azure-sas-signature")  # fmt: skip
    put("opt/tool/config.yaml", f"client_secret_value: {fake.alnum(3)}8Q~{fake.alnum(34)}",
        "entra-client-secret")  # fmt: skip
    put("opt/app/settings.py", f'AWS_SECRET_ACCESS_KEY = "{fake.b64(40)}"', "aws-secret-access-key")
    put("usr/local/bin/ci-deploy.sh", f"git clone https://x:ghp_{fake.alnum(36)}@github.com/o/r",
        "github-token")  # fmt: skip
    put("etc/gitlab-runner/config.toml", f'token = "glpat-{fake.alnum(20)}"', "gitlab-token")
    put("opt/monitor/alert.py", f"URL = 'https://hooks.slack.com/services/T{fake.alnum(8).upper()}"
        f"/B{fake.alnum(8).upper()}/{fake.alnum(24)}'", "slack-token")  # fmt: skip
    put("home/dev/.npmrc", f"//registry.npmjs.org/:_authToken=npm_{fake.alnum(36)}", "npm-token")
    put("root/.pypirc", f"[pypi]\npassword = pypi-AgEIcHlwaS5vcmc{fake.alnum(60)}", "pypi-token")
    put("var/lib/app/session.json", f'{{"session": "{fake.jwt()}"}}', "jwt")
    put("etc/app/db.conf", f"db_password = {fake.alnum(10)}-{fake.alnum(4)}", "password-assignment")
    minified = "var a=1;" * 20000 + f'var cfg={{apiKey:"{fake.alnum(32)}"}};' + "var b=2;" * 100
    put("opt/app/static/app.min.js", minified, "password-assignment")
    encoded = __import__("base64").b64encode((fake.alnum(12) + "Password").encode("utf-16-le"))
    put("opt/images/unattend.xml", f"<Password>\n<Value>{encoded.decode()}</Value>\n"
        "<PlainText>false</PlainText>\n</Password>", "unattend-encoded-password")  # fmt: skip
    put("home/dev/.bashrc", f"export OPENAI_API_KEY=sk-{fake.alnum(40)}", "shell-rc-secret-export")
    put("home/dev/.docker/config.json", f'{{"auths": {{"r.io": {{"auth": "{fake.b64(24)}"}}}}}}',
        "docker-registry-auth")  # fmt: skip
    deep = tree.root / "var/log/app/huge-service.log"
    deep.parent.mkdir(parents=True, exist_ok=True)
    log = text_pool(rng, "log", 6 << 20)
    deep.write_text(log[: 5 << 20] + f"\nconnect password={fake.alnum(14)}!\n" + log[5 << 20 :])
    tree.files += 1
    tree.size += deep.stat().st_size
    tree.plants.append(Plant("var/log/app/huge-service.log", "password-assignment", "content"))
    # a binary file with a key inside: not expected of line-oriented, text-only tools
    blob = tree.root / "srv/data/blob.bin"
    blob.parent.mkdir(parents=True, exist_ok=True)
    blob.write_bytes(os.urandom(4096) + f"AKIA{fake.alnum(16).upper()}".encode() + b"\0" * 64)
    tree.plants.append(Plant("srv/data/blob.bin", "aws-access-key", "content", text=False))
    # package files: an unchanged test key (suppressed) and a modified file (found)
    test_key = "usr/lib/python3/dist-packages/testpkg/tests/key.pem"
    put(test_key, fake.pem(), "private-key-block", expected=False)
    md5sums.append(f"{hashlib.md5((tree.root / test_key).read_bytes()).hexdigest()}  {test_key}")  # noqa: S324
    changed = "usr/lib/python3/dist-packages/testpkg/settings.py"
    md5sums.append(f"{'0' * 32}  {changed}")
    put(changed, f'GITHUB_TOKEN = "ghp_{fake.alnum(36)}"', "github-token")


# --- tools --------------------------------------------------------------------------------------


@dataclass
class Run:
    tool: str
    cache: str
    seconds: float
    reported: set[str]
    note: str = ""


def drop_caches() -> bool:
    try:
        subprocess.run(["sync"], check=True)
        Path("/proc/sys/vm/drop_caches").write_text("3\n")
    except OSError:
        return False
    return True


def timed(argv: list[str], *, stdin: bytes = b"", cwd: Path | None = None) -> tuple[float, bytes]:
    started = time.monotonic()
    proc = subprocess.run(
        argv, input=stdin, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, cwd=cwd,
        env={**os.environ, "LC_ALL": "C"}, timeout=600, check=False,
    )  # fmt: skip
    return time.monotonic() - started, proc.stdout


def run_scan(tree: Tree, rules: list[Rule], cache: str) -> Run:
    program = linux_program(rules, os.urandom(32), root=str(tree.root), deadline=300)
    seconds, out = timed(["python3", "-I", "-"], stdin=program)
    document = json.loads(out)
    reported = {f["path"].lstrip("/") for f in document["findings"]}
    stats = document["stats"]
    note = f"{stats['files']} files; complete={document['complete']}"
    return Run("imageready scan", cache, seconds, reported, note)


def patterns(rules: list[Rule]) -> tuple[list[str], list[str]]:
    """The content rules' patterns for grep (ERE, case folded) and ripgrep (Rust syntax)."""
    ere, rust = [], []
    for rule in rules:
        if rule.pattern is None:
            continue
        ere.append(ere_for_grep(rule))
        body = rule.pattern.replace("[^]", "[^\\]").replace(",;[]", ",;\\[]")
        rust.append(f"(?i:{body})" if rule.ignore_case else body)
    return ere, rust


def run_grep(tree: Tree, ere: list[str], cache: str) -> Run:
    """Every matching line, as a scanner needs them (``-Z`` only to split names safely)."""
    argv = ["grep", "-rIZE"] + [a for p in ere for a in ("-e", p)] + ["."]
    seconds, out = timed(argv, cwd=tree.root)
    return Run("grep -rIE (floor)", cache, seconds, _named(out))


def run_rg(tree: Tree, rust: list[str], cache: str) -> Run:
    argv = ["rg", "-0", "--no-ignore", "--hidden", "--no-messages"]
    argv += [a for p in rust for a in ("-e", p)] + ["."]
    seconds, out = timed(argv, cwd=tree.root)
    return Run("ripgrep (floor)", cache, seconds, _named(out))


def _named(out: bytes) -> set[str]:
    """File names of NUL-terminated-name output lines."""
    names = set()
    for line in out.split(b"\n"):
        name, zero, _ = line.partition(b"\0")
        if zero:
            names.add(name.decode(errors="replace").removeprefix("./"))
    return names


def detect_secrets_bin() -> Path | None:
    tool = DS_VENV / "bin" / "detect-secrets"
    if tool.exists():
        return tool
    try:
        subprocess.run([sys.executable, "-m", "venv", str(DS_VENV)], check=True)
        subprocess.run(
            [str(DS_VENV / "bin" / "pip"), "install", "-q", DETECT_SECRETS], check=True, timeout=300
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return tool


def run_detect_secrets(tree: Tree, tool: Path) -> Run:
    areas = [a for a in SUBSET_AREAS if (tree.root / a).is_dir()]
    seconds, out = timed([str(tool), "scan", "--all-files", *areas], cwd=tree.root)
    results = json.loads(out or b"{}").get("results", {})
    return Run("detect-secrets (subset)", "warm", seconds, set(results))


# --- report -------------------------------------------------------------------------------------


def subset_of(tree: Tree) -> tuple[int, int]:
    files = size = 0
    for area in SUBSET_AREAS:
        for path in (tree.root / area).rglob("*"):
            if path.is_file() and not path.is_symlink():
                files += 1
                size += path.stat().st_size
    return files, size


def score(run: Run, expected: set[str], scope: tuple[str, ...] | None) -> tuple[float, float]:
    reported = run.reported
    if scope is not None:
        reported = {p for p in reported if p.split("/", 1)[0] in scope}
        expected = {p for p in expected if p.split("/", 1)[0] in scope}
    found = reported & expected
    recall = len(found) / len(expected) if expected else 1.0
    precision = len(found) / len(reported) if reported else 1.0
    return recall, precision


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--files", type=int, default=100_000, help="number of filler files")
    parser.add_argument("--size-mb", type=int, default=1100, help="filler bytes, in MB")
    parser.add_argument("--dir", type=Path, default=Path("/var/tmp"), help="where to build")
    parser.add_argument("--no-cold", action="store_true", help="skip cold-cache runs")
    parser.add_argument("--no-detect-secrets", action="store_true", help="skip detect-secrets")
    parser.add_argument("--keep", action="store_true", help="keep the tree afterwards")
    args = parser.parse_args()

    base = Path(tempfile.mkdtemp(prefix="imageready-bench-", dir=args.dir))
    try:
        started = time.monotonic()
        tree = build_tree(base, args.files, args.size_mb * 1_000_000)
        built = time.monotonic() - started
        print(f"tree: {base} {tree.files} files, {tree.size / 1e6:.0f} MB, "
              f"{len(tree.expected())} text plants (built in {built:.0f} s)")  # fmt: skip
        rules = rules_for("Linux", load_rules())
        ere, rust = patterns(rules)
        caches = ["warm"] + ([] if args.no_cold else ["cold"])
        if "cold" in caches and not drop_caches():
            print("cold cache: cannot drop caches (needs root); warm only")
            caches = ["warm"]
        runs: list[Run] = []
        for cache in caches:
            for make in (
                lambda c: run_grep(tree, ere, c),
                lambda c: run_rg(tree, rust, c),
                lambda c: run_scan(tree, rules, c),
            ):
                if cache == "cold":
                    drop_caches()
                else:
                    make("warm")  # warm-up: every tool reads the tree once first
                runs.append(make(cache))
        ds_runs = []
        if not args.no_detect_secrets:
            tool = detect_secrets_bin()
            if tool is None:
                print("detect-secrets: could not install (pip); skipped")
            else:
                ds_runs.append(run_detect_secrets(tree, tool))
        report(tree, runs, ds_runs)
    finally:
        if args.keep:
            print(f"kept {base}")
        else:
            shutil.rmtree(base, ignore_errors=True)
    return 0


def report(tree: Tree, runs: list[Run], ds_runs: list[Run]) -> None:
    everything = tree.expected()
    content = tree.expected(("content",))
    mb = tree.size / 1e6
    print(f"\n{'tool':26} {'cache':5} {'seconds':>8} {'files/s':>9} {'MB/s':>7} "
          f"{'recall(all)':>11} {'recall(content)':>15} {'precision':>9}")  # fmt: skip
    for run in runs:
        recall_all, precision = score(run, everything, None)
        recall_content, _ = score(run, content, None)
        print(
            f"{run.tool:26} {run.cache:5} {run.seconds:8.2f} {tree.files / run.seconds:9.0f} "
            f"{mb / run.seconds:7.1f} {recall_all:11.0%} {recall_content:15.0%} {precision:9.0%}"
        )
    if ds_runs:
        files, size = subset_of(tree)
        scan = next(r for r in runs if r.tool == "imageready scan")
        print(f"\nsubset {'/'.join(SUBSET_AREAS)}: {files} files, {size / 1e6:.1f} MB")
        for run in [*ds_runs, scan]:
            recall, _ = score(run, content, SUBSET_AREAS)
            _, precision = score(run, everything, SUBSET_AREAS)  # a planted location is a true hit
            rate = f"{size / 1e6 / run.seconds:7.1f}" if run in ds_runs else "      -"
            print(f"{run.tool:26} {run.seconds:8.2f}s {rate} MB/s  recall(content) {recall:.0%} "
                  f"precision {precision:.0%}")  # fmt: skip
    floor = {r.cache: r.seconds for r in runs if r.tool.startswith("grep")}
    for run in runs:
        if run.tool == "imageready scan":
            missed = sorted(everything - run.reported)
            extra = sorted(run.reported - everything)
            print(f"\nscan ({run.cache}): {run.seconds / floor[run.cache]:.2f}x grep; {run.note}; "
                  f"missed {missed or 'none'}; {len(extra)} not planted {extra[:5]}")  # fmt: skip


if __name__ == "__main__":
    sys.exit(main())
