"""The ports ``jobrelay up`` needs, checked before anything starts.

A port taken by another program (a second clone's stack, a dev server on 8000) used to show up
as "jobrelay is up" followed by a traceback. Now a default address that is taken is replaced by a
free port on the same host, printed; an address the user set explicitly and that is taken stops
``jobrelay up`` with one line naming the variable.
"""

from __future__ import annotations

import contextlib
import socket
from collections.abc import Iterator, Mapping
from dataclasses import dataclass

from shared.errors import SettingsError


@dataclass(frozen=True)
class Choice:
    """Where one listener of the stack will bind."""

    variable: str
    bind: str
    moved_from: str | None = None


def _split(bind: str) -> tuple[str, int]:
    host, _, port = bind.rpartition(":")
    return host.strip("[]"), int(port)


def _try_bind(host: str, port: int) -> socket.socket | None:
    """A socket bound to ``host:port`` (held by the caller), or None when the port is taken."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    # NOTE: gunicorn and the metrics servers set SO_REUSEADDR too, so a port in TIME_WAIT is free for them.
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError:
        sock.close()
        return None
    return sock


@contextlib.contextmanager
def _held() -> Iterator[list[socket.socket]]:
    socks: list[socket.socket] = []
    try:
        yield socks
    finally:
        for sock in socks:
            sock.close()


def choose_ports(wanted: Mapping[str, str], explicit: set[str]) -> list[Choice]:
    """For each ``VARIABLE: host:port``, that address if free, else a free port (unless set explicitly).

    Raises ``SettingsError`` naming the variable when an explicitly set address is taken.
    """
    choices = []
    with _held() as socks:
        for variable, bind in wanted.items():
            host, port = _split(bind)
            sock = _try_bind(host, port) if port else None
            if sock is not None:
                socks.append(sock)
                choices.append(Choice(variable, bind))
                continue
            if variable in explicit and port != 0:
                raise SettingsError(f"{variable}={bind}: port {port} is taken; set {variable} to a free HOST:PORT")
            # NOTE: every chosen socket stays bound until all are chosen, so two never get the same port.
            sock = _try_bind(host, 0)
            if sock is None:
                raise SettingsError(f"{variable}={bind}: cannot bind on {host}; set {variable} to a free HOST:PORT")
            socks.append(sock)
            new_port = sock.getsockname()[1]
            shown = f"[{host}]" if ":" in host else host
            choices.append(Choice(variable, f"{shown}:{new_port}", moved_from=bind))
    return choices
