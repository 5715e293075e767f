"""The journal: an append-only record of a run, written as it happens, from which the audit is
built (at the end of the run, and by ``imageready-report --from-journal`` after a crash).

One file per process of the run, ``<report-dir>/journal/<run id>.<process>.jsonl`` (the
controller ``main``, each xdist worker its id), one JSON object per line, each line written,
flushed and fsynced before the harness goes on. Entries (``kind``):

``run``    the run: id, start, change ticket, operator, harness version, policy digest, mode, VMs
``vm``     one VM as the gate saw it: identity, checks and their outcomes, the gate's decision,
           waivers (before its first action, and again at the end of the run)
``step``   an action step: once when it starts (status ``running``) and once when it ends
``final``  a VM's state read back from Azure at the end
``end``    the run ended (time, exit status)

**Journal first**: a step's ``running`` entry is on disk before the step does anything; if it
cannot be written, the step fails before acting. A step whose end was never written (the process
died) is rebuilt as ``interrupted``. Later entries of the same VM or step supersede earlier ones.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import threading
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from imageready import reportdir
from imageready.redact import redact

JOURNAL_DIR = "journal"
JOURNAL_SCHEMA = 1


class JournalError(Exception):
    """The journal could not be written; one line."""


def _now() -> str:
    return dt.datetime.now(dt.UTC).isoformat(timespec="microseconds").replace("+00:00", "Z")


class Journal:
    """The journal file of this process for one run."""

    def __init__(self, report_dir: Path, run_id: str, process: str = "main") -> None:
        self.directory = report_dir / JOURNAL_DIR
        self.run_id = run_id
        self.path = self.directory / f"{run_id}.{process}.jsonl"
        self.process = process
        self._lock = threading.Lock()
        self._seq = 0
        self._fd: int | None = None
        self._header: dict[str, Any] | None = None
        #: (vm, step) -> the last status journaled, so a step's end is written once
        self._steps: dict[tuple[str, str, str], str] = {}
        #: a step started with --apply: the run may have changed something
        self.acted = False
        #: the last write that failed (one line), if any
        self.failed = ""

    # --- writing --------------------------------------------------------------------------

    def set_header(self, header: Mapping[str, Any]) -> None:
        """The ``run`` entry; written before this file's first other entry."""
        self._header = dict(header)

    def append(self, entry: Mapping[str, Any]) -> None:
        """Append one entry, fsynced. Raises :class:`JournalError` (one line) if it cannot."""
        with self._lock:
            if self._fd is None and self._header is not None:
                self._write({"kind": "run", **self._header})
            self._write(entry)

    def _write(self, entry: Mapping[str, Any]) -> None:
        self._seq += 1
        body = {"schema": JOURNAL_SCHEMA, "seq": self._seq, "at": _now(), "process": self.process, **entry}
        # one line of ASCII JSON: control characters and non-ASCII are escaped, values stay exact
        line = (redact(json.dumps(body, sort_keys=True, default=str)) + "\n").encode("ascii")

        def write() -> None:
            if self._fd is None:
                self.directory.mkdir(parents=True, exist_ok=True)
                self._fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
            written = os.write(self._fd, line)
            if written != len(line):
                raise OSError(28, "short write to the journal")
            os.fsync(self._fd)

        try:
            reportdir.with_room(write)
        except OSError as exc:
            self.failed = f"journal {self.path}: {exc.strerror or exc}"
            reportdir.note_failure(self.failed)
            raise JournalError(self.failed) from None

    def step(self, record: Mapping[str, Any], *, apply: bool) -> None:
        """Journal an action step as it starts or ends (each status once). A step's start raises
        :class:`JournalError` when it cannot be written (journal first); its end does not: the
        step has happened, and the end of the run records it from memory if the disk allows."""
        key = (str(record.get("vm")), str(record.get("step")), str(record.get("started")))
        status = str(record.get("status"))
        if self._steps.get(key) == status:
            return
        self._steps[key] = status
        starting = status == "running"
        if starting and apply:
            self.acted = True
        try:
            self.append({"kind": "step", "vm": key[0], "step": key[1], "record": dict(record)})
        except JournalError:
            if starting:
                raise

    def close(self) -> None:
        with self._lock:
            if self._fd is not None:
                os.close(self._fd)
                self._fd = None


