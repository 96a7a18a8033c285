"""``webhooks.deliver``: POST a signed JSON payload, retrying what a retry can fix.

Receivers verify the ``X-Jobrelay-Signature: t=<unix time>,v1=<hex>`` header:
``v1`` is the HMAC-SHA256, keyed with ``WEBHOOK_SIGNING_SECRET`` (a setting the
worker reads at start), of ``"<t>." + raw body``; rejecting old ``t`` values stops replays. Every attempt
of one job carries the same ``X-Jobrelay-Delivery`` (the job id), so a
receiver can drop a delivery it has already processed: delivery is
at-least-once.

5xx, 408, 429, timeouts and connection errors raise ``DeliveryFailed`` (or
``Retry`` when the receiver sent ``Retry-After``) and are retried with
backoff. Other 4xx and redirects (never followed: a POST body must not be
replayed elsewhere) raise ``DeliveryRejected``; a bad URL, header or missing
secret raises ``InvalidWebhook``; both fail the job at once.
"""

from __future__ import annotations

import hashlib
import hmac
import http.client
import json
import re
import time
import urllib.error
import urllib.request
import uuid
from email.utils import parsedate_to_datetime
from typing import Annotated, Any, NoReturn
from urllib.parse import urlsplit

from services.worker.context import current_job, current_settings
from services.worker.retry_policy import Retry
from shared.catalog import task
from shared.schema import Schema

SIGNATURE_HEADER = "X-Jobrelay-Signature"
DELIVERY_HEADER = "X-Jobrelay-Delivery"
USER_AGENT = "jobrelay-webhooks/1"
#: Longest ``Retry-After`` honoured; a receiver asking for more gets the task's own backoff cap.
MAX_RETRY_AFTER_S = 3600.0
#: Bytes of the receiver's answer kept in the result (and in error messages).
EXCERPT_BYTES = 512
_RETRYABLE_STATUS = frozenset({408, 429})
_TOKEN = re.compile(r"^[!#$%&'*+.^_`|~0-9A-Za-z-]+$")
#: Headers the task sets itself; a caller cannot replace them.
_RESERVED = frozenset({"host", "content-length", "content-type", "transfer-encoding", "connection"})


class DeliveryFailed(Exception):
    """The receiver could not take the delivery now (5xx, 408, 429, timeout, connection): retried."""


class DeliveryRejected(Exception):
    """The receiver refused the delivery (4xx other than 408/429, or a redirect): not retried."""


class InvalidWebhook(ValueError):
    """The URL, a header or the signing secret is unusable: not retried."""


class _NoRedirects(urllib.request.HTTPRedirectHandler):
    def redirect_request(self, *args: Any, **kwargs: Any) -> None:
        return None  # the 3xx surfaces as an HTTPError


_opener = urllib.request.build_opener(_NoRedirects())


def sign(secret: bytes, timestamp: int, body: bytes) -> str:
    """The signature header value for ``body`` sent at ``timestamp``."""
    digest = hmac.new(secret, str(timestamp).encode() + b"." + body, hashlib.sha256).hexdigest()
    return f"t={timestamp},v1={digest}"


def verify(secret: bytes, header: str, body: bytes, *, tolerance_s: float = 300, now: float | None = None) -> bool:
    """What a receiver does: check the signature and that the timestamp is recent (stops replays)."""
    fields = dict(part.split("=", 1) for part in header.split(",") if "=" in part)
    try:
        timestamp = int(fields["t"])
    except (KeyError, ValueError):
        return False
    if abs((time.time() if now is None else now) - timestamp) > tolerance_s:
        return False
    expected = sign(secret, timestamp, body).split("v1=", 1)[1]
    return hmac.compare_digest(expected, fields.get("v1", ""))


def retry_after_s(value: str | None, *, now: float | None = None) -> float | None:
    """Seconds from a ``Retry-After`` header (delta-seconds or an HTTP date), capped; None when absent or bad."""
    if not value:
        return None
    value = value.strip()
    if value.isdigit():
        seconds = float(value)
    else:
        try:
            seconds = parsedate_to_datetime(value).timestamp() - (time.time() if now is None else now)
        except (TypeError, ValueError, IndexError):
            return None
    return min(max(0.0, seconds), MAX_RETRY_AFTER_S)


