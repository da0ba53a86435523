"""Reading and writing the committed corpus: one JSONL file of cases plus a manifest."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from crmbench_contracts.cases import Case
from crmbench_contracts.paths import CASES_DIR

CASES_FILE = "cases.jsonl"
MANIFEST_FILE = "manifest.json"


def default_corpus_dir() -> Path:
    """The corpus committed with the repository (corpus/cases)."""
    return CASES_DIR


def case_line(case: Case) -> str:
    """One case as one canonical JSON line (sorted keys): same case, same bytes."""
    return json.dumps(
        case.model_dump(mode="json"), sort_keys=True, separators=(",", ":"), ensure_ascii=False
    )


def content_hash(lines: Iterable[str]) -> str:
    digest = hashlib.sha256()
    for line in lines:
        digest.update(line.encode("utf-8"))
        digest.update(b"\n")
    return digest.hexdigest()


def load_cases(directory: Path | None = None) -> list[Case]:
    """Every case of a corpus directory, in file order."""
    path = (directory or default_corpus_dir()) / CASES_FILE
    if not path.exists():
        raise FileNotFoundError(f"no corpus at {path}; run `crmbench cases generate`")
    cases = []
    with path.open(encoding="utf-8") as handle:
        for number, line in enumerate(handle, start=1):
            if not line.strip():
                continue
            try:
                cases.append(Case.model_validate_json(line))
            except ValueError as exc:
                raise ValueError(f"{path}:{number}: not a valid case: {exc}") from exc
    return cases


def load_index(directory: Path | None = None) -> dict[str, Case]:
    return {case.case_id: case for case in load_cases(directory)}


def load_manifest(directory: Path | None = None) -> dict[str, Any]:
    path = (directory or default_corpus_dir()) / MANIFEST_FILE
    if not path.exists():
        raise FileNotFoundError(f"no manifest at {path}; run `crmbench cases generate`")
    manifest: dict[str, Any] = json.loads(path.read_text(encoding="utf-8"))
    return manifest
