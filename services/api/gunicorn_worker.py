"""Gunicorn's threaded worker, but a request it cannot parse is never answered with a 5xx.

Gunicorn answers a ``Transfer-Encoding`` it does not know (even an empty one)
with 501; the API's contract is that no content of a request causes a 5xx,
so that answer is a 400 naming the header.
"""

from __future__ import annotations

from typing import Any

from gunicorn.http.errors import InvalidHeader, UnsupportedTransferCoding
from gunicorn.workers.gthread import ThreadWorker as GunicornThreadWorker


class ThreadWorker(GunicornThreadWorker):
    def handle_error(self, req: Any, client: Any, addr: Any, exc: BaseException) -> None:
        if isinstance(exc, UnsupportedTransferCoding):
            exc = InvalidHeader(f"Transfer-Encoding ({exc or 'empty'}): only chunked is supported")
        super().handle_error(req, client, addr, exc)
