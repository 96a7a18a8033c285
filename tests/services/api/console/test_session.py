"""Login, the session cookie's flags, logout, CSRF refusals and the API's scopes held by the console."""

from __future__ import annotations

import logging

import falcon.testing
import pytest

from services.api.console.session import COOKIE
from shared.job import JobStatus
from shared.store.jobs import JobStore
from tests.services.api.conftest import ADMIN, READER, WRITER
from tests.services.api.console.conftest import Browser
from tests.shared.store.test_jobs import make_job


def test_a_stranger_is_sent_to_the_login_page(browser: Browser) -> None:
    result = browser.get("/console/jobs", status="failed")
    assert result.status_code == 303
    assert result.headers["Location"] == "/console/login?next=%2Fconsole%2Fjobs%3Fstatus%3Dfailed"
    assert browser.get("/console/login").status_code == 200


def test_login_sets_a_signed_httponly_strict_expiring_cookie_without_the_key(browser: Browser) -> None:
    # Given a login with the admin key
    result = browser.login(ADMIN)
    # Then a 303 to the console and a cookie with every flag, not holding the key (nor logged)
    assert result.status_code == 303
    assert result.headers["Location"] == "/console/"
    header = next(v for k, v in result.headers.items() if k.lower() == "set-cookie")
    assert header.startswith(f"{COOKIE}=")
    lowered = header.lower()
    assert "httponly" in lowered and "samesite=strict" in lowered and "max-age=28800" in lowered
    assert "path=/console" in lowered
    assert "secure" not in lowered.replace("samesite", "")
    assert ADMIN not in header
    # And the pages open
    page = browser.get("/console/")
    assert page.status_code == 200
    assert "ops · admin" in page.text
    assert ADMIN not in page.text


def test_the_cookie_is_secure_when_the_request_came_over_tls(browser: Browser) -> None:
    result = browser.post("/console/login", {"key": READER}, **{"X-Forwarded-Proto": "https"})
    header = next(v for k, v in result.headers.items() if k.lower() == "set-cookie")
    assert "; secure" in header.lower()


