"""Building the API from the environment, and ``jobrelay api`` (gunicorn in front of it)."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import falcon

from services.api.app import create_app
from shared.broker.publishing import build_broker
from shared.errors import SettingsError
from shared.logs import configure_logging
from shared.metric_files import reserve_file_space
from shared.metrics import fresh_multiproc_dir
from shared.settings import Settings
from shared.store.engine import create_store_engine, migrate
from shared.store.jobs import JobStore
from shared.store.tasks import TaskRegistry
from shared.tracing import configure_tracing


def build_app(settings: Settings | None = None) -> falcon.App:
    """The app for one gunicorn worker process."""
    settings = settings or Settings.from_env()
    configure_logging("api", settings.log_level, json_lines=settings.log_json)
    configure_tracing("api")
    # Before the first request writes a metric: a full disk must not kill the process (SIGBUS).
    reserve_file_space()
    engine = create_store_engine(settings.effective_database_url, timeout_s=settings.store_timeout_s)
    broker = build_broker(settings.require_redis_url("the API"), fair_sharing=settings.fair_sharing)
    return create_app(settings, store=JobStore(engine), registry=TaskRegistry(engine), broker=broker)


def check_auth(settings: Settings) -> None:
    if settings.api_auth and not settings.api_keys:
        raise SettingsError("API_KEYS: no keys given; set API_KEYS, or API_AUTH=off to run without auth")


def run(settings: Settings, *, workers: int | None = None) -> None:
    """Migrate, then exec gunicorn (so it gets the signals) with a fresh metrics directory."""
    check_auth(settings)
    settings.require_redis_url("the API")
    migrate(create_store_engine(settings.effective_database_url, timeout_s=settings.store_timeout_s))
    fresh_multiproc_dir(Path(settings.data_dir) / "metrics" / f"api-{os.getpid()}")
    args = [
        sys.executable, "-m", "gunicorn",
        "--bind", settings.api_bind,
        "--workers", str(workers or settings.api_workers),
        "--worker-class", "services.api.gunicorn_worker.ApiWorker",
        "--worker-connections", "1000",
        "--graceful-timeout", "20",
        "--timeout", "60",
        "--limit-request-field_size", "16384",
        "--limit-request-fields", "100",
        "--config", "python:services.api.gunicorn_conf",
        "services.api.wsgi:app",
    ]  # fmt: skip
    os.execv(sys.executable, args)
