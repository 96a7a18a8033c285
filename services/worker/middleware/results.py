"""Results: what a succeeded task returned goes into its row, or into result storage when large.

The value is turned into strict JSON once (``shared/results/encoding.py``); one that has
no JSON form fails the job for good, naming the type and where it is in the result.

Runs before the outcomes middleware records the success (Dramatiq calls
``after_process_message`` hooks last-listed first): the outcome then has the
result to commit, or the reason it could not be stored, which fails the attempt.
"""

from __future__ import annotations

import logging
from typing import Any

from dramatiq.broker import Broker, MessageProxy
from dramatiq.middleware import Middleware

from services.worker.middleware.claims import Attempt, Claims
from shared import tracing
from shared.results import ResultStorage
from shared.results.encoding import ResultNotJSON, encode

log = logging.getLogger(__name__)


class Results(Middleware):
    def __init__(self, claims: Claims, results: ResultStorage, *, inline_max_bytes: int) -> None:
        self.claims = claims
        self.results = results
        self.inline_max_bytes = inline_max_bytes

    def after_process_message(
        self,
        broker: Broker,
        message: MessageProxy,
        *,
        result: Any = None,
        exception: BaseException | None = None,
    ) -> None:
        attempt = self.claims.current(message)
        if attempt is None or exception is not None or attempt.context is None:
            return
        with tracing.span("store result"):
            self._store(attempt)

    def _store(self, attempt: Attempt) -> None:
        """Put the task's result inline on the attempt, or in result storage (big or a file)."""
        context = attempt.context
        assert context is not None
        job = attempt.job
        url = f"/v1/jobs/{job.id}/result"
        try:
            if isinstance(context.result, bytes | bytearray) and not context.result_file_type:
                self.results.put(job.id, bytes(context.result), "application/octet-stream")
                attempt.result, attempt.result_url = None, url
                return
            value, body = encode(context.result)
            result_url = url if context.result_file_type else None
            if result_url is None and len(body) > self.inline_max_bytes:
                self.results.put(job.id, body, "application/json")
                value, result_url = None, url
        except ResultNotJSON as exc:
            # NOTE: refused here, before any write: a value the store cannot encode would fail the
            # group commit of every job beside it.
            log.error("job %s: %s", job.id, exc)
            attempt.result_error = exc
            return
        except Exception as exc:
            # NOTE: the task ran but its result could not be stored (result storage full or
            # away); left alone, the row would stay running with its message acked.
            log.error("job %s: storing its result failed: %s", job.id, exc)
            attempt.result_error = exc
            return
        attempt.result, attempt.result_url = value, result_url
