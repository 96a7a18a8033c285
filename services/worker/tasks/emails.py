"""``emails.send``: one mail over SMTP, safe to retry.

Configuration comes from the worker's settings, parsed (and a malformed value
refused) when the worker starts:

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

import smtplib
import socket
import ssl
from email.message import EmailMessage
from email.utils import formataddr, formatdate, make_msgid
from typing import Annotated, Any

from services.worker.context import current_job, current_settings
from shared.catalog import task
from shared.mail import InvalidAddress, SmtpServer
from shared.mail import parse_address as parse_any_address
from shared.schema import Schema


class EmailDeferred(Exception):
    """A transient failure (connection, timeout, 4xx): the job is retried."""


class EmailRejected(Exception):
    """The server refused the mail for good (5xx): retrying cannot help."""


class InvalidEmail(ValueError):
    """An address, the subject or an SMTP setting is malformed."""


def parse_address(value: str, what: str) -> tuple[str, str]:
    """``(display name, addr)`` of ``addr`` or ``Name <addr>``; ``InvalidEmail`` (not retried) otherwise."""
    try:
        return parse_any_address(value, what)
    except InvalidAddress as exc:
        raise InvalidEmail(str(exc)) from None


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
    settings = current_settings()
    sender_name, sender_addr = parse_address(settings.smtp_from or _default_sender(), "SMTP_FROM")
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
    refused = _transmit(settings.smtp_server, message, sender_addr, envelope_to)
    return {
        "message_id": message_id,
        "accepted": [addr for addr in envelope_to if addr not in refused],
        "refused": {addr: f"{code} {reply.decode(errors='replace')}" for addr, (code, reply) in refused.items()},
    }


def _default_sender() -> str:
    return f"jobrelay@{socket.getfqdn()}"


def _transmit(
    server: SmtpServer, message: EmailMessage, sender: str, recipients: list[str]
) -> dict[str, tuple[int, bytes]]:
    """One SMTP session; SMTP errors become ``EmailDeferred`` or ``EmailRejected`` by reply code."""
    tls = ssl.create_default_context()
    try:
        if server.implicit_tls:
            smtp: smtplib.SMTP = smtplib.SMTP_SSL(server.host, server.port, timeout=server.timeout_s, context=tls)
        else:
            smtp = smtplib.SMTP(server.host, server.port, timeout=server.timeout_s)
    except smtplib.SMTPConnectError as exc:
        raise _failure(exc.smtp_code, exc.smtp_error, "connect") from exc
    except (OSError, smtplib.SMTPException) as exc:
        raise EmailDeferred(f"cannot reach the SMTP server {server.host}:{server.port}: {exc}") from exc
    try:
        if server.starttls:
            smtp.starttls(context=tls)
        if server.user:
            smtp.login(server.user, server.password)
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
