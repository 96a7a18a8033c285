"""``emails.send``: one mail over SMTP, safe to retry.

Configuration is read from the environment each time the task runs:

- ``SMTP_URL``: ``smtp://[user:password@]host[:port][?starttls=1&timeout=30]``,
  or ``smtps://`` for TLS from the first byte (port 465). Default
  ``smtp://localhost:25`` (a local MTA).
- ``SMTP_FROM``: the sender, ``addr`` or ``Name <addr>``; default
  ``jobrelay@<this host's FQDN>``.

Delivery is at-least-once, like every job: the Message-ID is derived from the
job id, so a retried attempt sends the very same message, which MTAs, archives
and mail clients recognise as one. Transient failures (connection refused or
dropped, timeouts, 4xx replies) raise ``EmailDeferred`` and are retried with
backoff; permanent 5xx replies raise ``EmailRejected`` and malformed addresses
or settings raise ``InvalidEmail``, both failing the job at once.
"""

from __future__ import annotations

import os
import re
import smtplib
import socket
import ssl
from email.message import EmailMessage
from email.utils import formataddr, formatdate, make_msgid, parseaddr
from typing import Annotated, Any
from urllib.parse import parse_qs, unquote, urlsplit

from services.worker.context import current_job
from shared.catalog import task
from shared.schema import Schema

#: Seconds a socket operation with the SMTP server may take, unless ``SMTP_URL`` says ``?timeout=``.
DEFAULT_TIMEOUT_S = 30.0
_ADDRESS = re.compile(r"^[^@\s<>()\[\],;:\"]+@[^@\s<>()\[\],;:\"]+$")
_TRUE = ("1", "true", "yes", "on")


class EmailDeferred(Exception):
    """A transient failure (connection, timeout, 4xx): the job is retried."""


class EmailRejected(Exception):
    """The server refused the mail for good (5xx): retrying cannot help."""


class InvalidEmail(ValueError):
    """An address, the subject or an SMTP setting is malformed."""


def parse_address(value: str, what: str) -> tuple[str, str]:
    """``(display name, addr)`` of ``addr`` or ``Name <addr>``; minimal checks, the server has the last word."""
    if any(ch in value for ch in "\r\n") or len(value) > 320:
        raise InvalidEmail(f"{what}: {value[:80]!r} is not an email address")
    name, addr = parseaddr(value)
    # parseaddr() quietly repairs some mistakes ("a@exa mple.com"); what was written must be what is used.
    written = value[value.rfind("<") + 1 : value.rfind(">")] if "<" in value else value
    if written.strip() != addr:
        raise InvalidEmail(f"{what}: {value!r} is not an email address")
    domain = addr.rpartition("@")[2]
    if len(addr) > 254 or not _ADDRESS.match(addr) or ".." in domain or domain.strip(".-") != domain:
        raise InvalidEmail(f"{what}: {value!r} is not an email address")
    return name, addr


def _smtp_settings() -> dict[str, Any]:
    raw = os.environ.get("SMTP_URL", "").strip() or "smtp://localhost:25"
    # NOTE: the URL may hold a password; errors below never echo it.
    parts = urlsplit(raw)
    if parts.scheme not in ("smtp", "smtps"):
        raise InvalidEmail("SMTP_URL: must start with smtp:// or smtps://")
    query = parse_qs(parts.query)
    try:
        port = parts.port or (465 if parts.scheme == "smtps" else 25)
        timeout = float(query.get("timeout", [DEFAULT_TIMEOUT_S])[0])
    except ValueError:
        raise InvalidEmail("SMTP_URL: the port or timeout is not a number") from None
    return {
        "implicit_tls": parts.scheme == "smtps",
        "host": parts.hostname or "localhost",
        "port": port,
        "user": unquote(parts.username) if parts.username else None,
        "password": unquote(parts.password or ""),
        "starttls": query.get("starttls", ["0"])[0].lower() in _TRUE,
        "timeout": timeout,
    }


def _failure(code: int, message: bytes | str, what: str) -> Exception:
    """A 4xx (or anything unexpected) defers; a 5xx rejects."""
    text = message.decode(errors="replace") if isinstance(message, bytes) else message
    error = f"{what}: {code} {text}".strip()
    return EmailRejected(error) if 500 <= code < 600 else EmailDeferred(error)


