"""The API under test: ``create_app`` with a real store and a real Redis broker."""

from __future__ import annotations

import falcon.testing
import pytest

from services.api.app import create_app
from shared.broker.publishing import build_broker
from shared.settings import Settings, parse_api_keys
from shared.store.jobs import JobStore
from shared.store.tasks import TaskRegistry

ADMIN = "admintoken-123456"
WRITER = "writertoken-123456"
READER = "readertoken-123456"
KEYS = f"ops:{ADMIN}:admin ci:{WRITER}:read+write dash:{READER}:read"


@pytest.fixture
def settings(redis_url: str) -> Settings:
    return Settings(redis_url=redis_url, api_keys=parse_api_keys(KEYS))


@pytest.fixture
def client(settings: Settings, store: JobStore, registry: TaskRegistry) -> falcon.testing.TestClient:
    broker = build_broker(settings.require_redis_url("tests"))
    return falcon.testing.TestClient(
        create_app(settings, store=store, registry=registry, broker=broker),
        headers={"Authorization": f"Bearer {WRITER}"},
    )
