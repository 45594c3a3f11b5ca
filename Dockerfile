# The control plane image: API (gunicorn), RQ workers and the scheduler all run from it.
FROM python:3.11-slim-bookworm

# pg_dump/pg_restore must be at least the tenant servers' major version: bookworm's client is 15,
# matching the stack's PostgreSQL 15 servers (use PGDG's newer client for newer servers).
RUN apt-get update \
 && apt-get install -y --no-install-recommends postgresql-client curl ca-certificates \
 && rm -rf /var/lib/apt/lists/*

WORKDIR /app
COPY pyproject.toml README.md ./
COPY control_plane ./control_plane
COPY tenant_runtime ./tenant_runtime
COPY tenant_migrations ./tenant_migrations
RUN pip install --no-cache-dir ".[control-plane]" && useradd --system --uid 10001 controlplane
USER controlplane
EXPOSE 8000
CMD ["gunicorn", "--bind", "0.0.0.0:8000", "--workers", "4", "--access-logfile", "-", "control_plane.wsgi:app"]
