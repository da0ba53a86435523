"""The run's JSONL trace file: append-only, one session line then its step lines, flushed
per episode, shared safely by several runner processes.

Postgres is the record of truth: an episode is appended here only after its result is
committed. Every append happens under an exclusive lock (`flock` on a sibling `.lock`
file) and first reads whatever other processes appended since, so a session is never
written twice. `reconcile` (run when a runner starts and when a run ends) rewrites the
file without any episode a killed writer left incomplete and appends the committed
episodes the file is missing, so no trace line is lost either.
"""

from __future__ import annotations

import fcntl
import json
import os
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

from crmbench_contracts.traces import SessionTrace, StepTrace

TRACE_FILE = "sessions.jsonl"
RUN_FILE = "run.json"
"""Next to the traces: the run's id, config, corpus hash and package version."""
SESSION_PREFIX = b'{"type":"session"'


def episode_lines(session: SessionTrace, steps: Sequence[StepTrace]) -> bytes:
    """The bytes of one episode: its session line, then its step lines."""
    lines = [session.model_dump_json()] + [step.model_dump_json() for step in steps]
    return ("\n".join(lines) + "\n").encode("utf-8")


def complete_blocks(data: bytes) -> tuple[list[tuple[str, bytes]], bool]:
    """Splits a trace file into whole episodes: ([(session_id, block bytes)], damaged).

    An episode is whole when its session line parses and is followed by as many step
    lines as it declares; anything else (a partial last line, missing steps, a repeated
    session) is left out and reported as damage.
    """
    blocks: list[tuple[str, bytes]] = []
    seen: set[str] = set()
    damaged = not data.endswith(b"\n") and bool(data)
    lines = data.split(b"\n")
    if lines and lines[-1] == b"":
        lines.pop()
    elif lines:
        lines.pop()  # the partial last line
    index = 0
    while index < len(lines):
        line = lines[index]
        if not line.startswith(SESSION_PREFIX):
            damaged = True
            index += 1
            continue
        try:
            header = json.loads(line)
            session_id = str(header["session_id"])
            expected = int(header.get("steps", 0))
        except (ValueError, KeyError, TypeError):
            damaged = True
            index += 1
            continue
        steps = lines[index + 1 : index + 1 + expected]
        if len(steps) < expected or any(s.startswith(SESSION_PREFIX) for s in steps):
            damaged = True
            index += 1
            continue
        index += 1 + expected
        if session_id in seen:
            damaged = True
            continue
        seen.add(session_id)
        blocks.append((session_id, b"\n".join([line, *steps]) + b"\n"))
    return blocks, damaged


class TraceLog:
    """The `sessions.jsonl` of one run directory."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.lock_path = path.with_name(path.name + ".lock")
        self._known: set[str] = set()
        self._scanned_to = 0
        self._inode = -1
        path.parent.mkdir(parents=True, exist_ok=True)
        path.touch(exist_ok=True)

    @contextmanager
    def _locked(self) -> Iterator[None]:
        fd = os.open(self.lock_path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield
        finally:
            fcntl.flock(fd, fcntl.LOCK_UN)
            os.close(fd)

    def _scan(self) -> None:
        """Learns the session ids appended since the last scan (by any process)."""
        stat = self.path.stat()
        size = stat.st_size
        # Another process's reconcile replaces the file: start over on the new one.
        if stat.st_ino != self._inode or size < self._scanned_to:
            self._known.clear()
            self._scanned_to = 0
            self._inode = stat.st_ino
        if size == self._scanned_to:
            return
        with self.path.open("rb") as handle:
            handle.seek(self._scanned_to)
            chunk = handle.read(size - self._scanned_to)
        complete = chunk.rfind(b"\n") + 1
        for raw in chunk[:complete].splitlines():
            if raw.startswith(SESSION_PREFIX):
                try:
                    self._known.add(json.loads(raw)["session_id"])
                except (ValueError, KeyError):
                    continue
        self._scanned_to += complete

    def _ends_cleanly(self) -> bool:
        size = self.path.stat().st_size
        if size == 0:
            return True
        with self.path.open("rb") as handle:
            handle.seek(size - 1)
            return handle.read(1) == b"\n"

    def _rewrite_whole(self) -> int:
        """Rewrites the file keeping only whole episodes; returns the bytes dropped."""
        data = self.path.read_bytes()
        blocks, damaged = complete_blocks(data)
        if not damaged:
            return 0
        clean = b"".join(block for _, block in blocks)
        temporary = self.path.with_name(self.path.name + ".tmp")
        temporary.write_bytes(clean)
        os.replace(temporary, self.path)
        self._known = {session_id for session_id, _ in blocks}
        self._scanned_to = len(clean)
        self._inode = self.path.stat().st_ino
        return len(data) - len(clean)

    def _write(self, data: bytes) -> None:
        with self.path.open("ab") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        self._scanned_to += len(data)

    def append(self, session: SessionTrace, steps: Sequence[StepTrace]) -> bool:
        """Appends an episode unless its session is already in the file; True if written."""
        data = episode_lines(session, steps)
        with self._locked():
            if not self._ends_cleanly():
                self._rewrite_whole()
            self._scan()
            if session.session_id in self._known:
                return False
            self._write(data)
            self._known.add(session.session_id)
        return True

    def reconcile(
        self, committed: Sequence[tuple[SessionTrace, Sequence[StepTrace]]] = ()
    ) -> tuple[int, int]:
        """Repairs the file after a crash; returns (bytes dropped, episodes appended)."""
        appended = 0
        with self._locked():
            dropped = self._rewrite_whole()
            self._scan()
            for session, steps in committed:
                if session.session_id in self._known:
                    continue
                self._write(episode_lines(session, steps))
                self._known.add(session.session_id)
                appended += 1
        return dropped, appended

    def session_ids(self) -> set[str]:
        with self._locked():
            self._scan()
            return set(self._known)
