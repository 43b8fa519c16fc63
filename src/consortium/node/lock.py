"""One writer per node folder: an exclusive `flock` on DIR/node.lock, held while a Node lives.

Two node processes on one folder would each sign and append from their own view of the ledger,
which is how an honest member ends up cosigning two heads of one size. Readers (`audit`,
`status`) never take the lock: SQLite's WAL lets them read while the node writes.

flock rather than a pid file: the kernel drops it when the holder dies, however it dies, so a
crash never leaves a stale lock. It belongs to the open file description, so a second open in the
same process conflicts too. The holder writes its pid into the file only to name itself in the
error the next writer gets.
"""

from __future__ import annotations

import fcntl
import os
from pathlib import Path

from consortium.core.errors import FolderLocked
from consortium.core.layout import LOCK_FILE


class FolderLock:
    """Held from `acquire` until `release` (or until the process exits)."""

    def __init__(self, fd: int, path: Path) -> None:
        self._fd: int | None = fd
        self.path = path

    @classmethod
    def acquire(cls, directory: Path) -> FolderLock:
        """Lock `directory` for this process, or raise FolderLocked naming the holder's pid."""
        path = Path(directory) / LOCK_FILE
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 32, 0).decode("ascii", "replace").strip() or "unknown"
            os.close(fd)
            raise FolderLocked(
                f"{directory} is in use by another node process (pid {holder}): stop it first; "
                "only one node may write a folder"
            ) from None
        except BaseException:
            os.close(fd)
            raise
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        return cls(fd, path)

    @property
    def held(self) -> bool:
        return self._fd is not None

    def release(self) -> None:
        """Unlock (the pid stays in the file: harmless, the next holder overwrites it)."""
        if self._fd is not None:
            os.close(self._fd)  # closing the only descriptor drops the flock
            self._fd = None
