"""Engines for the job store and the migrations applied at start."""

from __future__ import annotations

import contextlib
import fcntl
import functools
import math
import os
import threading
import time
import weakref
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any

from alembic import command
from alembic.config import Config
from sqlalchemy import URL, Connection, Engine, create_engine, event, text
from sqlalchemy.engine import make_url
from sqlalchemy.exc import InterfaceError, OperationalError
from sqlalchemy.exc import TimeoutError as StoreTimeout

from shared.store.disk_space import disk_space

MIGRATIONS_DIR = Path(__file__).parent / "migrations"
#: Execution option marking a connection that will write (SQLite: BEGIN IMMEDIATE).
WRITE_OPTION = "jobrelay_write"
#: A fixed key for PostgreSQL's advisory lock around migrations.
_MIGRATION_LOCK_KEY = 0x6A6F6272
#: The default of ``STORE_TIMEOUT_S``.
DEFAULT_TIMEOUT_S = 5.0
#: How much longer than the server's statement timeout a PostgreSQL client waits for an answer
#: before it gives the connection up: the server's own error comes first when it answers at all.
ANSWER_GRACE_S = 1.0
#: The longest a pooled PostgreSQL connection's ping (at checkout) may take before it is replaced.
PING_TIMEOUT_S = 1.0
#: The TCP user timeout of PostgreSQL connections without the statement bounds (migrations, reports).
_UNBOUNDED_TCP_USER_TIMEOUT_MS = 30_000
#: What a store call raises when the database cannot be reached or stays locked: callers
#: answer 503 (API) or wait and try again (worker, scheduler).
STORE_DOWN = (OperationalError, InterfaceError, StoreTimeout)


def create_store_engine(
    url: str | URL,
    *,
    pool_size: int = 5,
    timeout_s: float = DEFAULT_TIMEOUT_S,
    long_statements: bool = False,
    pre_ping: bool = True,
) -> Engine:
    """An engine for ``url`` whose operations give up after about ``timeout_s`` of waiting.

    SQLite gets WAL, foreign keys and a busy timeout of ``timeout_s``. PostgreSQL gets a
    connect timeout, a pool checkout timeout and TCP keepalives, and, unless
    ``long_statements`` (migrations, reports), a statement and lock timeout of ``timeout_s``
    on the server and a client that gives a silent server up ``ANSWER_GRACE_S`` later: a
    lock held elsewhere, a stalled server or a dead network path ends in an error (the API
    answers 503, a worker pauses and retries) instead of a hang. ``pre_ping=False``: no ping at
    each checkout (PostgreSQL), for a caller that retries a write a dead connection failed (the
    worker's status writer), which saves a round trip per transaction.
    """
    parsed = make_url(url)
    if parsed.get_backend_name() == "sqlite":
        return _sqlite_engine(url, timeout_s)
    if parsed.drivername == "postgresql":
        parsed = parsed.set(drivername="postgresql+psycopg")
    answer_s = None if long_statements else timeout_s + ANSWER_GRACE_S
    connect_args: dict[str, Any] = {
        "connect_timeout": max(1, math.ceil(timeout_s)),
        "keepalives": 1,
        "keepalives_idle": 10,
        "keepalives_interval": 5,
        "keepalives_count": 3,
        # Unacknowledged data (a COMMIT sent into a dead path) fails the socket after this.
        "tcp_user_timeout": _UNBOUNDED_TCP_USER_TIMEOUT_MS if answer_s is None else math.ceil(answer_s * 1000),
    }
    if not long_statements:
        timeout_ms = math.ceil(timeout_s * 1000)
        bounds = f"-c statement_timeout={timeout_ms} -c lock_timeout={timeout_ms}"
        # NOTE: connect_args replace the URL's own ``options``; theirs go last, so a setting there wins.
        given = parsed.query.get("options")
        connect_args["options"] = f"{bounds} {given}" if isinstance(given, str) else bounds
    engine = create_engine(
        parsed,
        pool_size=pool_size,
        max_overflow=pool_size * 2,
        pool_pre_ping=pre_ping,
        pool_timeout=timeout_s,
        connect_args=connect_args,
    )
    event.listen(engine, "connect", _binary_lists)
    if answer_s is not None:
        _bound_answers(engine, answer_s, ping_s=min(PING_TIMEOUT_S, timeout_s))
    return engine


