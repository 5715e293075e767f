"""Sensitive-data scan benchmark: speed, recall and precision on one synthetic tree.

Builds a tree of >= 100,000 files / 1 GB (text, binaries, large logs, a fake dpkg database) and
plants ``scan_corpus.linux_corpus()`` in it (one plant per rule, and a plant or a decoy for each
way a secret hides or a path is left out, with fresh random values every run), then measures on
that same tree, warm and cold cache:

* the imageready scan (``scripts/scan_linux.py`` run as on a guest: ``python3 -I -``, program
  and configuration on stdin, ``root`` pointed at the tree), inside a private mount namespace
  where a tmpfs hides a directory of the tree, a loop-mounted ext4 is the resource disk at
  ``mnt`` and root lacks CAP_DAC_OVERRIDE (so that a mode-000 file is unreadable);
* ``grep -rIlE`` with the same content patterns (case-insensitive rules folded into bracket
  expressions, so one pass has the rules' exact semantics) and ripgrep, as speed floors;
* detect-secrets on a subset (it runs at about 1 MB/s), as a peer;

and prints files/s, MB/s, recall of the plants and file-level precision for each, then recall
and precision per class for the scan on Linux and for azsim's Windows model
(``scan_corpus.windows_corpus()``).

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
sys.path.insert(0, str(Path(__file__).resolve().parent))

from scan_corpus import Plant, Score, expected_linux, expected_windows, linux_corpus, score, windows_corpus

from imageready.scan import Rule, load_rules, rules_for
from imageready.scan.patterns import ere_for_grep
from imageready.scan.remote import linux_program, linux_script

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
class Tree:
    root: Path
    files: int = 0
    size: int = 0
    plants: list[Plant] = field(default_factory=list)
    #: the resource disk's image (mounted at mnt inside the scan's namespace)
    resource_image: Path | None = None

    def expected(self, classes: tuple[str, ...] | None = None) -> set[str]:
        """Paths the scan must report as findings (of the given classes)."""
        return {
            expected_linux(p)
            for p in self.plants
            if p.expect == "found" and (classes is None or p.cls in classes)
        }


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
    """Stage the corpus: files, links, a sparse file, a mode-000 file, package-owned decoys (their
    md5 in the fake dpkg database), the file a tmpfs will hide, the resource disk's image."""
    del rng  # the corpus draws its values fresh from the system's random source
    resource: list[Plant] = []
    for plant in linux_corpus():
        tree.plants.append(plant)
        target = tree.root / plant.path
        target.parent.mkdir(parents=True, exist_ok=True)
        if plant.how == "resource":
            resource.append(plant)
            continue
        if plant.how == "link":
            target.symlink_to(plant.target)
            continue
        target.write_bytes(plant.content)
        tree.files += 1
        tree.size += len(plant.content)
        if plant.how == "sparse":
            os.truncate(target, plant.size)
        elif plant.how == "unreadable":
            target.chmod(0)
        elif plant.how == "package":
            md5sums.append(f"{hashlib.md5(plant.content).hexdigest()}  {plant.path}")  # noqa: S324 - dpkg's format
    (tree.root / "mnt").mkdir(exist_ok=True)
    # beside the tree, not in it (main() deletes it with the tree)
    disk = Path(f"{tree.root}-disk")
    disk.mkdir()
    image, stage = disk / "resource.img", disk / "stage"
    for plant in resource:
        (stage / plant.path.removeprefix("mnt/")).parent.mkdir(parents=True, exist_ok=True)
        (stage / plant.path.removeprefix("mnt/")).write_bytes(plant.content)
    stage.mkdir(exist_ok=True)
    subprocess.run(
        ["mke2fs", "-q", "-F", "-t", "ext4", "-d", str(stage), str(image), "8M"],
        check=True,
        capture_output=True,
    )
    tree.resource_image = image


# --- tools --------------------------------------------------------------------------------------


@dataclass
class Run:
    tool: str
    cache: str
    seconds: float
    reported: set[str]
    note: str = ""
    unread: set[str] = field(default_factory=set)
    document: dict[str, object] = field(default_factory=dict)


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


#: inside the scan's own mount namespace: a tmpfs hides var/cache/hidden, the resource disk is
#: mounted at mnt with the link WALinuxAgent's udev rules make for it, /sys is covered (the
#: link is the proof then), and root loses CAP_DAC_OVERRIDE (a mode-000 file is unreadable)
SCAN_STAGE = """set -e
mount -t tmpfs hide "$1/var/cache/hidden"
mount -o loop,ro "$2" "$1/mnt"
mkdir -p "$1/dev/disk/azure"
ln -sfn "$(findmnt -n -o SOURCE --mountpoint "$1/mnt")" "$1/dev/disk/azure/resource-part1"
mount -t tmpfs nosys /sys
exec setpriv --bounding-set=-dac_override,-dac_read_search --inh-caps=-dac_override,-dac_read_search \
    sh -c "$3"
"""


def run_scan(tree: Tree, rules: list[Rule], cache: str) -> Run:
    program = linux_program(rules, os.urandom(32), root=str(tree.root), deadline=300)
    argv = ["unshare", "--mount", "--propagation", "private", "sh", "-c", SCAN_STAGE, "stage",
            str(tree.root), str(tree.resource_image), linux_script()]  # fmt: skip
    seconds, out = timed(argv, stdin=program)
    document = json.loads(out.splitlines()[-1])
    reported = {f["path"].lstrip("/") for f in document["findings"]}
    unread = {n["path"].lstrip("/") for n in document["not_scanned"]}
    stats = document["stats"]
    note = f"{stats['files']} files; complete={document['complete']}; {len(unread)} not scanned"
    return Run("imageready scan", cache, seconds, reported, note, unread, document)


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
    # the 9 GiB sparse file is the scan's "not scanned" plant: the floors need not read it
    argv = ["grep", "-rIZE", "--exclude=huge.log"] + [a for p in ere for a in ("-e", p)] + ["."]
    seconds, out = timed(argv, cwd=tree.root)
    return Run("grep -rIE (floor)", cache, seconds, _named(out))


