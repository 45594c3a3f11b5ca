# Sourced by scripts/run and scripts/test: go to the repository root, make sure .venv exists and
# holds the project as pyproject.toml currently describes it. Sets REPO_ROOT and VENV_PYTHON.

REPO_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd -P)"
cd "$REPO_ROOT"

VENV="$REPO_ROOT/.venv"
VENV_PYTHON="$VENV/bin/python"
STAMP="$VENV/.devstack-install-stamp"
PYTHON="${PYTHON:-python3}"

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

if ! command -v "$PYTHON" >/dev/null 2>&1; then
    _bootstrap_apt_install python3 python3-venv
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
    "$VENV_PYTHON" -m pip install --quiet --disable-pip-version-check -e '.[test]'
    printf '%s\n' "$wanted" > "$STAMP"
fi
