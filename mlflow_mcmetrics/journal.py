"""A write-ahead journal per run: every record is written down the moment it is made.

The shape is W&B's: the training process appends each record (run creation for a run started
offline, params, metrics, artifacts, end of run) to a local journal, and one sender
(:mod:`mlflow_mcmetrics.sender`) delivers the journal to the tracking server and writes down how
far it got. ``mcmetrics sync`` is the same sender over the same files, for what a process left
behind: an outage that outlived it, a SIGKILL, a machine that lost its network.

A journal is a folder in the first writable of :func:`spool_dirs`::

    {run id}-{suffix}/
        records.jsonl   one JSON object per line; the first is the header (run id, tracking
                        URI, host, pid and process start time: sync ends the run of a process
                        that is gone as KILLED)
        files/          the payload of each artifact and image record, by record index
        delivered       {"count": records delivered in order, "run_id": the run they went to}

A line is written and flushed before :meth:`Journal.append` returns, so a record survives the
death of its process (the operating system keeps what was written). The folder is removed when
its run has ended and everything in it is delivered. With no writable folder, the journal lives
in memory and what cannot be delivered is counted as lost, in one warning.
"""

from __future__ import annotations

import json
import os
import socket
import tempfile
import threading
import time
import uuid
from pathlib import Path

from mlflow_mcmetrics.events import logger

__all__ = ["Journal", "journal_folders", "spool_dirs"]

RECORDS = "records.jsonl"
DELIVERED = "delivered"


def spool_dirs() -> list[Path]:
    """Where journals are written, in order of preference: ``$MCMETRICS_SPOOL_DIR`` if set
    (alone), else ``./mcmetrics-spool``, the user's cache folder
    (``$XDG_CACHE_HOME/mcmetrics/spool``, default ``~/.cache``), and a per-user temporary folder."""
    chosen = os.environ.get("MCMETRICS_SPOOL_DIR")
    if chosen:
        return [Path(chosen)]
    cache = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    user = os.getuid() if hasattr(os, "getuid") else os.getlogin()
    return [
        Path("mcmetrics-spool"),
        cache / "mcmetrics" / "spool",
        Path(tempfile.gettempdir()) / f"mcmetrics-spool-{user}",
    ]


def journal_folders(folders: list[Path] | None = None) -> list[Path]:
    """The journals in ``folders`` (default: every :func:`spool_dirs` folder), oldest first."""
    found = [
        path.parent for folder in (folders or spool_dirs()) for path in folder.glob(f"*/{RECORDS}")
    ]
    return sorted(found, key=lambda path: (path / RECORDS).stat().st_mtime)


