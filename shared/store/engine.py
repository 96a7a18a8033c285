"""Engines for the job store and the migrations applied at start."""

from __future__ import annotations

import contextlib
import fcntl
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from alembic import command
from alembic.config import Config
from sqlalchemy import Connection, Engine, create_engine, event, text
from sqlalchemy.engine import make_url

MIGRATIONS_DIR = Path(__file__).parent / "migrations"
#: Execution option marking a connection that will write (SQLite: BEGIN IMMEDIATE).
WRITE_OPTION = "jobrelay_write"
#: A fixed key for PostgreSQL's advisory lock around migrations.
_MIGRATION_LOCK_KEY = 0x6A6F6272


def create_store_engine(url: str, *, pool_size: int = 5) -> Engine:
    """An engine for ``url``; SQLite gets WAL, a busy timeout and foreign keys."""
    parsed = make_url(url)
    if parsed.get_backend_name() == "sqlite":
        database = parsed.database
        if database and database != ":memory:":
            Path(database).parent.mkdir(parents=True, exist_ok=True)
        engine = create_engine(url, connect_args={"timeout": 30, "check_same_thread": False})

        @event.listens_for(engine, "connect")
        def _sqlite_pragmas(dbapi_conn: Any, _record: Any) -> None:
            # NOTE: pysqlite's own transaction handling issues BEGIN lazily, which
            # lets two writers deadlock on lock upgrade; we issue BEGIN ourselves.
            dbapi_conn.isolation_level = None
            cursor = dbapi_conn.cursor()
            cursor.execute("PRAGMA journal_mode=WAL")
            # NOTE: in WAL mode NORMAL keeps every commit across a process crash (kill -9), not
            # across power loss; production runs PostgreSQL (README: Settings).
            cursor.execute("PRAGMA synchronous=NORMAL")
            cursor.execute("PRAGMA busy_timeout=30000")
            cursor.close()

        @event.listens_for(engine, "begin")
        def _sqlite_begin(conn: Any) -> None:
            # Writers take the write lock up front (no upgrade deadlocks); readers stay concurrent.
            immediate = conn.get_execution_options().get(WRITE_OPTION)
            conn.exec_driver_sql("BEGIN IMMEDIATE" if immediate else "BEGIN")

        return engine
    if parsed.drivername == "postgresql":
        parsed = parsed.set(drivername="postgresql+psycopg")
    return create_engine(parsed, pool_size=pool_size, max_overflow=pool_size * 2, pool_pre_ping=True)


@contextlib.contextmanager
def _migration_lock(engine: Engine) -> Iterator[None]:
    """One migrator at a time: several processes start together under `jobrelay up`."""
    if engine.dialect.name == "sqlite":
        database = engine.url.database
        if not database or database == ":memory:":
            yield
            return
        lock_path = Path(database + ".migrate.lock")
        with lock_path.open("w") as handle:
            fcntl.flock(handle, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(handle, fcntl.LOCK_UN)
        return
    with engine.connect() as conn:
        conn.execute(text("SELECT pg_advisory_lock(:key)"), {"key": _MIGRATION_LOCK_KEY})
        conn.commit()
        try:
            yield
        finally:
            conn.execute(text("SELECT pg_advisory_unlock(:key)"), {"key": _MIGRATION_LOCK_KEY})
            conn.commit()


def alembic_config(engine: Engine) -> Config:
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS_DIR))
    config.attributes["engine"] = engine
    return config


def migrate(engine: Engine) -> None:
    """Bring the schema to the newest revision; safe to call from many processes at once."""
    with _migration_lock(engine):
        command.upgrade(alembic_config(engine), "head")


@contextlib.contextmanager
def write_transaction(engine: Engine) -> Iterator[Connection]:
    """A transaction that will write: on SQLite it takes the write lock at BEGIN.

    NOTE: SQLite's own busy handler sleeps in steps of up to 100 ms while
    another process writes; an flock on a side file makes waiting writers
    queue in the kernel instead, and wake the moment the lock is free.
    """
    lock_path = _sqlite_lock_path(engine)
    if lock_path is None:
        with engine.connect() as conn:
            conn.execution_options(**{WRITE_OPTION: True})
            with conn.begin():
                yield conn
        return
    with lock_path.open("a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            with engine.connect() as conn:
                conn.execution_options(**{WRITE_OPTION: True})
                with conn.begin():
                    yield conn
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _sqlite_lock_path(engine: Engine) -> Path | None:
    if engine.dialect.name != "sqlite":
        return None
    database = engine.url.database
    if not database or database == ":memory:":
        return None
    return Path(database + ".write.lock")
