"""The ``redis+sentinel://`` URL: which Sentinels, which service, which database.

Parsed here without importing redis-py (``Settings.from_env`` checks ``REDIS_URL``
with it, and importing redis-py reads the environment). The grammar is the one
the ``redis-sentinel-url`` package, Prefect and RedisVL accept::

    redis+sentinel://[[username]:password@]host[:port][,host[:port]...]/service_name[/db][?options]
    rediss+sentinel://...   (TLS to the Sentinels and to the data nodes)

The hosts are the Sentinels (port 26379 unless given; an IPv6 host in brackets);
the user and password are the data nodes'. Options: ``sentinel_username`` and
``sentinel_password``, when the Sentinels require their own. Anything else is
refused, so a typo fails at start and not at the first failover.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from urllib.parse import parse_qs, unquote, urlsplit

SENTINEL_SCHEMES = ("redis+sentinel", "rediss+sentinel")
SERVER_SCHEMES = ("redis", "rediss", "unix")
SENTINEL_PORT = 26379
_SENTINEL_OPTIONS = ("sentinel_username", "sentinel_password")


@dataclass(frozen=True)
class SentinelUrl:
    """A parsed ``redis+sentinel://`` URL."""

    sentinels: tuple[tuple[str, int], ...]
    service_name: str
    db: int = 0
    tls: bool = False
    username: str | None = None
    password: str | None = field(default=None, repr=False)
    sentinel_username: str | None = None
    sentinel_password: str | None = field(default=None, repr=False)

    @classmethod
    def parse(cls, raw: str) -> SentinelUrl:
        """Raises ``ValueError`` saying what is wrong with ``raw``."""
        scheme, sep, rest = raw.partition("://")
        if not sep or scheme.lower() not in SENTINEL_SCHEMES:
            raise ValueError(f"a Sentinel URL starts with {' or '.join(s + '://' for s in SENTINEL_SCHEMES)}")
        # NOTE: urlsplit reads one host only; the comma-separated Sentinels are split here first.
        authority, _, tail = rest.partition("/")
        userinfo, at, hosts = authority.rpartition("@")
        if not at:
            userinfo = ""
        sentinels = tuple(_host_port(item) for item in hosts.split(",")) if hosts else ()
        if not sentinels:
            raise ValueError("names no Sentinel (host[:port][,host[:port]...])")
        parts = urlsplit(f"x://h/{tail}")
        segments = [unquote(segment) for segment in parts.path.split("/")[1:] if segment]
        if not segments:
            raise ValueError("names no service (the primary's name in the Sentinels: .../mymaster)")
        if len(segments) > 2:
            raise ValueError(f"has too many path segments ({parts.path}): want /service_name[/db]")
        db = 0
        if len(segments) == 2:
            if not segments[1].isdigit():
                raise ValueError(f"database must be a number, got {segments[1]!r}")
            db = int(segments[1])
        options = {name: values[-1] for name, values in parse_qs(parts.query, keep_blank_values=True).items()}
        unknown = sorted(set(options) - set(_SENTINEL_OPTIONS))
        if unknown:
            raise ValueError(f"unknown option(s) {', '.join(unknown)}; known: {', '.join(_SENTINEL_OPTIONS)}")
        username, colon, password = userinfo.partition(":")
        return cls(
            sentinels=sentinels,
            service_name=segments[0],
            db=db,
            tls=scheme.lower() == "rediss+sentinel",
            username=unquote(username) or None,
            password=unquote(password) if colon else None,
            sentinel_username=options.get("sentinel_username") or None,
            sentinel_password=options.get("sentinel_password") or None,
        )


def _host_port(item: str) -> tuple[str, int]:
    """``host[:port]`` (an IPv6 host in brackets: ``[::1]:26379``) and the Sentinel port by default."""
    item = item.strip()
    if item.startswith("["):
        host, bracket, rest = item[1:].partition("]")
        if not bracket or (rest and not rest.startswith(":")):
            raise ValueError(f"Sentinel {item!r} is not [IPv6 host][:port]")
        port = rest[1:] if rest else str(SENTINEL_PORT)
    else:
        host, colon, port = item.rpartition(":")
        if not colon:
            host, port = item, str(SENTINEL_PORT)
    if not host:
        raise ValueError(f"Sentinel {item!r} has no host")
    if not port.isdigit() or not 0 < int(port) < 65536:
        raise ValueError(f"Sentinel {item!r} has no valid port")
    return host, int(port)


def is_sentinel_url(raw: str) -> bool:
    return raw.partition("://")[0].lower() in SENTINEL_SCHEMES


def check_redis_url(raw: str) -> str:
    """``raw`` if it is a URL this module connects with; else ``ValueError`` saying why (for settings)."""
    if is_sentinel_url(raw):
        SentinelUrl.parse(raw)
        return raw
    scheme = raw.partition("://")[0].lower() if "://" in raw else ""
    if scheme not in SERVER_SCHEMES:
        known = (*SERVER_SCHEMES, *SENTINEL_SCHEMES)
        raise ValueError(f"must be a URL with scheme {' or '.join(s + '://' for s in known)}")
    return raw
