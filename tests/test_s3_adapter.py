"""The S3 adapter reads DeleteObjects' per-key Errors from a 200 answer and batches at 1,000 keys;
AWS errors map onto the error tree."""

from __future__ import annotations

import urllib.parse
from typing import Any

import pytest
import structlog.testing
from botocore.exceptions import ClientError

from reconciler.adapters.aws import Caller, RetryPolicy, translate
from reconciler.adapters.s3 import S3ArtifactStore
from reconciler.core.scope import S3Location
from reconciler.errors import AccessError, PermanentError, TransientError
from reconciler.ports import ObjectVersion


class StubS3:
    """Answers DeleteObjects with scripted per-key errors; records what was asked."""

    def __init__(self, errors: list[dict[str, str]]) -> None:
        self.scripted = list(errors)  # errors for the first call only
        self.requests: list[list[dict[str, str]]] = []

    async def delete_objects(self, *, Bucket: str, Delete: dict[str, Any]) -> dict[str, Any]:  # noqa: N803
        objects = Delete["Objects"]
        self.requests.append(objects)
        errors, self.scripted = self.scripted, []
        failed = {(e["Key"], e["VersionId"]) for e in errors}
        deleted = [o for o in objects if (o["Key"], o["VersionId"]) not in failed]
        # Unversioned buckets answer without a VersionId for "null".
        deleted = [{"Key": o["Key"]} if o["VersionId"] == "null" else o for o in deleted]
        return {"Deleted": deleted, "Errors": errors, "ResponseMetadata": {"HTTPStatusCode": 200}}

    async def list_object_versions(self, **params: Any) -> dict[str, Any]:
        pages = {
            None: {
                "Versions": [{"Key": "a/x", "VersionId": "1"}, {"Key": "a/xy", "VersionId": "2"}],
                "DeleteMarkers": [{"Key": "a/x", "VersionId": "3"}],
                "IsTruncated": True,
                "NextKeyMarker": "a/xy",
                "NextVersionIdMarker": "2",
            },
            "a/xy": {"Versions": [{"Key": "a/z", "VersionId": "null"}], "IsTruncated": False},
        }
        return pages[params.get("KeyMarker")]


def _store(stub: StubS3) -> S3ArtifactStore:
    return S3ArtifactStore(stub, Caller(RetryPolicy(attempts=3)))  # type: ignore[arg-type]


async def test_per_key_errors_are_sorted_into_gone_refused_and_retried() -> None:
    versions = [ObjectVersion(f"k{n}", f"v{n}") for n in range(4)]
    stub = StubS3(
        [
            {"Key": "k0", "VersionId": "v0", "Code": "NoSuchVersion", "Message": "gone"},
            {
                "Key": "k1",
                "VersionId": "v1",
                "Code": "AccessDenied",
                "Message": "Access Denied because object protected by object lock.",
            },
            {"Key": "k2", "VersionId": "v2", "Code": "SlowDown", "Message": "slow down"},
        ]
    )
    report = await _store(stub).delete_versions("bkt", versions)

    assert set(report.deleted) == {versions[2], versions[3]}
    assert report.absent == (versions[0],)  # gone before we asked: absent, never counted as deleted
    assert report.refused == ((versions[1], "AccessDenied"),)
    assert [[o["Key"] for o in r] for r in stub.requests] == [["k0", "k1", "k2", "k3"], ["k2"]]


async def test_keys_that_stay_throttled_raise_a_transient_error() -> None:
    class AlwaysSlow(StubS3):
        async def delete_objects(self, *, Bucket: str, Delete: dict[str, Any]) -> dict[str, Any]:  # noqa: N803
            self.requests.append(Delete["Objects"])
            errors = [
                {"Key": o["Key"], "VersionId": o["VersionId"], "Code": "SlowDown"} for o in Delete["Objects"]
            ]
            return {"Errors": errors}

    stub = AlwaysSlow([])
    with pytest.raises(TransientError):
        await _store(stub).delete_versions("bkt", [ObjectVersion("k", "v")])
    assert len(stub.requests) == 3  # the retry policy's attempts


