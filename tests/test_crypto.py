"""The KEYRING: encryption bound to its context, rotation, refusal of tampering (pure unit tests)."""
from __future__ import annotations

import pytest

from control_plane.adapters.crypto import Keyring
from control_plane.errors import ConfigurationError, DecryptionError


def test_round_trip_and_rotation():
    old = Keyring.generate_spec("old")
    sealed = Keyring.parse(old).encrypt("s3cret", "ctx:a")
    assert "s3cret" not in sealed and Keyring.key_id_of(sealed) == "old"
    rotated = Keyring.parse(f"{Keyring.generate_spec('new')},{old}")
    assert rotated.decrypt(sealed, "ctx:a") == "s3cret"
    rewrapped = rotated.rewrap(sealed, "ctx:a")
    assert Keyring.key_id_of(rewrapped) == "new" and rotated.decrypt(rewrapped, "ctx:a") == "s3cret"


def test_wrong_context_tampering_and_unknown_key_are_refused():
    keyring = Keyring.parse(Keyring.generate_spec())
    sealed = keyring.encrypt("s3cret", "ctx:a")
    with pytest.raises(DecryptionError):
        keyring.decrypt(sealed, "ctx:b")
    tampered = sealed[:-4] + ("AAAA" if not sealed.endswith("AAAA") else "BBBB")
    with pytest.raises(DecryptionError):
        keyring.decrypt(tampered, "ctx:a")
    with pytest.raises(DecryptionError, match="not in the KEYRING"):
        Keyring.parse(Keyring.generate_spec("other")).decrypt(sealed, "ctx:a")


@pytest.mark.parametrize("spec", ["", "nokey", "k1:not-base64!", "k1:c2hvcnQ=", "a:" + "A" * 44 + ",a:" + "A" * 44])
def test_bad_keyring_is_a_configuration_error(spec):
    with pytest.raises(ConfigurationError) as error:
        Keyring.parse(spec)
    assert "KEYRING" in str(error.value)
