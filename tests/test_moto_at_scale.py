"""``moto_server.at_scale`` changes what moto's listings and queries cost, never what they answer: every page
of a version listing (prefixes, key and version markers, small pages, delete markers) and every query and
scan come out the same with it as without it."""

from __future__ import annotations

from typing import Any

import boto3  # type: ignore[import-untyped]
import pytest

from reconciler.demo.layout import Layout
from reconciler.demo.moto_server import CREDENTIALS, REGION, BackendSeeder, at_scale

pytestmark = pytest.mark.integration


def _clients(endpoint: str) -> tuple[Any, Any]:
    session = boto3.session.Session(
        aws_access_key_id=CREDENTIALS[0], aws_secret_access_key=CREDENTIALS[1], region_name=REGION
    )
    return session.client("s3", endpoint_url=endpoint), session.client("dynamodb", endpoint_url=endpoint)


def _listing(s3: Any, **params: Any) -> list[dict[str, Any]]:
    """Every page, markers and all, with the fields that vary."""
    pages = []
    while True:
        page = s3.list_object_versions(Bucket="stt-uploads", **params)
        pages.append({
            "versions": [(v["Key"], v["VersionId"], v["IsLatest"]) for v in page.get("Versions", [])],
            "markers": [(m["Key"], m["VersionId"], m["IsLatest"]) for m in page.get("DeleteMarkers", [])],
            "prefixes": page.get("CommonPrefixes", []),
            "next": (page.get("NextKeyMarker"), page.get("NextVersionIdMarker"), page["IsTruncated"]),
        })  # fmt: skip
        if not page["IsTruncated"]:
            return pages
        params["KeyMarker"] = page["NextKeyMarker"]
        if page.get("NextVersionIdMarker"):  # none after a common prefix
            params["VersionIdMarker"] = page["NextVersionIdMarker"]


async def test_at_scale_answers_every_listing_page_query_and_scan_as_moto_does(
    endpoint: str, layout: Layout
) -> None:
    s3, dynamodb = _clients(endpoint)
    seeder = BackendSeeder()
    for n in range(30):
        for v in range(1 + n % 3):
            seeder.put_object("stt-uploads", f"a/{n % 4}/key-{n:02d}", f"v{v}".encode())
        if n % 5 == 0:
            s3.delete_object(Bucket="stt-uploads", Key=f"a/{n % 4}/key-{n:02d}")
    seeder.put_object("stt-uploads", "b/other", b"x")
    for n in ((n * 17) % 40 for n in range(40)):  # out of order: moto sorts what it answers
        seeder.put_item(
            "speech_outputs",
            {
                "transcript_id": {"S": f"t{n % 7}"},
                "output_type": {"S": f"k{n:02d}"},
                "account_id": {"S": "a"},
            },
        )
    listings: list[dict[str, Any]] = [
        {"Prefix": prefix, "MaxKeys": size}
        for prefix in ("", "a/", "a/1/", "a/1/key-05", "z/")
        for size in (3, 1000)
    ]
    listings.append({"Prefix": "a/1/", "MaxKeys": 1})
    listings += [{"Prefix": "a/", "KeyMarker": "a/2/key-10", "MaxKeys": 3}, {"Delimiter": "/", "MaxKeys": 1}]
    queries: list[dict[str, Any]] = [
        {
            "KeyConditionExpression": "transcript_id = :t",
            "ExpressionAttributeValues": {":t": {"S": f"t{n}"}},
            "Limit": limit,
        }
        for n in range(3)
        for limit in (2, 100)
    ]

    def answers() -> list[Any]:
        found: list[Any] = [_listing(s3, **params) for params in listings]
        found += [dynamodb.query(TableName="speech_outputs", **params)["Items"] for params in queries]
        found.append(dynamodb.scan(TableName="speech_outputs", Limit=9)["Items"])
        found.append(dynamodb.scan(TableName="speech_outputs")["Items"])
        return found

    plain = answers()
    with at_scale():
        scaled = answers()
    assert scaled == plain
    assert any(
        page["next"][2] for pages in plain[: len(listings)] for page in pages
    )  # pagination was exercised
