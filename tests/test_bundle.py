"""`crmbench bundle` and `crmbench bundle verify` on a small experiment made here: three
stages played by `crmbench run --agent simulated` (learning off, and on with the simulated
teacher and the hashing embedder) in the experiment's own database, its playbooks export
and a report folder. The bundle verifies on a fresh embedded Postgres; a changed trace
line, a changed playbooks.json, a missing member and a forged trace whose manifest was
re-hashed each fail, naming the file (and the session)."""

from __future__ import annotations

import gzip
import hashlib
import io
import itertools
import json
import socket
import tarfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml
from sqlalchemy.engine import make_url
from typer.testing import CliRunner

from agent_runner.reports.statistics import THRESHOLD_KEYS, Rate, passes
from crmbench.cli import app
from crmbench_contracts.traces import SessionTrace
from crmbench_corpus.store import default_corpus_dir, load_manifest
from tests.conftest import REPO_ROOT, scratch_database

EXAMPLE_PLAYBOOKS = REPO_ROOT / "config" / "playbooks" / "example.json"
PORTS = range(18900, 18950)
"""The ports this test file may serve on (its services would otherwise take free ones)."""

STAGES = (
    # (stage, split, learning mode, cases)
    ("seed", "seed", "on", 2),
    ("baseline", "eval", "off", 3),
    ("learn", "eval", "on", 3),
)
RUN_CONFIG = {
    "agent": "simulated",
    "learning": {"teacher": "simulated", "embeddings": {"provider": "hashing"}},
}


def _port_in_range() -> Iterator[int]:
    for port in itertools.cycle(PORTS):
        with socket.socket() as sock:
            try:
                sock.bind(("127.0.0.1", port))
            except OSError:
                continue
        yield port


def invoke(*args: str, code: int | None = 0) -> tuple[int, str]:
    result = CliRunner().invoke(app, list(args))
    if code is not None:
        assert result.exit_code == code, result.output
    return result.exit_code, result.output


def reliability_report(folder: Path, stages: list[tuple[str, str]]) -> dict[str, Any]:
    """A metrics.json in the learning report's shape, computed with the report module's
    rate (not the bundle's code) from each stage's sessions."""
    runs = []
    for name, run_id in stages:
        lines = (folder / name / "sessions.jsonl").read_text(encoding="utf-8").splitlines()
        sessions = [SessionTrace.model_validate_json(x) for x in lines if '"type":"session"' in x]
        scored = [s for s in sessions if s.outcome != "harness_error"]
        reliability = {}
        for key in THRESHOLD_KEYS:
            rate = Rate.of(sum(passes(s, key) for s in scored), len(scored))
            reliability[key] = {
                "value": rate.rate,
                "low": rate.low,
                "high": rate.high,
                "count": rate.passed,
                "total": rate.total,
                "method": "wilson",
            }
        runs.append({"name": name, "run_id": run_id, "reliability": reliability})
    return {"runs": runs, "comparisons": [], "phase_size": 25}


@dataclass
class Experiment:
    folder: Path
    bundle: Path
    database_url: str
    pack_output: str


@pytest.fixture(scope="module")
def experiment(database_url: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Experiment]:
    """The experiment folder (docs/experiment.md) and its bundle, in its own database."""
    folder = tmp_path_factory.mktemp("experiment")
    config = folder / "config.yaml"
    config.write_text(yaml.safe_dump(RUN_CONFIG), encoding="utf-8")
    ports = _port_in_range()
    with (
        scratch_database(database_url) as own_url,
        pytest.MonkeyPatch.context() as patch,
    ):
        patch.setattr("crmbench_clients.serving.free_port", lambda: next(ports))
        patch.setenv("DATABASE_URL", own_url)
        for name in ("CRMBENCH_CRM_API_URL", "CRMBENCH_VERIFIER_URL", "CRMBENCH_SIMULATED_LLM_URL"):
            patch.delenv(name, raising=False)
        # The memory starts with the committed example entries, so that playbooks.json
        # holds entries (with counters the stages move) however few lessons they learn.
        invoke("playbooks", "import", str(EXAMPLE_PLAYBOOKS), "--embedder", "hashing")
        records = []
        for name, split, mode, limit in STAGES:
            invoke(
                "run",
                "--config",
                str(config),
                "--learning",
                mode,
                "--split",
                split,
                "--limit",
                str(limit),
                "--out",
                str(folder / name),
                "--quiet",
            )
            run = json.loads((folder / name / "run.json").read_text(encoding="utf-8"))
            records.append(
                {
                    "name": name,
                    "split": split,
                    "folder": name,
                    "learning": {"mode": mode, "control": "retrieval"},
                    "run_id": run["run_id"],
                    "status": "done",
                    "episodes": limit,
                }
            )
        invoke("playbooks", "export", "--out", str(folder / "playbooks.json"))
        report = folder / "report"
        report.mkdir()
        (report / "report.md").write_text("# the experiment's report\n", encoding="utf-8")
        metrics = reliability_report(folder, [(r["name"], r["run_id"]) for r in records])
        (report / "metrics.json").write_text(json.dumps(metrics, indent=2), encoding="utf-8")
        record = {
            "experiment_id": "bundle_test_0001",
            "name": "bundle-test",
            "created_at": "2026-12-01T00:00:00+00:00",
            "config": RUN_CONFIG,
            "config_files": {
                "run": {
                    "path": str(config),
                    "sha256": hashlib.sha256(config.read_bytes()).hexdigest(),
                }
            },
            "corpus_dir": str(default_corpus_dir()),
            "corpus_hash": load_manifest()["content_hash"],
            "package_version": "test",
            "versions": {},
            "database": {"name": make_url(own_url).database, "server": "test"},
            "stages": records,
        }
        (folder / "experiment.json").write_text(json.dumps(record, indent=2), encoding="utf-8")
        bundle = folder.parent / "experiment.tar.gz"
        _, output = invoke("bundle", "--experiment", str(folder), "--out", str(bundle))
        yield Experiment(folder, bundle, own_url, output)


