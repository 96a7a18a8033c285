"""Results in an S3-compatible object store: AWS S3, MinIO, Ceph RGW, Cloudflare R2 and the like.

Selected by ``RESULT_STORAGE_URL=s3://BUCKET[/prefix]``. The URL names only the
place; the endpoint, region and credentials come from the standard AWS
configuration that boto3 reads (``AWS_ENDPOINT_URL_S3`` or ``AWS_ENDPOINT_URL``,
``AWS_DEFAULT_REGION``, ``AWS_ACCESS_KEY_ID`` and ``AWS_SECRET_ACCESS_KEY``, a
profile, a web identity or an instance role).
"""

from __future__ import annotations

import contextlib
import logging
import tempfile
from collections.abc import Iterator
from typing import Any, BinaryIO, cast

import boto3
from boto3.exceptions import Boto3Error
from botocore.config import Config
from botocore.exceptions import BotoCoreError, ClientError

from shared.errors import SettingsError, Unavailable
from shared.results import S3Location, result_reference

log = logging.getLogger(__name__)

#: Error codes S3 answers for an absent object (HEAD answers a bare 404).
_MISSING = frozenset({"NoSuchKey", "404", "NotFound"})
#: A result file is kept in memory up to this size while it is written, then spills to a temporary file.
SPOOL_MAX_BYTES = 1 << 20
# NOTE: botocore's defaults wait 60 s for a connection and try 5 times (legacy mode), so a request for a
# result would hang for minutes behind an unreachable endpoint. Standard mode tries 3 times
# (AWS_MAX_ATTEMPTS overrides that).
CLIENT_CONFIG = Config(connect_timeout=5, read_timeout=30, retries={"mode": "standard"})
_CONFIG_HINT = "check AWS_ENDPOINT_URL_S3, AWS_ENDPOINT_URL, AWS_DEFAULT_REGION, AWS_PROFILE"


class S3Storage:
    """Results as objects ``prefix + job id`` in one bucket, the content type as the object's ContentType.

    Every failure of the store (endpoint unreachable, access denied, bucket
    missing) is raised as ``Unavailable``: the worker fails the attempt (it is
    retried like any other), the API answers 503. An absent object is
    ``FileNotFoundError``, as with files.
    """

    def __init__(self, client: Any, location: S3Location) -> None:
        self.client = client
        self.location = location

    @classmethod
    def connect(cls, location: S3Location) -> S3Storage:
        """A client from the AWS configuration; ``SettingsError`` when that configuration cannot work.

        Nothing is sent to the store here: a service starts while the store is
        down, and what needs it fails (and retries) until it is back.
        """
        try:
            session = boto3.session.Session()
            client = session.client("s3", config=CLIENT_CONFIG)
            credentials = session.get_credentials()
        except (ValueError, BotoCoreError) as exc:
            # ValueError: botocore's "Invalid endpoint: ..."; BotoCoreError: an unknown profile, half a key pair.
            raise SettingsError(f"RESULT_STORAGE_URL: cannot build the S3 client: {exc} ({_CONFIG_HINT})") from None
        if credentials is None:
            raise SettingsError(
                "RESULT_STORAGE_URL: s3:// needs AWS credentials: set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY, "
                "or AWS_PROFILE, or run with a web identity or instance role"
            )
        return cls(client, location)

    def put(self, job_id: str, data: bytes, content_type: str) -> str:
        reference = result_reference(job_id)
        with self._failures("store", reference):
            self.client.put_object(
                Bucket=self.location.bucket, Key=self.location.key(reference), Body=data, ContentType=content_type
            )
        return reference

    @contextlib.contextmanager
    def writer(self, job_id: str, content_type: str) -> Iterator[BinaryIO]:
        # NOTE: S3 has no append, so the body is spooled here and uploaded when the block ends. An
        # exception in the block uploads nothing; an upload is visible only once complete (upload_fileobj
        # aborts a multipart upload that fails).
        reference = result_reference(job_id)
        with tempfile.SpooledTemporaryFile(max_size=SPOOL_MAX_BYTES) as spool:
            yield cast(BinaryIO, spool)
            spool.seek(0)
            with self._failures("store", reference):
                self.client.upload_fileobj(
                    spool, self.location.bucket, self.location.key(reference), ExtraArgs={"ContentType": content_type}
                )

    def open(self, reference: str) -> tuple[bytes, str]:
        with self._failures("read", reference):
            response = self.client.get_object(Bucket=self.location.bucket, Key=self.location.key(reference))
            body = response["Body"].read()
        return body, response.get("ContentType") or "application/octet-stream"

    def delete(self, reference: str) -> None:
        with self._failures("delete", reference):
            self.client.delete_object(Bucket=self.location.bucket, Key=self.location.key(reference))

    @contextlib.contextmanager
    def _failures(self, action: str, reference: str) -> Iterator[None]:
        """Translate S3 errors: an absent object to ``FileNotFoundError``, anything else to ``Unavailable``.

        The detail names the bucket and the S3 error code but not the endpoint:
        the API shows it to clients. The log line and the chained cause have it all.
        """
        try:
            yield
        except ClientError as exc:
            error = exc.response.get("Error", {})
            code = str(error.get("Code") or "error")
            if code in _MISSING:
                raise FileNotFoundError(reference) from None
            log.warning("result storage: %s of %s failed: %s", action, reference, exc)
            reason = f"{code} ({error['Message']})" if error.get("Message") else code
            raise Unavailable(self._detail(action, reference, reason)) from exc
        except (BotoCoreError, Boto3Error) as exc:
            log.warning("result storage: %s of %s failed: %s", action, reference, exc)
            raise Unavailable(self._detail(action, reference, type(exc).__name__)) from exc

    def _detail(self, action: str, reference: str, reason: str) -> str:
        return f"result storage (S3 bucket {self.location.bucket!r}) cannot {action} {reference} right now: {reason}"
