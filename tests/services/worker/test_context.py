"""The settings a task reads: the worker's, given once at start; else the environment's, parsed once."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from services.worker.context import current_settings, use_settings
from shared.errors import SettingsError
from shared.settings import Settings


@pytest.fixture(autouse=True)
def _forget_settings() -> Iterator[None]:
    use_settings(None)
    yield
    use_settings(None)


def test_the_settings_the_worker_gives_win_over_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    # Given: the worker's settings, and a different value in the environment
    given = Settings.from_env({"SMTP_FROM": "worker@example.com"})
    monkeypatch.setenv("SMTP_FROM", "environment@example.com")

    # When: the worker hands its settings over
    use_settings(given)

    # Then: tasks see exactly those
    assert current_settings() is given


def test_outside_a_worker_the_environment_is_parsed_once(monkeypatch: pytest.MonkeyPatch) -> None:
    # Given: no worker settings, and a value in the environment
    monkeypatch.setenv("SMTP_FROM", "script@example.com")

    # When: a task function asks twice, the environment changing in between
    first = current_settings()
    monkeypatch.setenv("SMTP_FROM", "later@example.com")
    second = current_settings()

    # Then: the first parse is kept
    assert first.smtp_from == "script@example.com"
    assert second is first


def test_a_malformed_environment_is_refused_by_name(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SMTP_URL", "http://mail.internal")

    with pytest.raises(SettingsError, match=r"^SMTP_URL:"):
        current_settings()
