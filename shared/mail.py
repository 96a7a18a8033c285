"""What jobrelay knows of mail before sending any: the SMTP server of ``SMTP_URL`` and address syntax.

Both are parsed when the settings are (a malformed ``SMTP_URL`` or ``SMTP_FROM``
stops the process at start) and again by ``emails.send`` for its recipients.
"""

from __future__ import annotations

import dataclasses
import re
from dataclasses import dataclass
from email.utils import parseaddr
from urllib.parse import parse_qs, unquote, urlsplit

#: Seconds a socket operation with the SMTP server may take, unless ``SMTP_URL`` says ``?timeout=``.
DEFAULT_TIMEOUT_S = 30.0
_ADDRESS = re.compile(r"^[^@\s<>()\[\],;:\"]+@[^@\s<>()\[\],;:\"]+$")
_ON = ("1", "true", "yes", "on")
_OFF = ("0", "false", "no", "off")
_QUERY = frozenset({"starttls", "timeout"})


class InvalidAddress(ValueError):
    """Not an email address (``addr`` or ``Name <addr>``)."""


@dataclass(frozen=True)
class SmtpServer:
    """Where and how to send: ``smtp://[user:password@]host[:port][?starttls=1&timeout=30]``, or ``smtps://``."""

    host: str = "localhost"
    port: int = 25
    #: ``smtps://``: TLS from the first byte (port 465 by default).
    implicit_tls: bool = False
    #: ``?starttls=1``: upgrade a plain connection with STARTTLS before logging in.
    starttls: bool = False
    user: str | None = None
    password: str = dataclasses.field(default="", repr=False)
    timeout_s: float = DEFAULT_TIMEOUT_S

    @classmethod
    def from_url(cls, raw: str) -> SmtpServer:
        """Parse ``raw``; ``ValueError`` says what is wrong without echoing the URL (it may hold a password)."""
        parts = urlsplit(raw)
        if parts.scheme not in ("smtp", "smtps"):
            raise ValueError("must start with smtp:// or smtps://")
        try:
            query = parse_qs(parts.query, keep_blank_values=True, strict_parsing=bool(parts.query))
        except ValueError:
            raise ValueError("the query must be key=value pairs joined by '&'") from None
        unknown = sorted(set(query) - _QUERY)
        if unknown:
            raise ValueError(f"unknown query parameter {unknown[0]!r} (known: starttls, timeout)")
        try:
            port = parts.port or (465 if parts.scheme == "smtps" else 25)
        except ValueError:
            raise ValueError("the port must be a number between 0 and 65535") from None
        try:
            timeout_s = float(query.get("timeout", [DEFAULT_TIMEOUT_S])[0])
        except ValueError:
            raise ValueError("timeout must be a number of seconds") from None
        if not 0 < timeout_s <= 3600:
            raise ValueError("timeout must be between 0 (excluded) and 3600 seconds")
        starttls_raw = query.get("starttls", ["0"])[0].lower()
        if starttls_raw not in (*_ON, *_OFF):
            raise ValueError("starttls must be on or off")
        starttls = starttls_raw in _ON
        if starttls and parts.scheme == "smtps":
            raise ValueError("starttls is for smtp://; smtps:// is TLS from the first byte already")
        return cls(
            host=parts.hostname or "localhost",
            port=port,
            implicit_tls=parts.scheme == "smtps",
            starttls=starttls,
            user=unquote(parts.username) if parts.username else None,
            password=unquote(parts.password or ""),
            timeout_s=timeout_s,
        )


def parse_address(value: str, what: str) -> tuple[str, str]:
    """``(display name, addr)`` of ``addr`` or ``Name <addr>``; minimal checks, the server has the last word.

    ``InvalidAddress`` names ``what`` (``to``, ``SMTP_FROM``) and the value.
    """
    if any(ch in value for ch in "\r\n") or len(value) > 320:
        raise InvalidAddress(f"{what}: {value[:80]!r} is not an email address")
    name, addr = parseaddr(value)
    # parseaddr() quietly repairs some mistakes ("a@exa mple.com"); what was written must be what is used.
    written = value[value.rfind("<") + 1 : value.rfind(">")] if "<" in value else value
    if written.strip() != addr:
        raise InvalidAddress(f"{what}: {value!r} is not an email address")
    domain = addr.rpartition("@")[2]
    if len(addr) > 254 or not _ADDRESS.match(addr) or ".." in domain or domain.strip(".-") != domain:
        raise InvalidAddress(f"{what}: {value!r} is not an email address")
    return name, addr
