"""Time-ordered job ids (UUIDv7, RFC 9562): sortable as text, unique across processes."""

from __future__ import annotations

import os
import threading
import time
import uuid
from datetime import datetime

_lock = threading.Lock()
_last_ms = 0
_counter = 0
#: Random bytes from the OS, read a block at a time: one read per ~500 ids instead of two per id.
_POOL_BYTES = 4096
_pool = b""
_pool_at = 0


def _forget_pool() -> None:
    # A forked child must not hand out the same bytes as its parent.
    global _pool, _pool_at
    _pool, _pool_at = b"", 0


os.register_at_fork(after_in_child=_forget_pool)


def random_bytes(count: int) -> bytes:
    """``count`` bytes from ``os.urandom``, served from a block read ahead."""
    global _pool, _pool_at
    with _lock:
        if _pool_at + count > len(_pool):
            _pool, _pool_at = os.urandom(max(_POOL_BYTES, count)), 0
        start, _pool_at = _pool_at, _pool_at + count
        return _pool[start:_pool_at]


def random_uuid() -> str:
    """A random UUID (version 4) string, as ``str(uuid.uuid4())``."""
    value = int.from_bytes(random_bytes(16), "big") & ~(0xF000 << 64 | 0xC000 << 48) | 0x4000 << 64 | 0x8000 << 48
    return _uuid_text(value)


def new_id() -> str:
    """A UUIDv7 string; ids made later in one process sort after earlier ones.

    The 12-bit ``rand_a`` field holds a counter seeded at random each
    millisecond (RFC 9562 method 1), so ids stay ordered within a millisecond.
    """
    global _last_ms, _counter
    raw = random_bytes(10)
    seed = int.from_bytes(raw[:2], "big") & 0x7FF
    rand_b = int.from_bytes(raw[2:], "big") & ((1 << 62) - 1)
    with _lock:
        now_ms = time.time_ns() // 1_000_000
        if now_ms > _last_ms:
            _last_ms = now_ms
            _counter = seed
        else:
            _counter += 1
            if _counter > 0xFFF:
                _last_ms += 1
                _counter = 0
        ms, counter = _last_ms, _counter
    value = (ms & ((1 << 48) - 1)) << 80 | 0x7 << 76 | counter << 64 | 0b10 << 62 | rand_b
    return _uuid_text(value)


def _uuid_text(value: int) -> str:
    """``str(uuid.UUID(int=value))``, without building the object."""
    h = f"{value:032x}"
    return f"{h[:8]}-{h[8:12]}-{h[12:16]}-{h[16:20]}-{h[20:]}"


def is_id(text: str) -> bool:
    try:
        return str(uuid.UUID(text)) == text
    except ValueError:
        return False


def id_lower_bound(moment: datetime) -> str:
    """The smallest UUIDv7 of ``moment``'s millisecond: ids made at or after it sort at or after this."""
    ms = max(0, int(moment.timestamp() * 1000))
    return _uuid_text((ms & ((1 << 48) - 1)) << 80 | 0x7 << 76 | 0b10 << 62)
