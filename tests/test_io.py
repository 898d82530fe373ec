"""futuremask.io: atomic writes keep the permissions a plain open() would give."""

import os
import stat

import pytest

from futuremask.io import write_bytes_atomic, write_json_atomic


@pytest.mark.parametrize("umask", [0o022, 0o077])
def test_atomic_write_mode_follows_the_umask(tmp_path, umask):
    """mkstemp makes private 0600 files; a picture or a report must be readable as open() would leave it."""
    old = os.umask(umask)
    try:
        write_bytes_atomic(tmp_path / "a.png", b"x")
        write_json_atomic(tmp_path / "b.json", {"a": 1})
        with open(tmp_path / "plain", "w"):
            pass
    finally:
        os.umask(old)
    want = stat.S_IMODE((tmp_path / "plain").stat().st_mode)
    assert want == 0o666 & ~umask
    for name in ("a.png", "b.json"):
        assert stat.S_IMODE((tmp_path / name).stat().st_mode) == want
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.png", "b.json", "plain"]  # no temporary left
