"""Crash-safe file writes: the one way this project replaces a file's contents."""

from __future__ import annotations

import os
import tempfile
from collections.abc import Iterable
from pathlib import Path

from consortium.core.errors import FileWriteError


def atomic_write(
    path: Path, data: bytes | Iterable[bytes], mode: int = 0o644, *, tmp_prefix: str = ""
) -> None:
    """Write `data` (bytes, or chunks streamed from an iterable) via a uniquely named temp file
    in the same folder, fsync and rename, then fsync the folder: readers see the old file or the
    whole new one, never half of it. If producing the chunks fails, nothing is replaced; if the
    disk does (full, read-only, no permission), the temp file is removed and FileWriteError
    says why in one line."""
    path = Path(path)
    try:
        _replace(path, data, mode, tmp_prefix or f".{path.name}.tmp-")
        dir_fd = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)
    except OSError as exc:
        raise FileWriteError(f"cannot write {path}: {exc.strerror or exc}") from exc


def _replace(path: Path, data: bytes | Iterable[bytes], mode: int, prefix: str) -> None:
    fd, tmp = tempfile.mkstemp(prefix=prefix, dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as fh:
            for chunk in [data] if isinstance(data, bytes | bytearray) else data:
                fh.write(chunk)
            fh.flush()
            os.fsync(fh.fileno())
        os.chmod(tmp, mode)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
