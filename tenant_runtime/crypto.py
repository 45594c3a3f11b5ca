"""Keyrings: AES-256-GCM keys by id; the first encrypts, all decrypt (rotation). And the contexts that bind
each secret to its row.

Shared: the control plane seals role passwords with its KEYRING, tenant applications open them here.
"""
from __future__ import annotations

import base64
import binascii
import os
import secrets

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from tenant_runtime.errors import ConfigurationError, DecryptionError

_FORMAT = "v1"


class Keyring:
    """Encrypts small secrets (role passwords, admin URLs) as `v1.<key id>.<base64url(nonce|ciphertext)>`.

    `context` is bound as associated data, so a ciphertext moved to another row or purpose fails to decrypt.
    `setting` names the variable the keys came from (KEYRING...) in error messages.
    """

    def __init__(self, keys: dict[str, bytes], current: str, setting: str = "KEYRING") -> None:
        self._keys = keys
        self.current_key_id = current
        self.setting = setting

    @classmethod
    def parse(cls, spec: str, setting: str = "KEYRING") -> "Keyring":
        keys: dict[str, bytes] = {}
        order: list[str] = []
        for position, entry in enumerate(filter(None, (part.strip() for part in spec.split(","))), start=1):
            key_id, sep, encoded = entry.partition(":")
            if not sep or not key_id or "." in key_id:
                raise ConfigurationError(f"{setting} entry {position} must look like id:base64key")
            try:
                key = base64.b64decode(encoded, validate=True)
            except (binascii.Error, ValueError) as exc:
                raise ConfigurationError(f"{setting} key {key_id!r} is not valid base64") from exc
            if len(key) != 32:
                raise ConfigurationError(f"{setting} key {key_id!r} must be 32 bytes (AES-256), got {len(key)}")
            if key_id in keys:
                raise ConfigurationError(f"{setting} key id {key_id!r} appears twice")
            keys[key_id] = key
            order.append(key_id)
        if not order:
            raise ConfigurationError(f"{setting} holds no key")
        return cls(keys, order[0], setting)

    @staticmethod
    def generate_spec(key_id: str = "k1") -> str:
        return f"{key_id}:{base64.b64encode(os.urandom(32)).decode()}"

    def key(self, key_id: str) -> bytes:
        try:
            return self._keys[key_id]
        except KeyError:
            raise DecryptionError(f"key {key_id!r} is not in the {self.setting}") from None

    @property
    def key_ids(self) -> tuple[str, ...]:
        return tuple(self._keys)

    @property
    def current_key(self) -> bytes:
        return self._keys[self.current_key_id]

    def encrypt(self, plaintext: str, context: str) -> str:
        nonce = os.urandom(12)
        sealed = AESGCM(self.current_key).encrypt(nonce, plaintext.encode(), context.encode())
        return f"{_FORMAT}.{self.current_key_id}.{base64.urlsafe_b64encode(nonce + sealed).decode()}"

    def decrypt(self, token: str, context: str) -> str:
        try:
            fmt, key_id, encoded = token.split(".", 2)
            raw = base64.urlsafe_b64decode(encoded)
        except (ValueError, binascii.Error) as exc:
            raise DecryptionError("malformed encrypted value") from exc
        if fmt != _FORMAT:
            raise DecryptionError(f"unknown encryption format {fmt!r}")
        try:
            return AESGCM(self.key(key_id)).decrypt(raw[:12], raw[12:], context.encode()).decode()
        except InvalidTag as exc:
            raise DecryptionError(f"encrypted value failed authentication under key {key_id!r}") from exc

    @staticmethod
    def key_id_of(token: str) -> str:
        return token.split(".", 2)[1]

    def rewrap(self, token: str, context: str) -> str:
        """The same secret encrypted under the current key (no-op when it already is)."""
        if self.key_id_of(token) == self.current_key_id:
            return token
        return self.encrypt(self.decrypt(token, context), context)


def random_password(nbytes: int = 24) -> str:
    return secrets.token_urlsafe(nbytes)


def role_secret_context(tenant_id: str) -> str:
    """Associated data of a tenant role's encrypted password (catalog column tenants.role_password_encrypted)."""
    return f"tenant-role-password:{tenant_id}"
