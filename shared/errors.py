"""The one error tree. Shared code raises these; the API maps them to problem+json."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class FieldError:
    """One problem with an input, located by a JSON pointer (``/args/seconds``)."""

    path: str
    message: str


class JobrelayError(Exception):
    """Base of every error jobrelay raises on purpose."""

    title = "Error"

    def __init__(self, detail: str, errors: list[FieldError] | None = None) -> None:
        super().__init__(detail)
        self.detail = detail
        self.errors = errors or []


class SettingsError(JobrelayError):
    title = "Invalid setting"


class BadRequest(JobrelayError):
    """The body is not JSON at all (400), unlike ``InvalidInput`` (valid JSON, wrong content: 422)."""

    title = "Malformed request"


class InvalidInput(JobrelayError):
    title = "Invalid input"


class PayloadTooLarge(JobrelayError):
    title = "Payload too large"


class UnsupportedMediaType(JobrelayError):
    title = "Unsupported media type"


class Unauthorized(JobrelayError):
    """No credentials, or credentials nobody issued."""

    title = "Unauthorized"


class Forbidden(JobrelayError):
    """Known credentials without the permission this request needs."""

    title = "Forbidden"


class NotFound(JobrelayError):
    title = "Not found"


class Conflict(JobrelayError):
    title = "Conflict"


class Unavailable(JobrelayError):
    """A dependency (Redis, the job store) cannot be reached right now."""

    title = "Service unavailable"


class TooManyRequests(JobrelayError):
    """Over a quota (a namespace's waiting jobs or submissions per second): try again after ``retry_after_s``."""

    title = "Too many requests"

    def __init__(self, detail: str, *, retry_after_s: int = 1) -> None:
        super().__init__(detail)
        self.retry_after_s = retry_after_s


class TaskError(JobrelayError):
    """Raised inside the worker for problems with a task definition."""

    title = "Task error"


class LifespanError(JobrelayError):
    """A worker lifespan that is declared wrongly, failed at its start, or did not yield in time."""

    title = "Worker lifespan error"


class PermanentTaskFailure(Exception):
    """An attempt no retry can mend (a result that is not JSON): the job fails at once, whatever its retries."""
