"""prometheus_client's per-process metric files, with their disk space reserved before it is written.

In multiprocess mode each process keeps its values in files under ``PROMETHEUS_MULTIPROC_DIR``
(``$DATA_DIR/metrics``), written through a memory map. prometheus_client makes and grows a file
with ``truncate``, which leaves it sparse, then writes into the map: on a full disk the first
write into a page with no block behind it is a SIGBUS, and the process dies (every API worker
that answered a new route or status on a full ``DATA_DIR`` did, and so did each one gunicorn
started in its place). ``ReservedFile`` allocates a file's space (``posix_fallocate``) before it
maps it, so a full disk is an ``OSError`` where a file is made or grown. A series that gets no
space is kept in memory only (not exported), its place asked for again every ``RETRY_S``, and
counted in ``jobrelay_metrics_unsaved_series_total``.
"""

from __future__ import annotations

import contextlib
import logging
import mmap
import os
import struct
import time
from typing import BinaryIO

from prometheus_client import values
from prometheus_client.mmap_dict import MmapedDict, mmap_key

log = logging.getLogger(__name__)

#: Bytes a new file starts with; it doubles when full. prometheus_client starts at 64 KiB, of
#: which a process writes a few: allocated for real here, the rest would be wasted.
INITIAL_BYTES = 16 * 1024
#: Seconds before a series kept in memory asks again for its place in the file.
RETRY_S = 5.0
UNSAVED = "jobrelay_metrics_unsaved_series"
UNSAVED_HELP = "Series a process kept in memory only, not exported: its metrics file got no disk space."
_UNSAVED_KEY = mmap_key(UNSAVED, UNSAVED + "_total", [], [], UNSAVED_HELP)
_USED = struct.Struct("i")
_VALUE = struct.Struct("dd")


def reserve_file_space() -> None:
    """Make this process's metric files ``ReservedFile``s; call it before the first metric is written.

    NOTE: prometheus_client's multiprocess value class opens its files through the name
    ``MmapedDict`` of its ``values`` module, looked up at each open: replacing that name is
    the one hook it has.
    """
    setattr(values, "MmapedDict", ReservedFile)  # noqa: B010


class _Unsaved:
    """This process's count of series kept in memory, written straight into its counter file.

    NOTE: the count is written while prometheus_client's value lock is held (a series is being
    created), so it cannot go through a ``Counter``, whose ``inc`` takes that lock again.
    """

    def __init__(self) -> None:
        self.pid = os.getpid()
        self.count = 0
        self.file: ReservedFile | None = None

    def _forked(self) -> None:
        """A forked child starts its own count and files, as prometheus_client's values do."""
        if self.pid != os.getpid():
            self.pid, self.count, self.file = os.getpid(), 0, None

    def add(self, what: str) -> None:
        self._forked()
        self.count += 1
        if self.count % 100 == 1:
            log.warning("metrics file got no disk space (%d so far): %s kept in memory only", self.count, what[:200])
        self.save()

    def counter_file(self, file: ReservedFile) -> None:
        self._forked()
        self.file = file
        self.save()

    def save(self) -> None:
        if self.file is not None and self.file.is_open:
            self.file.write_value(_UNSAVED_KEY, float(self.count), 0.0)


_unsaved = _Unsaved()


