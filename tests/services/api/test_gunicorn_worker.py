"""The gunicorn worker class: importable by gunicorn's master without the app's drivers."""

from __future__ import annotations

import subprocess
import sys


def test_the_worker_class_imports_no_driver_before_gevent_patches_the_worker() -> None:
    # Given gunicorn's master, which imports the worker class before it forks the workers
    code = (
        "import sys, services.api.gunicorn_worker\n"
        "print(sorted({m.split('.')[0] for m in sys.modules} & {'redis', 'sqlalchemy', 'psycopg', 'dramatiq'}))"
    )
    # When the worker class is imported in a fresh interpreter
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    # Then no Redis or SQL driver came with it (gevent patches sockets in each worker, after the fork)
    assert out.strip() == "[]"
