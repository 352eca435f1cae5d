"""``S3Store``: snapshots as versioned objects in an S3 (or S3-compatible) bucket, via boto3.

Objects are ``<prefix><key>/<number:012d>-<nonce>.snap``; the newest ``keep`` versions are kept.
A save lists the key's objects and PUTs under the next number and a fresh random 64-bit nonce: a
name no other save picks, so every save is an object of its own on any server, with no
conditional request (moto checks ``If-None-Match`` and stores in two steps, so two racing PUTs
both succeed; a server without conditional writes may ignore the header). Versions order by
(number, nonce): LIST being strongly consistent, a save that starts after another returned gets a
higher number; two concurrent saves may share a number and are ordered by nonce. Names without a
nonce (``<number:012d>.snap``, from earlier releases) are the oldest of their number.

Environment (each overridden by the matching constructor argument):

* ``USP_S3_BUCKET`` — bucket name (required one way or the other).
* ``USP_S3_PREFIX`` — key prefix, default ``usp/snapshots/``.
* ``USP_S3_ENDPOINT_URL`` — endpoint of an S3-compatible service (MinIO, Ceph, moto …).
* ``USP_S3_REGION`` — region, default ``AWS_DEFAULT_REGION`` or ``us-east-1``.

Credentials come from boto3's standard chain (``AWS_ACCESS_KEY_ID``, ``AWS_SECRET_ACCESS_KEY``,
``AWS_SESSION_TOKEN``, profiles, instance roles); none are read or stored by USP.
"""

from __future__ import annotations

import os
import re
import secrets
from collections.abc import Callable, Iterable, Mapping
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from ...ports.state_store import (
    DEFAULT_MAX_BLOB_BYTES,
    EventCallback,
    SnapshotReadError,
    SnapshotWriteError,
    SnapshotWriteFailedEvent,
)
from ._common import (
    DEFAULT_KEEP,
    Unreadable,
    check_batch,
    check_blob,
    check_key,
    emit,
    log,
    newest_valid,
    positive,
)

_VERSION = re.compile(r"(\d{12})(?:-([0-9a-f]{16}))?\.snap")
Version = tuple[int, str]  # (number, nonce); the nonce is "" in names without one


