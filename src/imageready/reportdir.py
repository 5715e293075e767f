"""The report directory must be able to take the record before anything irreversible happens.

An audit lost after ``generalize`` is a VM changed with no record of why or by whom. So:

* at configure time, and again right before the first action of a run with ``--apply``, the
  directory is checked (:func:`check_report_dir`): it is a directory (not a file), it is
  writable (a file is created, written, fsynced and removed), none of the record's names is taken
  by something that is not a file (``audit.json`` as a directory), and it has room;
* before the first action, room is *reserved*: a file of :func:`reserve_bytes` is allocated in
  the directory (:class:`Reserve`). When a write of the record meets a full disk, the reserve is
  released and the write retried, so a disk that fills up while the VM is being generalized (a CI
  agent's disk, shared with other jobs) still takes the journal and the audit;
* a sink that still cannot be written (Allure results, JUnit, the audit at its usual name) is
  noted (:func:`note_failure`): the run says so in one line and does not end green.
"""

from __future__ import annotations

import contextlib
import errno
import os
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TypeVar

T = TypeVar("T")

#: the names the record takes in the report directory, and what each must be
RECORD_FILES = ("audit.json", "audit.json.sha256", "audit.html", "junit.xml")
RECORD_DIRS = ("verdicts", "journal", "allure-results")
#: room kept for the record: enough for the journal and the audit of a large run
RESERVE_BASE = 16 * 1024 * 1024
RESERVE_PER_VM = 1024 * 1024


class ReportDirError(Exception):
    """The report directory cannot take the record; one line."""


def reserve_bytes(vm_count: int) -> int:
    return RESERVE_BASE + RESERVE_PER_VM * max(1, vm_count)


def check_report_dir(directory: Path, *, need: int, option: str = "--report-dir") -> None:
    """Raise :class:`ReportDirError` unless ``directory`` can take the record now."""
    where = f"{option} {directory}"
    if directory.exists() and not directory.is_dir():
        raise ReportDirError(f"{where}: exists and is not a directory; name a directory")
    try:
        directory.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise ReportDirError(f"{where}: cannot be created: {exc.strerror or exc}") from None
    for name in RECORD_FILES:
        path = directory / name
        if path.exists() and not path.is_file():
            raise ReportDirError(
                f"{where}: {name} exists and is not a file, so the record cannot be written there; "
                "remove it or name another directory"
            )
    for name in RECORD_DIRS:
        path = directory / name
        if path.exists() and not path.is_dir():
            raise ReportDirError(f"{where}: {name} exists and is not a directory; remove it")
    probe = directory / f".imageready-probe-{os.getpid()}"
    try:
        with open(probe, "wb") as handle:
            handle.write(b"imageready: can the record be written here?\n")
            handle.flush()
            os.fsync(handle.fileno())
    except OSError as exc:
        raise ReportDirError(f"{where}: not writable: {exc.strerror or exc}") from None
    finally:
        with contextlib.suppress(OSError):
            probe.unlink()
    try:
        stats = os.statvfs(directory)
    except OSError as exc:
        raise ReportDirError(f"{where}: cannot tell how much room it has: {exc.strerror}") from None
    free = stats.f_bavail * stats.f_frsize
    if free < need:
        raise ReportDirError(
            f"{where}: only {free / 2**20:.1f} MiB free, the record of this run needs "
            f"{need / 2**20:.0f} MiB; free some space or name another directory"
        )


class Reserve:
    """Room held for the record in the report directory (a preallocated file), released when a
    write of the record meets a full disk, and at the end of the run."""

    def __init__(self, directory: Path, size: int) -> None:
        self.path = directory / "journal" / f".reserve-{os.getpid()}"
        self.size = size
        self.held = False
        self._lock = threading.Lock()

    def hold(self) -> None:
        """Allocate the room now; :class:`ReportDirError` if the disk cannot give it."""
        with self._lock:
            if self.held:
                return
            try:
                self.path.parent.mkdir(parents=True, exist_ok=True)
                fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
                try:
                    _allocate(fd, self.size)
                    os.fsync(fd)
                finally:
                    os.close(fd)
            except OSError as exc:
                with contextlib.suppress(OSError):
                    self.path.unlink()
                raise ReportDirError(
                    f"--report-dir {self.path.parent.parent}: cannot reserve "
                    f"{self.size / 2**20:.0f} MiB for the record: {exc.strerror or exc}"
                ) from None
            self.held = True

    def release(self) -> bool:
        """Give the room back; True if there was any."""
        with self._lock:
            if not self.held:
                return False
            self.held = False
            with contextlib.suppress(OSError):
                self.path.unlink()
            return True


def _allocate(fd: int, size: int) -> None:
    """Really take ``size`` bytes on disk (a sparse file would reserve nothing)."""
    try:
        os.posix_fallocate(fd, 0, size)
        return
    except OSError as exc:
        if exc.errno not in (errno.EOPNOTSUPP, errno.EINVAL, errno.ENOSYS):
            raise
    block = b"\0" * (1024 * 1024)
    written = 0
    while written < size:
        written += os.write(fd, block[: min(len(block), size - written)])


# --- the run's reserve and the sinks that failed ---------------------------------------------------

_state_lock = threading.Lock()
_reserve: Reserve | None = None
_failures: list[str] = []


def set_reserve(reserve: Reserve | None) -> None:
    global _reserve
    with _state_lock:
        _reserve = reserve


def release_reserve() -> bool:
    with _state_lock:
        reserve = _reserve
    return reserve.release() if reserve is not None else False


def note_failure(message: str) -> None:
    """A sink of the record could not be written (one line, already redacted)."""
    with _state_lock:
        if message not in _failures:
            _failures.append(message)


def failures() -> list[str]:
    with _state_lock:
        return list(_failures)


def reset() -> None:
    """Forget the reserve and the failures (a new run in the same process: pytester)."""
    global _reserve
    with _state_lock:
        _reserve = None
        _failures.clear()


def full_disk(exc: BaseException) -> bool:
    return isinstance(exc, OSError) and exc.errno in (errno.ENOSPC, errno.EDQUOT)


def with_room(write: Callable[[], T]) -> T:
    """Run ``write``; if the disk is full, release the reserve and run it once more."""
    try:
        return write()
    except OSError as exc:
        if not full_disk(exc) or not release_reserve():
            raise
    from imageready import progress

    progress.emit("the report directory's disk is full: the room reserved for the record is in use now")
    return write()


@contextlib.contextmanager
def atomic_file(path: Path) -> Iterator[Path]:
    """A temporary file next to ``path`` that replaces it on success (and is removed on failure)."""
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    try:
        yield tmp
        os.replace(tmp, path)
    finally:
        with contextlib.suppress(OSError):
            tmp.unlink()


def write_durably(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` atomically and fsynced, with the reserve's help on a full disk."""

    def write() -> None:
        with atomic_file(path) as tmp, open(tmp, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())

    with_room(write)
