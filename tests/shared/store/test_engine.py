"""The store engines give up after STORE_TIMEOUT_S instead of hanging on a lock or a dead server."""

from __future__ import annotations

import contextlib
import sqlite3
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from psycopg.adapt import PyFormat
from psycopg.types.array import ListBinaryDumper
from sqlalchemy import create_engine, make_url, text

from shared.store.engine import STORE_DOWN, create_store_engine, migrate, write_transaction
from tests.reliability.proxy import TcpProxy


@contextlib.contextmanager
def write_lock_held_elsewhere(url: str) -> Iterator[None]:
    """The store's write lock held by another engine (as another process would) until the block ends."""
    other = create_store_engine(url)
    holding, release = threading.Event(), threading.Event()

    def hold() -> None:
        with write_transaction(other):
            holding.set()
            release.wait(10)

    holder = threading.Thread(target=hold)
    holder.start()
    assert holding.wait(5)
    try:
        yield
    finally:
        release.set()
        holder.join()
        other.dispose()


def test_a_write_waits_out_a_short_lock_held_by_another_process(sqlite_url: str) -> None:
    # Given two engines on one SQLite file (as two processes have) and one writing for 0.3 s
    engine, other = create_store_engine(sqlite_url), create_store_engine(sqlite_url)
    migrate(engine)
    holding = threading.Event()

    def hold() -> None:
        with write_transaction(other) as conn:
            conn.execute(text("UPDATE alembic_version SET version_num = version_num"))
            holding.set()
            time.sleep(0.3)

    holder = threading.Thread(target=hold)
    holder.start()
    assert holding.wait(5)
    # When the first writes, it waits its turn and succeeds
    with write_transaction(engine) as conn:
        assert conn.execute(text("SELECT count(*) FROM alembic_version")).scalar_one() == 1
    holder.join()


def test_a_write_gives_up_on_our_write_lock_after_the_timeout(sqlite_url: str) -> None:
    # Given another engine (process) holding the write lock for longer than our timeout
    engine = create_store_engine(sqlite_url, timeout_s=0.3)
    migrate(engine)
    with write_lock_held_elsewhere(sqlite_url):
        started = time.monotonic()
        # Then the write fails with a store-down error naming the lock, after about the timeout
        with pytest.raises(STORE_DOWN, match=r"write lock stayed taken for 0\.3 s"), write_transaction(engine):
            pass
        assert 0.25 < time.monotonic() - started < 3
    # And once the lock is free, writes go through again
    with write_transaction(engine):
        pass


def test_a_write_gives_up_on_a_foreign_sqlite_lock_after_the_timeout(sqlite_url: str, tmp_path: Path) -> None:
    # Given a foreign program holding SQLite's own lock (BEGIN EXCLUSIVE), not our side lock
    engine = create_store_engine(sqlite_url, timeout_s=0.3)
    migrate(engine)
    foreign = sqlite3.connect(tmp_path / "jobs.db", isolation_level=None)
    foreign.execute("BEGIN EXCLUSIVE")
    try:
        started = time.monotonic()
        with pytest.raises(STORE_DOWN, match="locked"), write_transaction(engine) as conn:
            conn.execute(text("UPDATE alembic_version SET version_num = version_num"))
        assert 0.25 < time.monotonic() - started < 3
    finally:
        foreign.execute("ROLLBACK")
        foreign.close()


