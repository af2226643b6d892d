"""The proxy only ever talks to the configured upstream, below its base path."""

from __future__ import annotations

import pytest
from multidict import CIMultiDict

from gateway.errors import BadRequest
from gateway.upstream.auth import NoAuth
from gateway.upstream.client import UpstreamClient, upstream_path
from gateway.upstream.models import UpstreamRequest


@pytest.mark.parametrize(
    "raw",
    [
        "/../etc/passwd",
        "/open/../../admin",
        "/open/%2e%2e/admin",
        "/open/%2E%2E/admin",
        "/open/%252e%252e/admin",
        "/open/.%2e/admin",
        "/open/./v1",
        "/open%2f..%2fadmin",
        "/open/..%5cadmin",
        "/open\\..\\admin",
        "/open/%00",
        "http://evil.example/steal",
        "evil.example:443",
        "*",
    ],
)
def test_escapes_are_rejected(raw: str) -> None:
    """Dot segments (plain, encoded, double-encoded), backslashes, NUL and absolute targets fail."""
    with pytest.raises(BadRequest):
        upstream_path(raw)


def test_plain_path_and_query_split() -> None:
    """A normal target splits into path and query unchanged."""
    assert ("/open/v1/services", "a=1&b=%2F") == upstream_path("/open/v1/services?a=1&b=%2F")


def test_dots_inside_names_are_fine() -> None:
    """Dots that are not whole segments are ordinary characters."""
    assert ("/v1/file..name/.well", "") == upstream_path("/v1/file..name/.well")


async def test_url_stays_on_the_configured_base() -> None:
    """The upstream URL is the configured base plus the client's path, never its host."""
    client = UpstreamClient(
        None,  # type: ignore[arg-type]  # url_for needs no session
        "http://127.0.0.1:9000/base",
        NoAuth(),
        timeout=1,
        connect_timeout=1,
        max_response_bytes=1024,
    )
    request = UpstreamRequest(
        method="POST",
        path="/open/v1/services",
        query=(("senid", "x"),),
        headers=CIMultiDict(),
        body=b"",
    )
    assert "http://127.0.0.1:9000/base/open/v1/services?senid=x" == str(client.url_for(request))
