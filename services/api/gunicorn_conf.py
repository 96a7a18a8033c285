"""Gunicorn hooks: keep the multiprocess metrics of exited workers correct, and log like every other process."""

from __future__ import annotations

import logging
from typing import Any

from gunicorn.glogging import Logger

from shared.logs import configure_logging
from shared.metrics import mark_process_dead
from shared.settings import Settings

accesslog = None
errorlog = "-"
# The runtime control socket (gunicorn 25+) would be shared by every API on the machine.
control_socket_disable = True


class ApiLogger(Logger):
    """Gunicorn's own lines (booting, worker exits) in the format ``LOG_JSON`` chooses, not its plain text."""

    def setup(self, cfg: Any) -> None:
        super().setup(cfg)
        settings = Settings.from_env()
        configure_logging("api", settings.log_level, json_lines=settings.log_json)
        # NOTE: gunicorn gives its loggers their own handlers; sending them to the root handler
        # puts its lines through the same formatter as the app's.
        for name in ("gunicorn.error", "gunicorn.access"):
            logger = logging.getLogger(name)
            logger.handlers[:] = []
            logger.propagate = True


logger_class = ApiLogger


def child_exit(server: Any, worker: Any) -> None:
    mark_process_dead(worker.pid)