def test_threads_of_one_process_queue_for_the_write_lock(sqlite_url: str) -> None:
    # Given one engine shared by 8 threads, each incrementing a counter 25 times
    engine = create_store_engine(sqlite_url)
    with write_transaction(engine) as conn:
        conn.execute(text("CREATE TABLE counter (n INTEGER)"))
        conn.execute(text("INSERT INTO counter VALUES (0)"))

    def bump() -> None:
        for _ in range(25):
            with write_transaction(engine) as conn:
                n = conn.execute(text("SELECT n FROM counter")).scalar_one()
                conn.execute(text("UPDATE counter SET n = :n"), {"n": n + 1})

    threads = [threading.Thread(target=bump) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    # Then no increment was lost (one writer at a time)
    with engine.connect() as conn:
        assert conn.execute(text("SELECT n FROM counter")).scalar_one() == 200


def test_an_unreachable_postgresql_fails_within_the_connect_timeout() -> None:
    # Given a PostgreSQL URL whose port answers nothing
    engine = create_store_engine("postgresql://nobody@127.0.0.1:1/none", timeout_s=1)
    started = time.monotonic()
    # Then connecting fails with a store-down error, promptly
    with pytest.raises(STORE_DOWN), engine.connect():
        pass
    assert time.monotonic() - started < 5


def test_postgresql_connections_send_lists_as_binary_arrays(required_postgres_url: str) -> None:
    engine = create_store_engine(required_postgres_url)
    try:
        with engine.connect() as conn:
            adapters = conn.connection.dbapi_connection.adapters  # type: ignore[union-attr]
            assert adapters.get_dumper(list, PyFormat.AUTO) is ListBinaryDumper
            ids = ["a", "b", 'c "quoted", {braced}']
            assert conn.execute(text("SELECT cardinality(:ids)"), {"ids": ids}).scalar() == 3
            assert conn.exec_driver_sql("SELECT (%(ids)s::text[])[3]", {"ids": ids}).scalar() == ids[2]
    finally:
        engine.dispose()


@contextlib.contextmanager
def locked(url: str, table: str) -> Iterator[None]:
    """``table`` held in ACCESS EXCLUSIVE mode by another session until the block ends."""
    holder = create_engine(url)
    try:
        with holder.connect() as conn:
            conn.execute(text(f"LOCK TABLE {table} IN ACCESS EXCLUSIVE MODE"))
            try:
                yield
            finally:
                conn.rollback()
    finally:
        holder.dispose()


@contextlib.contextmanager
def proxied(url: str) -> Iterator[tuple[TcpProxy, str]]:
    """A proxy in front of the PostgreSQL of ``url``, and the URL through it."""
    parsed = make_url(url)
    proxy = TcpProxy(parsed.host or "127.0.0.1", parsed.port or 5432).start()
    try:
        yield proxy, parsed.set(port=proxy.port).render_as_string(hide_password=False)
    finally:
        proxy.close()


def test_a_postgresql_statement_waiting_on_a_lock_gives_up_after_the_timeout(required_postgres_url: str) -> None:
    engine = create_store_engine(required_postgres_url, timeout_s=0.5)
    try:
        migrate(engine)
        # Given another session holding a table the statement needs
        with locked(required_postgres_url, "alembic_version"):
            started = time.monotonic()
            # Then the statement fails with a store-down error after about the timeout (cancelled by the server)
            with pytest.raises(STORE_DOWN, match=r"(lock|statement) timeout"), engine.connect() as conn:
                conn.execute(text("SELECT * FROM alembic_version"))
            assert 0.4 < time.monotonic() - started < 2
        # And a slow statement is cancelled by the server alike
        with pytest.raises(STORE_DOWN, match="statement timeout"), engine.connect() as conn:
            conn.execute(text("SELECT pg_sleep(2)"))
    finally:
        engine.dispose()


def test_a_postgresql_that_stops_answering_fails_within_the_timeout_and_a_grace(required_postgres_url: str) -> None:
    with proxied(required_postgres_url) as (proxy, url):
        engine = create_store_engine(url, timeout_s=0.5)
        try:
            with engine.connect() as conn:
                conn.execute(text("SELECT 1"))
                # Given a server that stops answering in the middle of a transaction
                proxy.black_hole()
                started = time.monotonic()
                # Then the statement fails with a store-down error after the timeout and the client's grace
                with pytest.raises(STORE_DOWN, match=r"did not answer within 1\.5 s"):
                    conn.execute(text("SELECT 1"))
                assert 1.4 < time.monotonic() - started < 3
            # And once it answers again, the engine replaces the connection and goes on
            proxy.restore()
            with engine.connect() as conn:
                assert conn.execute(text("SELECT 1")).scalar() == 1
        finally:
            engine.dispose()


def test_a_pooled_connection_to_a_stalled_postgresql_is_given_up_after_a_short_ping(
    required_postgres_url: str,
) -> None:
    with proxied(required_postgres_url) as (proxy, url):
        engine = create_store_engine(url, timeout_s=0.5)
        try:
            with engine.connect() as conn:
                conn.execute(text("SELECT 1"))
            # Given a pooled connection, and a server that stalls
            proxy.stall()
            started = time.monotonic()
            # Then a checkout pings it for 0.5 s, tries a fresh connection (libpq's shortest connect
            # timeout is 2 s) and fails with a store-down error
            with pytest.raises(STORE_DOWN), engine.connect():
                pass
            assert time.monotonic() - started < 4
            proxy.restore()
            with engine.connect() as conn:
                assert conn.execute(text("SELECT 1")).scalar() == 1
        finally:
            engine.dispose()


def test_migrations_and_long_statements_are_not_bounded_by_the_timeout(required_postgres_url: str) -> None:
    engine = create_store_engine(required_postgres_url, timeout_s=0.3)
    long_reads = create_store_engine(required_postgres_url, timeout_s=0.3, long_statements=True)
    try:
        # Given the migrations' table locked for longer than the timeout
        with locked(required_postgres_url, "alembic_version"):
            migrating = threading.Thread(target=migrate, args=(engine,))
            migrating.start()
            time.sleep(1)
            # Then the migration waits for the lock instead of failing
            assert migrating.is_alive()
        migrating.join(30)
        assert not migrating.is_alive()
        # And an engine for long statements (reports) lets one run past the timeout
        with long_reads.connect() as conn:
            conn.execute(text("SELECT pg_sleep(0.6)"))
    finally:
        engine.dispose()
        long_reads.dispose()


def test_the_urls_own_postgresql_options_are_kept(required_postgres_url: str) -> None:
    url = make_url(required_postgres_url).update_query_dict({"options": "-c work_mem=8MB -c lock_timeout=7s"})
    engine = create_store_engine(url, timeout_s=0.5)
    try:
        with engine.connect() as conn:
            assert conn.execute(text("SHOW work_mem")).scalar() == "8MB"
            assert conn.execute(text("SHOW statement_timeout")).scalar() == "500ms"
            # A setting the URL gives wins over ours
            assert conn.execute(text("SHOW lock_timeout")).scalar() == "7s"
    finally:
        engine.dispose()
