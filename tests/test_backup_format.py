"""The backup object format, retention and schedule arithmetic: pure unit tests (no servers)."""
from __future__ import annotations

import io
import os
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone

import pytest

from backup_support import chunk_spans
from control_plane.adapters.backup_format import (MAGIC, BackupHeader, IterReader, NullSink, OpenedBackup, SealStats,
                                                  new_key, seal, wrap_data_key)
from control_plane.backup_errors import BackupIntegrityError, BackupKeyError
from control_plane.services.backup_schedule import BackupWindow
from control_plane.services.retention import Policy, retained_ids

CHUNK = 4096
TENANT_KEY = new_key()


def archive_bytes(size: int = 200_000) -> bytes:
    """Something shaped like a pg_dump archive: the magic, then rows of clinic text plus noise."""
    rows = b"".join(b"lead %d\tmaria%d@clinic.example\tbotox follow-up %s\n" % (i, i, os.urandom(4).hex().encode())
                    for i in range(size // 50))
    return b"PGDMP\x01\x0e\x00" + rows[:size]


def sealed(payload: bytes, backup_id: str = "b-1", tenant_id: str = "clinic", level: int = 3,
           threads: int = 0) -> bytes:
    data_key = new_key()
    header = BackupHeader(backup_id=backup_id, tenant_id=tenant_id, tenant_key_id="tk-1",
                          wrapped_data_key=wrap_data_key(TENANT_KEY, data_key, tenant_id, backup_id), chunk_size=CHUNK)
    stats = SealStats()
    stored = IterReader(seal(io.BytesIO(payload), header, data_key, stats, level=level, threads=threads)).read()
    assert stats.stored_bytes == len(stored) and stats.archive_bytes == len(payload)
    return stored


def opened(stored: bytes, backup_id: str = "b-1", tenant_id: str = "clinic", key: bytes = TENANT_KEY) -> bytes:
    out = io.BytesIO()
    OpenedBackup(io.BytesIO(stored), expect_backup_id=backup_id, expect_tenant_id=tenant_id,
                 key_for=lambda header: key).archive(out)
    return out.getvalue()


@pytest.fixture(scope="module")
def payload() -> bytes:
    return archive_bytes()


@pytest.fixture(scope="module")
def stored(payload) -> bytes:
    return sealed(payload, level=1)


def test_round_trip_and_several_chunks(payload, stored):
    assert opened(stored) == payload
    assert len(chunk_spans(stored)) >= 4
    assert stored.startswith(MAGIC)


def test_worker_threads_write_the_same_format(payload):
    """zstd workers compress 2 MB jobs side by side: one zstd stream the single-threaded reader opens, and
    backups sealed at another level or thread count (earlier defaults: 3 and 1) open alike."""
    big = archive_bytes(5 << 20)  # several zstd jobs
    for level, threads in ((6, 2), (3, 1)):
        assert opened(sealed(big, level=level, threads=threads)) == big


def test_stored_bytes_are_not_plaintext(payload, stored):
    assert b"PGDMP" not in stored and b"clinic.example" not in stored and b"botox" not in stored
    assert len(stored) < len(payload) / 2  # compressed before it was encrypted


def test_empty_input_is_one_final_chunk_and_not_an_archive():
    stored = sealed(b"")
    reader = OpenedBackup(io.BytesIO(stored), expect_backup_id="b-1", expect_tenant_id="clinic",
                          key_for=lambda header: TENANT_KEY)
    assert len(list(reader.chunks())) == 1
    with pytest.raises(BackupIntegrityError, match="not a pg_dump"):
        opened(stored)


@pytest.mark.parametrize("where", ["magic", "header", "length", "first_body", "middle_body", "last_tag"])
def test_a_flipped_byte_anywhere_is_refused(stored, where):
    spans = chunk_spans(stored)
    offset = {"magic": 3, "header": 40, "length": spans[1][0] + 2, "first_body": spans[0][0] + 10,
              "middle_body": (spans[2][0] + spans[2][1]) // 2, "last_tag": len(stored) - 3}[where]
    damaged = bytearray(stored)
    damaged[offset] ^= 0x01
    with pytest.raises((BackupIntegrityError, BackupKeyError)):
        opened(bytes(damaged))


@pytest.mark.parametrize("cut", [5, 100, "inside_chunk", "between_chunks"])
def test_truncation_is_refused(stored, cut):
    spans = chunk_spans(stored)
    length = {"inside_chunk": spans[1][0] + 50, "between_chunks": spans[2][0]}.get(cut, cut)
    with pytest.raises(BackupIntegrityError, match="truncated|header"):
        opened(stored[:length])


def test_dropping_the_last_chunk_is_refused(stored):
    spans = chunk_spans(stored)
    with pytest.raises(BackupIntegrityError, match="final-chunk marker"):
        opened(stored[:spans[-1][0]])


def test_swapped_chunks_are_refused(stored):
    spans = chunk_spans(stored)
    (a0, a1), (b0, b1) = spans[1], spans[2]
    swapped = stored[:a0] + stored[b0:b1] + stored[a0:a1] + stored[b1:]
    with pytest.raises(BackupIntegrityError, match="chunk 1 failed authentication"):
        opened(swapped)


def test_appended_bytes_are_refused(stored):
    with pytest.raises(BackupIntegrityError, match="after the final chunk"):
        opened(stored + b"\0")


def test_the_wrong_key_or_another_backups_identity_is_refused(stored):
    with pytest.raises(BackupKeyError):
        opened(stored, key=new_key())
    with pytest.raises(BackupIntegrityError, match="belongs to backup b-1"):
        opened(stored, backup_id="b-2")
    with pytest.raises(BackupIntegrityError, match="of tenant clinic"):
        opened(stored, tenant_id="other")


def test_a_header_from_another_backup_is_refused(payload, stored):
    other = sealed(payload)
    spliced = other[:chunk_spans(other)[0][0]] + stored[chunk_spans(stored)[0][0]:]
    with pytest.raises((BackupIntegrityError, BackupKeyError)):
        opened(spliced)


def test_verification_reads_without_keeping_the_plaintext(payload, stored):
    reader = OpenedBackup(io.BytesIO(stored), expect_backup_id="b-1", expect_tenant_id="clinic",
                          key_for=lambda header: TENANT_KEY)
    assert reader.archive(NullSink()) == len(payload)
    assert reader.stored_bytes == len(stored)


@dataclass
class FakeBackup:
    id: str
    completed_at: datetime
    expires_at: datetime | None = None


NOW = datetime(2026, 6, 15, 12, 0, tzinfo=timezone.utc)


def days_ago(days: float) -> datetime:
    return NOW - timedelta(days=days)


def test_retention_keeps_the_last_n_and_the_newest_of_each_day():
    backups = [FakeBackup("old", days_ago(10)), FakeBackup("d3", days_ago(3)),
               FakeBackup("d1-early", days_ago(1.2)), FakeBackup("d1-late", days_ago(1.1)),
               FakeBackup("today", days_ago(0.1)), FakeBackup("pinned", days_ago(30), expires_at=NOW + timedelta(1)),
               FakeBackup("lapsed", days_ago(0.05), expires_at=NOW - timedelta(hours=1))]
    assert retained_ids(backups, Policy(keep_last=1, keep_daily_days=5), NOW) == {"today", "d1-late", "d3", "pinned"}
    assert retained_ids(backups, Policy(keep_last=3, keep_daily_days=0), NOW) == {"today", "d1-late", "d1-early",
                                                                                    "pinned"}
    # A deleted tenant keeps nothing by count; its daily window still applies.
    assert retained_ids(backups, Policy(keep_last=7, keep_daily_days=2), NOW, tenant_deleted=True) == \
        {"today", "d1-late", "pinned"}


def test_backup_window_staggers_tenants_inside_it():
    window = BackupWindow.parse("01:00-05:00")
    offsets = {window.offset(f"clinic-{i}") for i in range(200)}
    assert len(offsets) > 190 and all(timedelta(0) <= o < timedelta(hours=4) for o in offsets)
    slot = window.latest_slot("clinic-1", NOW)
    assert slot <= NOW and NOW - slot < timedelta(days=1)
    assert timedelta(hours=1) <= slot - slot.replace(hour=0, minute=0, second=0) < timedelta(hours=5)
    overnight = BackupWindow.parse("22:00-02:00")
    assert overnight.length == timedelta(hours=4)
    assert BackupWindow.parse("00:00-24:00").length == timedelta(days=1)
    with pytest.raises(Exception, match="BACKUP_WINDOW"):
        BackupWindow.parse("late")


@pytest.mark.parametrize("name, value", [("BACKUP_ZSTD_LEVEL", "23"), ("BACKUP_ZSTD_THREADS", "0")])
def test_compression_settings_out_of_range_refuse_to_start(name, value):
    from control_plane.errors import ConfigurationError
    from control_plane.settings import Settings

    environ = {"CATALOG_DATABASE_URL": "postgresql://catalog", "REDIS_URL": "redis://redis",
               "TENANT_DB_ADMIN_URL": "postgresql://admin", "BACKUP_STORE_URL": "file:///backups",
               "KEYRING": "k1:" + "A" * 44, name: value}
    with pytest.raises(ConfigurationError, match=name):
        Settings.from_env(environ)
    assert Settings.from_env({**environ, name: "2"}) is not None
