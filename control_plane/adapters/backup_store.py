"""Backup stores behind one interface: S3 (boto3's transfer manager) and local directories (`file://`).

Keys are relative to the store's prefix (`<tenant_id>/<backup_id>/<object>`). Writes stream from a
readable binary file and never hold an object whole; a half-written object is never visible under
its final name (S3: multipart upload completed or aborted; files: temporary name, fsync, rename).
"""
from __future__ import annotations

import hashlib
import io
import logging
import os
import shutil
import uuid
from pathlib import Path
from typing import BinaryIO, Iterator, Protocol
from urllib.parse import unquote, urlparse

from control_plane.backup_errors import BackupStoreError
from control_plane.errors import ConfigurationError

log = logging.getLogger(__name__)

_COPY_BUFFER = 1 << 20
_UPLOAD_PARTS_IN_MEMORY = 2
_IO_QUEUE = 16
_TMP_MARK = ".tmp-"


class BackupStore(Protocol):
    url: str

    def put(self, key: str, source: BinaryIO) -> None: ...
    def put_bytes(self, key: str, data: bytes) -> None: ...
    def get_bytes(self, key: str, max_bytes: int = 1 << 20) -> bytes: ...
    def fetch(self, key: str, destination: BinaryIO) -> None: ...
    def open(self, key: str) -> BinaryIO: ...
    def digest(self, key: str) -> tuple[int, str]: ...
    def list(self, prefix: str) -> list[str]: ...
    def delete_prefix(self, prefix: str) -> int: ...
    def ping(self) -> None: ...
    def copy_from(self, source: "BackupStore", key: str) -> str: ...


def _sha256_of(stream: BinaryIO) -> tuple[int, str]:
    digest = hashlib.sha256()
    size = 0
    while block := stream.read(_COPY_BUFFER):
        digest.update(block)
        size += len(block)
    return size, digest.hexdigest()


def _stream_copy(source: BackupStore, target: BackupStore, key: str) -> str:
    stream = source.open(key)
    try:
        target.put(key, stream)
    finally:
        stream.close()
    return "streamed"


