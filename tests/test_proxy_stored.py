"""The stored-response format: encode/decode round trips and what the listener writes from it."""

from __future__ import annotations

import httptools
import pytest
from hypothesis import given
from hypothesis import strategies as st

from tokencache.proxy._stored import (
    decode_error,
    decode_pass,
    decode_response,
    decode_stale,
    decode_vary,
    encode_error,
    encode_pass,
    encode_response,
    encode_stale,
    encode_vary,
    status_line,
)


class _Parsed:
    def __init__(self) -> None:
        self.headers: list[tuple[bytes, bytes]] = []
        self.body = b""
        self.done = False

    def on_header(self, name: bytes, value: bytes) -> None:
        self.headers.append((name, value))

    def on_body(self, body: bytes) -> None:
        self.body += body

    def on_message_complete(self) -> None:
        self.done = True


def parse(wire: bytes) -> tuple[int, _Parsed]:
    parsed = _Parsed()
    parser = httptools.HttpResponseParser(parsed)
    parser.feed_data(wire)
    return parser.get_status_code(), parsed


def test_response_round_trip_and_wire_form():
    headers = [
        (b"Content-Type", b"text/plain"),
        (b"Content-Length", b"999"),  # replaced by the real length
        (b"Transfer-Encoding", b"chunked"),  # hop-by-hop: dropped
        (b"Age", b"7"),
        (b"X-A", b"1"),
        (b"X-A", b"2"),
    ]
    value = encode_response(200, headers, b"hello", ttl=300.0, age=7, fresh=200.0)
    stored = decode_response(value)
    assert (stored.status, stored.base_age, stored.ttl, stored.fresh) == (200, 7, 300.0, 200.0)
    assert bytes(stored.body) == b"hello"
    wire = bytes(stored.head) + b"Cache-Status: tokencache; hit\r\n\r\n" + bytes(stored.body)
    status, parsed = parse(wire)
    assert status == 200
    assert parsed.done and parsed.body == b"hello"
    assert parsed.headers == [
        (b"Content-Type", b"text/plain"),
        (b"X-A", b"1"),
        (b"X-A", b"2"),
        (b"Content-Length", b"5"),
        (b"Cache-Status", b"tokencache; hit"),
    ]


def test_age_adds_time_spent_in_cache():
    stored = decode_response(encode_response(200, [(b"Age", b"5")], b"", ttl=100.0, age=5))
    assert stored.age(100.0) == 5
    assert stored.age(60.5) == 44
    assert stored.age(None) == 5
    assert stored.age(150.0) == 5  # never negative


def test_staleness_counts_from_the_stored_freshness():
    stored = decode_response(encode_response(200, [], b"", ttl=100.0, fresh=30.0))
    assert stored.staleness(100.0) == -30.0
    assert stored.staleness(70.0) == 0.0
    assert stored.staleness(50.0) == 20.0


def test_the_backend_age_field_is_not_copied_into_the_head():
    stored = decode_response(encode_response(200, [(b"Age", b"9")], b"", ttl=1.0, age=9))
    assert b"age:" not in bytes(stored.head).lower()
    assert stored.base_age == 9


def test_head_only_keeps_the_backend_length_and_has_no_body():
    value = encode_response(200, [(b"Content-Length", b"1234")], b"", ttl=1.0, head_only=True)
    stored = decode_response(value)
    assert b"Content-Length: 1234\r\n" in bytes(stored.head)
    assert bytes(stored.body) == b""


@pytest.mark.parametrize("status", [204, 304])
def test_bodiless_statuses_get_no_length(status: int):
    stored = decode_response(encode_response(status, [], b"", ttl=1.0))
    assert b"content-length" not in bytes(stored.head).lower()


def test_reason_phrase_defaults_and_is_kept():
    assert status_line(404) == b"HTTP/1.1 404 Not Found\r\n"
    assert status_line(299) == b"HTTP/1.1 299 Unknown\r\n"
    assert status_line(200, b"Fine") == b"HTTP/1.1 200 Fine\r\n"
    stored = decode_response(encode_response(201, [], b"", ttl=1.0, reason=b"Made"))
    assert bytes(stored.head).startswith(b"HTTP/1.1 201 Made\r\n")


@given(
    status=st.integers(200, 599),
    body=st.binary(max_size=2000),
    ttl=st.floats(0, 1e6),
    age=st.integers(0, 10**6),
)
def test_response_round_trip_property(status: int, body: bytes, ttl: float, age: int):
    value = encode_response(status, [(b"Age", str(age).encode())], body, ttl=ttl, age=age)
    stored = decode_response(value)
    assert (stored.status, stored.base_age, stored.ttl, bytes(stored.body)) == (
        status,
        age,
        ttl,
        body,
    )


def test_vary_round_trip():
    inner = encode_response(200, [], b"x", ttl=5.0)
    match = "\naccept-encoding: gzip\naccept-language:"
    rec = decode_vary(encode_vary(["accept-encoding", "accept-language"], "0a1b", match, inner))
    assert rec.names == ("accept-encoding", "accept-language")
    assert (rec.generation, rec.match, rec.default) == ("0a1b", match, inner)


def test_pass_stale_error_round_trips():
    inner = encode_response(200, [], b"x", ttl=5.0)
    assert decode_pass(encode_pass("no-store")).reason == "no-store"
    held = decode_pass(encode_pass("private", b"\x00id\xff", inner))
    assert (held.reason, held.trigger, held.response) == ("private", b"\x00id\xff", inner)
    stale = decode_stale(encode_stale(504, 12.5, inner))
    assert (stale.fwd_status, stale.expired_ago, stale.inner) == (504, 12.5, inner)
    error = decode_error(encode_error(502, "connect"))
    assert (error.status, error.reason) == (502, "connect")


@pytest.mark.parametrize(
    "decode", [decode_response, decode_vary, decode_pass, decode_stale, decode_error]
)
def test_decoders_refuse_other_records(decode: object):
    with pytest.raises(ValueError, match="not a"):
        decode(b"XXXX" + b"\0" * 32)  # type: ignore[operator]