def _check(url: str, headers: dict[str, str]) -> None:
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise InvalidWebhook(f"url: only http:// and https:// URLs with a host can be delivered to, not {url[:100]!r}")
    for name, value in headers.items():
        lowered = name.lower()
        if lowered in _RESERVED or lowered.startswith("x-jobrelay-"):
            raise InvalidWebhook(f"headers: {name!r} is set by jobrelay and cannot be replaced")
        if not _TOKEN.match(name) or any(ch in value for ch in "\r\n\0"):
            raise InvalidWebhook(f"headers: {name!r} is not a valid header")


def _excerpt(data: bytes) -> str:
    return data[:EXCERPT_BYTES].decode("utf-8", errors="replace")


@task(
    name="webhooks.deliver",
    queue="webhooks",
    max_retries=10,
    time_limit_s=180,
    min_backoff_s=5,
    max_backoff_s=3600,
    non_retryable=(DeliveryRejected, InvalidWebhook),
)
def deliver(
    url: Annotated[str, Schema(maxLength=2048)],
    payload: dict[str, Any],
    headers: dict[str, str] = {},  # noqa: B006 - the JSON Schema default; never mutated
    timeout_s: Annotated[float, Schema(exclusiveMinimum=0, maximum=120)] = 10,
) -> dict[str, Any]:
    """POST ``payload`` as JSON to ``url`` with an HMAC-SHA256 signature; retries 5xx, 429 and timeouts, not 4xx."""
    _check(url, headers)
    secret = current_settings().webhook_signing_secret
    if not secret:
        raise InvalidWebhook("WEBHOOK_SIGNING_SECRET is not set; webhooks are never sent unsigned")
    context = current_job()
    delivery = context.job_id if context else str(uuid.uuid4())
    body = json.dumps(payload, separators=(",", ":"), ensure_ascii=False).encode()
    request = urllib.request.Request(url, data=body, method="POST")  # noqa: S310 - scheme checked above
    for name, value in headers.items():
        request.add_header(name, value)
    if not any(name.lower() == "user-agent" for name in headers):
        request.add_header("User-Agent", USER_AGENT)
    request.add_header("Content-Type", "application/json")
    request.add_header(DELIVERY_HEADER, delivery)
    if context:
        request.add_header("X-Jobrelay-Attempt", str(context.attempt))
    request.add_header(SIGNATURE_HEADER, sign(secret.encode(), int(time.time()), body))
    started = time.monotonic()
    try:
        with _opener.open(request, timeout=timeout_s) as response:
            answer = response.read(EXCERPT_BYTES)
            status = response.status
    except urllib.error.HTTPError as exc:
        _raise_for_status(exc)
    except (urllib.error.URLError, http.client.HTTPException, OSError) as exc:
        reason = exc.reason if isinstance(exc, urllib.error.URLError) else exc
        raise DeliveryFailed(f"POST {urlsplit(url).netloc}: {type(reason).__name__}: {reason}") from exc
    return {
        "status": status,
        "delivery": delivery,
        "elapsed_s": round(time.monotonic() - started, 3),
        "response": _excerpt(answer),
    }


def _raise_for_status(exc: urllib.error.HTTPError) -> NoReturn:
    try:
        answer = _excerpt(exc.read(EXCERPT_BYTES))
    except (OSError, http.client.HTTPException):
        answer = ""
    finally:
        exc.close()
    message = f"receiver answered {exc.code} {exc.reason}: {answer}".rstrip(": ")
    if exc.code >= 500 or exc.code in _RETRYABLE_STATUS:
        after = retry_after_s(exc.headers.get("Retry-After") if exc.headers else None)
        if after is not None:
            raise Retry(after_s=after, message=message) from exc
        raise DeliveryFailed(message) from exc
    raise DeliveryRejected(message) from exc
