"""Gunicorn's entry point: ``gunicorn services.api.wsgi:app``."""

from services.api.main import build_app

app = build_app()
