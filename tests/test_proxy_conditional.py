"""Conditionals, Range, answers from a stored response, invalidation targets, the load context."""

from __future__ import annotations

import httptools
import pytest
from hypothesis import given
from hypothesis import strategies as st

import tokencache
from tokencache.proxy._conditional import byte_ranges, if_range_holds, not_modified, partial_body
from tokencache.proxy._policy import invalidation_targets
from tokencache.proxy._request_context import BadContext, decode_context, encode_context
from tokencache.proxy._respond import answer
from tokencache.proxy._stored import decode_response, encode_response

LM = b"Sun, 06 Nov 1994 08:49:37 GMT"


def test_if_none_match_uses_the_weak_comparison_and_star():
    assert not_modified({b"if-none-match": b'W/"a"'}, b'"a"', None)
    assert not_modified({b"if-none-match": b'"x", "a"'}, b'W/"a"', None)
    assert not_modified({b"if-none-match": b"*"}, b'"a"', None)
    assert not not_modified({b"if-none-match": b'"b"'}, b'"a"', LM)


def test_if_none_match_wins_over_if_modified_since():
    request = {b"if-none-match": b'"b"', b"if-modified-since": LM}
    assert not not_modified(request, b'"a"', LM)


def test_if_modified_since():
    assert not_modified({b"if-modified-since": LM}, None, LM)
    assert not not_modified({b"if-modified-since": b"Sat, 05 Nov 1994 08:49:37 GMT"}, None, LM)
    assert not not_modified({b"if-modified-since": b"garbage"}, None, LM)


def test_if_range_needs_a_strong_match_or_the_exact_date():
    assert if_range_holds(b'"a"', b'"a"', None)
    assert not if_range_holds(b'W/"a"', b'W/"a"', None)
    assert if_range_holds(LM, None, LM)
    assert not if_range_holds(b"Sat, 05 Nov 1994 08:49:37 GMT", None, LM)


@pytest.mark.parametrize(
    ("value", "ranges"),
    [
        (b"bytes=0-4", [(0, 4)]),
        (b"bytes=5-", [(5, 9)]),
        (b"bytes=-3", [(7, 9)]),
        (b"bytes=0-0, -1", [(0, 0), (9, 9)]),
        (b"bytes=8-100", [(8, 9)]),
        (b"bytes=10-", []),
        (b"bytes=5-1", None),
        (b"items=0-1", None),
        (b"bytes=a-b", None),
        (b"bytes=" + b",".join(b"0-0" for _ in range(40)), None),
    ],
)
def test_byte_ranges(value: bytes, ranges: list[tuple[int, int]] | None):
    assert byte_ranges(value, 10) == ranges


@given(st.binary(max_size=100), st.integers(0, 1000))
def test_byte_ranges_take_any_bytes_and_stay_in_bounds(value: bytes, length: int):
    ranges = byte_ranges(value, length)
    for first, last in ranges or []:
        assert 0 <= first <= last < length


def test_multipart_body_is_parseable():
    headers, body = partial_body([(0, 1), (5, 6)], b"0123456789", b"text/plain", b"BOUND")
    assert headers == [(b"Content-Type", b"multipart/byteranges; boundary=BOUND")]
    assert b"Content-Range: bytes 0-1/10\r\n\r\n01" in body
    assert b"Content-Range: bytes 5-6/10\r\n\r\n56" in body
    assert body.endswith(b"\r\n--BOUND--\r\n")


def stored(status: int = 200, body: bytes = b"0123456789"):
    headers = [(b"ETag", b'"e"'), (b"Content-Type", b"text/plain"), (b"Cache-Control", b"x")]
    return decode_response(encode_response(status, headers, body, ttl=60.0))


class _Parsed:
    def __init__(self) -> None:
        self.headers: dict[bytes, bytes] = {}
        self.body = b""

    def on_header(self, name: bytes, value: bytes) -> None:
        self.headers[name.lower()] = value

    def on_body(self, body: bytes) -> None:
        self.body += body


def parse(wire: bytes) -> tuple[int, _Parsed]:
    parsed = _Parsed()
    parser = httptools.HttpResponseParser(parsed)
    parser.feed_data(wire)
    return parser.get_status_code(), parsed


