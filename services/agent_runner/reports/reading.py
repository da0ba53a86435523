"""Reading a run's traces back: sessions.jsonl parsed with its tolerances, and run.json.

The only I/O of the reports; everything built on top is a pure function of what it reads.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from agent_runner.run.trace_log import RUN_FILE, TRACE_FILE
from crmbench_contracts.traces import SessionTrace, StepTrace


class ResultsError(ValueError):
    """A run's traces cannot be read or summarised.

    `code` is machine-readable: `not_found`, `corrupt_line`, `invalid_record`,
    `orphan_step`, `bad_run_info` or `empty_run`. The message names the file and line.
    """

    def __init__(self, message: str, *, code: str) -> None:
        super().__init__(message)
        self.code = code


class ReadNotes(BaseModel):
    """What reading the trace file found besides the sessions themselves."""

    source: str | None = None
    duplicates: dict[str, int] = Field(default_factory=dict)
    """Session ids that appeared more than once, with how many times; the last copy is used."""
    truncated_last_line: int | None = None
    """The line number of a final line cut short by a killed writer (ignored)."""
    warnings: list[str] = Field(default_factory=list)


@dataclass
class TraceContents:
    """A sessions.jsonl read back: its sessions (deduplicated), their steps, and notes."""

    sessions: list[SessionTrace]
    steps: dict[str, list[StepTrace]] = field(default_factory=dict)
    """Steps per session id, in step order (empty lists when read with `with_steps=False`)."""
    notes: ReadNotes = field(default_factory=ReadNotes)

    def pairs(self) -> list[tuple[SessionTrace, list[StepTrace]]]:
        """(session, its steps) in file order."""
        return [(session, self.steps.get(session.session_id, [])) for session in self.sessions]

    def incomplete(self) -> list[str]:
        """Session ids with fewer step lines than the session says it made (cut short);
        only meaningful when the traces were read with their steps."""
        return [
            s.session_id for s in self.sessions if len(self.steps.get(s.session_id, [])) < s.steps
        ]


def _json(line: str) -> tuple[bool, Any]:
    """(True, value) for a JSON line; (False, None) when it is not JSON (a cut-short line)."""
    try:
        return True, json.loads(line)
    except ValueError:
        return False, None


def parse_traces(
    lines: Iterable[str], source: str = "<traces>", *, with_steps: bool = True
) -> TraceContents:
    """Parses the lines of a sessions.jsonl.

    A final line that is not JSON is a write cut short by a killed process: it is skipped
    and noted. A bad line anywhere else raises `ResultsError` naming the line. A session
    id seen twice keeps its last copy (and the steps that follow it), and is counted.
    Steps attach to the latest session line carrying their session id.
    """
    numbered = [(n, line) for n, line in enumerate(lines, start=1) if line.strip()]
    sessions: dict[str, SessionTrace] = {}
    steps: dict[str, list[StepTrace]] = {}
    seen: dict[str, int] = {}
    notes = ReadNotes(source=source)
    for position, (number, line) in enumerate(numbered):
        where = f"{source} line {number}"
        parsed, record = _json(line)
        if not parsed:
            if position == len(numbered) - 1:
                notes.truncated_last_line = number
                notes.warnings.append(
                    f"{where} is cut short (a writer was killed mid-line); it was ignored"
                )
                continue
            raise ResultsError(
                f"{where} is not valid JSON; the file is corrupt in the middle "
                "(a writer killed mid-line and then resumed?) - repair or remove that line",
                code="corrupt_line",
            )
        if not isinstance(record, dict):
            raise ResultsError(
                f"{where} is not a trace record (a JSON object)", code="invalid_record"
            )
        kind = record.get("type")
        try:
            if kind == "session":
                session = SessionTrace.model_validate(record)
                seen[session.session_id] = seen.get(session.session_id, 0) + 1
                sessions[session.session_id] = session
                steps[session.session_id] = []
            elif kind == "step":
                if not with_steps:
                    continue
                step = StepTrace.model_validate(record)
                if step.session_id not in steps:
                    raise ResultsError(
                        f"{where} is a step of session {step.session_id!r}, "
                        "which has no session line before it",
                        code="orphan_step",
                    )
                steps[step.session_id].append(step)
            else:
                raise ResultsError(
                    f'{where} is not a trace record: "type" is {kind!r}, '
                    'expected "session" or "step"',
                    code="invalid_record",
                )
        except ValidationError as exc:
            first = exc.errors()[0]
            at = ".".join(str(part) for part in first.get("loc", ()))
            raise ResultsError(
                f"{where} is not a valid {kind} trace: {at or 'record'}: {first.get('msg')}",
                code="invalid_record",
            ) from None
    duplicates = {sid: count for sid, count in seen.items() if count > 1}
    if duplicates:
        notes.duplicates = duplicates
        shown = ", ".join(list(duplicates)[:5]) + (" ..." if len(duplicates) > 5 else "")
        notes.warnings.append(
            f"{len(duplicates)} session id(s) appear more than once; the last copy of each "
            f"is used: {shown}"
        )
    for session_steps in steps.values():
        session_steps.sort(key=lambda step: step.step_id)
    return TraceContents(sessions=list(sessions.values()), steps=steps, notes=notes)


def trace_file(path: Path) -> Path:
    """The sessions.jsonl of a run directory, or `path` itself when it is a file."""
    return path / TRACE_FILE if path.is_dir() else path


def read_traces(path: Path, *, with_steps: bool = True) -> TraceContents:
    """Reads a run directory's sessions.jsonl (or a .jsonl file given directly)."""
    file = trace_file(path)
    if not file.exists():
        if path.is_dir():
            message = f"no {TRACE_FILE} in {path} (is it a run directory?)"
        else:
            message = f"no run directory or trace file at {path}"
        raise ResultsError(message, code="not_found")
    try:
        text = file.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise ResultsError(f"cannot read {file}: {exc}", code="not_found") from None
    return parse_traces(text.splitlines(), str(file), with_steps=with_steps)


def load_sessions(path: Path) -> list[SessionTrace]:
    """The sessions of a run directory's sessions.jsonl (or of a .jsonl path), last copy
    of each session id; see `parse_traces` for what is tolerated."""
    return read_traces(path, with_steps=False).sessions


class RunInfo(BaseModel):
    """The run's metadata from run.json (every field optional: the file may be older)."""

    model_config = ConfigDict(extra="ignore")

    run_id: str | None = None
    agent: str | None = None
    model: str | None = None
    trials: int | None = Field(default=None, ge=1)
    total_items: int | None = Field(default=None, ge=0)
    """Episodes planned: cases times trials."""
    corpus_hash: str | None = None
    package_version: str | None = None
    config: dict[str, Any] = Field(default_factory=dict)

    @model_validator(mode="after")
    def _trials_from_config(self) -> RunInfo:
        # run.json keeps the trials in its config: report them here too, not null.
        if self.trials is None:
            self.trials = self.planned_trials
        return self

    @property
    def planned_trials(self) -> int | None:
        if self.trials is not None:
            return self.trials
        configured = self.config.get("trials")
        return configured if isinstance(configured, int) and configured >= 1 else None


def load_run_info(path: Path) -> RunInfo | None:
    """run.json of a run directory (`path` is the directory or the file); None if absent."""
    file = path / RUN_FILE if path.is_dir() else path
    if not file.exists():
        return None
    try:
        return RunInfo.model_validate_json(file.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValidationError) as exc:
        reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise ResultsError(f"{file} is unreadable: {reason}", code="bad_run_info") from None
