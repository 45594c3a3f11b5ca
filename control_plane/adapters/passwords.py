"""Password hashing for tenant application users (argon2id), and generated passwords hashed ahead."""
from __future__ import annotations

import os
import threading
from collections import deque

from argon2 import PasswordHasher

from tenant_runtime.crypto import random_password

# OWASP's argon2id configuration (19 MiB, 2 passes, 1 lane): strong, and ~25 ms instead of the
# library default's ~140 ms, which would dominate a tenant's provisioning time.
_hasher = PasswordHasher(time_cost=2, memory_cost=19456, parallelism=1)


def hash_password(password: str) -> str:
    return _hasher.hash(password)


def verify_password(password_hash: str, password: str) -> bool:
    try:
        return _hasher.verify(password_hash, password)
    except Exception:  # argon2 raises several mismatch/invalid-hash errors; all mean "no"
        return False


class _PreparedPasswords:
    """Generated passwords with their hashes, made ahead by a background thread of this process.

    A tenant's generated admin password is then no cost to its provisioning, which otherwise spends ~30 ms,
    more than the rest of a warm provisioning, on the hash (slow by design). Per process: a forked child
    never hands out a password its parent may hand out too.
    """

    def __init__(self, length: int, ahead: int) -> None:
        self._length, self._ahead = length, ahead
        self._ready: deque[tuple[str, str]] = deque()
        self._wanted = threading.Event()
        self._lock = threading.Lock()
        self._pid: int | None = None

    def take(self) -> tuple[str, str]:
        """(password, its argon2id hash), prepared if one is ready, else made now."""
        with self._lock:
            if self._pid != os.getpid():  # first use in this process (or a forked child): start its maker
                self._pid = os.getpid()
                self._ready.clear()
                threading.Thread(target=self._make, name="prepared-passwords", daemon=True).start()
        self._wanted.set()
        try:
            return self._ready.popleft()
        except IndexError:
            password = random_password(self._length)
            return password, hash_password(password)

    def _make(self) -> None:
        while True:
            while len(self._ready) < self._ahead:
                password = random_password(self._length)
                self._ready.append((password, hash_password(password)))
            self._wanted.wait()
            self._wanted.clear()


_ADMIN_PASSWORDS = _PreparedPasswords(length=12, ahead=4)


def generated_password() -> tuple[str, str]:
    """A new random admin password and its hash (see _PreparedPasswords)."""
    return _ADMIN_PASSWORDS.take()
