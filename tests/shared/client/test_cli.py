"""``jobrelay submit`` / ``status`` / ``queues`` run against the real API served over loopback HTTP."""

from __future__ import annotations

import argparse
import io
import json
import re
from pathlib import Path

import pytest

from shared.client import JobrelayClient
from shared.client.cli import add_commands, parse_value, run
from shared.client.output import ProgressView, render_progress
from shared.redis_server import free_port
from tests.services.worker.conftest import Harness, harness, worker_settings  # noqa: F401
from tests.shared.client.test_client import ADMIN, WRITER, api_url, database_url  # noqa: F401

BAR = re.compile(r"^\[[#-]{20}\] +\d{1,3}%  (.+  )?\((queued|scheduled|running|retrying|succeeded|failed|cancelled)\)$")


def parse(*argv: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="jobrelay")
    add_commands(parser.add_subparsers(dest="command", required=True))
    return parser.parse_args(list(argv))


def cli(*argv: str) -> int:
    return run(parse(*argv))


@pytest.fixture
def env(api_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> str:  # noqa: F811
    """Point the CLI at the test server through its environment variables."""
    monkeypatch.setenv("JOBRELAY_URL", api_url)
    monkeypatch.setenv("JOBRELAY_TOKEN", WRITER)
    monkeypatch.setenv("DATA_DIR", str(tmp_path / "no-data"))
    return api_url


@pytest.fixture
def api(env: str) -> JobrelayClient:
    return JobrelayClient(env, WRITER)


def test_submit_parses_arg_values_as_json_when_they_parse(env: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert cli("submit", "diagnostics.sleep", "--arg", "seconds=2", "--json") == 0
    job = json.loads(capsys.readouterr().out)
    assert job["args"] == {"seconds": 2} and job["status"] == "queued"

    assert cli("submit", "diagnostics.echo", "--json-args", '{"message": "json"}', "--arg", "message=hi", "--json") == 0
    assert json.loads(capsys.readouterr().out)["args"] == {"message": "hi"}


def test_submit_with_delay_and_queue(env: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert (
        cli("submit", "diagnostics.echo", "--arg", "message=later", "--delay", "60", "--queue", "default", "--json")
        == 0
    )
    job = json.loads(capsys.readouterr().out)
    assert job["status"] == "scheduled" and job["queue"] == "default"


@pytest.mark.parametrize(
    ("raw", "value"),
    [("2", 2), ("2.5", 2.5), ("hi", "hi"), ("true", True), ("null", None), ('"2"', "2"), ("[1]", [1]),
     ("NaN", "NaN"), ("", ""), ("a=b", "a=b")],
)  # fmt: skip
def test_parse_value(raw: str, value: object) -> None:
    assert parse_value(raw) == value


def test_malformed_arg_is_a_usage_error(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as caught:
        parse("submit", "diagnostics.echo", "--arg", "message")
    assert caught.value.code == 2 and "KEY=VALUE" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        parse("submit", "diagnostics.echo", "--json-args", "[1, 2]")
    assert parse("submit", "t", "--arg", "query=a=b").arg == [("query", "a=b")]


def test_submit_wait_exits_0_on_success_and_1_on_failure(
    env: str,
    harness: Harness,  # noqa: F811
    capsys: pytest.CaptureFixture[str],
) -> None:
    assert cli("submit", "diagnostics.echo", "--arg", "message=hi", "--wait", "--timeout", "10", "--json") == 0
    done = json.loads(capsys.readouterr().out)
    assert done["status"] == "succeeded" and done["result"] == "hi"

    assert cli("submit", "diagnostics.fail", "--max-retries", "0", "--wait", "--timeout", "10", "--json") == 1
    failed = json.loads(capsys.readouterr().out)
    assert failed["status"] == "failed" and failed["error"]["type"] == "DiagnosticFailure"


def test_submit_wait_timeout_exits_2(env: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert cli("submit", "diagnostics.echo", "--arg", "message=hi", "--wait", "--timeout", "0.2") == 2
    captured = capsys.readouterr()
    assert captured.out == "" and "still queued after 0.2s" in captured.err


def test_status_prints_the_job(api: JobrelayClient, capsys: pytest.CaptureFixture[str]) -> None:
    job = api.submit("diagnostics.echo", {"message": "hi"})
    assert cli("status", job["id"], "--json") == 0
    assert json.loads(capsys.readouterr().out) == job


def test_status_watch_draws_progress_until_final(
    api: JobrelayClient,
    harness: Harness,  # noqa: F811
    capsys: pytest.CaptureFixture[str],
) -> None:
    job = api.submit("diagnostics.sleep", {"seconds": 1.0})
    assert cli("status", job["id"], "--watch") == 0
    lines = capsys.readouterr().out.splitlines()
    assert all(BAR.match(line) for line in lines), lines
    assert any(line.endswith("sleeping  (running)") for line in lines), lines
    assert lines[-1] == "[####################] 100%  done  (succeeded)"


def test_status_watch_of_a_failing_job_exits_1_with_its_error(
    api: JobrelayClient,
    harness: Harness,  # noqa: F811
    capsys: pytest.CaptureFixture[str],
) -> None:
    job = api.submit("diagnostics.fail", {"message": "boom"}, max_retries=0)
    assert cli("status", job["id"], "--watch") == 1
    lines = capsys.readouterr().out.splitlines()
    assert lines[-2].endswith("(failed)") and lines[-1].startswith("error: DiagnosticFailure: boom")


def test_render_progress() -> None:
    running = {"status": "running", "progress": {"current": 9, "total": 20, "message": "sleeping"}}
    assert render_progress(running) == "[#########-----------]  45%  sleeping  (running)"
    assert render_progress({"status": "queued", "progress": None}) == "[--------------------]   0%  (queued)"
    assert render_progress({"status": "succeeded", "progress": None}) == "[####################] 100%  (succeeded)"
    odd = {"status": "running", "progress": {"current": 7, "total": 0, "message": "a\nb\r"}}
    assert render_progress(odd) == "[--------------------]   0%  a b  (running)"


def test_progress_view_redraws_in_place_on_a_terminal() -> None:
    class Terminal(io.StringIO):
        def isatty(self) -> bool:
            return True

    out = Terminal()
    view = ProgressView(out)
    for current in (0, 0, 1, 2):
        view.update({"status": "running", "progress": {"current": current, "total": 2, "message": ""}})
    view.close()
    text = out.getvalue()
    assert text.count("\r") == 3 and text.endswith("(running)\x1b[K\n") and "\n" not in text[:-1]


def test_invalid_arguments_exit_2_with_one_line_naming_each_path(env: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert cli("submit", "diagnostics.sleep", "--arg", "seconds=-1") == 2
    captured = capsys.readouterr()
    [line] = captured.err.splitlines()
    assert captured.out == "" and line.startswith("jobrelay submit: ") and "422" in line and "/args/seconds: " in line


def test_wrong_token_exits_2_without_showing_it(env: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert cli("status", "some-id", "--token", "wrong-s3cret-token") == 2
    err = capsys.readouterr().err
    assert "401" in err and "JOBRELAY_TOKEN" in err and "wrong-s3cret-token" not in err


def test_unknown_job_exits_2(env: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert cli("status", "no-such-job") == 2
    assert "404" in capsys.readouterr().err


def test_unreachable_api_exits_2(env: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert cli("status", "x", "--url", f"http://127.0.0.1:{free_port()}") == 2
    err = capsys.readouterr().err
    assert "cannot reach" in err and "JOBRELAY_URL" in err
    assert cli("status", "x", "--url", "127.0.0.1:8000") == 2
    assert "http://" in capsys.readouterr().err


def test_token_falls_back_to_the_dev_key_file(
    env: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.delenv("JOBRELAY_TOKEN")
    data_dir = tmp_path / "data"
    data_dir.mkdir()
    monkeypatch.setenv("DATA_DIR", str(data_dir))
    (data_dir / "dev-api-key").write_text(f"dev:{ADMIN}:admin\n")
    assert cli("submit", "diagnostics.echo", "--arg", "message=hi", "--json") == 0
    assert json.loads(capsys.readouterr().out)["status"] == "queued"

    (data_dir / "dev-api-key").write_text("garbage\n")
    assert cli("status", "x") == 2
    assert "name:token:scopes" in capsys.readouterr().err


def test_queues_pause_list_and_resume(env: str, capsys: pytest.CaptureFixture[str]) -> None:
    # a write key may not pause
    assert cli("queues", "pause", "default") == 2
    assert "403" in capsys.readouterr().err
    assert cli("queues", "pause", "default", "--token", ADMIN, "--json") == 0
    assert json.loads(capsys.readouterr().out)["paused"] is True
    assert cli("queues", "--json") == 0
    listed = {q["name"]: q["paused"] for q in json.loads(capsys.readouterr().out)["items"]}
    assert listed["default"] is True
    assert cli("queues", "resume", "default", "--token", ADMIN, "--json") == 0
    assert json.loads(capsys.readouterr().out) == {"name": "default", "paused": False, "paused_at": None}
    assert JobrelayClient(env, ADMIN).queues()[0]["paused"] is False
    # no name, or an unknown queue
    assert cli("queues", "pause", "--token", ADMIN) == 2
    assert "NAME" in capsys.readouterr().err
    assert cli("queues", "resume", "nope", "--token", ADMIN) == 2
    assert "404" in capsys.readouterr().err
