"""The API on a store whose disk fills up: 503 to submissions, not ready, reads and health go on."""

from __future__ import annotations

import errno
from collections.abc import Iterator
from pathlib import Path

import falcon
import pytest
from falcon import testing

from tests.disk import CannotMount, Filler, small_tmpfs

ECHO = {"task": "diagnostics.echo", "args": {"message": "hi"}}


@pytest.fixture
def disk(tmp_path: Path) -> Iterator[Path]:
    try:
        with small_tmpfs(tmp_path / "disk", size="2m") as path:
            yield path
    except CannotMount as exc:
        pytest.skip(str(exc))


@pytest.fixture
def database_url(disk: Path) -> str:
    """The API's store (``client`` in conftest) on the small disk."""
    return f"sqlite:///{disk / 'jobrelay.db'}"


def test_a_full_disk_answers_503_to_submissions_and_not_ready_while_reads_and_health_go_on(
    client: testing.TestClient, disk: Path
) -> None:
    # Given an API whose store takes jobs
    assert client.simulate_post("/v1/jobs", json=ECHO).status_code == 202
    filler = Filler(disk)
    filler.fill()
    try:
        # When its disk is full, a submission is refused with a clear 503, to be tried again
        refused = client.simulate_post("/v1/jobs", json=ECHO)
        assert refused.status_code == 503, refused.text
        assert refused.headers["content-type"] == "application/problem+json"
        assert refused.headers["retry-after"] == "1"
        # And the API says it is not ready, naming the store's full disk
        ready = client.simulate_get("/readyz")
        assert ready.status_code == 503
        assert ready.json["checks"] == {"store": "DiskFull", "redis": "ok"}
        # While the process lives, reads are answered
        assert client.simulate_get("/healthz").status_code == 200
        listed = client.simulate_get("/v1/jobs")
        assert listed.status_code == 200 and len(listed.json["items"]) == 1
    finally:
        filler.free()
    # When the disk has room again, submissions are taken and the API is ready
    assert client.simulate_post("/v1/jobs", json=ECHO).status_code == 202
    assert client.simulate_get("/readyz").status_code == 200


class _WritesAFile:
    public = True

    def __init__(self, error: int) -> None:
        self.error = error

    def on_get(self, req: falcon.Request, resp: falcon.Response) -> None:
        raise OSError(self.error, "from the test")


@pytest.mark.parametrize(("error", "status"), [(errno.ENOSPC, 503), (errno.EDQUOT, 503), (errno.EACCES, 500)])
def test_an_os_error_of_a_full_disk_is_a_503_any_other_a_500(
    client: testing.TestClient, error: int, status: int
) -> None:
    app: falcon.App = client.app
    app.add_route("/test/os-error", _WritesAFile(error))
    assert client.simulate_get("/test/os-error").status_code == status