class S3Store:
    """Versioned snapshot objects with retention, loaded newest-valid-first like the file store.

    A save costs one LIST and one PUT (plus one DELETE past ``keep``). Any number of writers may
    save one key at once: each save leaves an object of its own. ``save_many`` and ``load_many``
    run up to ``max_workers`` requests concurrently.
    """

    def __init__(self, bucket: str | None = None, *, prefix: str | None = None,
                 endpoint_url: str | None = None, region_name: str | None = None, client: Any = None,
                 keep: int | None = None, on_event: EventCallback | None = None, max_bytes: int | None = None,
                 max_workers: int = 8) -> None:
        self.bucket = bucket or os.environ.get("USP_S3_BUCKET") or ""
        if not self.bucket:
            raise ValueError("S3Store needs a bucket: pass bucket= or set USP_S3_BUCKET")
        self.prefix = prefix if prefix is not None else os.environ.get("USP_S3_PREFIX", "usp/snapshots/")
        if client is None:
            import boto3  # optional dependency: only needed when this store is chosen

            region = region_name or os.environ.get("USP_S3_REGION") or os.environ.get("AWS_DEFAULT_REGION")
            client = boto3.session.Session().client(
                "s3", endpoint_url=endpoint_url or os.environ.get("USP_S3_ENDPOINT_URL") or None,
                region_name=region or "us-east-1")
        self.client = client
        self.keep = positive(keep, DEFAULT_KEEP, "keep")
        self.max_bytes = positive(max_bytes, DEFAULT_MAX_BLOB_BYTES, "max_bytes")
        self.max_workers = positive(max_workers, 8, "max_workers")
        self.on_event = on_event

    # -- port -------------------------------------------------------------------------------------
    def save(self, key: str, blob: bytes) -> None:
        """PUT ``blob`` as a new version of ``key`` under a name of its own, then prune past ``keep``.

        Pruning deletes only listed versions with ``keep`` newer ones, so never the version another
        writer has just claimed; versions two concurrent saves both missed go at the next save.

        :raises SnapshotWriteError: listing or the PUT failed; earlier versions are untouched.
        """
        from botocore.exceptions import BotoCoreError, ClientError

        blob = check_blob(check_key(key), blob, self.max_bytes)
        name = f"{self.prefix}{key}/<next>.snap"
        try:
            versions = self._list(key)
            version = ((versions[0][0] if versions else 0) + 1, secrets.token_hex(8))
            name = self._name(key, version)
            self.client.put_object(Bucket=self.bucket, Key=name, Body=blob,
                                   ContentType="application/octet-stream")
        except (BotoCoreError, ClientError) as exc:
            emit(self.on_event, SnapshotWriteFailedEvent(key=key, location=f"s3://{self.bucket}/{name}",
                                                         error=str(exc)))
            raise SnapshotWriteError(None, f"saving snapshot {key!r} to S3 failed: {exc}") from exc
        stale = versions[self.keep - 1:]
        if stale:
            try:
                self.client.delete_objects(Bucket=self.bucket, Delete={
                    "Objects": [{"Key": self._name(key, v)} for v in stale], "Quiet": True})
            except (BotoCoreError, ClientError) as exc:  # the snapshot is saved; old ones linger
                log.warning("pruning old S3 snapshots of %r failed: %s", key, exc)

    def load(self, key: str) -> bytes | None:
        """The newest version of ``key`` that verifies, else None.

        :raises SnapshotReadError: listing or reading the bucket failed (not a missing object).
        """
        from botocore.exceptions import BotoCoreError, ClientError

        key = check_key(key)
        try:
            versions = self._list(key)
            candidates = ((f"s3://{self.bucket}/{self._name(key, v)}", self._fetcher(key, v))
                          for v in versions)
            return newest_valid(key, candidates, max_bytes=self.max_bytes, on_event=self.on_event)
        except (BotoCoreError, ClientError) as exc:
            raise SnapshotReadError(None, f"loading snapshot {key!r} from S3 failed: {exc}") from exc

    def save_many(self, items: Mapping[str, bytes]) -> None:
        """``save`` every item concurrently, every key and blob checked first; raises the first write
        failure after all were attempted."""
        self._each(lambda kv: self.save(*kv), list(check_batch(items, self.max_bytes).items()))

    def load_many(self, keys: Iterable[str]) -> dict[str, bytes | None]:
        """``load`` every key concurrently."""
        keys = list(dict.fromkeys(keys))
        return dict(zip(keys, self._each(self.load, keys), strict=True))

    # -- helpers ----------------------------------------------------------------------------------
    def _name(self, key: str, version: Version) -> str:
        number, nonce = version
        return f"{self.prefix}{key}/{number:012d}{'-' if nonce else ''}{nonce}.snap"

    def _list(self, key: str) -> list[Version]:
        """Versions of ``key`` in the bucket, newest first."""
        folder = f"{self.prefix}{key}/"
        versions: list[Version] = []
        for page in self.client.get_paginator("list_objects_v2").paginate(Bucket=self.bucket, Prefix=folder):
            for item in page.get("Contents", ()):
                match = _VERSION.fullmatch(item["Key"][len(folder):])
                if match:
                    versions.append((int(match.group(1)), match.group(2) or ""))
        return sorted(versions, reverse=True)

    def _fetcher(self, key: str, version: Version) -> Callable[[], bytes | None]:
        def fetch() -> bytes | None:
            try:
                response = self.client.get_object(Bucket=self.bucket, Key=self._name(key, version))
            except self.client.exceptions.NoSuchKey:
                return None
            if response.get("ContentLength", 0) > self.max_bytes:
                raise Unreadable(f"object of {response['ContentLength']} bytes exceeds the limit "
                                 f"of {self.max_bytes} bytes")
            return response["Body"].read(self.max_bytes + 1)
        return fetch

    def _each(self, function: Callable[[Any], Any], args: list[Any]) -> list[Any]:
        if len(args) <= 1:
            return [function(a) for a in args]
        with ThreadPoolExecutor(max_workers=min(self.max_workers, len(args))) as pool:
            futures = [pool.submit(function, a) for a in args]
        errors = [error for f in futures if (error := f.exception()) is not None]
        if errors:
            raise errors[0]
        return [f.result() for f in futures]