async def test_deletes_are_batched_at_one_thousand_keys() -> None:
    stub = StubS3([])
    versions = [ObjectVersion(f"k{n}", "null") for n in range(2345)]
    report = await _store(stub).delete_versions("bkt", versions)
    assert [len(r) for r in stub.requests] == [1000, 1000, 345]
    assert len(report.deleted) == 2345


async def test_listing_pages_through_markers_and_keeps_only_the_exact_key() -> None:
    store = _store(StubS3([]))
    exact = [
        v async for page in store.list_versions(S3Location("bkt", "a/x"), exact=True) for v in page.versions
    ]
    assert exact == [ObjectVersion("a/x", "1"), ObjectVersion("a/x", "3", is_delete_marker=True)]
    pages = [page async for page in store.list_versions(S3Location("bkt", "a/"), exact=False)]
    assert [page.more for page in pages] == [True, False]
    prefix = [v for page in pages for v in page.versions]
    assert [v.key for v in prefix] == ["a/x", "a/xy", "a/x", "a/z"]


@pytest.mark.parametrize(
    ("code", "status", "expected"),
    [
        ("SlowDown", 503, TransientError),
        ("InternalError", 500, TransientError),
        ("ExpiredToken", 400, AccessError),
        ("AccessDenied", 403, AccessError),
        ("ResourceNotFoundException", 400, AccessError),
        ("ValidationException", 400, PermanentError),
    ],
)
def test_aws_errors_map_onto_the_error_tree(code: str, status: int, expected: type[Exception]) -> None:
    response: Any = {"Error": {"Code": code}, "ResponseMetadata": {"HTTPStatusCode": status}}
    error = ClientError(response, "Op")
    translated = translate(error)
    assert type(translated) is expected
    assert translated.retriable is (expected is not PermanentError)


async def test_access_denied_without_object_lock_is_an_access_problem_not_a_refusal() -> None:
    stub = StubS3([{"Key": "k0", "VersionId": "v0", "Code": "AccessDenied", "Message": "Access Denied"}])
    with pytest.raises(AccessError, match="IAM"):
        await _store(stub).delete_versions("bkt", [ObjectVersion("k0", "v0")])
    assert len(stub.requests) == 1  # not retried in a tight loop: the record waits instead


class EncodingStub(StubS3):
    """Lists keys URL-encoded as S3 does for EncodingType=url (space as '+'), or raw if it ignores it."""

    def __init__(self, keys: list[str], *, honours_encoding: bool = True) -> None:
        super().__init__([])
        self.keys = keys
        self.honours = honours_encoding
        self.listed: list[dict[str, Any]] = []
        self.single: list[tuple[str, str]] = []

    async def list_object_versions(self, **params: Any) -> dict[str, Any]:
        self.listed.append(params)
        encode = self.honours and params.get("EncodingType") == "url"
        name = (lambda k: urllib.parse.quote_plus(k, safe="/")) if encode else (lambda k: k)
        start = self.keys.index(params["KeyMarker"]) + 1 if "KeyMarker" in params else 0
        page = self.keys[start : start + 2]
        answer: dict[str, Any] = {
            "Versions": [{"Key": name(k), "VersionId": "v"} for k in page],
            "IsTruncated": start + 2 < len(self.keys),
        }
        if answer["IsTruncated"]:
            answer |= {"NextKeyMarker": name(page[-1]), "NextVersionIdMarker": "v"}
        if encode:
            answer["EncodingType"] = "url"
        return answer

    async def delete_object(self, *, Bucket: str, Key: str, VersionId: str) -> dict[str, Any]:  # noqa: N803
        self.single.append((Key, VersionId))
        return {"ResponseMetadata": {"HTTPStatusCode": 204}}


ODD_KEYS = ["p/a\x01b", "p/c\rd", "p/e f+g%41", "p/h\u00e9#1?x=2"]