def test_a_wrong_key_is_refused_without_echoing_or_logging_it(
    browser: Browser, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    result = browser.post("/console/login", {"key": "not-a-key-at-all"})
    assert "console login refused" in caplog.text
    assert "not-a-key-at-all" not in caplog.text
    assert result.status_code == 401
    assert "not-a-key-at-all" not in result.text
    assert "not one of this server" in result.text
    assert not browser.cookies


def test_a_tampered_cookie_is_no_session(admin: Browser) -> None:
    admin.cookies[COOKIE] = admin.cookies[COOKIE][:-2] + "xx"
    assert admin.get("/console/").status_code == 303


def test_logout_ends_the_session(admin: Browser) -> None:
    csrf = admin.csrf()
    result = admin.post("/console/logout", {"csrf": csrf})
    assert result.status_code == 303
    assert COOKIE not in admin.cookies
    assert admin.get("/console/").status_code == 303


def test_a_bearer_token_does_not_open_the_console(browser: Browser) -> None:
    result = browser.client.simulate_get("/console/", headers={"Authorization": f"Bearer {ADMIN}"})
    assert result.status_code == 303


def test_a_post_without_or_with_a_wrong_csrf_token_is_refused(writer: Browser, store: JobStore) -> None:
    job = make_job()
    store.insert([job])
    for data in ({}, {"csrf": "forged"}):
        result = writer.post(f"/console/jobs/{job.id}/cancel", data)
        assert result.status_code == 403
        assert "CSRF" in result.text
    assert store.get(job.id).status == JobStatus.QUEUED
    # With the page's token it goes through.
    assert writer.post(f"/console/jobs/{job.id}/cancel", {"csrf": writer.csrf()}).status_code == 303
    assert store.get(job.id).status == JobStatus.CANCELLED


def test_a_read_key_changes_nothing_even_by_direct_posts(reader: Browser, store: JobStore) -> None:
    # Given a waiting job, a failed dead one and a read-only session with its valid CSRF token
    waiting, dead = (
        make_job(),
        make_job(status=JobStatus.FAILED, dead=True, error={"type": "ValueError", "message": "x"}),
    )
    store.insert([waiting, dead])
    csrf = reader.csrf()
    page = reader.get(f"/console/jobs/{waiting.id}")
    assert 'id="cancel"' not in page.text
    # When it posts every action there is, buttons or not
    posts = [
        (f"/console/jobs/{waiting.id}/cancel", {"csrf": csrf}),
        (f"/console/jobs/{dead.id}/retry", {"csrf": csrf}),
        ("/console/jobs/bulk", {"csrf": csrf, "action": "cancel", "every": "1", "confirm": "1"}),
        ("/console/dead", {"csrf": csrf, "scope": "all"}),
        ("/console/tasks/diagnostics.echo", {"csrf": csrf, "arg.message": "hi"}),
        ("/console/schedules/anything", {"csrf": csrf, "action": "pause"}),
        ("/console/", {"csrf": csrf, "queue": "default", "action": "pause"}),
    ]
    for path, data in posts:
        result = reader.post(path, data)
        # Then each is a 403 saying which scope is missing
        assert result.status_code == 403, path
        assert "lacks the" in result.text
    assert store.get(waiting.id).status == JobStatus.QUEUED
    assert store.get(dead.id).status == JobStatus.FAILED
    assert store.get(dead.id).dead


def test_a_write_key_may_not_requeue_dead_letters_or_see_tracebacks(
    writer: Browser, admin: Browser, store: JobStore
) -> None:
    error = {"type": "ValueError", "message": "boom", "retryable": False, "traceback": "Traceback: line 1"}
    dead = make_job(status=JobStatus.FAILED, dead=True, error=error)
    store.insert([dead])
    assert writer.post("/console/dead", {"csrf": writer.csrf(), "scope": "all"}).status_code == 403
    as_writer = writer.get(f"/console/jobs/{dead.id}")
    assert as_writer.status_code == 200
    assert "boom" in as_writer.text and "Traceback: line 1" not in as_writer.text
    assert "The traceback is shown to admin keys." in as_writer.text
    as_admin = admin.get(f"/console/jobs/{dead.id}")
    assert as_admin.status_code == 200 and "Traceback: line 1" in as_admin.text


def test_a_session_ends_when_its_key_is_gone(app: falcon.App, admin: Browser, settings, store, registry) -> None:  # type: ignore[no-untyped-def]
    from services.api.app import create_app
    from shared.broker.publishing import build_broker
    from shared.settings import parse_api_keys

    # Given the same cookie presented to an app whose admin key has a new token
    rotated = settings.__class__(
        redis_url=settings.redis_url, api_keys=parse_api_keys(f"ops:other-token-1234567:admin ci:{WRITER}:read+write")
    )
    other = Browser(
        falcon.testing.TestClient(
            create_app(rotated, store=store, registry=registry, broker=build_broker(settings.redis_url))
        ),
        cookies=dict(admin.cookies),
    )
    # Then it is no session there
    assert other.get("/console/").status_code == 303


def test_login_next_only_goes_to_console_pages(browser: Browser) -> None:
    result = browser.post("/console/login", {"key": READER, "next": "https://evil.example/"})
    assert result.headers["Location"] == "/console/"


def test_with_auth_off_the_console_opens_without_a_key_in_every_api_process(store, registry, settings) -> None:  # type: ignore[no-untyped-def]
    from services.api.app import create_app
    from shared.broker.publishing import build_broker

    # Given two API processes (gunicorn workers) with auth off
    open_settings = settings.with_overrides(api_auth=False, api_keys=())
    apps = [
        create_app(open_settings, store=store, registry=registry, broker=build_broker(settings.redis_url))
        for _ in range(2)
    ]
    first = Browser(falcon.testing.TestClient(apps[0]))
    # When a session starts on one without a key
    assert first.post("/console/login", {"next": "/console/jobs"}).status_code == 303
    # Then the other takes its cookie too, as an admin
    second = Browser(falcon.testing.TestClient(apps[1]), cookies=dict(first.cookies))
    page = second.get("/console/jobs")
    assert page.status_code == 200 and "anonymous · admin" in page.text
