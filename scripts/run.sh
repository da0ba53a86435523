#!/usr/bin/env bash
# Sets up a virtual environment (if needed) and runs the main job: the CRM API on the
# embedded Postgres (or DATABASE_URL when set). Extra arguments go to `crmbench serve crm-api`.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
    "$PYTHON" -m venv .venv
fi
.venv/bin/python -m pip install --quiet --disable-pip-version-check --upgrade pip
.venv/bin/python -m pip install --quiet --disable-pip-version-check -e .
exec .venv/bin/crmbench serve crm-api "$@"
