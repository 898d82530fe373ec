"""Files that readers can trust: atomic writes, JSON reads with clear errors, writable folders, run locks.

Every file futuremask writes goes through a temporary file in the target folder and a rename, so a
reader (or a resumed run) never sees half a file. Problems are ``ValueError``/``FileNotFoundError``
whose message names the file and the fix, so the CLI turns them into one line and exit status 2.
"""

from __future__ import annotations

import errno
import json
import os
import tempfile
from pathlib import Path
from typing import Any


def write_bytes_atomic(path: str | os.PathLike, data: bytes) -> None:
    """Write ``data`` to ``path`` through a temporary file in the same folder, fsync, then a rename."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as handle:
            os.fchmod(handle.fileno(), 0o666 & ~_umask())  # the mode open() gives, not mkstemp's private 0600
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def write_text_atomic(path: str | os.PathLike, text: str) -> None:
    """Write ``text`` (UTF-8) to ``path`` atomically (see :func:`write_bytes_atomic`)."""
    write_bytes_atomic(path, text.encode("utf-8"))


def write_json_atomic(path: str | os.PathLike, payload: Any, indent: int | None = 4) -> None:
    """Write ``payload`` as JSON (UTF-8, non-ASCII kept) to ``path`` atomically."""
    write_text_atomic(path, json.dumps(payload, ensure_ascii=False, indent=indent))


def read_json(path: str | os.PathLike, expect: type | None = None, what: str = "JSON file") -> Any:
    """Parse the JSON file ``path``; ``expect`` (``dict`` or ``list``) checks the top-level type.

    Raises:
        FileNotFoundError: no such file. ValueError: unreadable, malformed, or not of type ``expect``.
    """
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise FileNotFoundError(f"{path}: no such {what}") from None
    except (OSError, UnicodeDecodeError) as err:
        raise ValueError(f"{path}: cannot read the {what} ({err})") from err
    try:
        payload = json.loads(text)
    except json.JSONDecodeError as err:
        raise ValueError(f"{path}: malformed JSON in the {what} ({err}); fix or delete the file") from err
    if expect is not None and not isinstance(payload, expect):
        shape = {dict: "a JSON object", list: "a JSON list"}.get(expect, expect.__name__)
        raise ValueError(f"{path}: the {what} should hold {shape}, found {type(payload).__name__}; "
                         "fix or delete the file")
    return payload


def check_writable(folder: str | os.PathLike, flag: str = "--output-dir") -> Path:
    """Make sure files can be created in ``folder`` (created later if absent); creates nothing.

    Probes the folder, or its nearest existing ancestor, with a temporary file that is removed at once.

    Raises:
        ValueError: naming ``flag``, when a part of the path is a file or the folder is not writable.
    """
    folder = Path(folder)
    probe_dir = folder
    while not probe_dir.exists() and probe_dir != probe_dir.parent:
        probe_dir = probe_dir.parent
    if not probe_dir.is_dir():
        raise ValueError(f"{flag} {folder}: {probe_dir} is a file, not a folder; choose another {flag}")
    try:
        fd, tmp = tempfile.mkstemp(prefix=".futuremask-probe-", dir=probe_dir)
    except OSError as err:
        raise ValueError(f"{flag} {folder}: cannot write in {probe_dir} ({err.strerror}); "
                         f"choose a writable {flag}") from err
    os.close(fd)
    os.unlink(tmp)
    return folder


class FolderLocked(RuntimeError):
    """Another process holds the lock of a folder."""


class FolderLock:
    """An exclusive, non-blocking lock on a folder (``fcntl.flock``), as a context manager.

    The lock file is ``<parent>/.<name>.lock``, beside the folder rather than in it, so the folder can
    be replaced as a whole while the lock is held; it is removed when the block ends. The lock is
    released when the process dies too, so a crash never leaves a stale lock (only an unlocked file).
    Entering raises :class:`FolderLocked` when another process holds it.
    """

    def __init__(self, folder: str | os.PathLike, what: str = "folder", tag: str = "") -> None:
        self.folder = Path(folder)
        self.what = what
        self.tag = tag  # e.g. ".rank1": processes of one sharded launch lock apart
        self._fd: int | None = None

    @property
    def path(self) -> Path:
        return self.folder.parent / f".{self.folder.name}{self.tag}.lock"

    def __enter__(self) -> FolderLock:
        import fcntl

        self.folder.parent.mkdir(parents=True, exist_ok=True)
        while True:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError as err:
                os.close(fd)
                if err.errno in (errno.EAGAIN, errno.EACCES):
                    raise FolderLocked(
                        f"{self.folder}: another futuremask process is writing this {self.what}; wait for it "
                        "to finish, or pass another --output-dir"
                    ) from None
                raise
            try:  # the holder before us may have removed the file after we opened it: lock the live one
                if os.fstat(fd).st_ino == os.stat(self.path).st_ino:
                    break
            except FileNotFoundError:
                pass
            os.close(fd)
        self._fd = fd
        return self

    def __exit__(self, *exc) -> None:
        if self._fd is not None:
            self.path.unlink(missing_ok=True)  # while still locked: nothing is left behind
            os.close(self._fd)
            self._fd = None


__all__ = ["FolderLock", "FolderLocked", "check_writable", "read_json", "write_bytes_atomic", "write_json_atomic",
           "write_text_atomic"]
