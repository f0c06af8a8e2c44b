"""The S3 backend (AWS, MinIO or moto): boto3 with paginated listing and clear errors."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from botocore.exceptions import BotoCoreError, ClientError

from scene_pipeline.storage.base import ObjectInfo, ObjectNotFound, StorageError

_NOT_FOUND = {"NoSuchKey", "404", "NotFound"}


class S3ObjectStore:
    def __init__(self, client: Any, bucket: str) -> None:
        self.client = client
        self.bucket = bucket

    def _fail(self, action: str, key: str, err: Exception) -> StorageError:
        # botocore messages carry the bucket, key and error code, never the credentials.
        if isinstance(err, ClientError):
            code = err.response.get("Error", {}).get("Code", "?")
            message = err.response.get("Error", {}).get("Message", "")
            return StorageError(f"S3 {action} s3://{self.bucket}/{key} failed: {code} {message}")
        return StorageError(f"S3 {action} s3://{self.bucket}/{key} failed: {err}")

    def get(self, key: str) -> bytes:
        try:
            response = self.client.get_object(Bucket=self.bucket, Key=key)
            return response["Body"].read()
        except ClientError as err:
            if err.response.get("Error", {}).get("Code") in _NOT_FOUND:
                raise ObjectNotFound(key) from None
            raise self._fail("GET", key, err) from err
        except BotoCoreError as err:
            raise self._fail("GET", key, err) from err

    def put(self, key: str, data: bytes, content_type: str = "application/octet-stream") -> None:
        try:
            self.client.put_object(Bucket=self.bucket, Key=key, Body=data, ContentType=content_type)
        except (ClientError, BotoCoreError) as err:
            raise self._fail("PUT", key, err) from err

    def head(self, key: str) -> ObjectInfo | None:
        try:
            response = self.client.head_object(Bucket=self.bucket, Key=key)
        except ClientError as err:
            if err.response.get("Error", {}).get("Code") in _NOT_FOUND:
                return None
            raise self._fail("HEAD", key, err) from err
        except BotoCoreError as err:
            raise self._fail("HEAD", key, err) from err
        return ObjectInfo(
            key=key,
            etag=response["ETag"],
            size=response["ContentLength"],
            last_modified=response["LastModified"],
        )

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