def process_start(pid: int) -> str | None:
    """When process ``pid`` started, as the kernel counts it (Linux), so that a pid reused by
    another process is not taken for the one that wrote a journal; None where unknown."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return stat.rsplit(")", 1)[1].split()[19]  # field 22, starttime, after the command name


def _write_atomically(path: Path, text: str) -> None:
    temporary = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    temporary.write_text(text)
    os.replace(temporary, path)


class Journal:
    """The records of one run, written down as they are made.

    Args:
        run_id: the run the records go to (an ``offline-`` id until the sender creates it).
        tracking_uri: the tracking server they go to.
        folder: an existing journal's folder, to read it (see :meth:`open`).

    Attributes:
        records: every record so far, in order (``records[i]`` is line ``i + 2`` of the file).
        delivered: how many records, from the first, are delivered.
        sent: indices beyond ``delivered`` delivered out of order (past a record held back).
        finishing: the fit has ended: records held for MLflow's logged model may go.
        released: records held for MLflow's logged model go without waiting for it (at exit,
            and in ``mcmetrics sync``).
        closed: nothing more will be appended.
    """

    def __init__(self, run_id: str, tracking_uri: str, folder: Path | None = None):
        self.run_id = run_id
        self.tracking_uri = tracking_uri
        self.records: list[dict] = []
        self.delivered = 0
        self.sent: set[int] = set()
        self.finishing = False
        self.released = False
        self.closed = False
        self.lost = 0
        self._lock = threading.Lock()
        self.folder = folder
        self.header: dict = {}
        self.durable = True
        if folder is None:
            self._create()

    def _create(self) -> None:
        self.header = {
            "kind": "journal",
            "run_id": self.run_id,
            "tracking_uri": self.tracking_uri,
            "host": socket.gethostname(),
            "pid": os.getpid(),
            "process_start": process_start(os.getpid()),
            "created": time.time(),
        }
        name = f"{self.run_id}-{uuid.uuid4().hex[:8]}"
        for parent in spool_dirs():
            parent = parent.absolute()  # the process may change its working directory
            try:
                folder = parent / name
                (folder / "files").mkdir(parents=True)
                with open(folder / RECORDS, "x") as file:
                    file.write(json.dumps(self.header) + "\n")
            except OSError as error:
                logger.debug("journal folder %s is not writable: %s", parent, error)
                continue
            self.folder = folder
            return
        # Nothing writable: the payloads go to a folder of the process's own, deleted at exit.
        self.durable = False
        try:
            self.folder = Path(tempfile.mkdtemp(prefix="mcmetrics-memory-"))
        except OSError:
            self.folder = None

    @classmethod
    def open(cls, folder: Path) -> Journal:
        """A journal left on disk (by this process or another), to deliver what it holds."""
        lines = (folder / RECORDS).read_text().splitlines()
        header = json.loads(lines[0])
        journal = cls(header["run_id"], header["tracking_uri"], folder)
        journal.header = header
        # A line cut short by the death of its process is the last one: it was never complete.
        journal.records = [json.loads(line) for line in lines[1:] if line.endswith("}")]
        if (folder / DELIVERED).exists():
            delivered = json.loads((folder / DELIVERED).read_text())
            journal.delivered, journal.run_id = delivered["count"], delivered["run_id"]
        journal.finishing = True
        journal.closed = bool(journal.records) and journal.records[-1]["kind"] == "close"
        return journal

    def append(self, record: dict, payload: bytes | None = None, name: str = "") -> None:
        """Write ``record`` down (and ``payload``, the file an artifact or image record names,
        as ``files/{index}/{name}``)."""
        with self._lock:
            index = len(self.records)
            if payload is not None:
                record = {**record, "file": f"files/{index:06d}/{name}"}
                if not self._write_payload(record["file"], payload):
                    self.lost += 1
                    return
            if self.durable:
                try:
                    with open(self.folder / RECORDS, "a") as file:
                        file.write(json.dumps(record) + "\n")
                except OSError:
                    logger.debug("journal %s is not writable any more", self.folder, exc_info=True)
                    self.durable = False
            self.records.append(record)

    def _write_payload(self, relative: str, payload: bytes) -> bool:
        if self.folder is None:
            return False
        try:
            path = self.folder / relative
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(payload)
        except OSError:
            logger.debug("could not write %s", relative, exc_info=True)
            return False
        return True

    def close(self) -> None:
        """Nothing more will be appended."""
        self.append({"kind": "close"})
        self.closed = True

    @property
    def done(self) -> bool:
        """Closed and delivered to the end."""
        return self.closed and self.delivered == len(self.records)

    @property
    def writer_alive(self) -> bool:
        """Whether the process that wrote this journal still runs (always, for a journal of
        another host: it cannot be told)."""
        header = self.header
        if header.get("host") != socket.gethostname():
            return True
        pid = header.get("pid")
        if pid == os.getpid():
            return True
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return False
        except PermissionError:
            pass  # another user's process with that pid
        return process_start(pid) == header.get("process_start")

    def commit(self) -> None:
        """Write down how far delivery got (and the run id an offline start became)."""
        while self.delivered in self.sent:
            self.sent.discard(self.delivered)
            self.delivered += 1
        if self.durable:
            try:
                _write_atomically(
                    self.folder / DELIVERED,
                    json.dumps({"count": self.delivered, "run_id": self.run_id}),
                )
            except OSError:
                logger.debug("could not write %s", self.folder, exc_info=True)

    def path_of(self, record: dict) -> Path:
        return self.folder / record["file"]

    def remove(self) -> None:
        """Delete the folder (and its spool folder, when that is left empty)."""
        import shutil

        if self.folder is None:
            return
        shutil.rmtree(self.folder, ignore_errors=True)
        if self.durable:
            try:
                self.folder.parent.rmdir()
            except OSError:
                pass  # other journals, or not ours to remove
