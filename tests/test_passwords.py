"""Generated admin passwords hashed ahead (pure unit tests: argon2id, threads and a fork)."""
from __future__ import annotations

import os
import time

from control_plane.adapters.passwords import _PreparedPasswords, verify_password


def wait_until_ready(prepared: _PreparedPasswords, count: int) -> None:
    deadline = time.monotonic() + 30
    while len(prepared._ready) < count:
        assert time.monotonic() < deadline, "the background thread prepared nothing in 30 s"
        time.sleep(0.01)


def test_prepared_passwords_match_their_hashes_and_are_never_reused():
    prepared = _PreparedPasswords(length=12, ahead=3)
    taken = [prepared.take()]  # made now (nothing ready yet); starts the background thread
    wait_until_ready(prepared, 3)
    taken += [prepared.take() for _ in range(5)]  # three ready, then made now or meanwhile
    assert len({password for password, _ in taken}) == len(taken)
    assert all(len(password) >= 12 and verify_password(hashed, password) for password, hashed in taken)


def test_a_forked_child_never_hands_out_a_password_its_parent_prepared():
    prepared = _PreparedPasswords(length=12, ahead=2)
    prepared.take()
    wait_until_ready(prepared, 2)
    reader, writer = os.pipe()
    child = os.fork()
    if child == 0:  # the child: one password, written to the pipe, then gone without running pytest's exit
        try:
            os.write(writer, prepared.take()[0].encode())
        finally:
            os._exit(0)
    os.close(writer)
    from_child = os.read(reader, 256).decode()
    os.close(reader)
    assert os.waitpid(child, 0)[1] == 0
    parent_next = [prepared.take()[0] for _ in range(2)]  # the two the parent had prepared before the fork
    assert from_child and from_child not in parent_next
