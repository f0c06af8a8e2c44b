"""The S3 backend (AWS, MinIO or moto): boto3 with paginated listing, conditional writes
(`If-None-Match: *`, `If-Match`) and errors that name the key, never the credentials."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from botocore.exceptions import BotoCoreError, ClientError

from scene_pipeline.storage.base import (
    OCTET,
    Condition,
    ObjectInfo,
    ObjectNotFound,
    PreconditionFailed,
    StorageError,
)

_NOT_FOUND = {"NoSuchKey", "404", "NotFound"}
_PRECONDITION = {"PreconditionFailed", "412", "ConditionalRequestConflict", "409"}


def _code(err: ClientError) -> str:
    return str(err.response.get("Error", {}).get("Code", "?"))


class S3ObjectStore:
    def __init__(self, client: Any, bucket: str) -> None:
        self.client = client
        self.bucket = bucket

    def _fail(self, action: str, key: str, err: Exception) -> StorageError:
        if isinstance(err, ClientError):
            message = err.response.get("Error", {}).get("Message", "")
            return StorageError(
                f"S3 {action} s3://{self.bucket}/{key} failed: {_code(err)} {message}"
            )
        return StorageError(f"S3 {action} s3://{self.bucket}/{key} failed: {err}")

    def get(self, key: str) -> tuple[bytes, str]:
        try:
            response = self.client.get_object(Bucket=self.bucket, Key=key)
            return response["Body"].read(), response["ETag"]
        except ClientError as err:
            if _code(err) in _NOT_FOUND:
                raise ObjectNotFound(key) from None
            raise self._fail("GET", key, err) from err
        except BotoCoreError as err:
            raise self._fail("GET", key, err) from err

    def put(
        self, key: str, data: bytes, content_type: str = OCTET, when: Condition | None = None
    ) -> str:
        conditions: dict[str, str] = {}
        if when is not None and when.absent:
            conditions["IfNoneMatch"] = "*"
        if when is not None and when.etag is not None:
            conditions["IfMatch"] = when.etag
        try:
            response = self.client.put_object(
                Bucket=self.bucket, Key=key, Body=data, ContentType=content_type, **conditions
            )
            return str(response["ETag"])
        except ClientError as err:
            if conditions and (_code(err) in _PRECONDITION or _code(err) in _NOT_FOUND):
                raise PreconditionFailed(f"s3://{self.bucket}/{key}: {_code(err)}") from None
            raise self._fail("PUT", key, err) from err
        except BotoCoreError as err:
            raise self._fail("PUT", key, err) from err

    def delete(self, key: str) -> None:
        try:
            self.client.delete_object(Bucket=self.bucket, Key=key)
        except (ClientError, BotoCoreError) as err:
            raise self._fail("DELETE", key, err) from err

    def list(self, prefix: str) -> Iterator[ObjectInfo]:
        paginator = self.client.get_paginator("list_objects_v2")
        try:
            for page in paginator.paginate(Bucket=self.bucket, Prefix=prefix):
                for item in page.get("Contents", []):
                    yield ObjectInfo(
                        key=item["Key"],
                        etag=item["ETag"],
                        size=item["Size"],
                        last_modified=item["LastModified"],
                    )
        except (ClientError, BotoCoreError) as err:
            raise self._fail("LIST", prefix, err) from err

    def uri(self, key: str) -> str:
        return f"s3://{self.bucket}/{key}"
