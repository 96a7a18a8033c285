"""Log lines in both formats: a traceback formatted once by the caller prints where ``exc_info``'s would."""

from __future__ import annotations

import json
import logging

import pytest

from shared.logs import configure_logging, log_context, log_with_trace

TRACE = 'Traceback (most recent call last):\n  File "task.py", line 3, in run\nValueError: boom\n'


def test_a_json_line_carries_the_given_trace_and_the_context(
    capsys: pytest.CaptureFixture[str], restore_logging: None
) -> None:
    configure_logging("worker", "INFO", json_lines=True)
    with log_context(job_id="j1"):
        log_with_trace(logging.getLogger("jobrelay.test"), logging.ERROR, TRACE, "job %s failed", "j1")
    [line] = [json.loads(text) for text in capsys.readouterr().err.splitlines()]
    assert line["message"] == "job j1 failed" and line["level"] == "error" and line["job_id"] == "j1"
    assert line["exc"] == TRACE.rstrip("\n")


def test_a_text_line_prints_the_given_trace_under_it(capsys: pytest.CaptureFixture[str], restore_logging: None) -> None:
    configure_logging("worker", "INFO", json_lines=False)
    log_with_trace(logging.getLogger("jobrelay.test"), logging.ERROR, TRACE, "job %s failed", "j1")
    lines = capsys.readouterr().err.splitlines()
    assert lines[0].endswith("ERROR jobrelay.test: job j1 failed")
    assert lines[1:] == TRACE.rstrip("\n").splitlines()


def test_nothing_is_written_below_the_level(capsys: pytest.CaptureFixture[str], restore_logging: None) -> None:
    configure_logging("worker", "CRITICAL", json_lines=True)
    log_with_trace(logging.getLogger("jobrelay.test"), logging.ERROR, TRACE, "job failed")
    assert capsys.readouterr().err == ""
