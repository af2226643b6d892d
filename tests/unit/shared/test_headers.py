"""Transparent-proxy header handling (RFC 9110 §7.6) and request ids."""

from __future__ import annotations

from multidict import CIMultiDict

from gateway.headers import add_forwarded, end_to_end, request_id


def test_hop_by_hop_headers_are_dropped() -> None:
    """Hop-by-hop headers and headers named in Connection never cross the proxy."""
    incoming = CIMultiDict(
        [
            ("Connection", "keep-alive, X-Secret-Hop"),
            ("Keep-Alive", "timeout=5"),
            ("Transfer-Encoding", "chunked"),
            ("TE", "trailers"),
            ("Trailer", "X-Checksum"),
            ("Upgrade", "h2c"),
            ("Proxy-Authorization", "Basic xyz"),
            ("Proxy-Connection", "keep-alive"),
            ("X-Secret-Hop", "1"),
            ("Host", "gateway.local"),
            ("Content-Length", "10"),
            ("Content-Type", "application/json"),
            ("method", "nuonuo.OpeMplatform.requestBillingNew"),
        ]
    )
    assert [
        ("Content-Type", "application/json"),
        ("method", "nuonuo.OpeMplatform.requestBillingNew"),
    ] == list(end_to_end(incoming).items())


def test_extra_drops() -> None:
    """Headers the gateway consumes itself (the tenant key) are dropped on request."""
    incoming = CIMultiDict([("X-Api-Key", "secret"), ("Accept", "*/*")])
    assert [("Accept", "*/*")] == list(end_to_end(incoming, drop=("x-api-key",)).items())


def test_repeated_headers_survive() -> None:
    """End-to-end headers that repeat are kept in order."""
    incoming = CIMultiDict([("Set-Cookie", "a=1"), ("Set-Cookie", "b=2")])
    assert ["a=1", "b=2"] == end_to_end(incoming).getall("Set-Cookie")


def test_request_id_propagated_when_sane() -> None:
    """A client's X-Request-Id is kept."""
    assert "abc-123" == request_id({"X-Request-Id": "abc-123"})


def test_request_id_replaced_when_unsafe() -> None:
    """A request id with characters that could forge log lines is replaced."""
    generated = request_id({"X-Request-Id": "abc\r\nX-Evil: 1"})
    assert 32 == len(generated)
    assert generated.isalnum()


def test_request_id_generated() -> None:
    """Without a client id, a fresh one is made each time."""
    assert request_id({}) != request_id({})


def test_forwarded_headers_appended() -> None:
    """X-Forwarded-For and Forwarded gain this hop, keeping earlier ones."""
    headers = CIMultiDict([("X-Forwarded-For", "203.0.113.9")])
    add_forwarded(headers, client_ip="10.0.0.5", host="gw.example", proto="http")
    assert "203.0.113.9, 10.0.0.5" == headers["X-Forwarded-For"]
    assert 'for=10.0.0.5;proto=http;host="gw.example"' == headers["Forwarded"]


def test_forwarded_ipv6_quoted() -> None:
    """IPv6 nodes are quoted and bracketed as RFC 7239 requires."""
    headers: CIMultiDict[str] = CIMultiDict()
    add_forwarded(headers, client_ip="::1", host=None, proto="https")
    assert 'for="[::1]";proto=https' == headers["Forwarded"]