def members(bundle: Path) -> dict[str, bytes]:
    with tarfile.open(bundle, "r:gz") as tar:
        return {
            m.name: tar.extractfile(m).read()  # type: ignore[union-attr]
            for m in tar.getmembers()
        }


def rewrite(
    source: Path,
    target: Path,
    edit: Callable[[dict[str, bytes]], None],
    *,
    rehash: bool = False,
) -> Path:
    """A copy of the bundle with `edit` applied to its members; with `rehash`, the
    manifest is made to agree with the edited members (a forger's copy)."""
    content = members(source)
    edit(content)
    if rehash:
        manifest = json.loads(content["manifest.json"])
        manifest["files"] = [
            {"path": name, "sha256": hashlib.sha256(data).hexdigest(), "size": len(data)}
            for name, data in sorted(content.items())
            if name != "manifest.json"
        ]
        content["manifest.json"] = json.dumps(manifest).encode()
    with (
        target.open("wb") as raw,
        gzip.GzipFile(fileobj=raw, mode="wb") as zipped,
        tarfile.open(fileobj=zipped, mode="w") as tar,
    ):
        for name, data in content.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return target


def change_a_score(content: dict[str, bytes]) -> str:
    """Flips the outcome of the first session of learn/sessions.jsonl (a pass becomes a
    score of 0, anything else a 1, its verdicts with it); returns the session's id."""
    lines = content["learn/sessions.jsonl"].decode().splitlines()
    session = json.loads(lines[0])
    score = 0.0 if session["passed"] else 1.0
    session["score"], session["passed"] = score, score >= 0.9
    session["verdicts"] = {key: score >= float(key) for key in session["verdicts"]}
    lines[0] = json.dumps(session)
    content["learn/sessions.jsonl"] = ("\n".join(lines) + "\n").encode()
    return str(session["session_id"])


def strip_changes(content: dict[str, bytes], spare: str) -> tuple[str, str]:
    """Empties the recorded state changes of the first passing session (but `spare`) that
    has any; returns (its member path, its id)."""
    for stage, *_ in STAGES:
        member = f"{stage}/sessions.jsonl"
        lines = [json.loads(x) for x in content[member].decode().splitlines()]
        passing = {x["session_id"] for x in lines if x["type"] == "session" and x["passed"]}
        changed = [x for x in lines if x["type"] == "step" and x["state_change"]]
        target = next(
            (x["session_id"] for x in changed if x["session_id"] in passing - {spare}), None
        )
        if target is None:
            continue
        for line in lines:
            if line["type"] == "step" and line["session_id"] == target:
                line["state_change"] = []
        content[member] = "".join(json.dumps(x) + "\n" for x in lines).encode()
        return member, target
    raise AssertionError("no passing session changed the CRM: the fixture is too small")


def test_the_bundle_holds_everything_and_verifies_on_a_fresh_embedded_database(
    experiment: Experiment,
) -> None:
    assert "wrote" in experiment.pack_output and "database dump" in experiment.pack_output
    content = members(experiment.bundle)
    names = list(content)
    assert names[0] == "manifest.json" and names[1:] == sorted(names[1:])
    manifest = json.loads(content["manifest.json"])
    listed = {f["path"]: f for f in manifest["files"]}
    assert set(listed) == set(names[1:])
    for name, data in content.items():
        if name != "manifest.json":
            assert listed[name]["sha256"] == hashlib.sha256(data).hexdigest()
            assert listed[name]["size"] == len(data)
    expected = {"database.dump", "playbooks.json", "config.yaml", "experiment.json"}
    expected |= {"corpus/cases.jsonl", "corpus/manifest.json", "report/metrics.json"}
    expected |= {"configs/run/config.yaml"}
    expected |= {
        f"{stage}/{file}" for stage, *_ in STAGES for file in ("run.json", "sessions.jsonl")
    }
    assert expected <= set(names)
    assert content["database.dump"].startswith(b"PGDMP")  # pg_dump's custom format
    record = json.loads((experiment.folder / "experiment.json").read_text(encoding="utf-8"))
    assert manifest["experiment"] == record
    assert manifest["corpus_hash"] == json.loads(content["corpus/manifest.json"])["content_hash"]
    assert manifest["versions"]["python"] and manifest["created_at"]
    # The traces hold episodes that changed the CRM: the re-scoring rebuilds real states.
    steps = [json.loads(x) for x in content["learn/sessions.jsonl"].decode().splitlines()]
    assert any(line.get("state_change") for line in steps if line["type"] == "step")

    sessions = sum(n for *_, n in STAGES)
    code, output = invoke("bundle", "verify", str(experiment.bundle), "--sample", "20", code=None)
    assert code == 0, output
    assert "verified:" in output
    assert f"{sessions} sessions" in output and f"{min(20, sessions)} episodes re-scored" in output
    assert "stage learn: @0.7" in output


