"""The one place that reads the environment: every setting, each also as <NAME>_FILE (tenant_runtime's read_setting)."""
from __future__ import annotations

import re
from dataclasses import dataclass, field, fields
from typing import Mapping

from control_plane.errors import ConfigurationError
from control_plane.tls import tls_problems
from tenant_runtime.settings import read_setting

REQUIRED = ("CATALOG_DATABASE_URL", "REDIS_URL", "TENANT_DB_ADMIN_URL", "BACKUP_STORE_URL", "KEYRING")


_URL_PASSWORD = re.compile(r"(?P<scheme>[a-z][a-z0-9+.-]*://)(?P<user>[^:@/?#]*):[^@/?#]*@", re.IGNORECASE)
_QUERY_SECRET = re.compile(r"(?P<key>(?:password|passwd|sslpassword|secret|token)=)[^&\s]*", re.IGNORECASE)


def redact_url(url: str | None) -> str | None:
    """`url` with its password (in the authority or a query parameter) replaced by `***`: safe to print or log."""
    if url is None:
        return None
    url = _URL_PASSWORD.sub(r"\g<scheme>\g<user>:***@", url)
    return _QUERY_SECRET.sub(r"\g<key>***", url)


def redacted_repr(obj: object) -> str:
    """A dataclass's repr with every `*_url` field redacted and the secret ones (`repr=False`) shown as `***`."""
    parts = []
    for f in fields(obj):  # type: ignore[arg-type]
        value = getattr(obj, f.name)
        if not f.repr:
            value = "***" if value else value
        elif f.name.endswith("_url") and isinstance(value, str):
            value = redact_url(value)
        parts.append(f"{f.name}={value!r}")
    return f"{type(obj).__name__}({', '.join(parts)})"