def build_message(
    *,
    sender: str,
    to: list[str],
    subject: str,
    body: str,
    html: str | None,
    reply_to: str | None,
    message_id: str,
) -> EmailMessage:
    if any(ch in subject for ch in "\r\n"):
        raise InvalidEmail("subject: must be one line")
    message = EmailMessage()
    message["From"] = sender
    message["To"] = ", ".join(to)
    message["Subject"] = subject
    message["Date"] = formatdate(usegmt=True)
    message["Message-ID"] = message_id
    if reply_to:
        message["Reply-To"] = formataddr(parse_address(reply_to, "reply_to"))
    message.set_content(body)
    if html is not None:
        message.add_alternative(html, subtype="html")
    return message


@task(
    name="emails.send",
    queue="emails",
    max_retries=8,
    time_limit_s=300,
    min_backoff_s=5,
    max_backoff_s=1800,
    non_retryable=(EmailRejected, InvalidEmail),
)
def send(
    to: Annotated[list[str], Schema(minItems=1, maxItems=100)],
    subject: str,
    body: str,
    html: str | None = None,
    reply_to: str | None = None,
) -> dict[str, Any]:
    """Send one mail over SMTP (``SMTP_URL``, ``SMTP_FROM``); a retry resends the same Message-ID.

    Recipients the server refuses while accepting others are listed under
    ``refused`` in the result and not retried (that would duplicate the mail
    for everyone who got it).
    """
    recipients = [parse_address(value, "to") for value in to]
    if not recipients:
        raise InvalidEmail("to: at least one recipient is needed")
    sender_name, sender_addr = parse_address(os.environ.get("SMTP_FROM", "").strip() or _default_sender(), "SMTP_FROM")
    context = current_job()
    domain = sender_addr.rsplit("@", 1)[1]
    message_id = f"<{context.job_id}.jobrelay@{domain}>" if context else make_msgid("jobrelay", domain)
    message = build_message(
        sender=formataddr((sender_name, sender_addr)),
        to=[formataddr(r) for r in recipients],
        subject=subject,
        body=body,
        html=html,
        reply_to=reply_to,
        message_id=message_id,
    )
    envelope_to = [addr for _, addr in recipients]
    refused = _transmit(_smtp_settings(), message, sender_addr, envelope_to)
    return {
        "message_id": message_id,
        "accepted": [addr for addr in envelope_to if addr not in refused],
        "refused": {addr: f"{code} {reply.decode(errors='replace')}" for addr, (code, reply) in refused.items()},
    }


def _default_sender() -> str:
    return f"jobrelay@{socket.getfqdn()}"


def _transmit(
    settings: dict[str, Any], message: EmailMessage, sender: str, recipients: list[str]
) -> dict[str, tuple[int, bytes]]:
    """One SMTP session; SMTP errors become ``EmailDeferred`` or ``EmailRejected`` by reply code."""
    tls = ssl.create_default_context()
    try:
        if settings["implicit_tls"]:
            smtp: smtplib.SMTP = smtplib.SMTP_SSL(
                settings["host"], settings["port"], timeout=settings["timeout"], context=tls
            )
        else:
            smtp = smtplib.SMTP(settings["host"], settings["port"], timeout=settings["timeout"])
    except smtplib.SMTPConnectError as exc:
        raise _failure(exc.smtp_code, exc.smtp_error, "connect") from exc
    except (OSError, smtplib.SMTPException) as exc:
        raise EmailDeferred(f"cannot reach the SMTP server {settings['host']}:{settings['port']}: {exc}") from exc
    try:
        if settings["starttls"]:
            smtp.starttls(context=tls)
        if settings["user"]:
            smtp.login(settings["user"], settings["password"])
        return smtp.send_message(message, from_addr=sender, to_addrs=recipients)
    except smtplib.SMTPNotSupportedError as exc:
        raise InvalidEmail(f"SMTP_URL: the server does not support what it asks for: {exc}") from exc
    except smtplib.SMTPRecipientsRefused as exc:
        codes = [code for code, _ in exc.recipients.values()]
        detail = "; ".join(
            f"{addr}: {code} {reply.decode(errors='replace')}" for addr, (code, reply) in exc.recipients.items()
        )
        if all(500 <= code < 600 for code in codes):
            raise EmailRejected(f"all recipients refused: {detail}") from exc
        raise EmailDeferred(f"recipients deferred: {detail}") from exc
    except smtplib.SMTPResponseException as exc:
        raise _failure(exc.smtp_code, exc.smtp_error, type(exc).__name__) from exc
    except (OSError, smtplib.SMTPException) as exc:
        raise EmailDeferred(f"SMTP session failed: {type(exc).__name__}: {exc}") from exc
    finally:
        # The mail is accepted once DATA is answered; a failed QUIT must not make it look unsent.
        try:
            smtp.quit()
        except (OSError, smtplib.SMTPException):
            smtp.close()