def run_rg(tree: Tree, rust: list[str], cache: str) -> Run:
    argv = ["rg", "-0", "--no-ignore", "--hidden", "--no-messages", "-g", "!huge.log"]
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


def file_score(run: Run, expected: set[str], scope: tuple[str, ...] | None) -> tuple[float, float]:
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
        shutil.rmtree(f"{base}-disk", ignore_errors=True)
        if args.keep:
            print(f"kept {base}")
        else:
            shutil.rmtree(base, ignore_errors=True)
    return 0


def report(tree: Tree, runs: list[Run], ds_runs: list[Run]) -> None:
    everything = tree.expected()
    content = tree.expected(("content rules",))
    mb = tree.size / 1e6
    print(f"\n{'tool':26} {'cache':5} {'seconds':>8} {'files/s':>9} {'MB/s':>7} "
          f"{'recall(all)':>11} {'recall(content)':>15} {'precision':>9}")  # fmt: skip
    for run in runs:
        recall_all, precision = file_score(run, everything, None)
        recall_content, _ = file_score(run, content, None)
        print(
            f"{run.tool:26} {run.cache:5} {run.seconds:8.2f} {tree.files / run.seconds:9.0f} "
            f"{mb / run.seconds:7.1f} {recall_all:11.0%} {recall_content:15.0%} {precision:9.0%}"
        )
    if ds_runs:
        files, size = subset_of(tree)
        scan = next(r for r in runs if r.tool == "imageready scan")
        print(f"\nsubset {'/'.join(SUBSET_AREAS)}: {files} files, {size / 1e6:.1f} MB")
        for run in [*ds_runs, scan]:
            recall, _ = file_score(run, content, SUBSET_AREAS)
            _, precision = file_score(run, everything, SUBSET_AREAS)  # a planted location is a true hit
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
    scan = next(r for r in runs if r.tool == "imageready scan")
    linux, stray = score(tree.plants, scan.reported, scan.unread, expected_linux)
    excluded = {str(e["path"]) for e in scan.document.get("excluded", [])}  # type: ignore[union-attr]
    class_table("Linux (scripts/scan_linux.py)", linux, stray)
    print(f"  resource disk left out at /mnt: {'/mnt' in excluded}")
    windows, stray = windows_scores()
    class_table("Windows (azsim's model of scripts/scan_windows.ps1)", windows, stray)


def class_table(title: str, scores: list[Score], stray: set[str]) -> None:
    print(f"\n{title}\n{'class':28} {'plants':>6} {'decoys':>6} {'recall':>7} {'precision':>9}")
    for entry in scores:
        print(f"{entry.cls:28} {entry.plants:6} {entry.decoys:6} {entry.recall:7.0%} {entry.precision:9.0%}")
    hits = sum(e.hits for e in scores)
    false = sum(e.false for e in scores) + len(stray)
    plants = sum(e.plants for e in scores)
    print(f"{'all':28} {plants:6} {sum(e.decoys for e in scores):6} {hits / plants:7.0%} "
          f"{hits / max(1, hits + false):9.0%}   ({len(stray)} reported of no plant: "
          f"{sorted(stray)[:4]})")  # fmt: skip


def windows_scores() -> tuple[list[Score], set[str]]:
    """The Windows corpus on azsim's machine model, scanned by its answer to the script, with
    text filler around it (the model walks every file)."""
    from azsim.windows.model import build_machine
    from azsim.windows.powershell import ScriptCall, ScriptView
    from azsim.windows.scan_handler import ScanScript
    from azsim.windows.spec import parse_spec
    from imageready.scan.remote import windows_script

    plants = windows_corpus()
    rng = random.Random(11)
    files: list[dict[str, object]] = []
    for plant in plants:
        entry: dict[str, object] = {"path": plant.path, **plant.attrs}
        if not plant.attrs.get("symlink"):
            entry["content"] = plant.content.decode()
        files.append(entry)
    for index in range(3000):  # decoy-laden filler, as in the Linux tree
        kind = ("code", "conf", "log")[index % 3]
        files.append({"path": f"C:\\Program Files\\Vendor\\pkg{index // 50}\\f{index}.txt",
                      "content": text_pool(rng, kind, 2000)})  # fmt: skip
    spec = {
        "files": files,
        "users": [{"name": "dev"}, {"name": "ops"}],
        "volumes": [{"mount": "C:", "disk": "os"}, {"mount": "C:\\data", "disk": "data"},
                    {"mount": "D:", "disk": "resource", "label": "Temporary Storage"}],
    }  # fmt: skip
    machine = build_machine(parse_spec(spec, "win-bench", "admin"), "admin")
    rules = rules_for("Windows", load_rules())
    view = ScriptView(windows_script(rules, os.urandom(32), deadline=600))
    result = ScanScript().run(ScriptCall(view, machine, account="admin", is_system=False, via="winrm"))
    document = json.loads(result.stdout)
    found = {str(f["path"]) for f in document["findings"]}
    unread = {str(n["path"]) for n in document["not_scanned"]}
    # Azure's cached answer file in Panther is a location finding the sysprep step removes
    found.discard("C:\\Windows\\Panther\\unattend.xml")
    return score(plants, found, unread, expected_windows)


if __name__ == "__main__":
    sys.exit(main())
