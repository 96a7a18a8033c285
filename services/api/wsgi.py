"""Gunicorn's entry point: ``gunicorn services.api.wsgi:app``."""

import gc

from services.api.main import build_app

app = build_app()
# NOTE: what the app holds from here on lives as long as the worker; moved out of the collector's
# view, a full collection no longer walks it (one took about 45 ms, stalling the worker's event loop).
gc.freeze()
