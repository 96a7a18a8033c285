"""The console under Falcon's TestClient: a real store and Redis, a session per key, forms as a browser posts them."""

from __future__ import annotations

import re
import urllib.parse
from dataclasses import dataclass, field

import falcon.testing
import pytest

from services.api.app import create_app
from shared.broker.publishing import build_broker
from shared.settings import Settings
from shared.store.jobs import JobStore
from shared.store.tasks import TaskRegistry
from tests.services.api.conftest import ADMIN, READER, WRITER

_CSRF = re.compile(r'name="csrf" value="([^"]+)"')


@dataclass
class Browser:
    """A TestClient with a cookie jar of one cookie, posting URL-encoded forms."""

    client: falcon.testing.TestClient
    cookies: dict[str, str] = field(default_factory=dict)

    def get(self, path: str, **params: str) -> falcon.testing.Result:
        result = self.client.simulate_get(path, params=params or None, cookies=self.cookies)
        self._keep(result)
        return result

    def post(
        self, path: str, data: dict[str, str | list[str]] | list[tuple[str, str]], **headers: str
    ) -> falcon.testing.Result:
        body = urllib.parse.urlencode(data, doseq=True)
        result = self.client.simulate_post(
            path,
            body=body,
            headers={"Content-Type": "application/x-www-form-urlencoded", **headers},
            cookies=self.cookies,
        )
        self._keep(result)
        return result

    def _keep(self, result: falcon.testing.Result) -> None:
        for name, cookie in result.cookies.items():
            if cookie.value:
                self.cookies[name] = cookie.value
            else:
                self.cookies.pop(name, None)

    def login(self, token: str) -> falcon.testing.Result:
        return self.post("/console/login", {"key": token, "next": "/console/"})

    def csrf(self, path: str = "/console/jobs") -> str:
        found = _CSRF.search(self.get(path).text)
        assert found, "no CSRF token on the page"
        return found.group(1)


@pytest.fixture
def app(settings: Settings, store: JobStore, registry: TaskRegistry) -> falcon.App:
    broker = build_broker(settings.require_redis_url("tests"))
    return create_app(settings, store=store, registry=registry, broker=broker)


@pytest.fixture
def browser(app: falcon.App) -> Browser:
    return Browser(falcon.testing.TestClient(app))


def logged_in(app: falcon.App, token: str) -> Browser:
    browser = Browser(falcon.testing.TestClient(app))
    result = browser.login(token)
    assert result.status_code == 303, result.text
    return browser


@pytest.fixture
def admin(app: falcon.App) -> Browser:
    return logged_in(app, ADMIN)


@pytest.fixture
def writer(app: falcon.App) -> Browser:
    return logged_in(app, WRITER)


@pytest.fixture
def reader(app: falcon.App) -> Browser:
    return logged_in(app, READER)