async def test_listings_are_requested_url_encoded_and_decoded_keys_and_markers_alike() -> None:
    stub = EncodingStub(ODD_KEYS)
    pages = [page async for page in _store(stub).list_versions(S3Location("bkt", "p/"), exact=False)]
    assert [v.key for page in pages for v in page.versions] == ODD_KEYS
    assert all(params["EncodingType"] == "url" for params in stub.listed)
    assert stub.listed[1]["KeyMarker"] == "p/c\rd"  # the decoded marker goes back


async def test_a_server_that_ignores_the_encoding_has_its_keys_taken_as_sent() -> None:
    stub = EncodingStub(["p/e f+g%41"], honours_encoding=False)
    (page,) = [page async for page in _store(stub).list_versions(S3Location("bkt", "p/"), exact=False)]
    assert [v.key for v in page.versions] == ["p/e f+g%41"]


async def test_keys_xml_cannot_carry_are_deleted_one_by_one_with_the_key_in_the_path() -> None:
    stub = EncodingStub([])
    versions = [ObjectVersion(k, "v") for k in [*ODD_KEYS, "p/plain"]]
    report = await _store(stub).delete_versions("bkt", versions)
    assert stub.single == [("p/a\x01b", "v"), ("p/c\rd", "v")]
    assert [[o["Key"] for o in r] for r in stub.requests] == [["p/e f+g%41", "p/h\u00e9#1?x=2", "p/plain"]]
    assert set(report.deleted) == set(versions)


async def test_retries_are_logged_by_error_code_never_by_the_errors_text() -> None:
    """A library's error text may quote a value: the retry event names the code only."""

    class SlowOnce(StubS3):
        async def delete_objects(self, *, Bucket: str, Delete: dict[str, Any]) -> dict[str, Any]:  # noqa: N803
            if not self.requests:
                self.requests.append(Delete["Objects"])
                error: Any = {
                    "Error": {"Code": "SlowDown", "Message": "value zq-planted"},
                    "ResponseMetadata": {},
                }
                raise ClientError(error, "DeleteObjects")
            return await super().delete_objects(Bucket=Bucket, Delete=Delete)

    with structlog.testing.capture_logs() as events:
        await _store(SlowOnce([])).delete_versions("bkt", [ObjectVersion("k", "v")])
    retries = [e for e in events if "retry" in str(e["event"])]
    assert retries == [
        {
            "event": "aws.retry_scheduled",
            "log_level": "warning",
            "operation": "delete_objects",
            "resource": "bkt",
            "error": "SlowDown",
            "retry_num": 1,
            "wait_for": 0.0,
        }
    ]


async def test_a_retry_names_the_operation_and_its_table_never_a_key() -> None:
    """Through the DynamoDB adapter's wrapper, the retry event names the operation and the table."""
    from reconciler.adapters.aws import Caller, RetryPolicy  # noqa: PLC0415 - local to this test
    from reconciler.adapters.dynamodb import DynamoDBItemStore  # noqa: PLC0415
    from reconciler.core.plan import LinkQuery  # noqa: PLC0415

    class Throttled:
        calls = 0

        async def delete_item(self, **kwargs: Any) -> dict[str, Any]:
            Throttled.calls += 1
            if Throttled.calls == 1:
                error: Any = {"Error": {"Code": "ThrottlingException"}, "ResponseMetadata": {}}
                raise ClientError(error, "DeleteItem")
            return {}

    store = DynamoDBItemStore(Throttled(), Caller(RetryPolicy(attempts=3)))  # type: ignore[arg-type]
    query = LinkQuery("speech_outputs", "transcript_id", "tr-zq-key", None)
    with structlog.testing.capture_logs() as events:
        await store.delete_linked(query, {"transcript_id": "tr-zq-key", "output_type": "x"})
    [retry] = [e for e in events if e["event"] == "aws.retry_scheduled"]
    assert (retry["operation"], retry["resource"], retry["error"]) == (
        "delete_item", "speech_outputs", "ThrottlingException",
    )  # fmt: skip
    assert "tr-zq-key" not in repr(events)
