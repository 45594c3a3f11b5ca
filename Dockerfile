# The control plane image: API (gunicorn), RQ workers, the scheduler and the catalog migration job.
FROM python:3.11-slim-bookworm

# pg_dump/pg_restore must be at least the tenant servers' major version. Bookworm's client is 15,
# matching the stack's postgres:15 servers; for newer servers build with PG_MAJOR=16 (or 17), which
# takes the client from the PostgreSQL project's apt repository (apt.postgresql.org), signed.
ARG PG_MAJOR=15
RUN set -eux; \
    apt-get update; \
    apt-get install -y --no-install-recommends curl ca-certificates gnupg; \
    if [ "$PG_MAJOR" != "15" ]; then \
        curl -fsSL https://www.postgresql.org/media/keys/ACCC4CF8.asc \
            | gpg --dearmor -o /usr/share/keyrings/pgdg.gpg; \
        echo "deb [signed-by=/usr/share/keyrings/pgdg.gpg] https://apt.postgresql.org/pub/repos/apt bookworm-pgdg main" \
            > /etc/apt/sources.list.d/pgdg.list; \
        apt-get update; \
    fi; \
    apt-get install -y --no-install-recommends "postgresql-client-${PG_MAJOR}"; \
    apt-get purge -y gnupg; apt-get autoremove -y; \
    rm -rf /var/lib/apt/lists/*; \
    pg_dump --version | grep -q " ${PG_MAJOR}\."

ENV PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    PIP_NO_CACHE_DIR=1 \
    LOG_FORMAT=json \
    HOME=/home/controlplane

WORKDIR /app
COPY pyproject.toml README.md ./
COPY control_plane ./control_plane
COPY tenant_runtime ./tenant_runtime
COPY tenant_migrations ./tenant_migrations
RUN pip install ".[control-plane]" \
 && python -m compileall -q /usr/local/lib/python3.11/site-packages/control_plane \
 && useradd --system --uid 10001 --home-dir /home/controlplane --create-home controlplane \
 # Every path the processes write to, owned by their user: a file:// backup store mounted as a named
 # volume (Docker copies this ownership into a new volume), and a scratch directory.
 && install -d -o controlplane -g controlplane -m 0750 /var/lib/control-plane /var/lib/control-plane/backups \
    /var/tmp/control-plane
ENV TMPDIR=/var/tmp/control-plane
USER controlplane
EXPOSE 8000
CMD ["gunicorn", "-c", "python:control_plane.gunicorn_conf", "control_plane.wsgi:app"]
