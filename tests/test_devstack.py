"""The private servers of the dev stack (scripts/devstack), started for real: passwords required, restarts keep port and data."""
from __future__ import annotations

import base64
import shutil
import stat
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest
import redis
from redis.backoff import NoBackoff
from redis.retry import Retry

import devstack


@pytest.fixture
def scratch() -> Iterator[Path]:
    """A folder the `postgres` OS user can reach (pytest's tmp_path is 0700 when root); emptied afterwards."""
    path = devstack.scratch_dir("test-devstack")
    try:
        yield path
    finally:
        devstack.stop_servers_under(path)
        shutil.rmtree(path, ignore_errors=True)


@pytest.fixture
def no_settings(monkeypatch: pytest.MonkeyPatch) -> None:
    """Hide the settings `scripts/test` exports, so dev_environment starts its own servers."""
    for name in devstack.SETTING_NAMES:
        monkeypatch.delenv(name, raising=False)
        monkeypatch.delenv(f"{name}_FILE", raising=False)


def _connect_without_password(port: int, **extra: object) -> psycopg.Connection:
    # passfile=/dev/null: a ~/.pgpass must not supply the password we mean to omit.
    return psycopg.connect(
        host="127.0.0.1", port=port, user=devstack.SUPERUSER, dbname="postgres",
        passfile="/dev/null", connect_timeout=5, **extra,
    )


def _setting(url: str, name: str) -> str:
    with psycopg.connect(url, connect_timeout=5) as conn:
        return conn.execute("SELECT current_setting(%s)", (name,)).fetchone()[0]


