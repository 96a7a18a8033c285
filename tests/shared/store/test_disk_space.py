"""A store on a full disk: writes fail as a store that is down, readiness sees it, and the WAL leaves room."""

from __future__ import annotations

import errno
import sqlite3
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import Engine, text
from sqlalchemy.exc import OperationalError

from shared.store.disk_space import disk_full, store_disk_full
from shared.store.engine import STORE_DOWN, create_store_engine, write_transaction
from tests.disk import CannotMount, Filler, free_bytes, small_tmpfs


@pytest.fixture
def disk(tmp_path: Path) -> Iterator[Path]:
    """A 2 MB disk of its own."""
    try:
        with small_tmpfs(tmp_path / "disk", size="2m") as path:
            yield path
    except CannotMount as exc:
        pytest.skip(str(exc))


@pytest.fixture
def engine(disk: Path) -> Iterator[Engine]:
    engine = create_store_engine(f"sqlite:///{disk / 'jobrelay.db'}", timeout_s=2)
    with write_transaction(engine) as conn:
        conn.execute(text("CREATE TABLE rows (id INTEGER PRIMARY KEY, body TEXT)"))
    yield engine
    engine.dispose()


def insert(engine: Engine, body: str) -> None:
    with write_transaction(engine) as conn:
        conn.execute(text("INSERT INTO rows (body) VALUES (:body)"), {"body": body})


class PgDiskFull(Exception):
    sqlstate = "53100"


@pytest.mark.parametrize(
    ("error", "full"),
    [
        (OSError(errno.ENOSPC, "No space left on device"), True),
        (OSError(errno.EDQUOT, "Disk quota exceeded"), True),
        (OperationalError("INSERT", {}, PgDiskFull("could not extend file")), True),
        (OperationalError("BEGIN", {}, sqlite3.OperationalError("database is locked")), False),
        (OSError(errno.EACCES, "Permission denied"), False),
    ],
)
def test_disk_full_tells_a_full_disk_from_other_store_errors(error: BaseException, full: bool) -> None:
    # NOTE: sqlite3 sets its error code only on the errors it raises itself: SQLite's are checked on a real disk below.
    assert disk_full(error) is full


def test_a_full_disk_fails_writes_as_a_store_that_is_down_and_readiness_sees_it(disk: Path, engine: Engine) -> None:
    # Given a store that writes, on a disk that then fills up
    insert(engine, "before")
    assert not store_disk_full(engine)
    filler = Filler(disk)
    filler.fill()
    # When a write is tried, it fails as a store that cannot be reached does (the API answers 503)
    with pytest.raises(STORE_DOWN) as failed:
        insert(engine, "x" * 20_000)
    assert disk_full(failed.value), failed.value
    # Then the store says its disk is full, while reads go on
    assert store_disk_full(engine)
    with engine.connect() as conn:
        assert conn.execute(text("SELECT body FROM rows")).scalars().all() == ["before"]
    # When the disk has room again, writes succeed and the store is writable again
    filler.free()
    insert(engine, "after")
    assert not store_disk_full(engine)


def test_the_wal_never_takes_the_room_its_checkpoint_needs(disk: Path, engine: Engine) -> None:
    # Given a 2 MB disk, when far more than 2 MB of pages go through the WAL (SQLite would wait
    # for 4 MB of WAL before its own checkpoint), nothing fails
    for i in range(600):
        insert(engine, f"{i:05d}" + "x" * 1000)
        if i % 3 == 0:
            with write_transaction(engine) as conn:
                conn.execute(text("DELETE FROM rows WHERE id = (SELECT min(id) FROM rows)"))
    # Then every row written and not deleted is there, and the WAL leaves room on the disk
    with engine.connect() as conn:
        assert conn.execute(text("SELECT count(*) FROM rows")).scalar_one() == 400
    assert free_bytes(disk) > (disk / "jobrelay.db-wal").stat().st_size


def test_a_store_opened_on_a_full_disk_answers_an_error_not_a_sigbus(disk: Path) -> None:
    """SQLite maps its -shm only after writing each of its pages: a full disk is SQLITE_IOERR_SHMSIZE."""
    database = disk / "closed.db"
    conn = sqlite3.connect(database, isolation_level=None)
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute("CREATE TABLE t (v)")
    conn.close()  # the last connection: -wal and -shm are removed
    Filler(disk).fill()
    child = """
        import sys
        from sqlalchemy import text
        from shared.store.disk_space import disk_full
        from shared.store.engine import STORE_DOWN, create_store_engine
        engine = create_store_engine("sqlite:///" + sys.argv[1], timeout_s=1)
        try:
            with engine.connect() as conn:
                conn.execute(text("SELECT * FROM t"))
        except STORE_DOWN as exc:
            print("full" if disk_full(exc) else repr(exc))
    """
    done = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(child), str(database)],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=Path(__file__).resolve().parents[3],
    )
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.strip() == "full"
