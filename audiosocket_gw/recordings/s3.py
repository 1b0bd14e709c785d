"""Upload to any S3-compatible store (AWS S3, MinIO, moto) and verify the copy.

boto3 is the optional extra ``s3``: it is imported lazily, the first time an
``S3Uploader`` is used, so a local-only gateway runs without it.

The calls here are blocking (boto3); the pipeline runs them in worker threads.
``upload()`` is one attempt:

1. ``upload_file`` (multipart above ``multipart_threshold``, parts of
   ``multipart_chunk``; no s3transfer threads: the caller owns concurrency), with the
   local sha256 stored as object metadata ``sha256``;
2. verification: ``HEAD`` must show the local size and our sha256 metadata, then the
   object is read back (streamed, up to ``verify_max_bytes``) and its sha256 must
   equal the local one. Only then is the recording ``verified``.

botocore's own retries are turned down to one attempt: retry policy (backoff,
attempt count, visibility) belongs to the queue. Errors become ``UploadError`` with
a bounded ``reason`` (a metric label): network, checksum, missing_file, client_error.
"""

from __future__ import annotations

import hashlib
import os
from typing import Any

from .settings import RecordingSettings

CHUNK = 1024 * 1024


class UploadError(Exception):
    """One upload attempt failed; ``permanent`` means retrying cannot help."""

    def __init__(self, reason: str, message: str, *, permanent: bool = False) -> None:
        super().__init__(message)
        self.reason = reason
        self.permanent = permanent


def file_sha256(path: str) -> tuple[str, int]:
    """(hex sha256, size) of a file, read in 1 MiB chunks."""
    h = hashlib.sha256()
    size = 0
    with open(path, "rb") as f:
        while chunk := f.read(CHUNK):
            h.update(chunk)
            size += len(chunk)
    return h.hexdigest(), size


class S3Uploader:
    """One boto3 client (thread-safe) for uploads, verification and presigned URLs."""

    def __init__(self, settings: RecordingSettings) -> None:
        if not settings.s3_bucket:
            raise ValueError("S3Uploader needs a bucket (AIGW_S3_BUCKET)")
        self.settings = settings
        self.bucket = settings.s3_bucket
        self._client: Any = None
        self._transfer: Any = None

    def _boto(self) -> Any:
        if self._client is None:
            try:
                import boto3
                from boto3.s3.transfer import TransferConfig
                from botocore.config import Config as BotoConfig
            except ImportError as exc:  # pragma: no cover - depends on the install
                raise UploadError(
                    "client_error", "boto3 is not installed (pip install audiosocket-gw[s3])",
                    permanent=True) from exc
            s = self.settings
            cfg = BotoConfig(
                region_name=s.s3_region,
                connect_timeout=5, read_timeout=30,
                retries={"total_max_attempts": 1, "mode": "standard"},
                signature_version="s3v4",
                s3={"addressing_style": "path"} if s.s3_endpoint else None,
            )
            self._client = boto3.session.Session().client(
                "s3", endpoint_url=s.s3_endpoint, config=cfg)
            self._transfer = TransferConfig(
                multipart_threshold=s.multipart_threshold,
                multipart_chunksize=s.multipart_chunk, use_threads=False)
        return self._client

    def ensure_bucket(self) -> None:
        """Create the bucket if it does not exist (handy for MinIO/moto set-ups)."""
        client = self._boto()
        try:
            client.head_bucket(Bucket=self.bucket)
        except Exception:
            client.create_bucket(Bucket=self.bucket)

    def upload(self, path: str, key: str, sha256: str, size: int, *, verify: bool = True) -> None:
        """Upload ``path`` to ``key`` (and verify it unless told not to); ``UploadError``."""
        from botocore.exceptions import BotoCoreError, ClientError

        client = self._boto()
        if not os.path.exists(path):
            raise UploadError("missing_file", f"local file {path} is gone", permanent=True)
        try:
            client.upload_file(
                path, self.bucket, key, Config=self._transfer,
                ExtraArgs={"Metadata": {"sha256": sha256}, "ContentType": "audio/wav"})
        except (BotoCoreError, ClientError, OSError) as exc:
            raise _classify(exc) from exc
        except Exception as exc:  # s3transfer wraps failures in its own errors
            raise _classify(exc.__cause__ or exc) from exc
        if verify:
            self.verify(key, sha256, size)

    def verify(self, key: str, sha256: str, size: int) -> None:
        """HEAD (size + metadata) then a streamed read-back compared by sha256."""
        from botocore.exceptions import BotoCoreError, ClientError

        client = self._boto()
        try:
            head = client.head_object(Bucket=self.bucket, Key=key)
            if int(head["ContentLength"]) != size:
                raise UploadError("checksum", f"size {head['ContentLength']} != {size}")
            if head.get("Metadata", {}).get("sha256") != sha256:
                raise UploadError("checksum", "sha256 metadata does not match")
            if size <= self.settings.verify_max_bytes:
                body = client.get_object(Bucket=self.bucket, Key=key)["Body"]
                h = hashlib.sha256()
                try:
                    for chunk in body.iter_chunks(CHUNK):
                        h.update(chunk)
                finally:
                    body.close()
                if h.hexdigest() != sha256:
                    raise UploadError("checksum", "read-back sha256 does not match")
        except (BotoCoreError, ClientError, OSError) as exc:
            raise _classify(exc) from exc

    def presigned_url(self, key: str, ttl_s: int) -> str:
        """A GET URL valid ``ttl_s`` seconds (computed locally, no request)."""
        url = self._boto().generate_presigned_url(
            "get_object", Params={"Bucket": self.bucket, "Key": key}, ExpiresIn=int(ttl_s))
        return str(url)

    def delete_object(self, key: str) -> None:
        self._boto().delete_object(Bucket=self.bucket, Key=key)


def _classify(exc: BaseException) -> UploadError:
    from botocore.exceptions import ClientError, ConnectionError, HTTPClientError

    if isinstance(exc, UploadError):
        return exc
    if isinstance(exc, ClientError):
        # Even "AccessDenied" can be fixed by an operator: retry until attempts run out.
        code = str(exc.response.get("Error", {}).get("Code", "?"))
        return UploadError("client_error", f"S3 error {code}")
    if isinstance(exc, ConnectionError | HTTPClientError | OSError):
        return UploadError("network", f"{type(exc).__name__}: {exc}")
    return UploadError("network", f"{type(exc).__name__}: {exc}")
