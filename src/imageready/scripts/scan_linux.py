# ruff: noqa: UP006, UP035, UP045
"""imageready sensitive-data scan, run on a Linux guest as ``python3 -I -`` (program on stdin).

Read-only and self-contained: the standard library of Python >= 3.6 (the one waagent runs on)
plus GNU grep when present. It writes nothing to any file system and prints one JSON document on
stdout; ``PROGRESS`` lines go to stderr at most every ``progress_interval`` seconds. To read
what a mount hides it may bind-mount a disk read-only in a mount namespace of its own, which
no other process sees and which ends with it.

Secrets never leave in clear: a finding carries the rule, path, line, value length, at most
the first 4 characters (none under 12) and HMAC-SHA256(key, value) truncated to 16 hex
characters. The key arrives inside this program (stdin), never in argv or the environment.

Nothing is skipped in silence. The mount table says what is walked: every file system on a disk
(the root and data disks), minus pseudo and network file systems (by type) and the Azure
resource disk (by its device); each exclusion is listed with its reason. A directory that a
mount hides on a walked disk is read beneath the mount (through a second mount of that disk, or
a private read-only bind of it) or listed as not scanned. Every file the scan could not read in
full (over the size bound, unreadable, an I/O error, an unsupported encoding, an archive that
expands past its bound) is listed as not scanned with its reason: the engine treats any such
entry as an incomplete scan.

Passes: (1) a walk that matches paths against location rules (symlinks resolved for them);
(2) content: ``grep -E`` with every rule's pattern over batches of files on several processes,
then the rules' own expressions on the matched lines, in Python; files too large for grep's line
buffer, UTF-16 text and compressed files are streamed in chunks here; (3) precision: files owned
by a package and unmodified (dpkg md5sums, rpm digests) are dropped.

One file, on purpose, though it is long: the guest receives it as a single program on stdin
(``python3 -I -``, no file written, nothing imported from the guest beyond the standard library),
so it cannot be split into modules the guest would have to find on a path. The engine embeds its
configuration in place of the ``CONFIG`` line (``imageready.scan.remote.linux_program``).
"""

import base64
import bz2
import codecs
import collections
import gzip
import hashlib
import hmac
import json
import lzma
import os
import queue
import re
import stat
import subprocess
import sys
import tarfile
import threading
import time
import zipfile
from typing import Any, Dict, Iterator, List, Optional, Set, Tuple

CONFIG = None  # the engine replaces this line

SCHEMA = 1
FP_HEX = 16
PREFIX_MIN_LENGTH = 12
BATCH_FILES = 1500
BATCH_BYTES = 48 * 1024 * 1024
BLOCK_MAX_LINES = 400
#: matched lines between deadline checks (one grep batch can hold millions of them)
LINES_PER_CHECK = 4096
#: streamed reads: chunk size, the longest line kept whole, and the overlap between pieces of a
#: longer one (every rule's match is far shorter, so a match straddling a cut is in one piece)
CHUNK = 16 * 1024 * 1024
LONG_LINE = 8 * 1024 * 1024
OVERLAP = 64 * 1024
HEAD = 32 * 1024
GREP_ARGS = ["grep", "-I", "-H", "-Z", "-n", "-E"]
#: a line of key material: base64 (optionally quoted, comma/plus-joined, with an escaped
#: newline) or a PEM header field such as "Proc-Type: 4,ENCRYPTED"
KEY_LINE = re.compile(
    rb"^[ \t\"'+]*(?:([A-Za-z0-9+/=]+)|[A-Za-z-]+: [^\"']*)?[ \t\"',+;]*(?:\\n)?[ \t\"',+;]*\r?$"
)
#: escaped line breaks and base64 characters inside strings: JSON (\n, \r\n, \u000a, \/,
#: \u002b), JSON inside JSON (\\n), C-like sources
ESCAPED_BREAK = re.compile(rb"(\\+r)?\\+n|\\+u000[aAdD]|\\+r")
ESCAPED_CHAR = {rb"\/": b"/", rb"\u002b": b"+", rb"\u002B": b"+", rb"\u003d": b"=", rb"\u003D": b"="}
DIGESTS = {"1": "md5", "2": "sha1", "8": "sha256", "9": "sha384", "10": "sha512", "11": "sha224"}
COMPRESSED = ((b"\x1f\x8b\x08", "gzip"), (b"\xfd7zXZ\x00", "xz"), (b"BZh", "bzip2"), (b"PK\x03\x04", "zip"))
COMPRESSED_NAME = re.compile(r"\.(gz|tgz|xz|txz|bz2|tbz2?|zip)$", re.I)
#: a C-speed test before that expression (the last letter, either case)
COMPRESSED_ENDS = ("z", "Z", "2", "p", "P")
# mount(2) and unshare(2) flags (linux/fs.h, linux/sched.h)
CLONE_NEWNS, MS_RDONLY, MS_NOSUID, MS_NODEV, MS_NOEXEC = 0x20000, 1, 2, 4, 8
MS_REMOUNT, MS_BIND, MS_REC, MS_PRIVATE = 32, 4096, 16384, 1 << 18
#: the Azure resource disk as the host presents it: VMBus device 00000000-0001-... (generation 1),
#: LUN 1 of SCSI controller f8b3781a-... (generation 2); WALinuxAgent's 66-azure-storage.rules
RESOURCE_SYSFS = re.compile(
    r"/00000000-0001-[0-9a-f-]+/|/\{?f8b3781a-1e82-4818-a1c3-63d806ec15bb\}?/host[0-9]+/target[0-9:]+/[0-9]+:[0-9]+:[0-9]+:1/",
    re.I,
)


def _read(path: str, limit: int) -> Optional[bytes]:
    try:
        with open(path, "rb") as handle:
            return handle.read(limit)
    except OSError:
        return None


def _why(exc: BaseException) -> str:
    """A short reason for a failed read: the OS error's text, never a path or a value."""
    if isinstance(exc, OSError):
        text = exc.strerror or type(exc).__name__
        return "permission denied" if exc.errno in (1, 13) else f"I/O error: {text}"
    return f"{type(exc).__name__}: {str(exc)[:80]}"


def _unescape_octal(text: str) -> str:
    return re.sub(r"\\([0-7]{3})", lambda m: chr(int(m.group(1), 8)), text)


