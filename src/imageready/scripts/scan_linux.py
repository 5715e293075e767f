# ruff: noqa: UP006, UP035, UP045
"""imageready sensitive-data scan, run on a Linux guest as ``python3 -I -`` (program on stdin).

Read-only and self-contained: the standard library of Python >= 3.6 (the one waagent runs on)
plus GNU grep when present. It writes nothing, installs nothing, and prints one JSON document
on stdout; ``PROGRESS`` lines go to stderr at most every ``progress_interval`` seconds.

Secrets never leave in clear: a finding carries the rule, path, line, value length, at most
the first 4 characters (none under 12) and HMAC-SHA256(key, value) truncated to 16 hex
characters. The key arrives inside this program (stdin), never in argv or the environment.

Passes: (1) a walk of every on-disk file system (pseudo file systems by type, the Azure
resource disk and over-size files excluded) that matches paths against location rules;
(2) a content pass: ``grep -F -i`` with every rule's keywords over batches of files on all
cores, then the rules' regular expressions on the matched lines only; (3) a precision pass
that drops files owned by a package and unmodified (dpkg md5sums, rpm digests).
"""

import base64
import hashlib
import hmac
import json
import os
import queue
import re
import subprocess
import sys
import threading
import time
from typing import Any, Dict, List, Optional, Set, Tuple

CONFIG = None  # the engine replaces this line

SCHEMA = 1
FP_HEX = 16
PREFIX_MIN_LENGTH = 12
BATCH_FILES = 1500
BATCH_BYTES = 48 * 1024 * 1024
BLOCK_MAX_LINES = 400
#: matched lines between deadline checks (one grep batch can hold millions of them)
LINES_PER_CHECK = 4096
GREP_ARGS = ["grep", "-I", "-H", "-Z", "-n", "-E", "-s"]
#: a line of key material: base64 (optionally quoted, comma/plus-joined, with an escaped
#: newline) or a PEM header field such as "Proc-Type: 4,ENCRYPTED"
KEY_LINE = re.compile(
    rb"^[ \t\"'+]*(?:([A-Za-z0-9+/=]+)|[A-Za-z-]+: [^\"']*)?[ \t\"',+;]*(?:\\n)?[ \t\"',+;]*\r?$"
)
DIGESTS = {"1": "md5", "2": "sha1", "8": "sha256", "9": "sha384", "10": "sha512", "11": "sha224"}


def _read(path: str, limit: int) -> Optional[bytes]:
    try:
        with open(path, "rb") as handle:
            return handle.read(limit)
    except OSError:
        return None


