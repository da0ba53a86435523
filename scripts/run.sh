#!/usr/bin/env bash
# Sets up a virtual environment (if needed) and runs the main job: an agent over the golden
# cases, scored by the verifier, then the results report. With no arguments it runs the
# simulated student (offline, no API key) on the eval split into runs/simulated-eval;
# arguments go to `crmbench run` instead (e.g. --agent student --split eval --out runs/gpt41).
# Uses the embedded Postgres unless DATABASE_URL is set; rerunning resumes the same run.
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/venv.sh
ensure_venv
if [ "$#" -eq 0 ]; then
    set -- --agent simulated --split eval --concurrency 8 --out runs/simulated-eval
fi
.venv/bin/crmbench run "$@"
out=runs/latest
prev=""
for arg in "$@"; do
    if [ "$prev" = "--out" ]; then out="$arg"; fi
    case "$arg" in --out=*) out="${arg#--out=}" ;; esac
    prev="$arg"
done
exec .venv/bin/crmbench results "$out"