# --- reading and rebuilding --------------------------------------------------------------------------


def journal_files(report_dir: Path, run_id: str | None = None) -> list[Path]:
    """The journal files of ``run_id`` (default: the run that wrote last) in ``report_dir``."""
    directory = report_dir / JOURNAL_DIR
    files = sorted(directory.glob("*.jsonl")) if directory.is_dir() else []
    if run_id is None and files:
        run_id = max(files, key=lambda f: f.stat().st_mtime).name.split(".", 1)[0]
    return [f for f in files if f.name.split(".", 1)[0] == run_id]


def read_entries(files: Iterable[Path]) -> list[dict[str, Any]]:
    """Every entry of ``files`` in time order. A torn last line (the process died mid-write) is
    skipped: every line before it was fsynced whole."""
    entries: list[dict[str, Any]] = []
    for file in files:
        for line in file.read_bytes().splitlines():
            try:
                entry = json.loads(line)
            except ValueError:
                continue
            if isinstance(entry, dict) and "kind" in entry:
                entries.append(entry)
    entries.sort(key=lambda e: (str(e.get("at", "")), str(e.get("process", "")), int(e.get("seq", 0))))
    return entries


INTERRUPTED_DETAIL = (
    "the run ended (killed or crashed) before this step finished; what it did is unknown to the "
    "record: re-run the same command to resume (each step checks its post-state first)"
)


def fold(entries: Iterable[Mapping[str, Any]]) -> dict[str, Any]:
    """What the journal says happened: ``{"run", "vms", "steps", "finals", "end"}``, later
    entries superseding earlier ones; a step never ended is ``interrupted``."""
    run: dict[str, Any] = {}
    vms: dict[str, dict[str, Any]] = {}
    steps: dict[tuple[str, str, str, str], dict[str, Any]] = {}
    finals: dict[str, dict[str, Any]] = {}
    end: dict[str, Any] | None = None
    last_at = ""
    for entry in entries:
        last_at = max(last_at, str(entry.get("at", "")))
        kind = entry.get("kind")
        if kind == "run":
            for key, value in entry.items():
                if key not in ("schema", "seq", "at", "process", "kind") and (value or key not in run):
                    run[key] = value
        elif kind == "vm":
            vms[str(entry["vm"])] = {k: v for k, v in entry.items() if k not in ("schema", "seq", "process")}
        elif kind == "step":
            record = dict(entry.get("record") or {})
            step_key = (
                str(record.get("vm")),
                str(record.get("step")),
                str(record.get("run_id")),
                str(record.get("started")),
            )
            steps[step_key] = record
        elif kind == "final":
            finals[str(entry["vm"])] = dict(entry.get("state") or {})
        elif kind == "end":
            end = {k: v for k, v in entry.items() if k not in ("schema", "seq", "process", "kind")}
    by_vm: dict[str, list[dict[str, Any]]] = {}
    for record in steps.values():
        if record.get("status") == "running":
            record = {**record, "status": "interrupted", "detail": INTERRUPTED_DETAIL}
        by_vm.setdefault(str(record.get("vm")), []).append(record)
    for records in by_vm.values():
        # the procedure's order, whichever process journaled a step first (xdist: the copy is the
        # controller's, the rest a worker's)
        records.sort(key=_procedure_position)
    return {"run": run, "vms": vms, "steps": by_vm, "finals": finals, "end": end, "last_at": last_at}


def _procedure_position(record: dict[str, Any]) -> tuple[int, str]:
    from imageready.steps import ORDER

    procedure = ("copy", *ORDER)
    step = str(record.get("step"))
    return (procedure.index(step) if step in procedure else len(procedure), str(record.get("started") or ""))
