"""The KEYRING: defined in tenant_runtime.crypto (tenant applications decrypt role passwords with it)."""
from tenant_runtime.crypto import Keyring, random_password  # noqa: F401 (re-exported)
