"""``REDIS_URL`` to a client: the Sentinel URL's parts, and a real Sentinel group followed through a failover."""

from __future__ import annotations

import os
import signal
from collections.abc import Iterator

import pytest
import redis
from redis.sentinel import SentinelConnectionPool

from shared.broker.connections import connect
from shared.broker.publishing import redis_client
from shared.broker.sentinel_url import SentinelUrl, check_redis_url
from tests.sentinel import SERVICE, SentinelGroup


def test_a_sentinel_url_names_its_sentinels_service_database_and_credentials() -> None:
    url = SentinelUrl.parse("rediss+sentinel://app:s%3Acret@s1:26380,s2,[::1]:26381/main%2Fq/3?sentinel_password=sp")

    assert url.sentinels == (("s1", 26380), ("s2", 26379), ("::1", 26381))
    assert (url.service_name, url.db, url.tls) == ("main/q", 3, True)
    assert (url.username, url.password) == ("app", "s:cret")
    assert (url.sentinel_username, url.sentinel_password) == (None, "sp")


def test_a_sentinel_url_without_user_or_database_defaults_them() -> None:
    url = SentinelUrl.parse("redis+sentinel://:pw@s1/mymaster")

    assert (url.username, url.password, url.db, url.tls) == (None, "pw", 0, False)


def test_passwords_are_not_in_the_parsed_urls_repr() -> None:
    assert "secret" not in repr(SentinelUrl.parse("redis+sentinel://:secret@s1/m?sentinel_password=secret"))


@pytest.mark.parametrize("url", ["redis://h:6379/0", "rediss://h/1", "unix:///run/redis.sock"])
def test_plain_urls_pass_to_redis_py_unchanged(url: str) -> None:
    assert check_redis_url(url) == url


@pytest.fixture(scope="module")
def sentinels(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SentinelGroup]:
    group = SentinelGroup(tmp_path_factory.mktemp("sentinel"))
    try:
        yield group.start()
    finally:
        group.stop()


def test_a_plain_url_connects_to_that_server(sentinels: SentinelGroup) -> None:
    primary = sentinels.primary()
    client = connect(primary.url)
    try:
        assert client.ping()
        assert not isinstance(client.connection_pool, SentinelConnectionPool)
    finally:
        client.close()


def test_the_client_follows_the_primary_through_a_failover(sentinels: SentinelGroup) -> None:
    # Given: jobrelay's own client (short timeouts, two retries) on the Sentinel URL, and a write
    # the replica has acknowledged.
    client = redis_client(sentinels.url)
    old = sentinels.primary()
    try:
        assert client.set("before", "1")
        assert client.execute_command("WAIT", 1, 5000) == 1
        assert isinstance(client.connection_pool, SentinelConnectionPool)
        assert client.connection_pool.service_name == SERVICE

        # When: the primary dies outright.
        assert old.process is not None
        os.kill(old.process.pid, signal.SIGKILL)
        old.process.wait(timeout=10)
        new_port = sentinels.wait_failover(old.port, timeout_s=60)

        # Then: the same client reaches the promoted replica (a call during the failover fails as any
        # Redis outage does, with a ConnectionError), and the acknowledged write is there.
        for _ in range(50):
            try:
                assert client.get("before") == b"1"
                break
            except redis.ConnectionError:
                continue
        assert client.set("after", "2")
        assert client.connection_pool.get_master_address() == ("127.0.0.1", new_port)
        assert redis.Redis(port=new_port).get("after") == b"2"
    finally:
        client.close()
