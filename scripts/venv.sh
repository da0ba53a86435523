# Sourced by run.sh and test.sh: makes .venv (if needed) and installs the project into it,
# but only when pyproject.toml changed since the last install: a stamp in .venv holds its
# hash and the extras installed. FORCE_INSTALL=1 reinstalls anyway.
ensure_venv() {  # $1: the extras ("" or "dev")
    local extras="${1:-}" stamp=.venv/.crmbench-install-stamp want spec
    if [ ! -x .venv/bin/python ]; then
        "${PYTHON:-python3}" -m venv .venv
    fi
    want="$(.venv/bin/python -c 'import hashlib; print(hashlib.sha256(open("pyproject.toml", "rb").read()).hexdigest())')"
    if [ -z "${FORCE_INSTALL:-}" ] && [ -f "$stamp" ] && grep -qxF "$want ${extras:-base}" "$stamp"; then
        return 0
    fi
    spec="."
    if [ -n "$extras" ]; then spec=".[$extras]"; fi
    echo "installing crm-bench into .venv (pyproject.toml changed or first run)..."
    .venv/bin/python -m pip install --quiet --disable-pip-version-check --upgrade pip
    # setuptools prints a boxed warning on every editable install; it does not apply here.
    PYTHONWARNINGS="ignore:Editable installation" \
        .venv/bin/python -m pip install --quiet --disable-pip-version-check -e "$spec"
    {
        echo "$want base"
        if [ -n "$extras" ]; then echo "$want $extras"; fi
    } > "$stamp"
}
