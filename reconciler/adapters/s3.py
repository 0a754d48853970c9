"""S3: list every version and delete marker, delete them by version id in batches of at most 1,000.

A plain delete on a versioned bucket only adds a delete marker, so we always delete by ``VersionId``
(``"null"`` on unversioned buckets). ``DeleteObjects`` answers 200 with per-key ``Errors``; each is sorted
into gone, retry, or refused. https://docs.aws.amazon.com/AmazonS3/latest/API/API_DeleteObjects.html

Keys may hold characters that XML 1.0 cannot carry (``\x01``) or carries changed (``\r`` is read as
``\n``). Listings are therefore asked for URL-encoded (``EncodingType=url``) and decoded here, and such keys
are deleted one by one with ``DeleteObject``, whose key travels in the URL path, never in a
``DeleteObjects`` XML body that would name another key.
https://docs.aws.amazon.com/AmazonS3/latest/API/API_ListObjectVersions.html#API_ListObjectVersions_RequestSyntax
"""

from __future__ import annotations

import re
from collections.abc import AsyncGenerator, Sequence
from typing import TYPE_CHECKING, Any
from urllib.parse import unquote_plus

from botocore.exceptions import ClientError

from reconciler.adapters.aws import THROTTLING_CODES, Caller, aws_operation, error_code
from reconciler.core.scope import S3Location
from reconciler.errors import AccessError, TransientError
from reconciler.ports import DeleteReport, ObjectVersion, VersionPage

if TYPE_CHECKING:
    from types_aiobotocore_s3 import S3Client

MAX_DELETE_KEYS = 1000
# A version that does not exist any more is as deleted as it gets.
GONE_CODES = frozenset({"NoSuchKey", "NoSuchVersion"})
# XML 1.0 characters, less "\r" (normalised to "\n" by every XML parser): https://www.w3.org/TR/xml/#charsets
_XML_UNSAFE = re.compile("[^\t\n\x20-\ud7ff\ue000-\ufffd\U00010000-\U0010ffff]")


def xml_safe(key: str) -> bool:
    """True if ``key`` survives a trip through an XML body unchanged."""
    return _XML_UNSAFE.search(key) is None


def _decoded(encoding: str | None, text: str) -> str:
    # Decode only what S3 says it encoded: a server that ignored EncodingType sent the key as it is.
    return unquote_plus(text) if encoding == "url" else text


class S3ArtifactStore:
    def __init__(self, client: S3Client, call: Caller) -> None:
        self._client = client
        self._call = call

    async def list_versions(
        self, location: S3Location, *, exact: bool, after: ObjectVersion | None = None
    ) -> AsyncGenerator[VersionPage, None]:
        params: dict[str, Any] = {
            "Bucket": location.bucket,
            "Prefix": location.key,
            "MaxKeys": 1000,
            "EncodingType": "url",  # set here, so botocore leaves the decoding to us
        }
        if after is not None:
            # Markers are request parameters, sent as they are (botocore quotes them into the URL); only
            # the answer is URL-encoded.
            params["KeyMarker"] = after.key
            params["VersionIdMarker"] = after.version_id
        while True:
            page = await self._call(self._client.list_object_versions, **params)
            encoding = page.get("EncodingType")
            versions = [
                ObjectVersion(
                    _decoded(encoding, v["Key"]),
                    v.get("VersionId") or "null",
                    last_modified=v.get("LastModified"),
                )
                for v in page.get("Versions", [])
            ]
            versions += [
                ObjectVersion(
                    _decoded(encoding, m["Key"]),
                    m.get("VersionId") or "null",
                    is_delete_marker=True,
                    last_modified=m.get("LastModified"),
                )
                for m in page.get("DeleteMarkers", [])
            ]
            if exact:
                versions = [v for v in versions if v.key == location.key]
            more = bool(page.get("IsTruncated"))
            yield VersionPage(versions, more)
            if not more:
                return
            params["KeyMarker"] = _decoded(encoding, page["NextKeyMarker"])
            params["VersionIdMarker"] = page["NextVersionIdMarker"]

    async def delete_versions(self, bucket: str, versions: Sequence[ObjectVersion]) -> DeleteReport:
        deleted: list[ObjectVersion] = []
        absent: list[ObjectVersion] = []
        refused: list[tuple[ObjectVersion, str]] = []
        batchable = [v for v in versions if xml_safe(v.key)]
        for start in range(0, len(batchable), MAX_DELETE_KEYS):
            chunk = batchable[start : start + MAX_DELETE_KEYS]
            await self._call(
                self._delete_chunk,
                bucket=bucket,
                pending=chunk,
                done=(deleted, absent),
                refused=refused,
            )
        for version in versions:
            if not xml_safe(version.key):
                outcome = await self._call(self._delete_one, bucket=bucket, version=version)
                match outcome:
                    case "deleted":
                        deleted.append(version)
                    case "absent":
                        absent.append(version)
                    case code:
                        refused.append((version, code))
        return DeleteReport(deleted=tuple(deleted), refused=tuple(refused), absent=tuple(absent))

    @aws_operation("delete_object")
    async def _delete_one(self, *, bucket: str, version: ObjectVersion) -> str:
        """``DeleteObject`` by version id, the key in the URL path: "deleted", "absent" or a refusal code."""
        try:
            await self._client.delete_object(Bucket=bucket, Key=version.key, VersionId=version.version_id)
        except ClientError as exc:
            code = error_code(exc)
            if code in GONE_CODES:
                return "absent"
            message = str(exc.response.get("Error", {}).get("Message", ""))
            if code == "AccessDenied" and "lock" in message.lower():
                return code  # Object Lock: final
            raise  # throttling is retried by the caller; other refusals are mapped onto the error tree
        return "deleted"

    @aws_operation("delete_objects")
    async def _delete_chunk(
        self,
        *,
        bucket: str,
        pending: list[ObjectVersion],
        done: tuple[list[ObjectVersion], list[ObjectVersion]],
        refused: list[tuple[ObjectVersion, str]],
    ) -> None:
        """One DeleteObjects call for ``pending``; leaves in ``pending`` only what must be retried."""
        deleted, absent = done
        by_id = {(v.key, v.version_id): v for v in pending}
        response = await self._client.delete_objects(
            Bucket=bucket,
            Delete={
                "Objects": [{"Key": v.key, "VersionId": v.version_id} for v in pending],
                "Quiet": False,
            },
        )
        for entry in response.get("Deleted", []):
            # Only the exact key and version asked for count: an answer naming another key deleted nothing.
            found = by_id.pop((entry.get("Key", ""), entry.get("VersionId") or "null"), None)
            if found is not None:
                deleted.append(found)
        for error in response.get("Errors", []):
            version = by_id.get((error.get("Key", ""), error.get("VersionId") or "null"))
            if version is None:
                continue
            code = error.get("Code", "")
            if code in GONE_CODES:
                absent.append(by_id.pop((version.key, version.version_id)))
            elif code == "AccessDenied" and "lock" not in error.get("Message", "").lower():
                # Not Object Lock: a missing s3:DeleteObjectVersion grant. The record must wait, not be
                # dead-lettered as if the data were protected.
                raise AccessError("S3 denied DeleteObjectVersion (check the IAM policy)")
            elif code not in THROTTLING_CODES:
                refused.append((version, code))  # e.g. AccessDenied under Object Lock: final
                by_id.pop((version.key, version.version_id))
        # Anything neither deleted nor refused (throttled, internal error, or silently missing) is retried.
        pending[:] = list(by_id.values())
        if pending:
            raise TransientError(f"DeleteObjects left {len(pending)} keys to retry")