def sniff(head: bytes) -> str:
    """What a file's first bytes say it is: text, utf-16-le/-be, utf-32, binary or a compressed
    format (gzip, xz, bzip2, zip)."""
    for magic, kind in COMPRESSED:
        if head.startswith(magic):
            return kind
    if head.startswith((b"\xff\xfe\x00\x00", b"\x00\x00\xfe\xff")):
        return "utf-32"
    if head.startswith(b"\xff\xfe"):
        return "utf-16-le"
    if head.startswith(b"\xfe\xff"):
        return "utf-16-be"
    if b"\0" not in head:
        return "text"
    # UTF-16 without a byte order mark: text whose every other byte is NUL
    sample = head[: len(head) // 2 * 2][:4096]
    if len(sample) >= 8:
        odd, even = sample[1::2], sample[0::2]
        if odd.count(0) >= len(odd) * 0.9 and even.count(0) < len(even) * 0.1:
            return "utf-16-le"
        if even.count(0) >= len(even) * 0.9 and odd.count(0) < len(odd) * 0.1:
            return "utf-16-be"
    return "binary"


def iter_lines(chunks: Iterator[bytes]) -> Iterator[Tuple[int, bytes]]:
    """(line number, line) of a byte stream read in chunks. A line longer than LONG_LINE comes in
    overlapping pieces that share its number (a minified file, a log without newlines)."""
    number, rest = 0, b""
    for chunk in chunks:
        data = rest + chunk
        lines = data.split(b"\n")
        rest = lines.pop()
        for line in lines:
            number += 1
            yield number, line
        while len(rest) > LONG_LINE:
            yield number + 1, rest[:LONG_LINE]
            rest = rest[LONG_LINE - OVERLAP :]
    if rest:
        yield number + 1, rest


def read_chunks(handle: Any, encoding: str = "text", limit: Optional[int] = None) -> Iterator[bytes]:
    """Chunks of ``handle`` as UTF-8 (UTF-16 decoded); ``limit`` bounds the bytes read and raises
    OverflowError past it."""
    decoder = codecs.getincrementaldecoder(encoding)("replace") if encoding.startswith("utf-16") else None
    total = 0
    while True:
        chunk = handle.read(CHUNK)
        if not chunk:
            break
        first = total == 0
        total += len(chunk)
        if limit is not None and total > limit:
            raise OverflowError(total)
        if decoder is not None:
            text = decoder.decode(chunk)
            if first and text.startswith("\ufeff"):  # the byte order mark is no character
                text = text[1:]
            chunk = text.encode("utf-8")
        yield chunk
    if decoder is not None:
        yield decoder.decode(b"", final=True).encode("utf-8")


class Mount:
    """One row of /proc/self/mountinfo, with what the scan makes of it."""

    def __init__(self, row: str) -> None:
        fields = row.split()
        dash = fields.index("-")
        self.id, self.parent = int(fields[0]), int(fields[1])
        self.dev, self.root = fields[2], _unescape_octal(fields[3])
        self.point = _unescape_octal(fields[4])
        self.fstype, self.source = fields[dash + 1], _unescape_octal(fields[dash + 2])
        self.guest = ""  # the mount point as the scanned tree sees it ("" when outside it)
        self.kind = ""  # "disk" (walked), "pseudo", "resource", "second" (another mount of a walked disk)
        self.reason = ""


class Scan:
    def __init__(self, cfg: Dict[str, Any], t0: float) -> None:
        self.cfg = cfg
        self.key = bytes.fromhex(cfg["key"])
        self.deadline = t0 + float(cfg["budget"])
        self.t0 = t0
        self.root = cfg.get("root") or "/"
        self.prefix = self.root.rstrip("/")
        self.max_size = int(cfg["max_file_size"])
        self.max_expanded = int(cfg.get("max_expanded") or 256 * 1024 * 1024)
        self.grep_max = int(cfg.get("grep_max") or 256 * 1024 * 1024)
        self.listed_max = int(cfg.get("not_scanned_limit") or 500)
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
        self.grep_rules = [r for r in self.rules if r["mode"] == "grep" and not r.get("multiline")]
        self.wide_rules = [r for r in self.rules if r["mode"] == "grep" and r.get("multiline")]
        content = self.grep_rules + self.wide_rules
        keywords = [r["kw_rx"].pattern for r in content if r["kw_rx"] is not None]
        self.any_keyword = re.compile(b"|".join(keywords)) if keywords else None
        # which line rules a line can match, from one pass over its keywords: every keyword
        # occurrence is found (the search restarts one byte after each), and a rule is in when
        # one of its keywords is inside a keyword found (longer ones are tried first)
        words = sorted(
            {k.lower().encode() for r in self.grep_rules for k in r.get("keywords") or []},
            key=len,
            reverse=True,
        )
        self.keyword_rx = re.compile(b"|".join(re.escape(w) for w in words)) if words else None
        self.keyword_rules = dict(
            (w, [r for r in self.grep_rules if any(k.lower().encode() in w for k in r.get("keywords") or [])])
            for w in words
        )  # type: Dict[bytes, List[Dict[str, Any]]]
        self.keywordless = [r for r in self.grep_rules if not r.get("keywords")]
        self.rule_order = dict((id(r), i) for i, r in enumerate(self.grep_rules))
        wide = [r["kw_rx"].pattern for r in self.wide_rules if r["kw_rx"] is not None]
        self.wide_keyword = re.compile(b"|".join(wide)) if wide else None
        self.cache = threading.local()
        self.lock = threading.Lock()
        self.findings = {}  # type: Dict[Tuple[str, str, Any, str], Dict[str, Any]]
        self.errors = []  # type: List[str]
        self.not_scanned = collections.OrderedDict()  # type: Dict[str, str]
        self.not_scanned_total = 0
        self.excluded = []  # type: List[Dict[str, str]]
        self.stats = {
            "files": 0,
            "dirs": 0,
            "bytes": 0,
            "content_files": 0,
            "content_bytes": 0,
            "skipped_large": 0,
            "excluded_paths": [],
            "suppressed_examples": 0,
            "suppressed_package_files": 0,
            "candidate_lines": 0,
            "streamed_files": 0,
            "archives": 0,
            "underlay": [],
            "symlinks_resolved": 0,
        }  # type: Dict[str, Any]
        self.complete = True
        self.phase = "mounts"
        self.finished = threading.Event()
        self.todo = queue.Queue()  # type: queue.Queue[Any]
        self.done = queue.Queue()  # type: queue.Queue[Any]
        self.pending = 0
        self.use_grep = False
        self.streamed = []  # type: List[Tuple[str, str, str]]
        self.wide_candidates = set()  # type: Set[Tuple[str, str]]
        self.symlinks = []  # type: List[Tuple[str, str, bool]]
        self.mounts = []  # type: List[Mount]
        self.hidden = []  # type: List[Tuple[Mount, Mount]]
        self.views = {}  # type: Dict[int, str]
        self.scratch = None  # type: Optional[str]
        self.owned = None  # type: Optional[Dict[str, Tuple[str, str]]]

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

    def skip(self, path: str, reason: str) -> None:
        """``path`` could not be read in full: listed, never dropped in silence."""
        with self.lock:
            if path in self.not_scanned:
                return
            self.not_scanned_total += 1
            if len(self.not_scanned) < self.listed_max:
                self.not_scanned[path] = reason

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

    # --- mounts: what is on a disk of the image, and what is not ---------------------------
    def read_mounts(self) -> None:
        try:
            with open("/proc/self/mountinfo", "rb") as handle:
                rows = handle.read().decode("utf-8", "surrogateescape").splitlines()
        except OSError as exc:
            # without the mount table nothing proves what is a disk: say so, and walk everything
            self.error(f"cannot read the mount table: {exc.strerror}")
            self.complete = False
            return
        mounts = []
        for row in rows:
            try:
                mounts.append(Mount(row))
            except (ValueError, IndexError):
                continue
        self.mounts = mounts
        by_id = dict((m.id, m) for m in mounts)
        # the mount that holds the scanned root (the root mount itself on a guest)
        holders = [
            m for m in mounts if self.root == m.point or self.root.startswith(m.point.rstrip("/") + "/")
        ]
        top = max(holders, key=lambda m: (len(m.point), m.id)) if holders else None
        fstypes = set(self.cfg.get("exclude_fstypes") or [])
        resource = self.resource_devices()
        primary = {}  # type: Dict[Tuple[str, str], Mount]
        for mount in mounts:
            if mount is top or (not self.prefix and mount.point == "/"):
                mount.guest, mount.kind = "/", "disk"
                primary.setdefault((mount.dev, mount.root), mount)
                continue
            if self.prefix and not mount.point.startswith(self.prefix + "/"):
                continue
            mount.guest = mount.point[len(self.prefix) :] or "/"
            first = primary.get((mount.dev, mount.root)) or next(
                (
                    p
                    for (dev, root), p in primary.items()
                    if dev == mount.dev and mount.root.startswith(root.rstrip("/") + "/")
                ),
                None,
            )
            if first is not None:
                mount.kind = "second"
                mount.reason = f"another mount of {mount.source} (walked at {first.guest})"
            elif mount.fstype in fstypes or mount.fstype.startswith("fuse."):
                mount.kind = "pseudo"
                mount.reason = f"{mount.fstype} file system, not on a disk of the image"
            elif mount.dev in resource:
                mount.kind = "resource"
                mount.reason = (
                    f"the Azure resource disk ({mount.source}, {resource[mount.dev]}): not part of the image"
                )
            else:
                mount.kind = "disk"
                primary[(mount.dev, mount.root)] = mount
        for mount in mounts:
            if mount.guest and mount.kind != "disk":
                self.excluded.append({"path": mount.guest, "reason": mount.reason})
            parent = by_id.get(mount.parent)
            if (
                mount.guest
                and mount.guest != "/"
                and parent is not None
                and parent.kind == "disk"
                and parent.guest
            ):
                self.hidden.append((mount, parent))
        self.stats["excluded_paths"] = sorted(set(e["path"] for e in self.excluded))

    def resource_devices(self) -> Dict[str, str]:
        """major:minor -> how it is known to be the Azure resource disk: sysfs places it at the
        VMBus position Azure gives the resource disk; without sysfs, the udev links that
        WALinuxAgent's rules make (/dev/disk/azure/resource, resource-partN)."""
        found = {}  # type: Dict[str, str]
        links = self.host("/dev/disk/azure")
        try:
            names = sorted(os.listdir(links))
        except OSError:
            names = []
        for name in names:
            if not re.match(r"^resource(-part[0-9]+)?$", name):
                continue
            try:
                rdev = os.stat(os.path.join(links, name)).st_rdev
            except OSError:
                continue
            dev = f"{os.major(rdev)}:{os.minor(rdev)}"
            sysfs = "/sys/dev/block/" + dev
            if os.path.exists(sysfs):
                where = os.path.realpath(sysfs)
                if not RESOURCE_SYSFS.search(where + "/"):
                    self.error(
                        f"/dev/disk/azure/{name} names {dev}, which sysfs does not place where Azure "
                        "attaches the resource disk: scanned as a disk"
                    )
                    continue
                found[dev] = "VMBus position of the resource disk in sysfs"
            else:
                found[dev] = "/dev/disk/azure/" + name
        return found

    def prepare_views(self) -> None:
        """Before any thread starts: a private read-only bind of each walked disk that hides a
        directory under a mount and has no second mount to read it through."""
        wanted = [(m, p) for m, p in self.hidden if self.second_mount(p, self.relative(m, p)) is None]
        if not wanted:
            return
        why = self.bind_views()
        for _, parent in wanted:
            if not why and parent.id not in self.views:
                self.bind_view(parent)

    def look_beneath(self) -> None:
        """Each directory a mount hides on a walked disk is read beneath the mount: through a
        second mount of that disk that does not hide it, or a private read-only bind of the
        disk; otherwise it is listed as not scanned."""
        for mount, parent in self.hidden:
            rel = self.relative(mount, parent)
            other = self.second_mount(parent, rel)
            if other is not None:
                self.walk_underlay(mount.guest, other.point.rstrip("/") + rel, "through " + other.point)
                continue
            view = self.views.get(parent.id)
            if view is None:
                self.skip(
                    mount.guest,
                    "hidden under the {} mounted over it; the disk beneath cannot be read ({})".format(
                        mount.fstype, self.bind_error or "no private mount"
                    ),
                )
                continue
            self.walk_underlay(mount.guest, view + rel, "through a private read-only bind of " + parent.point)

    @staticmethod
    def relative(mount: Mount, parent: Mount) -> str:
        return mount.point[len(parent.point.rstrip("/")) :]

    def second_mount(self, parent: Mount, rel: str) -> Optional[Mount]:
        for other in self.mounts:
            if other is parent or other.dev != parent.dev or other.root != parent.root:
                continue
            target = other.point.rstrip("/") + rel
            covered = any(m.parent == other.id and m.point == target for m in self.mounts)
            if not covered:
                return other
        return None

    bind_error = ""

    def bind_views(self) -> str:
        """Enter a private mount namespace and mount a scratch tmpfs there (nothing any other
        process sees; both end with this one). "" when that worked, else why not."""
        try:
            import ctypes

            libc = ctypes.CDLL(None, use_errno=True)
        except (ImportError, OSError) as exc:
            self.bind_error = f"no ctypes: {type(exc).__name__}"
            return self.bind_error

        def call(result: int, what: str) -> None:
            if result != 0:
                raise OSError(ctypes.get_errno(), f"{what}: {os.strerror(ctypes.get_errno())}")

        # a pseudo file system of the live system the scan never walks (nor needs any more: the
        # mount table and sysfs are read by now), holding neither the scanned tree nor a disk to
        # bind, is covered by a tmpfs of our own, in our namespace only. Not /dev: greps read
        # /dev/null.
        used = [self.root] + [p.point for _, p in self.hidden]
        candidates = (("/run", "tmpfs"), ("/dev/shm", "tmpfs"), ("/tmp", "tmpfs"), ("/sys", "sysfs"))  # noqa: S108
        scratch = next(
            (
                m.point
                for name, fstype in candidates
                for m in self.mounts
                if m.point == name
                and m.fstype == fstype
                and not any((u.rstrip("/") + "/").startswith(name + "/") for u in used)
            ),
            None,
        )
        try:
            if scratch is None:
                raise OSError(0, "no tmpfs to hold a private mount")
            call(libc.unshare(CLONE_NEWNS), "unshare")
            call(libc.mount(b"none", b"/", None, MS_REC | MS_PRIVATE, None), "mount --make-rprivate")
            call(
                libc.mount(
                    b"imageready",
                    scratch.encode(),
                    b"tmpfs",
                    MS_NOSUID | MS_NODEV | MS_NOEXEC,
                    b"mode=700,size=64k",
                ),
                "mount tmpfs",
            )
        except OSError as exc:
            self.bind_error = exc.strerror or str(exc)
            return self.bind_error
        self.libc, self.scratch = libc, scratch
        return ""

    def bind_view(self, parent: Mount) -> Optional[str]:
        import ctypes

        view = os.path.join(self.scratch or "/", f"disk{parent.id}")
        try:
            os.mkdir(view, 0o700)
            for flags in (MS_BIND, MS_BIND | MS_REMOUNT | MS_RDONLY):
                if self.libc.mount(parent.point.encode(), view.encode(), None, flags, None) != 0:
                    raise OSError(ctypes.get_errno(), os.strerror(ctypes.get_errno()))
        except OSError as exc:
            self.bind_error = f"bind mount: {exc.strerror}"
            return None
        self.views[parent.id] = view
        return view

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
        ancestors = []  # type: List[str]
        dirs = []  # type: List[str]
        prefixes, suffixes = set(), set()
        self.name_always = False
        for glob in self.cfg["globs"]:
            rule = self.rules[glob["rule"]]
            path_rx = re.compile(glob["path_re"].replace("@HOME@", home_re))
            if glob.get("ancestors_re"):
                ancestors.append(glob["ancestors_re"].replace("@HOME@", home_re))
            if glob.get("dir_re") is not None:
                dir_re = glob["dir_re"].replace("@HOME@", home_re)
                self.by_dir.append((re.compile(dir_re), bool(glob.get("recursive")), rule))
                dirs.append(dir_re[:-1] + "(/.*)?$" if glob.get("recursive") else dir_re)
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
        #: directories some anchored location rule could match below (a symlink there is followed)
        self.ancestor_rx = re.compile("|".join("(" + a + ")" for a in ancestors)) if ancestors else None
        self.dir_any_rx = re.compile("|".join("(" + d + ")" for d in dirs)) if dirs else None
        self.path_hits = []  # type: List[Tuple[Dict[str, Any], str, int, str, str]]

    def dir_rules(self, path: str, inherited: List[Any]) -> List[Any]:
        active = [entry for entry in inherited if entry[1]]
        for entry in self.by_dir:
            if entry not in active and entry[0].match(path):
                active.append(entry)
        return active

    def match_file(
        self, path: str, name: str, size: int, active: List[Any], host: str, detail: str = ""
    ) -> bool:
        hits = []  # type: List[Dict[str, Any]]
        named = self.by_name.get(name)
        if named:
            hits.extend(rule for path_rx, rule in named if path_rx.match(path))
        if name.startswith(self.name_prefixes) or name.endswith(self.name_suffixes) or self.name_always:
            hits.extend(r for n_rx, p_rx, r in self.by_pattern if n_rx.match(name) and p_rx.match(path))
        if active:
            hits.extend(entry[2] for entry in active)
        matched = False
        for rule in hits:
            if rule["excl_rx"] is None or not rule["excl_rx"].match(path):
                self.path_hits.append((rule, path, size, host, detail))
                matched = True
        return matched

    # --- walk -------------------------------------------------------------------------------
    def walk(self) -> None:
        pruned = set(m.guest for m in self.mounts if m.guest and m.kind != "disk")
        self.walk_tree("/", self.host("/"), pruned)

    def walk_underlay(self, guest: str, host: str, via: str) -> None:
        try:
            empty = not os.listdir(host)
        except OSError as exc:
            self.skip(guest, f"hidden under a mount; cannot list the disk beneath: {exc.strerror}")
            return
        self.stats["underlay"].append({"path": guest, "via": via, "empty": empty})
        if not empty:
            self.walk_tree(guest, host, set())

    def walk_tree(self, start: str, start_host: str, pruned: Set[str]) -> None:
        active0 = self.dir_rules(start.rstrip("/") or "/", [])
        stack = [(start, start_host, active0)]  # type: List[Tuple[str, str, List[Any]]]
        batch = []  # type: List[Tuple[str, str]]
        batch_bytes = 0
        seen = 0
        stats, content = self.stats, bool(self.grep_rules or self.wide_rules)
        max_size, grep_max = self.max_size, self.grep_max
        while stack:
            directory, host_dir, active = stack.pop()
            stats["dirs"] += 1
            try:
                entries = list(os.scandir(host_dir))
            except FileNotFoundError:
                continue
            except OSError as exc:
                self.skip(directory, f"cannot list: {exc.strerror}")
                continue
            base = directory.rstrip("/") + "/"
            host_base = host_dir.rstrip("/") + "/"
            for entry in entries:
                path = base + entry.name
                host = host_base + entry.name
                try:
                    if entry.is_symlink():
                        self.symlinks.append((path, host, False))
                        continue
                    if entry.is_dir():
                        if path not in pruned:
                            stack.append((path, host, self.dir_rules(path, active)))
                        continue
                    if not entry.is_file():
                        continue
                    size = entry.stat(follow_symlinks=False).st_size
                except FileNotFoundError:
                    continue
                except OSError as exc:
                    self.skip(path, _why(exc))
                    continue
                stats["files"] += 1
                stats["bytes"] += size
                self.match_file(path, entry.name, size, active, host)
                if not size or not content:
                    continue
                if size > max_size:
                    stats["skipped_large"] += 1
                    self.skip(path, f"larger than the {_size(max_size)} bound ({size} bytes)")
                elif size > grep_max or (
                    entry.name.endswith(COMPRESSED_ENDS) and COMPRESSED_NAME.search(entry.name)
                ):
                    self.streamed.append((path, host, "name" if size <= grep_max else "large"))
                else:
                    batch.append((path, host))
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

    # --- symlinks: location rules see the link's path -----------------------------------------
    def resolve(self, path: str) -> Optional[str]:
        """The guest path ``path`` points at, symlinks followed (None: dangling or a loop)."""
        parts = [p for p in path.split("/") if p]
        done = []  # type: List[str]
        hops = 0
        while parts:
            part = parts.pop(0)
            if part == ".":
                continue
            if part == "..":
                if done:
                    done.pop()
                continue
            current = "/" + "/".join([*done, part])
            try:
                target = os.readlink(self.host(current))
            except OSError:
                done.append(part)
                continue
            hops += 1
            if hops > 40:
                return None
            if target.startswith("/"):
                done = []
            parts = [p for p in target.split("/") if p] + parts
        resolved = "/" + "/".join(done)
        return resolved if os.path.lexists(self.host(resolved)) else None

    def in_image(self, path: str) -> bool:
        """True when ``path`` is on a walked disk (not under an excluded mount)."""
        for mount in self.mounts:
            if (
                mount.guest
                and mount.kind != "disk"
                and (path == mount.guest or path.startswith(mount.guest.rstrip("/") + "/"))
            ):
                return False
        return True

    def rules_at(self, directory: str) -> List[Any]:
        """The directory rules in force in ``directory`` (recursive ones of its ancestors too)."""
        active = self.dir_rules("/", [])
        current = ""
        for part in [p for p in directory.split("/") if p]:
            current += "/" + part
            active = self.dir_rules(current, active)
        return active

    def could_match(self, path: str, name: str) -> bool:
        """A cheap test before a symlink is resolved: can any location rule see this path?"""
        if name in self.by_name or name.startswith(self.name_prefixes) or name.endswith(self.name_suffixes):
            return True
        if self.name_always or (self.ancestor_rx is not None and self.ancestor_rx.match(path)):
            return True
        return (
            self.dir_any_rx is not None and self.dir_any_rx.match(path.rsplit("/", 1)[0] or "/") is not None
        )

    def follow_symlinks(self) -> None:
        for link, _, _ in self.symlinks:
            if self.expired():
                return
            name = link.rsplit("/", 1)[-1]
            if not self.could_match(link, name):
                continue
            target = self.resolve(link)
            if target is None or not self.in_image(target):
                continue  # dangling, or pointing off the image (a tmpfs, the resource disk)
            try:
                info = os.stat(self.host(target))
            except OSError:
                continue
            detail = "symlink to " + target
            if stat.S_ISREG(info.st_mode):
                active = self.rules_at(link.rsplit("/", 1)[0] or "/")
                if self.match_file(link, name, info.st_size, active, self.host(target), detail):
                    self.stats["symlinks_resolved"] += 1
            elif stat.S_ISDIR(info.st_mode) and self.ancestor_rx is not None and self.ancestor_rx.match(link):
                self.stats["symlinks_resolved"] += 1
                self.follow_dir(link, target, f"via symlink {link} -> {target}")

    def follow_dir(self, link: str, target: str, detail: str) -> None:
        """Location rules over the files below a symlinked directory, by their path through the
        link (their content is scanned at the target's own path)."""
        stack = [(link, self.host(target), self.rules_at(link), 0)]
        seen = 0
        while stack:
            directory, host_dir, active, depth = stack.pop()
            try:
                entries = list(os.scandir(host_dir))
            except OSError as exc:
                self.skip(directory, f"cannot list (through {detail}): {exc.strerror}")
                continue
            seen += len(entries)
            if seen > 100000:
                self.skip(
                    link,
                    f"{detail} holds more than 100,000 entries; location rules not applied through the link",
                )
                return
            for entry in entries:
                path = directory + "/" + entry.name
                try:
                    if entry.is_dir(follow_symlinks=False) and depth < 32:
                        stack.append((path, entry.path, self.dir_rules(path, active), depth + 1))
                    elif entry.is_file(follow_symlinks=False):
                        size = entry.stat(follow_symlinks=False).st_size
                        self.match_file(path, entry.name, size, active, entry.path, detail)
                except OSError:
                    continue

    # --- content ----------------------------------------------------------------------------
    # Worker threads only run grep and hand back its raw output; the main thread parses it
    # between directories. CPU-bound parsing in threads would starve the syscall-heavy walk of
    # the GIL (a convoy: every scandir/stat waits a switch interval).
    def submit(self, batch: List[Tuple[str, str]], size: int) -> None:
        self.pending += 1
        self.todo.put((batch, size))

    def grep_worker(self) -> None:
        while True:
            item = self.todo.get()
            if item is None:
                return
            batch, size = item
            result = None  # type: Optional[Tuple[bytes, bytes, List[Tuple[bytes, str]]]]
            if self.expired():
                result = (b"", b"", [])
            elif self.use_grep:
                out, errors, binary = self.run_grep(batch)
                # what grep took for binary, by its first bytes: here, off the walking thread
                # (reads release the GIL; the test is a few C calls)
                kinds = [
                    (name, sniff(_read(os.fsdecode(name), 4096) or b""))
                    for name in binary.split(b"\0")
                    if name
                ]
                result = (
                    out,
                    errors,
                    [(name, kind) for name, kind in kinds if kind not in ("binary", "text", "zip")],
                )
            self.done.put((batch, size, result))

    def drain(self, wait: bool = False) -> None:
        while self.pending:
            try:
                batch, size, result = self.done.get(block=wait, timeout=1.0 if wait else None)
            except queue.Empty:
                if wait and not self.expired():
                    continue
                return
            self.pending -= 1
            self.stats["content_files"] += len(batch)
            self.stats["content_bytes"] += size
            if result is None:
                for path, host in batch:
                    self.stream_file(path, host)
                continue
            out, errors, unusual = result
            hosts = dict((h.encode("utf-8", "surrogateescape"), p) for p, h in batch)
            self.grep_errors(errors, hosts)
            self.parse_grep(out, hosts)
            # grep -I skips what it takes for binary: UTF-16 text and gzip streams are read here
            for name, kind in unusual:
                if name in hosts:
                    self.check_binary(hosts[name], name.decode("utf-8", "surrogateescape"), kind)

    def run_grep(self, batch: List[Tuple[str, str]]) -> Tuple[bytes, bytes, bytes]:
        argv = list(GREP_ARGS)
        for rule in self.grep_rules + self.wide_rules:
            argv += ["-e", rule["ere"]]
        names = [h for _, h in batch]
        env = {"LC_ALL": "C", "PATH": os.environ.get("PATH", "/usr/bin:/bin")}
        outputs = []
        # the second run lists the files grep takes for binary (and empty ones) without
        # reading past their first buffer, so that UTF-16 text is not skipped in silence
        for args in (argv, ["grep", "-I", "-L", "-Z", "-e", ""]):
            try:
                proc = subprocess.Popen(
                    [*args, "--", *names],
                    stdin=subprocess.DEVNULL,
                    stdout=subprocess.PIPE,
                    stderr=subprocess.PIPE,
                    env=env,
                )
            except OSError as exc:
                self.error(f"grep failed to start: {exc.strerror}")
                for path, _ in batch:
                    self.skip(path, "grep failed to start")
                return b"", b"", b""
            try:
                out, err = proc.communicate(timeout=max(0.1, self.deadline - time.time()))
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.communicate()
                self.expired()
                return b"", b"", b""
            if proc.returncode not in (0, 1, 2):
                # killed (out of memory, say): what it did not print is unknown
                for path, _ in batch:
                    self.skip(path, f"grep ended with status {proc.returncode}")
                return b"", b"", b""
            outputs.append((out, err))
        return outputs[0][0], outputs[0][1] + outputs[1][1], outputs[1][0]

    def grep_errors(self, errors: bytes, hosts: Dict[bytes, str]) -> None:
        """grep's one line per file it could not read: ``grep: NAME: REASON``."""
        for line in errors.splitlines():
            if not line.startswith(b"grep: ") or line.startswith(b"grep: warning"):
                continue
            body = line[len(b"grep: ") :]
            name = next((h for h in hosts if body.startswith(h + b": ")), None)
            if name is None:
                self.error("grep: " + body.decode("utf-8", "replace")[-120:])
                self.complete = False
                continue
            reason = body[len(name) + 2 :].decode("utf-8", "replace")
            if reason.startswith("No such file"):
                continue  # gone since the walk: not on the disk any more
            if reason.startswith("binary file matches"):
                continue
            self.skip(hosts[name], "permission denied" if "denied" in reason else "I/O error: " + reason)

    def parse_grep(self, out: bytes, hosts: Dict[bytes, str]) -> None:
        """``grep -HZn`` records: name NUL line-number ':' line LF."""
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
            name = out[pos:zero]
            path = hosts.get(name) or ("/" + os.fsdecode(name))
            self.stats["candidate_lines"] += 1
            line = out[colon + 1 : newline]
            lower = line.lower()
            if self.wide_keyword is not None and self.wide_keyword.search(lower):
                self.wide_candidates.add((path, os.fsdecode(name)))
            self.check_line(path, int(out[zero + 1 : colon]), line, None, self.rules_for_line(lower), name)
            pos = newline + 1

    def check_binary(self, path: str, host: str, kind: str) -> None:
        if kind.startswith("utf-16"):
            self.stream_file(path, host, kind)
        elif kind == "utf-32":
            self.skip(path, "unsupported encoding (UTF-32 text)")
        elif kind in ("gzip", "xz", "bzip2"):
            # compressed text without a compressed name; zip magic alone is a jar, a docx, a
            # wheel: binary files, as grep takes them
            self.streamed.append((path, host, "magic"))

    def file_lines(self, path: str, host: str) -> List[bytes]:
        """The lines of a file grep matched (at most grep_max bytes), read once per thread for
        consecutive matches in one file."""
        cached = getattr(self.cache, "lines", None)
        if cached is None or cached[0] != path:
            data = _read(host, self.grep_max + 1) or b""
            cached = (path, data.split(b"\n"))
            self.cache.lines = cached
        return cached[1]

    def check_line(
        self,
        path: str,
        number: int,
        line: bytes,
        lines: Optional[List[bytes]],
        rules: Optional[List[Dict[str, Any]]] = None,
        host: Any = "",
        pending: Optional[List[Any]] = None,
    ) -> None:
        if rules is None:
            rules = self.rules_for_line(line.lower())
        for rule in rules:
            groups = rule["group"] or 0
            for match in rule["rx"].finditer(line):
                value = match.group(groups) or b"" if groups.__class__ is int else secret_of(match, rule)
                if rule["block_end"]:
                    rest = line[match.end() :]
                    if pending is not None and rule["block_end"].encode() not in _unescape(rest):
                        pending.append([rule, number, [rest], match])  # lines still to come
                        continue
                    body = self.block_body(path, number, rest, lines, rule, os.fsdecode(host) if host else "")
                    if body is None:
                        continue
                    value = body
                self.report(rule, path, number, value, match)

    def rules_for_line(self, lower: bytes) -> List[Dict[str, Any]]:
        if self.keyword_rx is None:
            return self.keywordless
        found = []  # type: List[Dict[str, Any]]
        position = 0
        search = self.keyword_rx.search
        while True:
            match = search(lower, position)
            if match is None:
                break
            for rule in self.keyword_rules[match.group()]:
                if rule not in found:
                    found.append(rule)
            position = match.start() + 1
        if self.keywordless:
            found.extend(self.keywordless)
        # the rules' own order, so that findings come out the same whatever the line holds
        return sorted(found, key=lambda r: self.rule_order[id(r)]) if len(found) > 1 else found

    def report(self, rule: Dict[str, Any], path: str, number: int, value: bytes, match: Any) -> None:
        if not self.accept(rule, value):
            return
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
        decode = rule.get("decode")
        if decode == "unattend-password":
            try:
                text = base64.b64decode(value, validate=True).decode("utf-16-le")
            except (ValueError, UnicodeDecodeError):
                return False
            return text.endswith("Password") and len(text) > len("Password")
        if decode == "basic-auth":
            try:
                text = base64.b64decode(value, validate=True).decode("utf-8")
            except (ValueError, UnicodeDecodeError):
                return False
            user, colon, password = text.partition(":")
            return bool(colon and user and password) and text.isprintable()
        return True

    def block_body(
        self,
        path: str,
        number: int,
        rest: bytes,
        lines: Optional[List[bytes]],
        rule: Dict[str, Any],
        host: str,
    ) -> Optional[bytes]:
        """The key material between a BEGIN header and its END marker: base64 lines, maybe
        quoted or with escaped newlines (keys inside code and JSON). None when the lines after
        the header are not key material (a header string in a parser, say)."""
        end = rule["block_end"].encode()
        rest = _unescape(rest)
        if end in rest:
            parts = rest[: rest.index(end)].split(b"\n")
        else:
            if lines is None:
                lines = self.file_lines(path, host or self.host(path))
            parts = rest.split(b"\n")
            for line in lines[number : number + BLOCK_MAX_LINES]:
                if b"\\" not in line:  # the common case: one plain line of a key
                    if end in line:
                        parts.append(line[: line.index(end)])
                        break
                    if not KEY_LINE.match(line):
                        return None
                    parts.append(line)
                    continue
                line = _unescape(line)
                if end in line:
                    parts.extend(line[: line.index(end)].split(b"\n"))
                    break
                if not all(KEY_LINE.match(p) for p in line.split(b"\n")):
                    return None
                parts.extend(line.split(b"\n"))
            else:
                return None
        return key_body(parts)

    # --- streamed files: large, compressed, UTF-16 ----------------------------------------------
    def stream_file(self, path: str, host: str, encoding: str = "") -> None:
        """Every content rule over a file read in chunks (no size limit but max_size)."""
        try:
            with open(host, "rb") as handle:
                head = handle.read(HEAD)
                kind = encoding or sniff(head)
                if kind in ("gzip", "xz", "bzip2", "zip"):
                    handle.seek(0)
                    self.scan_archive(path, host, kind, handle)
                    return
                if kind == "utf-32":
                    self.skip(path, "unsupported encoding (UTF-32 text)")
                    return
                if kind == "binary":
                    return
                handle.seek(0)
                self.stats["streamed_files"] += 1
                self.scan_stream(path, read_chunks(handle, kind))
        except OverflowError:
            self.skip(path, f"expands beyond the {_size(self.max_expanded)} bound")
        except OSError as exc:
            if exc.errno != 2:
                self.skip(path, _why(exc))

    def scan_stream(self, path: str, chunks: Iterator[bytes]) -> None:
        """Line rules (with key blocks spanning lines) and multi-line rules over one stream."""
        pending = []  # type: List[Any]
        wide = WideMatcher(self, path) if self.wide_rules else None
        for number, line in iter_lines(chunks):
            if number % LINES_PER_CHECK == 0 and self.expired():
                return
            if pending:
                self.feed_blocks(path, pending, number, line)
            if wide is not None:
                wide.feed(line)
            if self.any_keyword is None or self.any_keyword.search(line.lower()):
                self.check_line(path, number, line, None, pending=pending)
        if wide is not None:
            wide.finish()

    def feed_blocks(self, path: str, pending: List[Any], number: int, line: bytes) -> None:
        line = _unescape(line)
        for block in list(pending):
            rule, start, parts, match = block
            end = rule["block_end"].encode()
            if end in line:
                parts.extend(line[: line.index(end)].split(b"\n"))
                pending.remove(block)
                value = key_body(_unescape(b"\n".join(parts)).split(b"\n"))
                if value is not None:
                    self.report(rule, path, start, value, match)
            elif number - start > BLOCK_MAX_LINES or not all(KEY_LINE.match(p) for p in line.split(b"\n")):
                pending.remove(block)
            else:
                parts.extend(line.split(b"\n"))

    def scan_archive(self, path: str, host: str, kind: str, handle: Any) -> None:
        """Compressed text (gzip, xz, bzip2) and the members of zip and tar archives, up to
        max_expanded bytes in all; past that, or unreadable, the archive is not scanned."""
        self.stats["archives"] += 1
        budget = [self.max_expanded]
        try:
            if kind == "zip":
                with zipfile.ZipFile(handle) as archive:
                    for entry in archive.infolist():
                        if entry.is_dir():
                            continue
                        if entry.flag_bits & 1:
                            self.skip(f"{path}!/{entry.filename}", "encrypted archive member")
                            continue
                        with archive.open(entry) as member:
                            self.scan_member(f"{path}!/{entry.filename}", member, budget)
                return
            openers = {
                "gzip": lambda raw: gzip.GzipFile(fileobj=raw),
                "xz": lambda raw: lzma.LZMAFile(raw),  # noqa: SIM115 - each opened in a with below
                "bzip2": lambda raw: bz2.BZ2File(raw),
            }  # type: Dict[str, Any]
            opener = openers[kind]
            if kind == "gzip":
                # the trailer holds the expanded size modulo 2**32: past the bound, it is past it
                handle.seek(-4, 2)
                if int.from_bytes(handle.read(4), "little") > self.max_expanded:
                    raise OverflowError(path)
                handle.seek(0)
            with opener(handle) as stream:
                head = stream.read(512)
                if len(head) == 512 and head[257:262] == b"ustar":
                    handle.seek(0)
                    with opener(handle) as again, tarfile.open(fileobj=again, mode="r|") as tar:
                        for item in tar:
                            if item.isfile():
                                extracted = tar.extractfile(item)
                                if extracted is not None:
                                    self.scan_member(f"{path}!/{item.name}", extracted, budget)
                    return
                self.scan_member(path, _Prepend(head, stream), budget)
        except OverflowError:
            self.skip(path, f"expands beyond the {_size(self.max_expanded)} bound")
        except (OSError, EOFError, ValueError, zipfile.BadZipFile, tarfile.TarError, lzma.LZMAError) as exc:
            if not COMPRESSED_NAME.search(path):
                return  # compressed by its first bytes only, and not after all: a binary file
            self.skip(path, f"cannot decompress ({type(exc).__name__}: {str(exc)[:60]})")

    def scan_member(self, path: str, stream: Any, budget: List[int]) -> None:
        head = stream.read(HEAD)
        kind = sniff(head)
        if kind in ("gzip", "xz", "bzip2", "zip"):
            self.skip(path, f"an archive inside an archive ({kind})")
            return
        if kind == "utf-32":
            self.skip(path, "unsupported encoding (UTF-32 text)")
            return
        if kind == "binary":
            return

        def counted() -> Iterator[bytes]:
            for chunk in read_chunks(_Prepend(head, stream), kind):
                budget[0] -= len(chunk)
                if budget[0] < 0:
                    raise OverflowError(path)
                yield chunk

        self.scan_stream(path, counted())

    def streamed_files(self) -> None:
        """Files grep does not read: compressed ones, those past grep's bound, UTF-16 text."""
        todo = [s for s in self.streamed if s[2] in ("name", "magic")]
        if todo and self.owned is None:
            self.owned = self.package_digests(set(p for p, _, _ in todo))
        for path, host, why in self.streamed:
            if self.expired():
                return
            if why != "large" and self.unchanged_package_file(path, host):
                continue  # a package's own compressed file (man pages, changelogs), unmodified
            self.stream_file(path, host)

    def wide_pass(self) -> None:
        """Multi-line rules over the files grep found one of their keywords in."""
        for path, host in sorted(self.wide_candidates):
            if self.expired():
                return
            try:
                with open(host, "rb") as handle:
                    matcher = WideMatcher(self, path)
                    for _number, line in iter_lines(read_chunks(handle)):
                        matcher.feed(line)
                    matcher.finish()
            except OSError as exc:
                if exc.errno != 2:
                    self.skip(path, _why(exc))

    # --- rules scoped to paths --------------------------------------------------------------
    def path_findings(self) -> None:
        for rule, path, size, host, detail in self.path_hits:
            if self.expired():
                return
            if rule["mode"] == "presence":
                if size < int(rule.get("min_size", 1)):
                    continue
                digest = f"size:{size}"
                if size <= self.max_size:
                    digest = self.digest(host, "sha256") or digest
                material = "location\0{}\0{}\0{}".format(rule["id"], path, digest)
                self.add(rule, path, None, os.fsencode(material), shown=False, length=size, detail=detail)
                continue
            if size > self.max_size:
                continue  # listed as not scanned by the walk
            try:
                with open(host, "rb") as handle:
                    kind = sniff(handle.read(HEAD))
                    if kind in ("binary", "utf-32") or kind in dict((k, v) for v, k in COMPRESSED):
                        continue
                    handle.seek(0)
                    pending = []  # type: List[Any]
                    for number, line in iter_lines(read_chunks(handle, kind)):
                        if number % LINES_PER_CHECK == 0 and self.expired():
                            return
                        if pending:
                            self.feed_blocks(path, pending, number, line)
                        self.check_line(path, number, line, None, [rule], pending=pending)
            except OSError as exc:
                if exc.errno != 2:
                    self.skip(path, _why(exc))

    def digest(self, host: str, algo: str) -> Optional[str]:
        hasher = hashlib.new(algo)
        try:
            with open(host, "rb") as handle:
                for chunk in iter(lambda: handle.read(CHUNK), b""):
                    hasher.update(chunk)
        except OSError:
            return None
        return hasher.hexdigest()

    # --- precision --------------------------------------------------------------------------
    def package_digests(self, paths: Set[str]) -> Dict[str, Tuple[str, str]]:
        owned = {}  # type: Dict[str, Tuple[str, str]]
        info = self.host("/var/lib/dpkg/info")
        if os.path.isdir(info):
            wanted = set(p[1:].encode("utf-8", "surrogateescape") for p in paths)
            for name in os.listdir(info):
                if not name.endswith(".md5sums"):
                    continue
                for row in (_read(os.path.join(info, name), 1 << 26) or b"").splitlines():
                    digest, _, rel = row.partition(b"  ")
                    if rel in wanted:
                        owned["/" + rel.decode("utf-8", "surrogateescape")] = ("md5", digest.decode())
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

    def unchanged_package_file(self, path: str, host: str) -> bool:
        known = (self.owned or {}).get(path)
        if known is None or self.digest(host, known[0]) != known[1]:
            return False
        self.stats["suppressed_package_files"] += 1
        return True

    def drop_package_files(self) -> None:
        paths = set(key[1] for key in self.findings)
        for path, (algo, digest) in self.package_digests(paths).items():
            if self.digest(self.host(path), algo) == digest:
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
        # the mount table first, before any thread: unshare(2) moves the calling thread alone
        # into a private mount namespace; threads and greps started later follow it
        self.read_mounts()
        self.prepare_views()
        self.compile_globs()
        self.use_grep = self.grep_works()
        threading.Thread(target=self.progress, daemon=True).start()
        # more greps than cores: cold reads overlap (I/O queue depth), warm ones share the CPUs
        workers = int(self.cfg.get("workers") or 0) or max(4, min(8, 4 * (os.cpu_count() or 1)))
        threads = [threading.Thread(target=self.grep_worker, daemon=True) for _ in range(workers)]
        for thread in threads:
            thread.start()
        self.phase = "beneath-mounts"
        self.look_beneath()
        self.phase = "walk"
        if not self.expired():
            self.walk()
        self.phase = "content"
        for _ in threads:
            self.todo.put(None)
        self.drain(wait=True)
        self.phase = "streamed"
        self.streamed_files()
        self.wide_pass()
        self.phase = "symlinks"
        self.follow_symlinks()
        self.phase = "paths"
        self.path_findings()
        self.phase = "precision"
        if not self.expired():
            self.drop_package_files()
        self.finished.set()
        self.stats["elapsed"] = round(time.time() - self.t0, 3)
        self.stats["engine"] = "python"
        self.stats["content_matcher"] = "grep" if self.use_grep else "python"
        self.stats["skipped_large_paths"] = [
            p for p, r in self.not_scanned.items() if r.startswith("larger than")
        ][:20]
        findings = sorted(self.findings.values(), key=lambda f: (f["rule"], f["path"], f["line"] or 0))
        return {
            "schema": SCHEMA,
            "complete": self.complete,
            "findings": findings,
            "not_scanned": [{"path": p, "reason": r} for p, r in self.not_scanned.items()],
            "not_scanned_total": self.not_scanned_total,
            "excluded": self.excluded,
            "stats": self.stats,
            "errors": self.errors,
        }


class WideMatcher:
    """Multi-line rules over a stream of lines: line breaks read as spaces, in windows that
    overlap so that a match across a window's end is seen whole in the next one."""

    def __init__(self, scan: Scan, path: str) -> None:
        self.scan, self.path = scan, path
        self.buffer = []  # type: List[bytes]
        self.size = 0
        self.first = 1  # line number of the buffer's first line
        self.count = 0

    def feed(self, line: bytes) -> None:
        self.buffer.append(line)
        self.size += len(line) + 1
        self.count += 1
        if self.size >= CHUNK:
            self.flush(keep=64)

    def finish(self) -> None:
        self.flush(keep=0)

    def flush(self, keep: int) -> None:
        if not self.buffer:
            return
        text = b" ".join(line.rstrip(b"\r") for line in self.buffer)
        starts = []  # offsets of each line in text
        offset = 0
        for line in self.buffer:
            starts.append(offset)
            offset += len(line.rstrip(b"\r")) + 1
        limit = starts[-keep] if keep and len(starts) > keep else len(text) + 1
        for rule in self.scan.wide_rules:
            if rule["kw_rx"] is not None and not rule["kw_rx"].search(text.lower()):
                continue
            for match in rule["rx"].finditer(text):
                if match.start() >= limit:
                    break  # seen again with the next window
                number = self.first + _bisect(starts, match.start())
                value = secret_of(match, rule)
                self.scan.report(rule, self.path, number, value, match)
        if keep and len(self.buffer) > keep:
            self.first += len(self.buffer) - keep
            self.buffer = self.buffer[-keep:]
            self.size = sum(len(x) + 1 for x in self.buffer)
        else:
            self.buffer, self.size = [], 0


class _Prepend:
    """A read-only stream with some bytes already read from it put back in front."""

    def __init__(self, head: bytes, stream: Any) -> None:
        self.head, self.stream = head, stream

    def read(self, size: int = -1) -> bytes:
        if self.head:
            data, self.head = self.head, b""
            if size < 0:
                return data + bytes(self.stream.read())
            return data if len(data) >= size else data + bytes(self.stream.read(size - len(data)))
        return bytes(self.stream.read(size))


def secret_of(match: Any, rule: Dict[str, Any]) -> bytes:
    """The rule's value in a match: its group, or the first of its groups that matched."""
    groups = rule.get("group") or 0
    if groups.__class__ is int:
        return bytes(match.group(groups) or b"")
    if isinstance(groups, list):
        return bytes(next((match.group(g) for g in groups if match.group(g) is not None), b""))
    return bytes(match.group(groups) or b"")


def _bisect(starts: List[int], offset: int) -> int:
    low, high = 0, len(starts)
    while low + 1 < high:
        middle = (low + high) // 2
        if starts[middle] <= offset:
            low = middle
        else:
            high = middle
    return low


def _unescape(data: bytes) -> bytes:
    """Escaped line breaks as line breaks, escaped base64 characters as themselves."""
    if b"\\" not in data:
        return data
    data = ESCAPED_BREAK.sub(b"\n", data)
    for escaped, plain in ESCAPED_CHAR.items():
        data = data.replace(escaped, plain)
    return data


def key_body(parts: List[bytes]) -> Optional[bytes]:
    body = []
    for part in parts:
        match = KEY_LINE.match(part)
        if match is None:
            return None
        body.append(match.group(1) or b"")
    value = b"".join(body)
    return value if len(value) >= 64 else None


def _size(limit: int) -> str:
    for unit, scale in (("GiB", 1 << 30), ("MiB", 1 << 20), ("KiB", 1 << 10)):
        if limit >= scale and limit % scale == 0:
            return f"{limit // scale} {unit}"
    return f"{limit} bytes"


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
