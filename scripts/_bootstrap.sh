# Sourced by scripts/run, scripts/test and scripts/bench: go to the repository root, install the system
# packages the dev stack needs (apt-get, as root), make sure .venv exists and holds the project as
# pyproject.toml currently describes it. Sets REPO_ROOT, VENV_PYTHON and PYTHONPATH (scripts/, for
# `python -m devstack`). A script that needs more packages sets EXTRA_PACKAGES ("command:package ...")
# before sourcing this file.

REPO_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd -P)"
cd "$REPO_ROOT"

VENV="$REPO_ROOT/.venv"
VENV_PYTHON="$VENV/bin/python"
STAMP="$VENV/.devstack-install-stamp"
PYTHON="${PYTHON:-python3}"
export PYTHONPATH="$REPO_ROOT/scripts${PYTHONPATH:+:$PYTHONPATH}"

_bootstrap_log() { printf '%s\n' "[bootstrap] $*" >&2; }

_bootstrap_apt_install() {
    if [ "$(id -u)" -ne 0 ]; then
        _bootstrap_log "missing: $*; install them (sudo apt-get install -y $*) or run this script as root"
        exit 1
    fi
    _bootstrap_log "installing $* with apt-get"
    DEBIAN_FRONTEND=noninteractive apt-get update
    DEBIAN_FRONTEND=noninteractive apt-get install -y "$@"
}

_bootstrap_has_postgres() {
    command -v pg_config >/dev/null 2>&1 && [ -x "$(pg_config --bindir 2>/dev/null)/initdb" ] && return 0
    compgen -G '/usr/lib/postgresql/*/bin/initdb' >/dev/null
}

# "command:package" pairs: the package is installed when the command is missing. PostgreSQL's server
# binaries are not on PATH on Debian, hence the special case. (Debian's postgresql package starts a
# system cluster on 5432; nothing here uses it.)
_bootstrap_missing=()
_bootstrap_has_postgres || _bootstrap_missing+=(postgresql)
for _pair in python3:python3 redis-server:redis-server psql:postgresql-client ${EXTRA_PACKAGES:-}; do
    command -v "${_pair%%:*}" >/dev/null 2>&1 || _bootstrap_missing+=("${_pair#*:}")
done
if [ "${#_bootstrap_missing[@]}" -gt 0 ]; then
    _bootstrap_apt_install "${_bootstrap_missing[@]}"
fi

# A venv is usable when its python runs and has pip; anything less (an interrupted creation) is redone.
if ! { [ -x "$VENV_PYTHON" ] && "$VENV_PYTHON" -m pip --version >/dev/null 2>&1; }; then
    rm -rf "$VENV"
    if ! "$PYTHON" -m venv "$VENV" >/dev/null 2>&1; then
        # Debian's python3 lacks ensurepip until python3-venv is installed.
        rm -rf "$VENV"
        _bootstrap_apt_install python3-venv
        "$PYTHON" -m venv "$VENV"
    fi
    rm -f "$STAMP"
fi

# Reinstall only when pyproject.toml changed since the last successful install.
wanted="$(sha256sum "$REPO_ROOT/pyproject.toml" | cut -d' ' -f1)"
if [ "$(cat "$STAMP" 2>/dev/null || true)" != "$wanted" ]; then
    _bootstrap_log "installing the project into .venv (pyproject.toml changed)"
    "$VENV_PYTHON" -m pip install --quiet --disable-pip-version-check -e '.[control-plane,test]'
    printf '%s\n' "$wanted" > "$STAMP"
fi
