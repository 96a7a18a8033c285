"""A full disk on demand: a small tmpfs, and a file that takes every free byte of it until removed.

Used by the disk-full tests of the metric files and the job store, and by the reliability
scenario that runs a whole cluster on one. Mounting needs root (CI and the dev machines run
as root); ``small_tmpfs`` raises ``CannotMount`` elsewhere, which the tests turn into a skip.
"""

from __future__ import annotations

import contextlib
import os
import subprocess
import threading
from collections.abc import Iterator
from pathlib import Path


class CannotMount(OSError):
    """This machine does not let the test mount a tmpfs (not root, or no mount in the sandbox)."""


@contextlib.contextmanager
def small_tmpfs(path: Path, *, size: str = "2m") -> Iterator[Path]:
    """A tmpfs of ``size`` on ``path`` (made if missing), unmounted on the way out, however it ends."""
    path.mkdir(parents=True, exist_ok=True)
    done = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)], capture_output=True, text=True, check=False
    )
    if done.returncode != 0:
        raise CannotMount(f"cannot mount a tmpfs on {path}: {done.stderr.strip() or done.returncode}")
    try:
        yield path
    finally:
        # NOTE: lazy, so a process of the test still holding a file there cannot keep it mounted.
        subprocess.run(["umount", "-l", str(path)], capture_output=True, check=False)


class Filler:
    """A file that takes all the free space of the filesystem of ``directory``, and gives it back."""

    def __init__(self, directory: Path) -> None:
        self.path = directory / "filler"

    def fill(self) -> int:
        """Write zeros until the disk is full; returns how many bytes the file took."""
        fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
        written = 0
        try:
            for chunk in (1 << 16, 4096, 512):
                with contextlib.suppress(OSError):
                    while True:
                        written += os.write(fd, b"\0" * chunk)
        finally:
            os.close(fd)
        return written

    def free(self) -> None:
        self.path.unlink(missing_ok=True)

    @contextlib.contextmanager
    def kept_full(self, *, every_s: float = 0.02) -> Iterator[int]:
        """The disk full until the block ends, as under a program that keeps writing: space freed
        meanwhile (a checkpointed WAL, a deleted file) is taken again within ``every_s``. Yields the
        bytes the first fill took; frees them all at the end."""
        stop = threading.Event()
        first = self.fill()

        def keep() -> None:
            while not stop.wait(every_s):
                self.fill()

        keeper = threading.Thread(target=keep, name="disk-filler", daemon=True)
        keeper.start()
        try:
            yield first
        finally:
            stop.set()
            keeper.join(timeout=10)
            self.free()


def free_bytes(directory: Path) -> int:
    stats = os.statvfs(directory)
    return stats.f_bavail * stats.f_frsize
