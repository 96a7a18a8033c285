"""``emails.send`` against a real SMTP server (aiosmtpd) on loopback."""

from __future__ import annotations

import email
import email.policy
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from email.message import EmailMessage
from typing import Any

import pytest
from aiosmtpd.controller import Controller
from aiosmtpd.smtp import AuthResult, LoginPassword

from services.worker.context import JobContext
from services.worker.retry_policy import decide
from services.worker.tasks.emails import EmailDeferred, EmailRejected, InvalidEmail, send
from shared.catalog import default_catalog
from shared.redis_server import free_port
from shared.settings import Settings

TaskEnv = Callable[..., Settings]


@dataclass
class Mailbox:
    """An SMTP handler keeping accepted mail; ``answers`` scripts replies to RCPT TO per address."""

    messages: list[tuple[str, list[str], EmailMessage]] = field(default_factory=list)
    answers: dict[str, str] = field(default_factory=dict)
    logins: list[str] = field(default_factory=list)
    port: int = 0

    async def handle_RCPT(self, server: Any, session: Any, envelope: Any, address: str, options: Any) -> str:
        if address in self.answers:
            return self.answers[address]
        envelope.rcpt_tos.append(address)
        return "250 OK"

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        parsed = email.message_from_bytes(envelope.content, policy=email.policy.default)
        assert isinstance(parsed, EmailMessage)
        self.messages.append((envelope.mail_from, list(envelope.rcpt_tos), parsed))
        return "250 Message accepted for delivery"

    def authenticate(self, server: Any, session: Any, envelope: Any, mechanism: str, data: Any) -> AuthResult:
        ok = isinstance(data, LoginPassword) and (data.login, data.password) == (b"relay", b"s3cret/pw")
        if ok:
            self.logins.append(data.login.decode())
        return AuthResult(success=ok)


@pytest.fixture
def mailbox(task_env: TaskEnv) -> Iterator[Mailbox]:
    box = Mailbox(port=free_port())
    controller = Controller(
        box, hostname="127.0.0.1", port=box.port, authenticator=box.authenticate, auth_require_tls=False
    )
    controller.start()
    task_env(SMTP_URL=f"smtp://127.0.0.1:{box.port}?timeout=5", SMTP_FROM="Jobrelay <noreply@example.com>")
    yield box
    controller.stop()


def _retried(exc: BaseException) -> bool:
    return decide(default_catalog.get("emails.send"), exc, attempts=1, max_retries=8).retry


def test_mail_arrives_with_subject_body_and_a_message_id_from_the_job(mailbox: Mailbox, job: JobContext) -> None:
    result = send(
        to=["Alice <alice@example.com>", "bob@example.com"],
        subject="Your export is ready",
        body="Download it within 7 days.",
        html="<p>Download it within <b>7 days</b>.</p>",
        reply_to="support@example.com",
    )
    [(sender, recipients, message)] = mailbox.messages
    assert sender == "noreply@example.com"
    assert recipients == ["alice@example.com", "bob@example.com"]
    assert message["Subject"] == "Your export is ready"
    assert message["Message-ID"] == f"<{job.job_id}.jobrelay@example.com>" == result["message_id"]
    assert message["Reply-To"] == "support@example.com"
    assert message["To"] == "Alice <alice@example.com>, bob@example.com"
    plain = message.get_body(preferencelist=("plain",))
    html = message.get_body(preferencelist=("html",))
    assert plain is not None and plain.get_content().strip() == "Download it within 7 days."
    assert html is not None and "<b>7 days</b>" in html.get_content()
    assert result["accepted"] == ["alice@example.com", "bob@example.com"] and result["refused"] == {}


def test_a_retry_sends_the_same_message_id(mailbox: Mailbox, job: JobContext) -> None:
    send(to=["alice@example.com"], subject="hi", body="once")
    job.attempt = 2
    send(to=["alice@example.com"], subject="hi", body="once")
    first, second = (message["Message-ID"] for _, _, message in mailbox.messages)
    assert first == second


def test_credentials_from_the_url_are_used(mailbox: Mailbox, job: JobContext, task_env: TaskEnv) -> None:
    task_env(SMTP_URL=f"smtp://relay:s3cret%2Fpw@127.0.0.1:{mailbox.port}?timeout=5")
    send(to=["alice@example.com"], subject="hi", body="authenticated")
    assert mailbox.logins == ["relay"] and len(mailbox.messages) == 1


def test_permanent_refusal_fails_without_retry(mailbox: Mailbox, job: JobContext) -> None:
    mailbox.answers["ghost@example.com"] = "550 5.1.1 No such user"
    with pytest.raises(EmailRejected, match="550") as caught:
        send(to=["ghost@example.com"], subject="hi", body="nobody home")
    assert not _retried(caught.value)
    assert mailbox.messages == []


def test_partial_refusal_is_reported_not_retried(mailbox: Mailbox, job: JobContext) -> None:
    mailbox.answers["ghost@example.com"] = "550 5.1.1 No such user"
    result = send(to=["alice@example.com", "ghost@example.com"], subject="hi", body="some of you")
    assert result["accepted"] == ["alice@example.com"]
    assert result["refused"]["ghost@example.com"].startswith("550")
    assert [recipients for _, recipients, _ in mailbox.messages] == [["alice@example.com"]]


def test_temporary_refusal_is_retried(mailbox: Mailbox, job: JobContext) -> None:
    mailbox.answers["busy@example.com"] = "451 4.3.0 Try again later"
    with pytest.raises(EmailDeferred, match="451") as caught:
        send(to=["busy@example.com"], subject="hi", body="later")
    assert _retried(caught.value)


def test_server_down_is_retried(job: JobContext, task_env: TaskEnv) -> None:
    task_env(SMTP_URL=f"smtp://127.0.0.1:{free_port()}?timeout=2", SMTP_FROM="noreply@example.com")
    with pytest.raises(EmailDeferred, match="cannot reach") as caught:
        send(to=["alice@example.com"], subject="hi", body="anyone?")
    assert _retried(caught.value)


@pytest.mark.parametrize(
    "address", ["", "alice", "alice@", "@example.com", "a b@example.com", "alice@exa mple.com", "x@y.com\r\nBcc: z@q"]
)
def test_malformed_addresses_are_refused_before_connecting(address: str, job: JobContext, task_env: TaskEnv) -> None:
    task_env(SMTP_URL=f"smtp://127.0.0.1:{free_port()}")
    with pytest.raises(InvalidEmail) as caught:
        send(to=[address], subject="hi", body="x")
    assert not _retried(caught.value)


def test_multiline_subject_is_refused(mailbox: Mailbox, job: JobContext) -> None:
    with pytest.raises(InvalidEmail, match="subject"):
        send(to=["alice@example.com"], subject="hi\r\nBcc: eve@example.com", body="x")
    assert mailbox.messages == []