class Scan:
    def __init__(self, cfg: Dict[str, Any], t0: float) -> None:
        self.cfg = cfg
        self.key = bytes.fromhex(cfg["key"])
        self.deadline = t0 + float(cfg["budget"])
        self.t0 = t0
        self.root = cfg.get("root") or "/"
        self.prefix = self.root.rstrip("/")
        self.max_size = int(cfg["max_file_size"])
        self.rules = cfg["rules"]  # type: List[Dict[str, Any]]
        for rule in self.rules:
            flags = re.IGNORECASE if rule.get("ignore_case") else 0
            rule["rx"] = re.compile(rule["pattern"].encode(), flags) if rule.get("pattern") else None
            ignore = rule.get("ignore_values")
            rule["ignore_rx"] = re.compile(("(" + ignore + ")$").encode(), re.I) if ignore else None
            keywords = [re.escape(k.lower().encode()) for k in rule.get("keywords") or []]
            rule["kw_rx"] = re.compile(b"|".join(keywords)) if keywords else None
            excl = rule.get("exclude_re")
            rule["excl_rx"] = re.compile(excl) if excl else None
        self.examples = [e.encode() for e in cfg.get("examples") or []]
        self.grep_rules = [r for r in self.rules if r["mode"] == "grep"]
        keywords = [r["kw_rx"].pattern for r in self.grep_rules if r["kw_rx"] is not None]
        self.any_keyword = re.compile(b"|".join(keywords)) if keywords else None
        self.cache = threading.local()
        self.lock = threading.Lock()
        self.findings = {}  # type: Dict[Tuple[str, str, Any, str], Dict[str, Any]]
        self.errors = []  # type: List[str]
        self.stats = {
            "files": 0,
            "dirs": 0,
            "bytes": 0,
            "content_files": 0,
            "content_bytes": 0,
            "skipped_large": 0,
            "skipped_large_paths": [],
            "excluded_paths": [],
            "suppressed_examples": 0,
            "suppressed_package_files": 0,
            "candidate_lines": 0,
        }  # type: Dict[str, Any]
        self.complete = True
        self.phase = "walk"
        self.finished = threading.Event()
        self.todo = queue.Queue()  # type: queue.Queue[Any]
        self.done = queue.Queue()  # type: queue.Queue[Any]
        self.pending = 0
        self.use_grep = False

    # --- helpers ----------------------------------------------------------------------------
    def expired(self) -> bool:
        if time.time() >= self.deadline:
            if self.complete:
                self.error("deadline passed: scan stopped early")
            self.complete = False
            return True
        return False

    def error(self, text: str) -> None:
        with self.lock:
            if len(self.errors) < 50:
                self.errors.append(text)

    def host(self, path: str) -> str:
        return self.prefix + path

    def fingerprint(self, value: bytes) -> str:
        return hmac.new(self.key, value, hashlib.sha256).hexdigest()[:FP_HEX]

    def add(
        self,
        rule: Dict[str, Any],
        path: str,
        line: Optional[int],
        value: bytes,
        shown: bool = True,
        detail: str = "",
        length: Optional[int] = None,
    ) -> None:
        prefix = ""
        if shown and len(value) >= PREFIX_MIN_LENGTH:
            prefix = value[:4].decode("utf-8", "replace")
        item = {
            "rule": rule["id"],
            "path": path,
            "line": line,
            "length": len(value) if length is None else length,
            "prefix": prefix,
            "fp": self.fingerprint(value),
            "detail": detail,
        }
        with self.lock:
            self.findings.setdefault((rule["id"], path, line, item["fp"]), item)

    # --- exclusions -------------------------------------------------------------------------
    def excluded_dirs(self) -> Set[str]:
        excluded = set()  # type: Set[str]
        fstypes = set(self.cfg.get("exclude_fstypes") or [])
        try:
            with open("/proc/self/mounts", "rb") as handle:
                mounts = handle.read().decode("utf-8", "surrogateescape").splitlines()
        except OSError:
            mounts = []
        for row in mounts:
            fields = row.split()
            if len(fields) < 3:
                continue
            point = re.sub(r"\\([0-7]{3})", lambda m: chr(int(m.group(1), 8)), fields[1])
            fstype = fields[2]
            if not (fstype in fstypes or fstype.startswith("fuse.")):
                continue
            if self.prefix and not point.startswith(self.prefix + "/"):
                continue
            guest_path = point[len(self.prefix) :] or "/"
            if guest_path != "/":  # the scanned root itself may be an overlay or a tmpfs
                excluded.add(guest_path)
        conf = _read(self.host("/etc/waagent.conf"), 1 << 20) or b""
        match = re.search(rb"(?m)^[ \t]*ResourceDisk\.MountPoint[ \t]*=[ \t]*(\S+)", conf)
        temp = [match.group(1).decode("utf-8", "surrogateescape") if match else "/mnt/resource"]
        if os.path.isfile(self.host("/etc/cloud/cloud.cfg")) or os.path.isdir(
            self.host("/etc/cloud/cloud.cfg.d")
        ):
            temp.append("/mnt")  # cloud-init images mount the resource disk on /mnt
        for path in temp + list(self.cfg.get("exclude_paths") or []):
            path = "/" + path.strip("/")
            if path != "/" and os.path.isdir(self.host(path)):
                excluded.add(path)
        self.stats["excluded_paths"] = sorted(excluded)
        return excluded

    # --- location matching ------------------------------------------------------------------
    def compile_globs(self) -> None:
        homes = ["/root", "/home/[^/]+"]
        passwd = _read(self.host("/etc/passwd"), 1 << 22) or b""
        for row in passwd.decode("utf-8", "surrogateescape").splitlines():
            fields = row.split(":")
            if len(fields) >= 6 and fields[5].strip("/") and os.path.isdir(self.host(fields[5])):
                homes.append(re.escape("/" + fields[5].strip("/")))
        home_re = "(" + "|".join(sorted(set(homes))) + ")"
        self.by_name = {}  # type: Dict[str, List[Tuple[Any, Dict[str, Any]]]]
        self.by_pattern = []  # type: List[Tuple[Any, Any, Dict[str, Any]]]
        self.by_dir = []  # type: List[Tuple[Any, bool, Dict[str, Any]]]
        prefixes, suffixes = set(), set()
        self.name_always = False
        for glob in self.cfg["globs"]:
            rule = self.rules[glob["rule"]]
            path_rx = re.compile(glob["path_re"].replace("@HOME@", home_re))
            if glob.get("dir_re") is not None:
                dir_rx = re.compile(glob["dir_re"].replace("@HOME@", home_re))
                self.by_dir.append((dir_rx, bool(glob.get("recursive")), rule))
            elif glob.get("name") is not None:
                self.by_name.setdefault(glob["name"], []).append((path_rx, rule))
            else:
                self.by_pattern.append((re.compile(glob["name_re"]), path_rx, rule))
                # literal ends of the wildcard name: a C-speed test before any regex
                literal = re.split(r"[*?]", glob["name_glob"])
                if literal[0]:
                    prefixes.add(literal[0])
                elif literal[-1]:
                    suffixes.add(literal[-1])
                else:
                    self.name_always = True
        self.name_prefixes = tuple(sorted(prefixes))
        self.name_suffixes = tuple(sorted(suffixes))
        self.path_hits = []  # type: List[Tuple[Dict[str, Any], str, int]]

    def dir_rules(self, path: str, inherited: List[Any]) -> List[Any]:
        active = [entry for entry in inherited if entry[1]]
        for entry in self.by_dir:
            if entry not in active and entry[0].match(path):
                active.append(entry)
        return active

    def match_file(self, path: str, name: str, size: int, active: List[Any]) -> None:
        hits = []  # type: List[Dict[str, Any]]
        named = self.by_name.get(name)
        if named:
            hits.extend(rule for path_rx, rule in named if path_rx.match(path))
        if name.startswith(self.name_prefixes) or name.endswith(self.name_suffixes) or (self.name_always):
            hits.extend(r for n_rx, p_rx, r in self.by_pattern if n_rx.match(name) and p_rx.match(path))
        if active:
            hits.extend(entry[2] for entry in active)
        for rule in hits:
            if rule["excl_rx"] is None or not rule["excl_rx"].match(path):
                self.path_hits.append((rule, path, size))

    # --- walk -------------------------------------------------------------------------------
    def walk(self) -> None:
        excluded = self.excluded_dirs()
        if self.expired():
            return
        stack = [("/", self.dir_rules("/", []))]  # type: List[Tuple[str, List[Any]]]
        batch = []  # type: List[str]
        batch_bytes = 0
        seen = 0
        while stack:
            directory, active = stack.pop()
            self.stats["dirs"] += 1
            try:
                entries = list(os.scandir(self.host(directory)))
            except OSError as exc:
                self.error(f"cannot list {directory}: {exc.strerror}")
                continue
            base = directory.rstrip("/") + "/"
            for entry in entries:
                path = base + entry.name
                try:
                    if entry.is_symlink():
                        continue
                    if entry.is_dir():
                        if path not in excluded:
                            stack.append((path, self.dir_rules(path, active)))
                        continue
                    if not entry.is_file():
                        continue
                    size = entry.stat(follow_symlinks=False).st_size
                except OSError:
                    continue
                self.stats["files"] += 1
                self.stats["bytes"] += size
                self.match_file(path, entry.name, size, active)
                if size > self.max_size:
                    self.stats["skipped_large"] += 1
                    if len(self.stats["skipped_large_paths"]) < 20:
                        self.stats["skipped_large_paths"].append(path)
                elif size and self.grep_rules:
                    batch.append(path)
                    batch_bytes += size
                    if len(batch) >= BATCH_FILES or batch_bytes >= BATCH_BYTES:
                        self.submit(batch, batch_bytes)
                        batch, batch_bytes = [], 0
            if not self.done.empty():
                self.drain()
            seen += len(entries)
            if seen > 2000:
                seen = 0
                if self.expired():
                    break
        if batch:
            self.submit(batch, batch_bytes)

    # --- content ----------------------------------------------------------------------------
    # Worker threads only run grep and hand back its raw output; the main thread parses it
    # between directories. CPU-bound parsing in threads would starve the syscall-heavy walk of
    # the GIL (a convoy: every scandir/stat waits a switch interval).
    def submit(self, batch: List[str], size: int) -> None:
        self.pending += 1
        self.todo.put((batch, size))

    def grep_worker(self) -> None:
        while True:
            item = self.todo.get()
            if item is None:
                return
            batch, size = item
            out = None  # type: Optional[bytes]
            if self.expired():
                out = b""
            elif self.use_grep:
                out = self.run_grep(batch)
            self.done.put((batch, size, out))

    def drain(self, wait: bool = False) -> None:
        while self.pending:
            try:
                batch, size, out = self.done.get(block=wait, timeout=1.0 if wait else None)
            except queue.Empty:
                if wait and not self.expired():
                    continue
                return
            self.pending -= 1
            self.stats["content_files"] += len(batch)
            self.stats["content_bytes"] += size
            if out is None:
                for path in batch:
                    self.python_prefilter(path)
            else:
                self.parse_grep(out)

    def run_grep(self, batch: List[str]) -> bytes:
        argv = list(GREP_ARGS)
        for rule in self.grep_rules:
            argv += ["-e", rule["ere"]]
        argv.append("--")
        argv.extend(path[1:] for path in batch)
        env = {"LC_ALL": "C", "PATH": os.environ.get("PATH", "/usr/bin:/bin")}
        try:
            proc = subprocess.Popen(
                argv,
                cwd=self.root,
                stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE,
                stderr=subprocess.DEVNULL,
                env=env,
            )
        except OSError as exc:
            self.error(f"grep failed to start: {exc.strerror}")
            return b""
        try:
            out, _ = proc.communicate(timeout=max(0.1, self.deadline - time.time()))
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.communicate()
            self.expired()
            return b""
        return out

    def parse_grep(self, out: bytes) -> None:
        """``grep -HZn`` records: path NUL line-number ':' line LF."""
        pos, end, count = 0, len(out), 0
        while pos < end:
            count += 1
            if count % LINES_PER_CHECK == 0 and self.expired():
                return
            zero = out.find(b"\0", pos)
            colon = out.find(b":", zero + 1)
            if zero < 0 or colon < 0:
                break
            newline = out.find(b"\n", colon + 1)
            if newline < 0:
                newline = end
            path = "/" + os.fsdecode(out[pos:zero])
            self.stats["candidate_lines"] += 1
            self.check_line(path, int(out[zero + 1 : colon]), out[colon + 1 : newline], None)
            pos = newline + 1

    def file_lines(self, path: str) -> List[bytes]:
        """The lines of ``path``, read once per thread for consecutive matches in one file."""
        cached = getattr(self.cache, "lines", None)
        if cached is None or cached[0] != path:
            data = _read(self.host(path), self.max_size + 1) or b""
            cached = (path, data.split(b"\n"))
            self.cache.lines = cached
        return cached[1]

    def python_prefilter(self, path: str) -> None:
        data = _read(self.host(path), self.max_size + 1)
        if data is None or b"\0" in data:
            return
        lines = data.split(b"\n")
        for number, line in enumerate(lines, 1):
            if number % LINES_PER_CHECK == 0 and self.expired():
                return
            if self.any_keyword is None or self.any_keyword.search(line.lower()):
                self.check_line(path, number, line, lines)

    def check_line(
        self,
        path: str,
        number: int,
        line: bytes,
        lines: Optional[List[bytes]],
        rules: Optional[List[Dict[str, Any]]] = None,
    ) -> None:
        lower = line.lower()
        for rule in self.grep_rules if rules is None else rules:
            if rules is None and rule["kw_rx"] is not None and not rule["kw_rx"].search(lower):
                continue
            for match in rule["rx"].finditer(line):
                value = match.group(rule.get("group") or 0) or b""
                if rule.get("block_end"):
                    value = self.block_body(path, number, line[match.end() :], lines, rule)
                    if value is None:
                        continue
                if not self.accept(rule, value):
                    continue
                detail = ""
                if rule.get("detail_group"):
                    label = rule.get("detail_label") or "detail"
                    shown = match.group(rule["detail_group"]) or b""
                    detail = "{}={}".format(label, shown.decode("utf-8", "replace"))
                self.add(rule, path, number, value, detail=detail)

    def accept(self, rule: Dict[str, Any], value: bytes) -> bool:
        if rule["ignore_rx"] is not None and rule["ignore_rx"].match(value):
            return False
        if any(example in value for example in self.examples):
            with self.lock:
                self.stats["suppressed_examples"] += 1
            return False
        if rule.get("decode") == "unattend-password":
            try:
                text = base64.b64decode(value, validate=True).decode("utf-16-le")
            except (ValueError, UnicodeDecodeError):
                return False
            return text.endswith("Password") and len(text) > len("Password")
        return True

    def block_body(
        self, path: str, number: int, rest: bytes, lines: Optional[List[bytes]], rule: Dict[str, Any]
    ) -> Optional[bytes]:
        """The key material between a BEGIN header and its END marker: base64 lines, maybe
        quoted or with escaped newlines (keys inside code and JSON). None when the lines after
        the header are not key material (a header string in a parser, say)."""
        end = rule["block_end"].encode()
        if end in rest:
            parts = rest[: rest.index(end)].replace(b"\\n", b"\n").split(b"\n")
        else:
            if lines is None:
                lines = self.file_lines(path)
            parts = rest.replace(b"\\n", b"\n").split(b"\n")
            for line in lines[number : number + BLOCK_MAX_LINES]:
                if end in line:
                    parts.append(line[: line.index(end)])
                    break
                if not KEY_LINE.match(line):
                    return None
                parts.append(line)
            else:
                return None
        body = []
        for part in parts:
            match = KEY_LINE.match(part.replace(b"\\n", b""))
            if match is None:
                return None
            body.append(match.group(1) or b"")
        value = b"".join(body)
        return value if len(value) >= 64 else None

    # --- rules scoped to paths --------------------------------------------------------------
    def path_findings(self) -> None:
        for rule, path, size in self.path_hits:
            if self.expired():
                return
            if rule["mode"] == "presence":
                if size < int(rule.get("min_size", 1)):
                    continue
                data = _read(self.host(path), self.max_size) if size <= self.max_size else None
                digest = hashlib.sha256(data).hexdigest() if data is not None else f"size:{size}"
                material = f"location\0{rule['id']}\0{path}\0{digest}"
                self.add(rule, path, None, os.fsencode(material), shown=False, length=size)
                continue
            data = _read(self.host(path), self.max_size + 1) if size <= self.max_size else None
            if data is None or b"\0" in data[:8192]:
                continue
            lines = data.split(b"\n")
            for number, line in enumerate(lines, 1):
                if number % LINES_PER_CHECK == 0 and self.expired():
                    return
                self.check_line(path, number, line, lines, [rule])

    # --- precision --------------------------------------------------------------------------
    def package_digests(self, paths: Set[str]) -> Dict[str, Tuple[str, str]]:
        owned = {}  # type: Dict[str, Tuple[str, str]]
        info = self.host("/var/lib/dpkg/info")
        if os.path.isdir(info):
            wanted = {p[1:].encode("utf-8", "surrogateescape") for p in paths}
            for name in os.listdir(info):
                if not name.endswith(".md5sums"):
                    continue
                for row in (_read(os.path.join(info, name), 1 << 26) or b"").splitlines():
                    digest, _, rel = row.partition(b"  ")
                    if rel in wanted:
                        owned["/" + rel.decode("utf-8", "surrogateescape")] = (
                            "md5",
                            digest.decode(),
                        )
            status = _read(self.host("/var/lib/dpkg/status"), 1 << 28) or b""
            for match in re.finditer(rb"(?m)^ (/\S+) ([0-9a-f]{32})$", status):
                path = match.group(1).decode("utf-8", "surrogateescape")
                if path in paths:
                    owned[path] = ("md5", match.group(2).decode())
            return owned
        if os.path.isdir(self.host("/var/lib/rpm")) and paths:
            query = "[%{=FILEDIGESTALGO} %{FILEDIGESTS} %{FILENAMES}\\n]"
            argv = ["rpm", "--root", self.root, "-qa", "--qf", query]
            try:
                out = subprocess.run(
                    argv,
                    stdout=subprocess.PIPE,
                    stderr=subprocess.DEVNULL,
                    timeout=max(1.0, self.deadline - time.time()),
                    check=False,
                ).stdout
            except (OSError, subprocess.TimeoutExpired) as exc:
                self.error(f"rpm file digests unavailable: {type(exc).__name__}")
                return owned
            for entry in out.decode("utf-8", "surrogateescape").splitlines():
                algo, _, rest = entry.partition(" ")
                hexdigest, _, name = rest.partition(" ")
                if name in paths and hexdigest and algo in DIGESTS:
                    owned[name] = (DIGESTS[algo], hexdigest)
        return owned

    def drop_package_files(self) -> None:
        paths = {key[1] for key in self.findings}
        for path, (algo, digest) in self.package_digests(paths).items():
            data = _read(self.host(path), self.max_size + 1)
            if data is not None and hashlib.new(algo, data).hexdigest() == digest:
                self.stats["suppressed_package_files"] += 1
                for key in [k for k in self.findings if k[1] == path]:
                    del self.findings[key]

    # --- run --------------------------------------------------------------------------------
    def progress(self) -> None:
        interval = float(self.cfg.get("progress_interval", 2.0))
        while not self.finished.wait(interval):
            with self.lock:
                line = "PROGRESS phase={} files={} mb={:.1f} scanned_mb={:.1f} elapsed={:.1f}s".format(
                    self.phase,
                    self.stats["files"],
                    self.stats["bytes"] / 1e6,
                    self.stats["content_bytes"] / 1e6,
                    time.time() - self.t0,
                )
            sys.stderr.write(line + "\n")
            sys.stderr.flush()

    def grep_works(self) -> bool:
        try:
            probe = subprocess.run(
                [*GREP_ARGS, "-e", "x", "--", "/dev/null"],
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
                timeout=10,
                check=False,
            )
        except (OSError, subprocess.TimeoutExpired):
            return False
        return probe.returncode == 1

    def run(self) -> Dict[str, Any]:
        threading.Thread(target=self.progress, daemon=True).start()
        self.compile_globs()
        self.use_grep = self.grep_works()
        # more greps than cores: cold reads overlap (I/O queue depth), warm ones share the CPUs
        workers = int(self.cfg.get("workers") or 0) or max(4, min(8, 4 * (os.cpu_count() or 1)))
        threads = [threading.Thread(target=self.grep_worker, daemon=True) for _ in range(workers)]
        for thread in threads:
            thread.start()
        self.walk()
        self.phase = "content"
        for _ in threads:
            self.todo.put(None)
        self.drain(wait=True)
        self.phase = "paths"
        self.path_findings()
        self.phase = "precision"
        if not self.expired():
            self.drop_package_files()
        self.finished.set()
        self.stats["elapsed"] = round(time.time() - self.t0, 3)
        self.stats["engine"] = "python"
        self.stats["content_matcher"] = "grep" if self.use_grep else "python"
        findings = sorted(self.findings.values(), key=lambda f: (f["rule"], f["path"], f["line"] or 0))
        return {
            "schema": SCHEMA,
            "complete": self.complete,
            "findings": findings,
            "stats": self.stats,
            "errors": self.errors,
        }


def main() -> int:
    sys.dont_write_bytecode = True
    t0 = float(os.environ.get("IMAGEREADY_T0") or time.time())
    raw = CONFIG if CONFIG is not None else sys.stdin.read()
    text = raw if raw.lstrip().startswith("{") else base64.b64decode(raw).decode()
    try:
        result = Scan(json.loads(text), t0).run()
    except Exception as exc:
        sys.stderr.write("ERROR scan failed: {} {}\n".format(type(exc).__name__, getattr(exc, "errno", "")))
        return 3
    sys.stdout.write(json.dumps(result, sort_keys=True) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
