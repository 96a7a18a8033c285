"""The job store's disk: whether writes find room, and a SQLite WAL kept from taking all of it.

``write_transaction`` (``shared/store/engine.py``) reports each write's outcome to the engine's
``DiskSpace``; ``/readyz`` asks ``store_disk_full``. A full disk is SQLite's SQLITE_FULL (or a
-shm it could not grow), PostgreSQL's ``disk_full``, or an ``OSError`` ENOSPC: all of them are
store errors (``STORE_DOWN``), so the API answers 503 and a worker waits and tries again.
"""

from __future__ import annotations

import errno
import logging
import os
import sqlite3
import time
import weakref
from pathlib import Path

from sqlalchemy import Engine

log = logging.getLogger(__name__)

#: SQLite's codes for a full disk: SQLITE_FULL, and SQLITE_IOERR_SHMSIZE (its -shm could not grow).
_SQLITE_FULL = frozenset({13, 4874})
#: PostgreSQL's SQLSTATE ``disk_full``.
_PG_DISK_FULL = "53100"


def disk_full(exc: BaseException) -> bool:
    """Whether a store error (or the driver's error it wraps) says the database's disk is full."""
    cause = getattr(exc, "orig", None) or exc
    if isinstance(cause, OSError):
        return cause.errno in (errno.ENOSPC, errno.EDQUOT)
    return getattr(cause, "sqlite_errorcode", None) in _SQLITE_FULL or getattr(cause, "sqlstate", None) == _PG_DISK_FULL


def store_disk_full(engine: Engine) -> bool:
    """Whether the store's disk looks full, so that nothing can be written (``/readyz``)."""
    return disk_space(engine).full()


def disk_space(engine: Engine) -> DiskSpace:
    """This process's ``DiskSpace`` of ``engine``'s database."""
    found = _spaces.get(engine)
    if found is None:
        database = engine.url.database if engine.dialect.name == "sqlite" else None
        path = Path(database) if database and database != ":memory:" else None
        found = _spaces[engine] = DiskSpace(path)
    return found


class DiskSpace:
    """What a process knows of its store's disk: whether writes lack room, and (SQLite) the WAL's share.

    NOTE (SQLite's WAL): SQLite copies its WAL into the database file (a checkpoint) once the WAL
    holds 1,000 pages (4 MB), and the copy may grow the database file by up to the WAL's size.
    On a disk with less room than that, the WAL filled the disk and no checkpoint could run any
    more: every write failed for good, even after other files were deleted. So after each write
    the WAL's size is compared with the free space (looked at every ``LOOK_S``, less what the
    WAL took since), and once the free space is below three times the WAL's size the WAL is
    checkpointed and truncated while the copy still fits (a reader may hold that up to
    ``CHECKPOINT_WAIT_S``; after one that could not empty the WAL, the next waits
    ``CHECKPOINT_EVERY_S`` unless room appeared). On a disk of gigabytes this never happens.
    """

    #: How long a write that failed for lack of room counts as "the disk is full", with no other since.
    FULL_HOLD_S = 10.0
    #: Less free space than this on a SQLite store's disk counts as full: a commit writes 4 KiB pages.
    MIN_FREE_BYTES = 64 * 1024
    #: The WAL is checkpointed once the free space is below this many times its size: a checkpoint may
    #: need as much again, and writes go on between two looks and while a checkpoint waits to be retried.
    FREE_PER_WAL_BYTE = 3
    LOOK_S = 0.1
    CHECKPOINT_EVERY_S = 1.0
    CHECKPOINT_WAIT_S = 0.5

    def __init__(self, database: Path | None) -> None:
        """``database``: the SQLite file, None for a server's database (PostgreSQL)."""
        self.database = database
        self.wal = Path(f"{database}-wal") if database is not None else None
        self.full_at: float | None = None
        self._look_at = 0.0
        #: The free space and the WAL's size when the disk was looked at last.
        self._free = 0
        self._wal_at_look = 0
        #: After a checkpoint that could not empty the WAL: when to try again, and the free space then.
        self._retry_at = 0.0
        self._free_at_failure = 0

    def wrote(self) -> None:
        """A write committed (called under the store's write lock)."""
        self.full_at = None
        self._keep_wal_small()

    def failed(self, exc: BaseException) -> None:
        """A write failed with ``exc`` (called under the store's write lock)."""
        if disk_full(exc):
            self.full_at = time.monotonic()
            self._keep_wal_small()

    def full(self) -> bool:
        if self.full_at is not None and time.monotonic() - self.full_at < self.FULL_HOLD_S:
            return True
        if self.database is None:
            return False
        try:
            return free_bytes(self.database.parent) < self.MIN_FREE_BYTES
        except OSError:
            return False

    def _keep_wal_small(self) -> None:
        if self.wal is None or self.database is None:
            return
        now = time.monotonic()
        try:
            wal_bytes = self.wal.stat().st_size
            if now >= self._look_at:
                self._look_at = now + self.LOOK_S
                self._free, self._wal_at_look = free_bytes(self.wal.parent), wal_bytes
        except OSError:
            return
        # The free space looked at last, less what the WAL took since.
        free = self._free - max(0, wal_bytes - self._wal_at_look)
        if wal_bytes == 0 or free >= self.FREE_PER_WAL_BYTE * wal_bytes:
            return
        # NOTE: after a checkpoint that could not empty the WAL, the next waits a while, unless room
        # appeared since: the moment a full disk is freed is the one to take, before the WAL grows into it.
        if now < self._retry_at and free < self._free_at_failure + self.MIN_FREE_BYTES:
            return
        self._look_at = 0.0
        try:
            # NOTE: a connection of its own, with a short busy wait: the pool's wait out the store timeout.
            conn = sqlite3.connect(self.database, timeout=self.CHECKPOINT_WAIT_S, isolation_level=None)
            try:
                busy, _, _ = conn.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchone()
            finally:
                conn.close()
        except sqlite3.Error as exc:
            busy = exc
        if busy:
            # Readers kept the WAL, or the copy found no room.
            self._retry_at, self._free_at_failure = now + self.CHECKPOINT_EVERY_S, free
            log.warning("could not checkpoint the job store's WAL (%d bytes, about %d free): %s", wal_bytes, free, busy)
            return
        log.info("checkpointed the job store's WAL (%d bytes, about %d free on its disk)", wal_bytes, free)


def free_bytes(directory: Path) -> int:
    """Bytes an unprivileged writer may still take on the filesystem of ``directory``."""
    stats = os.statvfs(directory)
    return stats.f_bavail * stats.f_frsize


_spaces: weakref.WeakKeyDictionary[Engine, DiskSpace] = weakref.WeakKeyDictionary()