def _bound_answers(engine: Engine, answer_s: float, *, ping_s: float) -> None:
    """Connections of ``engine`` give up on a server silent for ``answer_s`` (``ping_s`` for the pool's ping).

    NOTE: the server's statement timeout ends a statement that waits there (on a lock, on a
    slow plan), but not a server that has stopped answering or a network path that drops
    packets: libpq waits for an answer for as long as the kernel keeps the socket. The
    client's deadline covers those. A pooled connection is pinged at checkout (between its
    ``checkin`` and ``checkout`` events) with the shorter ``ping_s``, so a dead connection
    costs a request about a second before a fresh connect is tried, not a whole timeout.
    """
    connection_class = _answering_connection_class()

    @event.listens_for(engine, "do_connect")
    def _connect(_dialect: Any, _record: Any, cargs: Any, cparams: Any) -> Any:
        connection = connection_class.connect(*cargs, **cparams)
        connection.answer_timeout_s = answer_s
        return connection

    @event.listens_for(engine, "checkin")
    def _ping_next(dbapi_connection: Any, _record: Any) -> None:
        if dbapi_connection is not None:
            dbapi_connection.answer_timeout_s = ping_s

    @event.listens_for(engine, "checkout")
    def _checked_out(dbapi_connection: Any, _record: Any, _proxy: Any) -> None:
        dbapi_connection.answer_timeout_s = answer_s


@functools.cache
def _answering_connection_class() -> Any:
    """psycopg's connection, closing itself when the server leaves a wait unanswered past its deadline.

    NOTE: psycopg runs every exchange after the connect (query, fetch, commit) through
    ``Connection.wait``; its timeout raises ``_WaitTimeout`` with the connection in an unknown
    state, so the connection is closed and SQLAlchemy sees a disconnect (it replaces the
    connection). Under gevent psycopg waits with the patched ``select``, so the deadline holds
    without blocking the other greenlets. Built on first use: psycopg is imported only for
    PostgreSQL (see ``_binary_lists``).
    """
    import psycopg
    from psycopg import errors

    class AnsweringConnection(psycopg.Connection[Any]):
        answer_timeout_s: float | None = None

        def wait(self, gen: Any, interval: float = 0.1, timeout: float | None = None) -> Any:
            if timeout is not None or self.answer_timeout_s is None:
                return super().wait(gen, interval, timeout)
            try:
                return super().wait(gen, interval, self.answer_timeout_s)
            except errors._WaitTimeout:
                self.close()
                raise psycopg.OperationalError(
                    f"the job store did not answer within {self.answer_timeout_s:g} s; connection closed"
                ) from None

    return AnsweringConnection


def _binary_lists(dbapi_connection: Any, _record: Any) -> None:
    """Send Python lists (array parameters) in PostgreSQL's binary format.

    NOTE: psycopg writes a list in text format element by element in Python (quoting
    each), in binary format in C; a 1,000-id list took about 1 ms against 0.25 ms. The
    store's lists are its array parameters (id lists, ``InList``). Imported here: psycopg
    and the libpq it bundles cost a process ~12 MB, which a SQLite install never needs.
    """
    from psycopg.types.array import ListBinaryDumper

    dbapi_connection.adapters.register_dumper(list, ListBinaryDumper)


