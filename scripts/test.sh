#!/usr/bin/env bash
# Sets up a virtual environment (if needed) and runs lint, type check and the test suite.
# Tests use CRMBENCH_TEST_ADMIN_URL (a Postgres URL allowed to create databases) when set,
# else an embedded Postgres started for the run.
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/venv.sh
ensure_venv dev
echo "== ruff"
.venv/bin/ruff check .
.venv/bin/ruff format --check .
echo "== mypy"
.venv/bin/mypy
echo "== pytest"
.venv/bin/python -m pytest -q "$@"