class ReservedFile(MmapedDict):
    """``MmapedDict`` whose every mapped byte has its disk space allocated before it is written."""

    def __init__(self, filename: str, read_mode: bool = False) -> None:
        #: Series without a place in the map: key -> (value, timestamp).
        self._kept: dict[str, tuple[float, float]] = {}
        self._retry_at = 0.0
        if read_mode:
            super().__init__(filename, read_mode=True)
            return
        self._fname = filename
        # None while the disk has had no room for the file: the map is anonymous memory then,
        # moved into the file once there is room (``close`` takes None, as after a close).
        self._f = _open_reserved(filename, INITIAL_BYTES)  # type: ignore[assignment]
        if self._f is None:
            self._capacity = INITIAL_BYTES
            self._m = mmap.mmap(-1, self._capacity)
            self._retry_at = time.monotonic() + RETRY_S
            _unsaved.add(f"every series of {filename}")
        else:
            self._capacity = os.fstat(self._f.fileno()).st_size
            self._m = mmap.mmap(self._f.fileno(), self._capacity, access=mmap.ACCESS_WRITE)
        self._positions: dict[str, int] = {}
        self._used = _USED.unpack_from(self._m, 0)[0]
        if self._used == 0:
            self._used = 8
            self._m[0:4] = _USED.pack(self._used)
        else:
            for key, _, _, pos in self._read_all_values():
                self._positions[key] = pos
        if os.path.basename(filename).startswith("counter_"):
            # Its place comes first, while there is space, so the count can always be written.
            if _UNSAVED_KEY not in self._positions:
                self._place(_UNSAVED_KEY)
            _unsaved.counter_file(self)

    @property
    def is_open(self) -> bool:
        return self._m is not None

    def read_value(self, key: str) -> tuple[float, float]:
        pos = self._position(key)
        if pos is None:
            return self._kept[key]
        value: tuple[float, float] = _VALUE.unpack_from(self._m, pos)
        return value

    def write_value(self, key: str, value: float, timestamp: float) -> None:
        pos = self._position(key)
        if pos is None:
            self._kept[key] = (value, timestamp)
            return
        # NOTE: a slice assignment, as prometheus_client does: pack_into writes zeros first.
        self._m[pos : pos + 16] = _VALUE.pack(value, timestamp)

    def _position(self, key: str) -> int | None:
        if self._f is None and time.monotonic() >= self._retry_at:
            self._attach()
        pos = self._positions.get(key)
        if pos is not None:
            return pos
        if key in self._kept:
            if time.monotonic() < self._retry_at:
                return None
            value, timestamp = self._kept[key]
            pos = self._place(key)
            if pos is not None:
                del self._kept[key]
                self._m[pos : pos + 16] = _VALUE.pack(value, timestamp)
            return pos
        pos = self._place(key)
        if pos is None:
            self._kept[key] = (0.0, 0.0)
            _unsaved.add(f"series {key}")
        return pos

    def _init_value(self, key: str) -> None:
        # What prometheus_client's own methods would call; every path here goes through ``_place``.
        if self._place(key) is None:
            self._kept.setdefault(key, (0.0, 0.0))

    def _place(self, key: str) -> int | None:
        """Write ``key``'s entry after the used part, growing the file first; its value's offset."""
        encoded = key.encode("utf-8")
        padded = encoded + b" " * (8 - (len(encoded) + 4) % 8)
        entry = struct.pack(f"i{len(padded)}sdd", len(encoded), padded, 0.0, 0.0)
        end = self._used + len(entry)
        if end > self._capacity and not self._grow(end):
            self._retry_at = time.monotonic() + RETRY_S
            return None
        self._m[self._used : end] = entry
        self._used = end
        self._m[0:4] = _USED.pack(self._used)
        self._positions[key] = end - 16
        return end - 16

    def _grow(self, needed: int) -> bool:
        capacity = self._capacity
        while capacity < needed:
            capacity *= 2
        if self._f is None:
            grown = mmap.mmap(-1, capacity)
            grown[: self._capacity] = self._m[: self._capacity]
        else:
            try:
                os.posix_fallocate(self._f.fileno(), 0, capacity)
            except OSError as exc:
                log.debug("could not grow %s to %d bytes: %s", self._fname, capacity, exc)
                return False
            grown = mmap.mmap(self._f.fileno(), capacity, access=mmap.ACCESS_WRITE)
        # NOTE: the old map is left to the garbage collector, as prometheus_client does.
        self._m = grown
        self._capacity = capacity
        return True

    def _attach(self) -> None:
        """Move an anonymous map into its file, now that the disk may have room for it."""
        handle = _open_reserved(self._fname, self._capacity, content=self._m[: self._capacity])
        if handle is None:
            self._retry_at = time.monotonic() + RETRY_S
            return
        self._f = handle
        self._m = mmap.mmap(handle.fileno(), self._capacity, access=mmap.ACCESS_WRITE)
        if os.path.basename(self._fname).startswith("counter_"):
            _unsaved.counter_file(self)


def _open_reserved(filename: str, size: int, *, content: bytes = b"") -> BinaryIO | None:
    """The file, opened for writing with at least ``size`` bytes allocated; None when the disk has
    no room. A new file gets ``content`` and its space under another name first (``.db.new``, which
    a scrape does not read), so no scrape ever reads a file shorter than its header.
    """
    existing = os.path.exists(filename)
    path = filename if existing else f"{filename}.new"
    try:
        handle = open(path, "r+b" if existing else "w+b")  # noqa: SIM115 -- open as long as its map
    except OSError:
        return None
    try:
        os.posix_fallocate(handle.fileno(), 0, max(os.fstat(handle.fileno()).st_size, size))
        if not existing:
            os.pwrite(handle.fileno(), content, 0)
            os.rename(path, filename)
    except OSError:
        handle.close()
        if not existing:
            with contextlib.suppress(OSError):
                os.unlink(path)
        return None
    return handle