def _sqlite_engine(url: str | URL, timeout_s: float) -> Engine:
    database = make_url(url).database
    if database and database != ":memory:":
        Path(database).parent.mkdir(parents=True, exist_ok=True)
    # sqlite3's ``timeout`` is SQLite's busy timeout: how long a write waits for another's lock.
    engine = create_engine(url, connect_args={"timeout": timeout_s, "check_same_thread": False})
    if database and database != ":memory:":
        _write_locks[engine] = _WriteLock(Path(database + ".write.lock"), timeout_s)

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
        cursor.close()

    @event.listens_for(engine, "begin")
    def _sqlite_begin(conn: Any) -> None:
        # Writers take the write lock up front (no upgrade deadlocks); readers stay concurrent.
        immediate = conn.get_execution_options().get(WRITE_OPTION)
        conn.exec_driver_sql("BEGIN IMMEDIATE" if immediate else "BEGIN")

    return engine


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
    if engine.dialect.name != "postgresql":
        _upgrade(engine)
        return
    # NOTE: a migration may rewrite a large table, and waits for the locks of running processes and for
    # another migrator: STORE_TIMEOUT_S does not bound it, so it gets an engine of its own.
    unbounded = create_store_engine(engine.url, pool_size=1, long_statements=True)
    try:
        _upgrade(unbounded)
    finally:
        unbounded.dispose()


def _upgrade(engine: Engine) -> None:
    with _migration_lock(engine):
        command.upgrade(alembic_config(engine), "head")


@contextlib.contextmanager
def write_transaction(engine: Engine) -> Iterator[Connection]:
    """A transaction that will write: on SQLite it takes the write lock at BEGIN.

    ``StoreTimeout`` when the SQLite write lock stays taken past the engine's timeout. Each
    write tells the engine's ``DiskSpace`` whether it found room (still under the write lock,
    where a checkpoint of the WAL waits for no writer).
    """
    lock = _write_locks.get(engine)
    space = disk_space(engine)
    with lock.held() if lock is not None else contextlib.nullcontext():
        try:
            with engine.connect() as conn:
                conn.execution_options(**{WRITE_OPTION: True})
                with conn.begin():
                    yield conn
        except STORE_DOWN as exc:
            space.failed(exc)
            raise
        space.wrote()


class _WriteLock:
    """One SQLite writer at a time across threads and processes, waiting at most ``timeout_s``.

    NOTE: SQLite's own busy handler sleeps in steps of up to 100 ms while another process
    writes. Threads of one process queue on a thread lock (woken the moment it is free); the
    one at its head takes an flock on a side file, polling in steps of at most 2 ms while
    another process holds it.
    """

    def __init__(self, path: Path, timeout_s: float) -> None:
        self.path = path
        self.timeout_s = timeout_s
        self._threads = threading.Lock()
        #: The side file, opened once per process (an flock belongs to one open file, not to a process).
        self._handle: IO[str] | None = None
        self._pid = 0

    @contextlib.contextmanager
    def held(self) -> Iterator[None]:
        deadline = time.monotonic() + self.timeout_s
        if not self._threads.acquire(timeout=self.timeout_s):
            raise StoreTimeout(f"the job store's write lock stayed taken for {self.timeout_s:g} s")
        try:
            fd = self._fileno()
            self._flock(fd, deadline)
            try:
                yield
            finally:
                fcntl.flock(fd, fcntl.LOCK_UN)
        finally:
            self._threads.release()

    def _fileno(self) -> int:
        """The side file's descriptor, opened afresh in a forked child (a shared one would share the lock)."""
        if self._handle is None or self._pid != os.getpid():
            self._handle = self.path.open("a")
            self._pid = os.getpid()
        return self._handle.fileno()

    def _flock(self, fd: int, deadline: float) -> None:
        # NOTE: another process holds the lock for about a millisecond: short polls hand it over
        # sooner than long ones, which left it idle for up to 2 ms after each release.
        pause = 0.00005
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                return
            except BlockingIOError:
                if time.monotonic() >= deadline:
                    raise StoreTimeout(f"the job store's write lock stayed taken for {self.timeout_s:g} s") from None
                time.sleep(pause)
                pause = min(pause * 2, 0.0005)


_write_locks: weakref.WeakKeyDictionary[Engine, _WriteLock] = weakref.WeakKeyDictionary()