def test_a_changed_trace_line_fails_and_names_the_file(
    experiment: Experiment, tmp_path: Path
) -> None:
    forged = rewrite(experiment.bundle, tmp_path / "b.tar.gz", change_a_score)
    code, output = invoke("bundle", "verify", str(forged), "--sample", "0", code=None)
    assert code == 1 and "Traceback" not in output
    assert "differs: learn/sessions.jsonl: sha256" in output
    assert "verified" not in output


def test_a_changed_playbook_fails_and_names_the_file(
    experiment: Experiment, tmp_path: Path
) -> None:
    def edit(content: dict[str, bytes]) -> None:
        document = json.loads(content["playbooks.json"])
        document["entries"][0]["counters"]["retrieved"] += 1
        content["playbooks.json"] = json.dumps(document).encode()

    forged = rewrite(experiment.bundle, tmp_path / "b.tar.gz", edit)
    code, output = invoke("bundle", "verify", str(forged), "--sample", "0", code=None)
    assert code == 1
    assert "differs: playbooks.json: sha256" in output


def test_a_missing_member_fails_and_is_named(experiment: Experiment, tmp_path: Path) -> None:
    forged = rewrite(experiment.bundle, tmp_path / "b.tar.gz", lambda c: c.pop("baseline/run.json"))
    code, output = invoke("bundle", "verify", str(forged), "--sample", "0", code=None)
    assert code == 1
    assert "differs: baseline/run.json: missing from the bundle" in output


def test_a_forged_trace_with_a_rehashed_manifest_is_caught_by_the_database_and_the_rescoring(
    experiment: Experiment, tmp_path: Path, database_url: str
) -> None:
    """Hashes alone prove nothing against a forger who rewrites the manifest: the restored
    database and the re-scored final state still disagree with a forged score, and with
    forged state changes. Restored into a temporary database on the tests' server
    (--database-url; the machine's PG 15 in CI), not the embedded one."""
    forged_id: list[str] = []
    stripped: list[tuple[str, str]] = []

    def edit(content: dict[str, bytes]) -> None:
        forged_id.append(change_a_score(content))
        stripped.append(strip_changes(content, spare=forged_id[0]))
        content["configs/run/config.yaml"] += b"concurrency: 4\n"

    forged = rewrite(experiment.bundle, tmp_path / "b.tar.gz", edit, rehash=True)
    admin = make_url(database_url).set(database="postgres").render_as_string(hide_password=False)
    code, output = invoke(
        "bundle", "verify", str(forged), "--sample", "100", "--database-url", admin, code=None
    )
    assert code == 1, output
    where = f"learn/sessions.jsonl: {forged_id[0]}"
    assert f"differs: {where}: score" in output and "in the database" in output
    assert f"differs: {where}: re-scored score" in output
    # A passing episode whose recorded changes were dropped: its rebuilt final state
    # lacks them, so the verifier scores it lower; its steps differ from the database's.
    member, session_id = stripped[0]
    assert f"differs: {member}: {session_id}: re-scored score" in output
    assert f"differs: {member}: {session_id}: step" in output and "state_change" in output
    # The config file is not the one the experiment recorded when it ran.
    assert "differs: configs/run/config.yaml: sha256" in output and "recorded" in output
    # The report's numbers no longer agree with the forged traces either.
    assert "differs: report/metrics.json: learn: reliability@0.9" in output
    assert "differs: learn/sessions.jsonl: sha256" not in output  # the manifest agrees


def test_bad_paths_are_cli_errors(experiment: Experiment, tmp_path: Path) -> None:
    code, output = invoke("bundle", "verify", str(tmp_path / "nope.tar.gz"), code=None)
    assert code == 1 and "error: no bundle file at" in output and "Traceback" not in output
    junk = tmp_path / "junk.tar.gz"
    junk.write_bytes(b"not a tar")
    code, output = invoke("bundle", "verify", str(junk), code=None)
    assert code == 1 and "is not a readable bundle" in output and "Traceback" not in output
    code, output = invoke(
        "bundle",
        "--experiment",
        str(tmp_path / "none"),
        "--out",
        str(tmp_path / "x.tgz"),
        code=None,
    )
    assert code == 1 and "error: no experiment folder" in output and "Traceback" not in output
    code, output = invoke("bundle", code=None)
    assert code == 2 and "--experiment" in output