@dataclass(frozen=True, repr=False)
class Settings:
    catalog_database_url: str
    redis_url: str
    tenant_db_admin_url: str
    backup_store_url: str
    keyring: str = field(repr=False)
    # Seals tenant role passwords, and nothing else: what tenant applications hold instead of KEYRING.
    runtime_keyring: str | None = field(default=None, repr=False)
    s3_endpoint_url: str | None = None
    queue_name: str = "operations"
    # Seconds a job may run before RQ considers it dead; long because backups and moves stream data.
    job_timeout: int = 3600
    max_request_bytes: int = 64 * 1024
    # Clone a template database kept at head (fast) instead of running every migration per tenant.
    provision_from_template: bool = True
    # Backups: the daily window scheduled backups are spread over (UTC, "HH:MM-HH:MM"), a directory with
    # pg_dump/pg_restore (instead of searching the usual places), S3 server-side encryption on top of
    # ours, the zstd level and worker threads, and how many days an in-place restore keeps the database
    # it replaced. Level 6 stores a clinic-CRM archive ~4% smaller than pg_dump -Fc's own gzip (the
    # reference method) at about half its CPU; 3 is about 2.5x as fast and ~7% larger than gzip
    # (scripts/bench backup measures both). Worker threads compress side by side with pg_dump.
    backup_window: str = "01:00-05:00"
    pg_bin_dir: str | None = None
    s3_server_side_encryption: str | None = None
    s3_sse_kms_key_id: str | None = None
    backup_zstd_level: int = 6
    backup_zstd_threads: int = 2
    retired_database_days: int = 7
    # Fair use of disk: the retired databases (full copies) kept per tenant; a newer one drops the oldest.
    retired_databases_per_tenant: int = 2
    # How long a deleted tenant's database is kept (renamed, connections refused, its role unable to log in)
    # so that POST /v1/tenants/<id>/undelete can bring it back; then the prune job drops it and the role.
    deleted_tenant_grace_days: int = 7
    # Spare databases at head kept on each server for provisioning to claim (0 turns the pool off).
    warm_pool_size: int = 2
    # Disaster recovery: a second store every completed backup is copied to (and the catalog backups),
    # how many days of daily backups it keeps, and the catalog backups' retention in days.
    backup_copy_store_url: str | None = None
    backup_copy_keep_daily_days: int = 90
    catalog_backup_keep_days: int = 30
    # /metrics answers only requests bearing `Authorization: Bearer <METRICS_TOKEN>` when it is set.
    metrics_token: str | None = field(default=None, repr=False)
    # API tokens: default lifetime by role (days; 0 = never expires), and failed authentications allowed
    # per client address per window before it gets 429.
    token_days_super_admin: int = 90
    token_days_tenant_admin: int = 30
    auth_failure_limit: int = 20
    auth_failure_window_seconds: int = 60
    # Fair use: manual backups a tenant admin may start per rolling day (super admins are not limited).
    tenant_admin_backups_per_day: int = 5
    # Refuse any PostgreSQL connection below sslmode=verify-full and any Redis one without rediss://.
    require_tls: bool = False
    # The databases every server has on which provisioning revokes PUBLIC's CONNECT (never any other).
    shared_databases: tuple[str, ...] = ("postgres", "template1")
    # Migration runs: how many times a tenant whose migration hit lock_timeout is tried again, and the
    # first wait before that (doubling at each retry). A busy tenant is normal, not broken.
    migration_lock_retries: int = 3
    migration_lock_backoff_ms: int = 1000

    def __repr__(self) -> str:
        return redacted_repr(self)

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> "Settings":
        values = {name: read_setting(name, environ) for name in REQUIRED}
        missing = [name for name, value in values.items() if not value]
        if missing:
            raise ConfigurationError(
                "missing required settings: " + ", ".join(missing) + " (set them, or <NAME>_FILE pointing to a file)"
            )
        require_tls = _bool_setting("REQUIRE_TLS", environ, False)
        if require_tls:
            problems = tls_problems(catalog_url=values["CATALOG_DATABASE_URL"], redis_url=values["REDIS_URL"],
                                    admin_url=values["TENANT_DB_ADMIN_URL"])
            if problems:
                raise ConfigurationError("REQUIRE_TLS is on: " + "; ".join(problems))
        return cls(
            require_tls=require_tls,
            catalog_database_url=values["CATALOG_DATABASE_URL"],
            redis_url=values["REDIS_URL"],
            tenant_db_admin_url=values["TENANT_DB_ADMIN_URL"],
            backup_store_url=values["BACKUP_STORE_URL"],
            keyring=values["KEYRING"],
            runtime_keyring=read_setting("RUNTIME_KEYRING", environ),
            s3_endpoint_url=read_setting("S3_ENDPOINT_URL", environ),
            queue_name=read_setting("QUEUE_NAME", environ, "operations"),
            provision_from_template=_bool_setting("PROVISION_FROM_TEMPLATE", environ, True),
            backup_window=read_setting("BACKUP_WINDOW", environ, "01:00-05:00"),
            pg_bin_dir=read_setting("PG_BIN_DIR", environ),
            s3_server_side_encryption=read_setting("S3_SERVER_SIDE_ENCRYPTION", environ),
            s3_sse_kms_key_id=read_setting("S3_SSE_KMS_KEY_ID", environ),
            backup_zstd_level=_int_setting("BACKUP_ZSTD_LEVEL", environ, 6, minimum=1, maximum=19),
            backup_zstd_threads=_int_setting("BACKUP_ZSTD_THREADS", environ, 2, minimum=1, maximum=16),
            retired_database_days=_int_setting("RETIRED_DATABASE_DAYS", environ, 7),
            # At least 1: the newest is the undo of the latest restore or move.
            retired_databases_per_tenant=_int_setting("RETIRED_DATABASES_PER_TENANT", environ, 2, minimum=1),
            deleted_tenant_grace_days=_int_setting("DELETED_TENANT_GRACE_DAYS", environ, 7),
            warm_pool_size=_int_setting("WARM_POOL_SIZE", environ, 2),
            backup_copy_store_url=read_setting("BACKUP_COPY_STORE_URL", environ),
            backup_copy_keep_daily_days=_int_setting("BACKUP_COPY_KEEP_DAILY_DAYS", environ, 90),
            catalog_backup_keep_days=_int_setting("CATALOG_BACKUP_KEEP_DAYS", environ, 30),
            metrics_token=read_setting("METRICS_TOKEN", environ),
            token_days_super_admin=_int_setting("TOKEN_DAYS_SUPER_ADMIN", environ, 90),
            token_days_tenant_admin=_int_setting("TOKEN_DAYS_TENANT_ADMIN", environ, 30),
            auth_failure_limit=_int_setting("AUTH_FAILURE_LIMIT", environ, 20),
            auth_failure_window_seconds=_int_setting("AUTH_FAILURE_WINDOW_SECONDS", environ, 60),
            tenant_admin_backups_per_day=_int_setting("TENANT_ADMIN_BACKUPS_PER_DAY", environ, 5),
            migration_lock_retries=_int_setting("MIGRATION_LOCK_RETRIES", environ, 3),
            migration_lock_backoff_ms=_int_setting("MIGRATION_LOCK_BACKOFF_MS", environ, 1000),
            shared_databases=tuple(name.strip() for name in read_setting(
                "SHARED_DATABASES", environ, "postgres,template1").split(",") if name.strip()),
        )


def _bool_setting(name: str, environ: Mapping[str, str] | None, default: bool) -> bool:
    value = read_setting(name, environ)
    if value is None:
        return default
    return value.strip().lower() not in ("0", "false", "no", "off")


def logging_settings(environ: Mapping[str, str] | None = None, default_level: str = "INFO") -> tuple[str, str]:
    """(LOG_FORMAT, LOG_LEVEL): read apart from Settings because logging starts before anything else."""
    import logging

    log_format = (read_setting("LOG_FORMAT", environ, "text") or "text").lower()
    level = (read_setting("LOG_LEVEL", environ, default_level) or default_level).upper()
    if log_format not in ("json", "text"):
        raise ConfigurationError(f"LOG_FORMAT must be json or text, got {log_format!r}")
    if level not in logging.getLevelNamesMapping():
        raise ConfigurationError(f"LOG_LEVEL must be a logging level (DEBUG, INFO, WARNING...), got {level!r}")
    return log_format, level


def _int_setting(name: str, environ: Mapping[str, str] | None, default: int, minimum: int | None = None,
                 maximum: int | None = None) -> int:
    value = read_setting(name, environ)
    if value is None:
        return default
    try:
        number = int(value)
    except ValueError:
        raise ConfigurationError(f"{name} must be an integer, got {value!r}") from None
    if minimum is not None and number < minimum:
        raise ConfigurationError(f"{name} must be at least {minimum}, got {number}")
    if maximum is not None and number > maximum:
        raise ConfigurationError(f"{name} must be at most {maximum}, got {number}")
    return number
