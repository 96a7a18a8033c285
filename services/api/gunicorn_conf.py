"""Gunicorn hooks: keep the multiprocess metrics of exited workers correct."""

from __future__ import annotations

from typing import Any

from shared.metrics import mark_process_dead

accesslog = None
errorlog = "-"
# The runtime control socket (gunicorn 25+) would be shared by every API on the machine.
control_socket_disable = True


def child_exit(server: Any, worker: Any) -> None:
    mark_process_dead(worker.pid)