def test_postgres_requires_a_password_and_keeps_port_and_data_across_restarts(
    scratch: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("PGPASSWORD", raising=False)
    server = devstack.PostgresServer(scratch / "pg", fast=True)
    try:
        server.start()
        port = server.port
        assert server.url == f"postgresql://cp_admin:{server.password}@127.0.0.1:{port}/postgres"
        assert stat.S_IMODE(server.password_file.stat().st_mode) == 0o600
        with psycopg.connect(server.url, autocommit=True, connect_timeout=5) as conn:
            conn.execute("CREATE TABLE kept (value text)")
            conn.execute("INSERT INTO kept VALUES ('still here')")
            assert conn.execute("SHOW fsync").fetchone()[0] == "off"
            assert conn.execute("SHOW listen_addresses").fetchone()[0] == "127.0.0.1"
            assert conn.execute("SHOW max_connections").fetchone()[0] == "200"
            assert conn.execute("SHOW server_encoding").fetchone()[0] == "UTF8"

        with pytest.raises(psycopg.OperationalError):
            _connect_without_password(port)
        with pytest.raises(psycopg.OperationalError):
            _connect_without_password(port, password="wrong")
        if (server.socket_dir / f".s.PGSQL.{port}").exists():
            with pytest.raises(psycopg.OperationalError):
                psycopg.connect(
                    host=str(server.socket_dir), port=port, user=devstack.SUPERUSER, dbname="postgres",
                    passfile="/dev/null", connect_timeout=5,
                )

        assert server.start() is server  # idempotent while running
        assert server.port == port
        server.stop()
        assert not server.is_running()
        server.stop()  # idempotent while stopped

        # A new object on the same root, default (durable) settings: same port, same password, same data.
        durable = devstack.PostgresServer(scratch / "pg")
        durable.start()
        assert durable.port == port
        assert durable.url == server.url
        assert _setting(durable.url, "fsync") == "on"
        assert _setting(durable.url, "synchronous_commit") == "on"
        with psycopg.connect(durable.url, connect_timeout=5) as conn:
            assert conn.execute("SELECT value FROM kept").fetchall() == [("still here",)]

        catalog_url = durable.ensure_database("control_plane")
        assert durable.ensure_database("control_plane") == catalog_url
        assert _setting(catalog_url, "server_version")
    finally:
        server.stop()


def test_postgres_picks_another_port_when_the_remembered_one_is_taken(scratch: Path) -> None:
    first = devstack.PostgresServer(scratch / "first", fast=True).start()
    try:
        second = devstack.PostgresServer(scratch / "second", fast=True)
        second.port_file.parent.mkdir(parents=True, exist_ok=True)
        second.port_file.write_text(f"{first.port}\n")  # as if `second` had used it last time
        try:
            second.start()
            assert second.port != first.port
            assert _setting(second.url, "port") == str(second.port)
        finally:
            second.stop()
    finally:
        first.stop()


def test_redis_requires_a_password_and_keeps_its_port_across_restarts(scratch: Path) -> None:
    server = devstack.RedisServer(scratch / "redis")
    try:
        server.start()
        port = server.port
        assert server.url == f"redis://:{server.password}@127.0.0.1:{port}/0"
        assert stat.S_IMODE(server.password_file.stat().st_mode) == 0o600
        assert stat.S_IMODE(server.config_file.stat().st_mode) == 0o600
        client = redis.Redis.from_url(server.url)
        assert client.set("greeting", "hello")
        assert client.get("greeting") == b"hello"
        client.close()

        # No retries: redis-py would retry the AuthenticationError with backoff for seconds.
        anonymous = redis.Redis(host="127.0.0.1", port=port, socket_timeout=5, retry=Retry(NoBackoff(), 0))
        with pytest.raises((redis.AuthenticationError, redis.ResponseError)):
            anonymous.ping()
        anonymous.close()
        wrong = redis.Redis(
            host="127.0.0.1", port=port, password="wrong", socket_timeout=5, retry=Retry(NoBackoff(), 0)
        )
        with pytest.raises((redis.AuthenticationError, redis.ResponseError)):
            wrong.ping()
        wrong.close()

        pid = server.pid_file.read_text().strip()
        server.start()  # idempotent: the running server is reused
        assert server.pid_file.read_text().strip() == pid

        server.stop()
        assert not server.is_running()
        server.stop()

        again = devstack.RedisServer(scratch / "redis").start()
        assert again.port == port
        assert again.url == server.url
        assert again.client().ping()
    finally:
        server.stop()


def test_dev_environment_starts_private_servers_and_stops_them(scratch: Path, no_settings: None) -> None:
    base = scratch / "env"
    with devstack.dev_environment(base, fast=True) as env:
        assert set(env) == set(devstack.SETTING_NAMES)
        assert env["CATALOG_DATABASE_URL"].startswith("postgresql://cp_admin:")
        assert env["CATALOG_DATABASE_URL"].endswith("/control_plane")
        assert env["TENANT_DB_ADMIN_URL"].endswith("/postgres")
        with psycopg.connect(env["CATALOG_DATABASE_URL"], connect_timeout=5) as conn:
            assert conn.execute("SELECT current_database()").fetchone()[0] == "control_plane"
        client = redis.Redis.from_url(env["REDIS_URL"])
        assert client.ping()
        client.close()
        assert env["BACKUP_STORE_URL"] == (base / "backups").resolve().as_uri()
        assert (base / "backups").is_dir()
        key_id, _, key = env["KEYRING"].partition(":")
        assert key_id == "k1" and len(base64.b64decode(key, validate=True)) == 32
        assert stat.S_IMODE((base / "keyring").stat().st_mode) == 0o600

        with (
            pytest.raises(devstack.DevstackError, match="in use by another devstack session"),
            devstack.dev_environment(base),
        ):
            pass

    assert not devstack.PostgresServer(base / "postgres").is_running()
    assert not devstack.RedisServer(base / "redis").is_running()

    with devstack.dev_environment(base, fast=True) as again:
        assert again == env  # same ports, passwords and keyring on the next session
    assert not devstack.PostgresServer(base / "postgres").is_running()
    assert not devstack.RedisServer(base / "redis").is_running()


def test_dev_environment_passes_given_settings_through_and_starts_nothing(
    scratch: Path, no_settings: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    given = {name: f"given-{name.lower()}" for name in devstack.SETTING_NAMES}
    for name, value in given.items():
        monkeypatch.setenv(name, value)
    base = scratch / "env"
    with devstack.dev_environment(base) as env:
        assert env == given
    assert not (base / "postgres").exists()
    assert not (base / "redis").exists()
