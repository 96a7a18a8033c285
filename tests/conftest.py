"""Fixtures on real servers: a private redis-server per session, a fresh store per test.

PostgreSQL tests run when a server answers at ``TEST_DATABASE_URL`` (default
127.0.0.1:5432, trust auth); each session makes its own database and drops it.
S3 tests talk to moto's S3-compatible server on a free loopback port, one per session.
"""

from __future__ import annotations

import logging
import os
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import boto3
import pytest
import redis
from sqlalchemy import Engine, create_engine, text

from shared.catalog import Catalog
from shared.redis_server import RedisServer
from shared.store.engine import create_store_engine, migrate
from shared.store.jobs import JobStore
from shared.store.models import metadata
from shared.store.tasks import TaskRegistry
from tests.leftovers import leftovers, mark_session


def pytest_configure(config: pytest.Config) -> None:
    mark_session()


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    """Fail the run when a process a test started is still alive (see tests/leftovers.py)."""
    alive = leftovers(mark_session())
    if alive:
        lines = "\n".join(f"  {pid}: {cmdline[:200]}" for pid, cmdline in sorted(alive.items()))
        reporter = session.config.pluginmanager.get_plugin("terminalreporter")
        if reporter is not None:
            reporter.write_line(f"processes started by the tests are still alive:\n{lines}", red=True)
        session.exitstatus = pytest.ExitCode.TESTS_FAILED


PG_ADMIN_URL = os.environ.get("TEST_DATABASE_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/postgres")


@pytest.fixture(scope="session")
def redis_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    server = RedisServer(tmp_path_factory.mktemp("redis")).start()
    yield server
    server.stop()


@pytest.fixture
def redis_url(redis_server: RedisServer) -> str:
    client = redis.Redis.from_url(redis_server.url)
    client.flushall()
    client.close()
    return redis_server.url


@pytest.fixture
def redis_client(redis_url: str) -> Iterator[redis.Redis]:
    client = redis.Redis.from_url(redis_url)
    yield client
    client.close()


def _postgres_available() -> bool:
    try:
        engine = create_engine(PG_ADMIN_URL, connect_args={"connect_timeout": 2})
        with engine.connect() as conn:
            conn.execute(text("SELECT 1"))
        engine.dispose()
        return True
    except Exception:
        return False


@pytest.fixture(scope="session")
def postgres_url() -> Iterator[str | None]:
    """A database of this session's own on the local PostgreSQL, or None when there is none."""
    if not _postgres_available():
        yield None
        return
    name = f"jobrelay_test_{uuid.uuid4().hex[:10]}"
    admin = create_engine(PG_ADMIN_URL, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(text(f'CREATE DATABASE "{name}"'))
    url = PG_ADMIN_URL.rsplit("/", 1)[0] + f"/{name}"
    migrate(create_store_engine(url))
    yield url
    with admin.connect() as conn:
        conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
    admin.dispose()


def _truncate(engine: Engine) -> None:
    with engine.begin() as conn:
        for table in reversed(metadata.sorted_tables):
            conn.execute(table.delete())


@pytest.fixture
def required_postgres_url(postgres_url: str | None) -> str:
    """The session's PostgreSQL database; a test needing it fails in CI without one, else is skipped."""
    if postgres_url is None:
        if os.environ.get("CI"):
            pytest.fail("PostgreSQL is required in CI but did not answer")
        pytest.skip("no PostgreSQL reachable")
    return postgres_url


@pytest.fixture(params=["sqlite", "postgresql"])
def database_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """Each store test runs on SQLite and, where it answers, on PostgreSQL."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'jobs.db'}"
    url: str = request.getfixturevalue("required_postgres_url")
    engine = create_store_engine(url)
    _truncate(engine)
    engine.dispose()
    return url


@pytest.fixture
def sqlite_url(tmp_path: Path) -> str:
    return f"sqlite:///{tmp_path / 'jobs.db'}"


@pytest.fixture
def engine(database_url: str) -> Iterator[Engine]:
    engine = create_store_engine(database_url)
    migrate(engine)
    yield engine
    engine.dispose()


@pytest.fixture
def store(engine: Engine) -> JobStore:
    return JobStore(engine)


@pytest.fixture
def registry(engine: Engine) -> TaskRegistry:
    """The registry with the built-in catalog registered, as a booted worker leaves it."""
    from services.worker.tasks import load_task_modules

    registry = TaskRegistry(engine, cache_s=0)
    registry.register(load_task_modules().specs(), registered_by="tests")
    return registry


@pytest.fixture
def catalog() -> Catalog:
    from services.worker.tasks import load_task_modules

    return load_task_modules()


#: Standard AWS variables a developer's shell may hold; S3 tests must not pick them up.
FOREIGN_AWS_VARIABLES = (
    "AWS_PROFILE",
    "AWS_SESSION_TOKEN",
    "AWS_ENDPOINT_URL",
    "AWS_ROLE_ARN",
    "AWS_WEB_IDENTITY_TOKEN_FILE",
    "AWS_CONTAINER_CREDENTIALS_FULL_URI",
    "AWS_CONTAINER_CREDENTIALS_RELATIVE_URI",
    "AWS_MAX_ATTEMPTS",
    "AWS_RETRY_MODE",
)


def aws_environment(endpoint: str) -> dict[str, str]:
    """The standard AWS variables that point boto3 (in this process or a child) at ``endpoint``."""
    return {
        "AWS_ENDPOINT_URL_S3": endpoint,
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
        "AWS_DEFAULT_REGION": "us-east-1",
        "AWS_CONFIG_FILE": os.devnull,
        "AWS_SHARED_CREDENTIALS_FILE": os.devnull,
        "AWS_EC2_METADATA_DISABLED": "true",
    }


def s3_client(endpoint: str) -> Any:
    """A client of its own for a test to look at the bucket directly (not through ``S3Storage``)."""
    return boto3.session.Session(aws_access_key_id="testing", aws_secret_access_key="testing").client(
        "s3", endpoint_url=endpoint, region_name="us-east-1"
    )


@pytest.fixture(scope="session")
def s3_endpoint() -> Iterator[str]:
    """A real S3-compatible server (moto's) on a free loopback port."""
    from moto.server import ThreadedMotoServer

    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    yield f"http://{host}:{port}"
    server.stop()


@pytest.fixture
def s3_env(s3_endpoint: str, monkeypatch: pytest.MonkeyPatch) -> dict[str, str]:
    """This process's AWS variables pointed at the test server; returned for child processes too."""
    for name in FOREIGN_AWS_VARIABLES:
        monkeypatch.delenv(name, raising=False)
    env = aws_environment(s3_endpoint)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    return env


@pytest.fixture
def s3_bucket(s3_env: dict[str, str], s3_endpoint: str) -> str:
    """A fresh, empty bucket for one test."""
    name = f"results-{uuid.uuid4().hex[:12]}"
    s3_client(s3_endpoint).create_bucket(Bucket=name)
    return name


@pytest.fixture
def restore_logging() -> Iterator[None]:
    """The root logger's handlers and level put back after a test that configures logging."""
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    try:
        yield
    finally:
        root.handlers[:] = handlers
        root.setLevel(level)
