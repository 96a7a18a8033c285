"""A Redis client from ``REDIS_URL``: one server, or the primary that Redis Sentinel names.

redis-py parses ``redis://``, ``rediss://`` and ``unix://`` URLs itself
(``Redis.from_url``) and follows a Sentinel-managed primary through failovers
(``redis.sentinel.Sentinel.master_for``), but has no URL form for Sentinel;
``shared/broker/sentinel_url.py`` parses the one other projects use
(``redis+sentinel://s1,s2,s3/mymaster/0``). Dramatiq and Celery leave building
such a client to the application.

A Sentinel client asks the Sentinels for the primary's address on every new
connection; when the primary dies or is demoted, the connections to it fail
(``ConnectionError``, as any Redis outage) and the next one goes to the new
primary. Every caller already treats a ``ConnectionError`` as Redis being
away for a moment, so a failover is one such moment.
"""

from __future__ import annotations

from typing import Any

import redis
from redis.sentinel import Sentinel

from shared.broker.sentinel_url import SentinelUrl, is_sentinel_url


def connect(raw: str, **options: Any) -> redis.Redis:
    """A client of the server ``raw`` names (``options``: redis-py's, e.g. ``socket_timeout``).

    For a Sentinel URL, a client of the service's primary wherever it is now; the same
    ``options`` (timeouts, retry) apply to the connections to the Sentinels, without the retry.
    """
    if not is_sentinel_url(raw):
        return redis.Redis.from_url(raw, **options)
    url = SentinelUrl.parse(raw)
    to_sentinels: dict[str, Any] = {
        name: options[name] for name in ("socket_connect_timeout", "socket_timeout") if name in options
    }
    to_sentinels.update(ssl=url.tls, username=url.sentinel_username, password=url.sentinel_password)
    sentinel = Sentinel(list(url.sentinels), sentinel_kwargs=to_sentinels)
    return sentinel.master_for(
        url.service_name,
        redis_class=redis.Redis,
        db=url.db,
        username=url.username,
        password=url.password,
        ssl=url.tls,
        **options,
    )