class FileBackupStore:
    """A directory (`file:///path`): for one host, a mounted volume, or tests."""

    def __init__(self, url: str) -> None:
        parsed = urlparse(url)
        if parsed.scheme != "file" or parsed.netloc not in ("", "localhost") or not parsed.path:
            raise ConfigurationError("BACKUP_STORE_URL: a file store URL looks like file:///absolute/path")
        self.url = url.rstrip("/")
        self.root = Path(unquote(parsed.path))

    def _path(self, key: str) -> Path:
        path = (self.root / key).resolve()
        root = self.root.resolve()
        if root != path and root not in path.parents:
            raise ValueError(f"object key {key!r} escapes the store")
        return path

    def put(self, key: str, source: BinaryIO) -> None:
        path = self._path(key)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f"{path.name}{_TMP_MARK}{uuid.uuid4().hex[:12]}")
        try:
            with open(tmp, "wb") as out:
                shutil.copyfileobj(source, out, _COPY_BUFFER)
                out.flush()
                os.fsync(out.fileno())
            os.replace(tmp, path)
            # The rename is durable only once the directory entry is.
            fd = os.open(path.parent, os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
        except OSError as exc:
            raise BackupStoreError(f"backup store: writing {key} failed: {exc.strerror}") from exc
        finally:
            tmp.unlink(missing_ok=True)

    def put_bytes(self, key: str, data: bytes) -> None:
        self.put(key, io.BytesIO(data))

    def open(self, key: str) -> BinaryIO:
        try:
            return open(self._path(key), "rb")
        except FileNotFoundError as exc:
            raise BackupStoreError(f"backup store: {key} does not exist") from exc
        except OSError as exc:
            raise BackupStoreError(f"backup store: reading {key} failed: {exc.strerror}") from exc

    def get_bytes(self, key: str, max_bytes: int = 1 << 20) -> bytes:
        with self.open(key) as stream:
            data = stream.read(max_bytes + 1)
        if len(data) > max_bytes:
            raise BackupStoreError(f"backup store: {key} is larger than expected")
        return data

    def fetch(self, key: str, destination: BinaryIO) -> None:
        with self.open(key) as stream:
            shutil.copyfileobj(stream, destination, _COPY_BUFFER)

    def digest(self, key: str) -> tuple[int, str]:
        with self.open(key) as stream:
            return _sha256_of(stream)

    def list(self, prefix: str) -> list[str]:
        base = self._path(prefix) if prefix else self.root
        if not base.is_dir():
            return []
        root = self.root.resolve()
        return sorted(str(p.relative_to(root)) for p in base.rglob("*") if p.is_file())

    def delete_prefix(self, prefix: str) -> int:
        """Delete every object under `prefix` (a folder key ending in '/'), leftovers of failed writes included."""
        if not prefix.endswith("/"):
            raise ValueError("delete_prefix takes a folder key ending in '/'")
        base = self._path(prefix)
        if not base.is_dir():
            return 0
        count = sum(1 for p in base.rglob("*") if p.is_file())
        shutil.rmtree(base)
        # Empty parents (the tenant's folder) go too, up to the store's root.
        parent = base.parent
        root = self.root.resolve()
        while parent != root and root in parent.parents:
            try:
                parent.rmdir()
            except OSError:
                break
            parent = parent.parent
        return count

    def copy_from(self, source: BackupStore, key: str) -> str:
        """Copy `key` from another store (streamed: never whole in memory). Returns how: "streamed"."""
        return _stream_copy(source, self, key)

    def ping(self) -> None:
        probe = self.root
        while not probe.exists() and probe != probe.parent:
            probe = probe.parent
        if not os.access(probe, os.W_OK | os.X_OK):
            raise BackupStoreError(f"backup store: {probe} is not writable")


class S3BackupStore:
    """`s3://bucket/prefix`: boto3's credential chain, `S3_ENDPOINT_URL` for MinIO-likes, TLS verified.

    The client is created on first use, in the process that uses it (RQ work horses fork).
    Uploads stream through the transfer manager: multipart, `part_size` bytes per part, at most
    `concurrency` parts in memory.
    """

    def __init__(self, url: str, endpoint_url: str | None = None, server_side_encryption: str | None = None,
                 sse_kms_key_id: str | None = None, part_size: int = 8 << 20, concurrency: int = 4) -> None:
        parsed = urlparse(url)
        if parsed.scheme != "s3" or not parsed.netloc:
            raise ConfigurationError("BACKUP_STORE_URL: an S3 store URL looks like s3://bucket/prefix")
        self.url = url.rstrip("/")
        self.bucket = parsed.netloc
        self.prefix = parsed.path.strip("/")
        self._endpoint_url = endpoint_url
        self._extra: dict[str, str] = {}
        if server_side_encryption:
            self._extra["ServerSideEncryption"] = server_side_encryption
        if sse_kms_key_id:
            self._extra["SSEKMSKeyId"] = sse_kms_key_id
        self._part_size = part_size
        self._concurrency = concurrency
        self._client = None

    @property
    def client(self):
        if self._client is None:
            import boto3
            from botocore.config import Config

            # Path-style addressing for custom endpoints (MinIO and the like resolve no bucket subdomains).
            config = Config(retries={"mode": "standard", "max_attempts": 5},
                            s3={"addressing_style": "path" if self._endpoint_url else "auto"})
            self._client = boto3.session.Session().client("s3", endpoint_url=self._endpoint_url, config=config)
        return self._client

    def _key(self, key: str) -> str:
        return f"{self.prefix}/{key}" if self.prefix else key

    def _transfer_config(self):
        from boto3.s3.transfer import TransferConfig

        # Memory stays flat and small whatever the object's size (scripts/bench backup measures it):
        # - an upload from a stream holds each part in memory until it is sent: at most
        #   _UPLOAD_PARTS_IN_MEMORY parts, plus the one the reading thread holds (24 MB at 8 MB parts;
        #   with 4, a backup job's peak grew by 20 MB from a 5 MB object to a 32 MB one);
        # - a download queues received 256 KB blocks for the writing thread: at most _IO_QUEUE of them
        #   (boto3's default of 100 let a drill's peak grow by 15 MB when the disk lags the network).
        config = TransferConfig(multipart_threshold=self._part_size, multipart_chunksize=self._part_size,
                                max_concurrency=self._concurrency, use_threads=True, max_io_queue=_IO_QUEUE)
        config.max_in_memory_upload_chunks = min(self._concurrency, _UPLOAD_PARTS_IN_MEMORY)
        config.max_in_memory_download_chunks = self._concurrency
        return config

    def _fail(self, action: str, key: str, exc: Exception) -> BackupStoreError:
        response = getattr(exc, "response", None) or {}
        reason = response.get("Error", {}).get("Code") or type(exc).__name__
        return BackupStoreError(f"backup store: {action} s3://{self.bucket}/{self._key(key)} failed ({reason})")

    def put(self, key: str, source: BinaryIO) -> None:
        from botocore.exceptions import BotoCoreError, ClientError
        from boto3.exceptions import S3UploadFailedError

        try:
            # On any error the transfer manager aborts the multipart upload: no partial object appears.
            self.client.upload_fileobj(source, self.bucket, self._key(key), ExtraArgs=self._extra or None,
                                       Config=self._transfer_config())
        except (BotoCoreError, ClientError, S3UploadFailedError) as exc:
            raise self._fail("uploading", key, exc) from exc

    def put_bytes(self, key: str, data: bytes) -> None:
        from botocore.exceptions import BotoCoreError, ClientError

        try:
            self.client.put_object(Bucket=self.bucket, Key=self._key(key), Body=data, **self._extra)
        except (BotoCoreError, ClientError) as exc:
            raise self._fail("writing", key, exc) from exc

    def open(self, key: str) -> BinaryIO:
        from botocore.exceptions import BotoCoreError, ClientError

        try:
            return self.client.get_object(Bucket=self.bucket, Key=self._key(key))["Body"]
        except (BotoCoreError, ClientError) as exc:
            raise self._fail("reading", key, exc) from exc

    def get_bytes(self, key: str, max_bytes: int = 1 << 20) -> bytes:
        body = self.open(key)
        try:
            data = body.read(max_bytes + 1)
        finally:
            body.close()
        if len(data) > max_bytes:
            raise BackupStoreError(f"backup store: {key} is larger than expected")
        return data

    def fetch(self, key: str, destination: BinaryIO) -> None:
        """Download with the transfer manager (parallel ranged GETs) into a seekable file."""
        from botocore.exceptions import BotoCoreError, ClientError

        try:
            self.client.download_fileobj(self.bucket, self._key(key), destination, Config=self._transfer_config())
        except (BotoCoreError, ClientError) as exc:
            raise self._fail("downloading", key, exc) from exc

    def digest(self, key: str) -> tuple[int, str]:
        body = self.open(key)
        try:
            return _sha256_of(body)
        finally:
            body.close()

    def _iter_keys(self, prefix: str) -> Iterator[str]:
        paginator = self.client.get_paginator("list_objects_v2")
        full = self._key(prefix)
        for page in paginator.paginate(Bucket=self.bucket, Prefix=full):
            for item in page.get("Contents", []):
                yield item["Key"]

    def list(self, prefix: str) -> list[str]:
        from botocore.exceptions import BotoCoreError, ClientError

        strip = len(self.prefix) + 1 if self.prefix else 0
        try:
            return sorted(key[strip:] for key in self._iter_keys(prefix))
        except (BotoCoreError, ClientError) as exc:
            raise self._fail("listing", prefix, exc) from exc

    def delete_prefix(self, prefix: str) -> int:
        """Delete every object under `prefix`, and abort multipart uploads a killed job left there."""
        from botocore.exceptions import BotoCoreError, ClientError

        if not prefix.endswith("/"):
            raise ValueError("delete_prefix takes a folder key ending in '/'")
        full = self._key(prefix)
        deleted = 0
        try:
            keys = list(self._iter_keys(prefix))
            for start in range(0, len(keys), 1000):
                batch = [{"Key": key} for key in keys[start:start + 1000]]
                answer = self.client.delete_objects(Bucket=self.bucket, Delete={"Objects": batch, "Quiet": True})
                if answer.get("Errors"):
                    first = answer["Errors"][0]
                    raise BackupStoreError(f"backup store: deleting {first.get('Key')} failed ({first.get('Code')})")
                deleted += len(batch)
            uploads = self.client.list_multipart_uploads(Bucket=self.bucket, Prefix=full).get("Uploads", [])
            for upload in uploads:
                self.client.abort_multipart_upload(Bucket=self.bucket, Key=upload["Key"], UploadId=upload["UploadId"])
        except (BotoCoreError, ClientError) as exc:
            raise self._fail("deleting under", prefix, exc) from exc
        return deleted

    def copy_from(self, source: BackupStore, key: str) -> str:
        """Copy `key` from another store: server-side (the managed multipart copy, no bytes through us)
        when both are buckets of one S3 service, streamed otherwise. Returns "server-side" or "streamed"."""
        from botocore.exceptions import BotoCoreError, ClientError
        from boto3.exceptions import S3UploadFailedError

        if not isinstance(source, S3BackupStore) or source._endpoint_url != self._endpoint_url:
            return _stream_copy(source, self, key)
        try:
            self.client.copy({"Bucket": source.bucket, "Key": source._key(key)}, self.bucket, self._key(key),
                             ExtraArgs=self._extra or None, Config=self._transfer_config())
        except (BotoCoreError, ClientError, S3UploadFailedError) as exc:
            raise self._fail("copying to", key, exc) from exc
        return "server-side"

    def ping(self) -> None:
        from botocore.exceptions import BotoCoreError, ClientError

        try:
            self.client.head_bucket(Bucket=self.bucket)
        except (BotoCoreError, ClientError) as exc:
            raise self._fail("reaching", "", exc) from exc


def open_backup_store(url: str, *, endpoint_url: str | None = None, server_side_encryption: str | None = None,
                      sse_kms_key_id: str | None = None) -> BackupStore:
    scheme = urlparse(url).scheme
    if scheme == "file":
        return FileBackupStore(url)
    if scheme == "s3":
        return S3BackupStore(url, endpoint_url=endpoint_url, server_side_encryption=server_side_encryption,
                             sse_kms_key_id=sse_kms_key_id)
    raise ConfigurationError("BACKUP_STORE_URL must start with s3:// or file://")
