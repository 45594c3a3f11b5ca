"""The control plane's keyrings: KEYRING for its own secrets, RUNTIME_KEYRING for tenant role passwords.

`Keyring` itself lives in tenant_runtime.crypto (tenant applications open role passwords with it).
"""
from __future__ import annotations

from tenant_runtime.crypto import Keyring, random_password, role_secret_context  # noqa: F401 (re-exported)
from tenant_runtime.errors import ConfigurationError

_ROLE_SECRET = role_secret_context("")  # the prefix every role password's context starts with


class ControlPlaneKeyring:
    """Seals tenant role passwords under RUNTIME_KEYRING and everything else under KEYRING.

    Tenant applications hold RUNTIME_KEYRING only, so what they can open is role passwords and nothing
    else: not server admin URLs, backup keys or one-time secrets. The rule is applied here, from each
    secret's context, so callers keep calling encrypt/decrypt/rewrap. Opening picks the ring by the
    value's key id (the two rings' ids must differ): role passwords sealed under KEYRING before
    RUNTIME_KEYRING was set still open, and `tenantctl keys rotate` re-seals them under RUNTIME_KEYRING.
    Without RUNTIME_KEYRING, KEYRING seals everything (earlier releases' behaviour).
    """

    def __init__(self, main: Keyring, runtime: Keyring | None = None) -> None:
        if runtime is not None:
            shared = sorted(set(main.key_ids) & set(runtime.key_ids))
            if shared:
                raise ConfigurationError(f"KEYRING and RUNTIME_KEYRING share key ids {shared}: give them distinct ids")
        self.main = main
        self.runtime = runtime or main

    @classmethod
    def parse(cls, keyring: str, runtime_keyring: str | None = None) -> "ControlPlaneKeyring":
        return cls(Keyring.parse(keyring), Keyring.parse(runtime_keyring, "RUNTIME_KEYRING") if runtime_keyring else None)

    # KEYRING's current key also wraps tenant backup keys (services.backup_keys).
    @property
    def current_key_id(self) -> str:
        return self.main.current_key_id

    @property
    def current_key(self) -> bytes:
        return self.main.current_key

    def key(self, key_id: str) -> bytes:
        return self.main.key(key_id)

    key_id_of = staticmethod(Keyring.key_id_of)

    def sealing(self, context: str) -> Keyring:
        """The ring that seals a secret of this context now."""
        return self.runtime if context.startswith(_ROLE_SECRET) else self.main

    def encrypt(self, plaintext: str, context: str) -> str:
        return self.sealing(context).encrypt(plaintext, context)

    def decrypt(self, token: str, context: str) -> str:
        key_id = token.split(".", 2)[1] if token.count(".") >= 2 else ""
        ring = self.runtime if key_id in self.runtime.key_ids else self.main
        return ring.decrypt(token, context)

    def rewrap(self, token: str, context: str) -> str:
        """The same secret sealed under the current key of the ring its context belongs to (no-op if it is)."""
        target = self.sealing(context)
        if Keyring.key_id_of(token) == target.current_key_id:
            return token
        return target.encrypt(self.decrypt(token, context), context)