def test_answer_304_carries_the_validators_and_no_body():
    status, wire = answer(stored(), "GET", {b"if-none-match": b'"e"'}, b"Age: 1\r\n")
    assert status == 304
    head = wire.split(b"\r\n\r\n")[0]
    assert b'ETag: "e"' in head and b"Cache-Control: x" in head and b"Age: 1" in head
    assert b"Content-Type" not in head and wire.endswith(b"\r\n\r\n")


def test_answer_206_and_416_are_framed():
    status, wire = answer(stored(), "GET", {b"range": b"bytes=2-4"}, b"")
    code, parsed = parse(wire)
    assert (status, code, parsed.body) == (206, 206, b"234")
    assert parsed.headers[b"content-range"] == b"bytes 2-4/10"
    assert parsed.headers[b"content-length"] == b"3"
    status, wire = answer(stored(), "GET", {b"range": b"bytes=20-"}, b"")
    code, parsed = parse(wire)
    assert (status, parsed.headers[b"content-range"]) == (416, b"bytes */10")


def test_range_is_ignored_on_other_statuses_and_on_a_failed_if_range():
    assert answer(stored(404), "GET", {b"range": b"bytes=0-1"}, b"")[0] == 404
    request = {b"range": b"bytes=0-1", b"if-range": b'"other"'}
    assert answer(stored(), "GET", request, b"")[0] == 200


def test_invalidation_targets_same_origin_only():
    headers = [
        (b"Location", b"/a?x=1"),
        (b"Content-Location", b"http://Example.COM/b"),
        (b"Location", b"http://elsewhere.example/c"),
    ]
    assert invalidation_targets("/p", b"example.com", headers) == ["/p", "/a?x=1", "/b"]
    assert invalidation_targets("http://h/q?z", None, []) == ["/q?z"]
    assert invalidation_targets("/d/e", None, [(b"Location", b"f")]) == ["/d/e", "/d/f"]


def test_context_round_trip_drops_what_the_cache_decides_and_credentials():
    headers = [
        (b"User-Agent", b"ua"),
        (b"Range", b"bytes=0-1"),
        (b"If-None-Match", b'"x"'),
        (b"Authorization", b"Bearer secret"),
        (b"X-Empty", b""),
        (b"X-Forwarded-For", b"10.0.0.1"),
    ]
    ctx = decode_context(
        encode_context(b"\x00\xffid", headers, credentials=False), credentials=False
    )
    assert ctx is not None
    assert ctx.request_id == b"\x00\xffid"
    assert ctx.headers == [
        (b"User-Agent", b"ua"),
        (b"X-Empty", b""),
        (b"X-Forwarded-For", b"10.0.0.1"),
    ]
    kept = decode_context(encode_context(b"i", headers, credentials=True), credentials=True)
    assert kept is not None and (b"Authorization", b"Bearer secret") in kept.headers


@pytest.mark.parametrize("data", [None, b"", b"XXXX\x01a", b"TCX"])
def test_no_context_or_another_format_is_no_context(data: bytes | None):
    assert decode_context(data, credentials=False) is None


@pytest.mark.parametrize(
    "data",
    [
        b"TCX1",
        b"TCX1\x05ab",
        b"TCX1\x00x: a\nb",
        b"TCX1\x00x: a\x00b",
        b"TCX1\x00bad name: v",
        b"TCX1\x00no-colon",
        b"TCX1\x00x:v",
        b"TCX1\x00: v",
    ],
)
def test_a_malformed_context_from_a_peer_is_refused(data: bytes):
    with pytest.raises(BadContext):
        decode_context(data, credentials=False)
    assert issubclass(BadContext, tokencache.InvalidArgument)


def test_a_peer_cannot_smuggle_fields_the_cache_never_sends():
    """A context arriving on the peer port gets the encoder's rules again."""
    lines = [
        b"Host: internal-admin",
        b"Transfer-Encoding: chunked",
        b"Content-Length: 5",
        b"Connection: close",
        b"Range: bytes=0-1",
        b"Authorization: Bearer stolen",
        b"Cookie: a=1",
        b"X-Kept: yes",
    ]
    data = b"TCX1\x01i" + b"\r\n".join(lines)
    ctx = decode_context(data, credentials=False)
    assert ctx is not None and ctx.headers == [(b"X-Kept", b"yes")]
    with_credentials = decode_context(data, credentials=True)
    assert with_credentials is not None
    assert [n for n, _ in with_credentials.headers] == [b"Authorization", b"Cookie", b"X-Kept"]
