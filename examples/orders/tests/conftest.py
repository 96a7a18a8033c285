"""Fakes for the example's resources: a fresh in-memory database, and a shipping service that answers in-process."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import httpx
import pytest
import sqlalchemy as sa
from sqlalchemy.pool import StaticPool

from orders_tasks import orders


@pytest.fixture
def db() -> Iterator[sa.Engine]:
    engine = sa.create_engine("sqlite://", poolclass=StaticPool, connect_args={"check_same_thread": False})
    orders.metadata.create_all(engine)
    yield engine
    engine.dispose()


@pytest.fixture
def shipments() -> list[dict[str, Any]]:
    """What the fake shipping service was asked to ship."""
    return []


@pytest.fixture
def jobrelay_resources(db: sa.Engine, shipments: list[dict[str, Any]]) -> dict[str, Any]:
    """Replaces the lifespans' resources in ``jobrelay_stack`` (the plugin's fixture reads this one)."""

    def shipping_service(request: httpx.Request) -> httpx.Response:
        import json

        shipments.append(json.loads(request.content))
        return httpx.Response(201)

    client = httpx.AsyncClient(base_url="https://shipping.test", transport=httpx.MockTransport(shipping_service))
    return {"db": db, "shipping": client}
