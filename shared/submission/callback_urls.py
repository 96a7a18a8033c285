"""The ``callback_url`` of a job or workflow request: an http(s) URL, refused when it points inside the network.

NOTE: the platform POSTs to the URL from inside its own network, so a URL whose host is (or resolves
to) a loopback, private, link-local, shared, multicast or otherwise reserved address would let any
API key make the workers call internal services (SSRF): such URLs are refused unless
``CALLBACK_ALLOW_PRIVATE=on``. The check runs at submission; a host whose DNS answer changes later
(DNS rebinding) is not caught here, see docs/api.md.
"""

from __future__ import annotations

import ipaddress
import re
import socket
from urllib.parse import urlsplit

from shared.errors import FieldError

MAX_URL_LENGTH = 2048
_PORT = "6553[0-5]|655[0-2][0-9]|65[0-4][0-9]{2}|6[0-4][0-9]{3}|[1-5][0-9]{4}|[0-9]{1,4}"
#: What the API takes, word for word the OpenAPI document's pattern (so generated URLs are accepted):
#: http(s), a host name or IPv4 address (no user info, no IPv6 literal), an optional port, then any
#: path, query and fragment without spaces or control characters.
CALLBACK_URL_PATTERN = rf"^https?://[^\x00-\x20\x7f/?#@:\[\]\\]+(:({_PORT}))?([/?#][^\x00-\x20\x7f]*)?$"
_URL = re.compile(CALLBACK_URL_PATTERN)


def callback_url_error(url: object, pointer: str, *, allow_private: bool) -> FieldError | None:
    """What is wrong with ``url`` as a callback URL (at ``pointer``), or None when it can be used."""
    if not isinstance(url, str) or len(url) > MAX_URL_LENGTH or not _URL.fullmatch(url):
        return FieldError(
            pointer,
            f"must be an http:// or https:// URL with a host name or IPv4 address, at most {MAX_URL_LENGTH} "
            "characters, no spaces",
        )
    if allow_private:
        return None
    try:
        parts = urlsplit(url)
        host, port = parts.hostname or "", parts.port
    except ValueError as exc:
        return FieldError(pointer, f"is not a usable URL: {exc}")
    try:
        addresses = {str(info[4][0]) for info in socket.getaddrinfo(host, port or 443, proto=socket.IPPROTO_TCP)}
    except (OSError, UnicodeError):
        return FieldError(pointer, f"its host {host!r} does not resolve")
    for address in sorted(addresses):
        if not is_public(address):
            return FieldError(
                pointer,
                f"its host {host!r} is a loopback, private, link-local or reserved address ({address}); "
                "set CALLBACK_ALLOW_PRIVATE=on to allow it",
            )
    return None


def is_public(address: str) -> bool:
    """Whether ``address`` is globally routable unicast (an IPv4-mapped IPv6 address is judged as IPv4)."""
    ip = ipaddress.ip_address(address.split("%", 1)[0])
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    return ip.is_global and not ip.is_multicast
