"""Where the repository's own files are: the one definition of the repository root.

Every package of the project lives one or two folders below the root
(`contracts/crmbench_contracts`, `services/crm_api`, ...); an installed copy outside a
checkout has no root, and callers that need repository files say so with a clear error.
"""

from __future__ import annotations

from pathlib import Path

REPO_ROOT: Path = Path(__file__).resolve().parents[2]
"""The repository's root folder (holds `pyproject.toml`, `config/`, `migrations/`)."""

CONFIG_DIR: Path = REPO_ROOT / "config"
"""The repository's configuration folder (run, prices, judges, simulated LLM, prompts)."""

MIGRATIONS_DIR: Path = REPO_ROOT / "migrations"
"""Alembic's script folder."""

CASES_DIR: Path = REPO_ROOT / "corpus" / "cases"
"""The committed golden-case corpus."""

REFERENCE_DIR: Path = REPO_ROOT / "corpus" / "reference"
"""The customer's reference files (task frequencies, CL-Bench sample, schema)."""
