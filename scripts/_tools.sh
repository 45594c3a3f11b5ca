# Sourced by scripts/test: the command-line tools the deployment tests run, installed when missing.
#   docker-compose  Debian's Compose v1: `docker-compose -f docker-stack.yml config` parses and validates
#                   the stack file without a Docker daemon.
#   promtool        from Debian's prometheus package: `promtool test rules` for deploy/prometheus. Only
#                   the binary is extracted (into .devstack/tools/bin): installing the package would also
#                   start a Prometheus server on this machine.
# Needs _bootstrap.sh sourced first (REPO_ROOT, _bootstrap_log, _bootstrap_apt_install).

TOOLS_BIN="$REPO_ROOT/.devstack/tools/bin"

_tools_ensure() {
    if ! command -v docker-compose >/dev/null 2>&1; then
        _bootstrap_apt_install docker-compose
    fi
    if ! command -v promtool >/dev/null 2>&1 && [ ! -x "$TOOLS_BIN/promtool" ]; then
        if ! command -v apt-get >/dev/null 2>&1; then
            _bootstrap_log "missing: promtool (from Prometheus); put it on PATH"
            exit 1
        fi
        _bootstrap_log "extracting promtool from Debian's prometheus package into $TOOLS_BIN"
        local work
        work="$(mktemp -d)"
        # apt-get download runs as the unprivileged _apt user when it can: give it a folder it may write.
        chmod 0777 "$work"
        if ! (cd "$work" && apt-get download prometheus >/dev/null 2>&1); then
            DEBIAN_FRONTEND=noninteractive apt-get update >/dev/null
            (cd "$work" && apt-get download prometheus >/dev/null)
        fi
        dpkg-deb -x "$work"/prometheus_*.deb "$work/root"
        mkdir -p "$TOOLS_BIN"
        install -m 0755 "$work/root/usr/bin/promtool" "$TOOLS_BIN/promtool"
        rm -rf "$work"
    fi
    export PATH="$PATH:$TOOLS_BIN"
}

_tools_ensure
