"""Atomic file writes: readers see the old file or the new one, never a part (stdlib only)."""

from __future__ import annotations

import os
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import BinaryIO


@contextmanager
def atomic_writer(path: str | Path) -> Iterator[BinaryIO]:
    """Yield a binary file in ``path``'s folder; on success it is fsynced and renamed onto ``path``
    (``os.replace``), on any error or interrupt it is deleted and ``path`` is left untouched.

    The file gets the mode a plain ``open(path, "wb")`` of a new file would give (``0o666`` less
    the umask, e.g. 0o644), not ``mkstemp``'s private 0o600."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            os.chmod(tmp, 0o666 & ~_umask())
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_pair(data_path: Path, data: bytes, commit_path: Path, commit: bytes) -> None:
    """Write a data file, then the file that commits it (a JSON naming the data's bytes), each
    atomically; on a failure in between, put the previous data file back, so the old pair stays
    consistent (or, with none before, no orphan data file is left)."""
    old = data_path.read_bytes() if data_path.is_file() else None
    with atomic_writer(data_path) as f:
        f.write(data)
    try:
        with atomic_writer(commit_path) as f:
            f.write(commit)
    except BaseException:
        if old is None:
            data_path.unlink(missing_ok=True)
        else:
            with atomic_writer(data_path) as f:
                f.write(old)
        raise


def _umask() -> int:
    """The process's umask: read from /proc on Linux (no change, thread safe), elsewhere set and
    restored at once."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask
