"""TLS requirements on connection URLs: which libpq TLS options a server's admin URL carries, and whether a
PostgreSQL or Redis URL verifies its peer (what REQUIRE_TLS demands)."""
from __future__ import annotations

from urllib.parse import parse_qs, urlsplit

# libpq options that say how to reach a server safely; copied from a server's admin URL onto every
# connection to that server (as a tenant role too). Client certificates (sslcert, sslkey) are the
# admin's own and are not copied.
TLS_PARAMETERS = ("sslmode", "sslrootcert", "sslcrl", "sslcrldir", "sslsni", "ssl_min_protocol_version",
                  "ssl_max_protocol_version", "sslnegotiation", "requirepeer", "gssencmode")


def _query(url: str) -> dict[str, str]:
    return {key: values[-1] for key, values in parse_qs(urlsplit(url).query).items()}


def postgres_tls_options(url: str) -> dict[str, str]:
    """The TLS options of a `postgresql://` URL's query string (`sslmode`, `sslrootcert`, ...)."""
    query = _query(url)
    return {key: query[key] for key in TLS_PARAMETERS if key in query}


def postgres_verifies(options: dict[str, str]) -> bool:
    """libpq verifies the server's certificate and name only with sslmode=verify-full."""
    return options.get("sslmode") == "verify-full"


def redis_verifies(url: str) -> bool:
    """`rediss://` with certificate checks left on (redis-py verifies by default)."""
    parts = urlsplit(url)
    return parts.scheme == "rediss" and _query(url).get("ssl_cert_reqs", "required").lower() == "required"


def tls_problems(*, catalog_url: str, redis_url: str, admin_url: str) -> list[str]:
    """What REQUIRE_TLS refuses among the process's own connections (each named, no URL shown)."""
    problems = []
    if not postgres_verifies(postgres_tls_options(catalog_url)):
        problems.append("CATALOG_DATABASE_URL needs sslmode=verify-full")
    if not redis_verifies(redis_url):
        problems.append("REDIS_URL needs rediss:// with certificate verification")
    if not postgres_verifies(postgres_tls_options(admin_url)):
        problems.append("TENANT_DB_ADMIN_URL needs sslmode=verify-full")
    return problems
