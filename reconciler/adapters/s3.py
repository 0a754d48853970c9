"""S3: list every version and delete marker, delete them by version id in batches of at most 1,000.

A plain delete on a versioned bucket only adds a delete marker, so we always delete by ``VersionId``
(``"null"`` on unversioned buckets). ``DeleteObjects`` answers 200 with per-key ``Errors``; each is sorted
into gone, retry, or refused. https://docs.aws.amazon.com/AmazonS3/latest/API/API_DeleteObjects.html
"""

from __future__ import annotations

from collections.abc import AsyncGenerator, Sequence
from typing import TYPE_CHECKING, Any

from reconciler.adapters.aws import THROTTLING_CODES, Caller
from reconciler.core.scope import S3Location
from reconciler.errors import AccessError, TransientError
from reconciler.ports import DeleteReport, ObjectVersion, VersionPage

if TYPE_CHECKING:
    from types_aiobotocore_s3 import S3Client

MAX_DELETE_KEYS = 1000
# A version that does not exist any more is as deleted as it gets.
GONE_CODES = frozenset({"NoSuchKey", "NoSuchVersion"})


class S3ArtifactStore:
    def __init__(self, client: S3Client, call: Caller) -> None:
        self._client = client
        self._call = call

    async def list_versions(self, location: S3Location, *, exact: bool) -> AsyncGenerator[VersionPage, None]:
        params: dict[str, Any] = {
            "Bucket": location.bucket,
            "Prefix": location.key,
            "MaxKeys": 1000,
        }
        while True:
            page = await self._call(self._client.list_object_versions, **params)
            versions = [
                ObjectVersion(v["Key"], v.get("VersionId") or "null") for v in page.get("Versions", [])
            ]
            versions += [
                ObjectVersion(m["Key"], m.get("VersionId") or "null", is_delete_marker=True)
                for m in page.get("DeleteMarkers", [])
            ]
            if exact:
                versions = [v for v in versions if v.key == location.key]
            more = bool(page.get("IsTruncated"))
            yield VersionPage(versions, more)
            if not more:
                return
            params["KeyMarker"] = page["NextKeyMarker"]
            params["VersionIdMarker"] = page["NextVersionIdMarker"]

    async def delete_versions(self, bucket: str, versions: Sequence[ObjectVersion]) -> DeleteReport:
        deleted: list[ObjectVersion] = []
        refused: list[tuple[ObjectVersion, str]] = []
        for start in range(0, len(versions), MAX_DELETE_KEYS):
            chunk = list(versions[start : start + MAX_DELETE_KEYS])
            await self._call(
                self._delete_chunk, bucket=bucket, pending=chunk, deleted=deleted, refused=refused
            )
        return DeleteReport(deleted=tuple(deleted), refused=tuple(refused))

    async def _delete_chunk(
        self,
        *,
        bucket: str,
        pending: list[ObjectVersion],
        deleted: list[ObjectVersion],
        refused: list[tuple[ObjectVersion, str]],
    ) -> None:
        """One DeleteObjects call for ``pending``; leaves in ``pending`` only what must be retried."""
        by_id = {(v.key, v.version_id): v for v in pending}
        response = await self._client.delete_objects(
            Bucket=bucket,
            Delete={
                "Objects": [{"Key": v.key, "VersionId": v.version_id} for v in pending],
                "Quiet": False,
            },
        )
        for entry in response.get("Deleted", []):
            found = by_id.pop((entry.get("Key", ""), entry.get("VersionId") or "null"), None)
            if found is not None:
                deleted.append(found)
        for error in response.get("Errors", []):
            version = by_id.get((error.get("Key", ""), error.get("VersionId") or "null"))
            if version is None:
                continue
            code = error.get("Code", "")
            if code in GONE_CODES:
                deleted.append(by_id.pop((version.key, version.version_id)))
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
