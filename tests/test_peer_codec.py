"""The peer protocol without sockets: payload codecs, the channel state machine, liveness, logs.

Bytes are written from docs/peer-protocol.md (tests/support/peer_wire.py) where the layout is the
point; the engine's own encoders are checked against them and round-trip every value.
"""

from __future__ import annotations

import contextlib
import hashlib
import hmac
import logging
import struct

import pytest
from hypothesis import example, given
from hypothesis import strategies as st

from tests.support import peer_wire
from tokencache import Fetched, Kind
from tokencache import _protocol as p
from tokencache import _signing as sig
from tokencache._channel import Channel
from tokencache._liveness import InFlight
from tokencache._ratelog import RateLimitedLog
from tokencache.testing import FakeClock

V = Kind.VALUE

SECRET = b"codec-secret"


def limits(kind: int) -> int | None:
    return 1 << 16 if kind in p.REQUESTS or kind in p.ANSWERS else None


def pair(secret: bytes | None = SECRET) -> tuple[Channel, Channel]:
    client = Channel(client=True, secret=secret, limits=limits, heartbeat_ms=500)
    server = Channel(client=False, secret=secret, limits=limits)
    assert server.receive(client.start()) == []
    assert client.receive(server.data_to_send()) == []
    proof = client.data_to_send()
    assert server.receive(proof) == []
    assert client.state == server.state == "open"
    assert server.heartbeat_ms == 500
    return client, server


def test_get_payload_matches_the_documented_layout_and_round_trips() -> None:
    assert p.encode_get("g", "k\u00e9") == peer_wire.get_payload("g", "k\u00e9".encode())
    raw = p.encode_get("g", "k", 2.5, bytes(range(256)), {"traceparent": "00-ab-cd-01"})
    req = p.decode_get(raw, 100, 1000)
    assert req == p.GetRequest("g", "k", 2.5, bytes(range(256)), {"traceparent": "00-ab-cd-01"})


@given(
    group=st.text(max_size=30),
    key=st.text(max_size=50),
    min_ttl=st.floats(0, 1e9),
    context=st.none() | st.binary(max_size=100),
)
def test_every_get_round_trips(group: str, key: str, min_ttl: float, context: bytes | None) -> None:
    try:
        raw = p.encode_get(group, key, min_ttl, context)
    except UnicodeEncodeError:
        return  # lone surrogates cannot travel; the engine refuses them before encoding
    if len(group.encode()) > 255:
        return
    assert p.decode_get(raw, 1000, 1000) == p.GetRequest(group, key, min_ttl, context, {})


def test_other_payloads_round_trip() -> None:
    digest = "ab" * 32
    assert p.decode_remove(p.encode_remove("g", "k", digest), 10) == ("g", "k", digest)
    assert p.decode_remove(p.encode_remove("g", "k"), 10) == ("g", "k", None)
    assert p.decode_lookup(p.encode_lookup("g", "k"), 10) == ("g", "k", None)
    assert p.decode_put(p.encode_put("g", "k", b"v", 3.0), 10, 10) == ("g", "k", b"v", 3.0, V)
    assert p.decode_put(p.encode_put("g", "k", b"v", None), 10, 10) == ("g", "k", b"v", None, V)
    marker = p.decode_put(p.encode_put("g", "k", b"v", 3.0, Kind.MARKER), 10, 10)
    assert marker.kind is Kind.MARKER
    assert p.decode_leave(p.encode_leave("http://a:1")) == "http://a:1"
    assert p.decode_value(p.encode_value(Fetched(b"x", None, True))) == (b"x", None, True, V)
    assert p.decode_value(p.encode_value(Fetched(b"x", 1.5, False))) == (b"x", 1.5, False, V)
    for kind in Kind:
        fetched = Fetched(b"x", 1.5, True, kind)
        assert p.decode_value(p.encode_value(fetched)) == fetched
        assert peer_wire.value_of(p.encode_value(fetched)) == (b"x", 1.5, True, kind.value)
    assert p.decode_error(p.encode_error(p.NOT_FOUND, "x" * 500))[1] == "x" * p.MAX_MESSAGE_BYTES


@pytest.mark.parametrize(
    ("payload", "code"),
    [
        (b"", p.BAD_REQUEST),  # ends early
        (peer_wire.group_key("g", b"\xff\xfe") + bytes(10), p.BAD_REQUEST),  # key not UTF-8
        (peer_wire.group_key("g", b"k" * 11) + bytes(10), p.TOO_LARGE),  # key over the limit
        (peer_wire.group_key("g", b"k") + struct.pack("!d", float("nan")) + b"\0\0", 400),
        (peer_wire.group_key("g", b"k") + struct.pack("!d", -1.0) + b"\0\0", 400),
        (peer_wire.group_key("g", b"k") + bytes(8) + b"\x02\x00", p.BAD_REQUEST),  # flags
        (peer_wire.group_key("g", b"k") + bytes(8) + b"\x01\xff\xff\xff\xff", p.TOO_LARGE),
        (peer_wire.get_payload("g", b"k") + b"extra", p.BAD_REQUEST),
    ],
)
def test_malformed_get_payloads_are_refused_with_a_code(payload: bytes, code: int) -> None:
    with pytest.raises(p.ProtocolError) as caught:
        p.decode_get(payload, 10, 100)
    assert caught.value.code == (p.BAD_REQUEST if code == 400 else code)


def test_the_kind_code_three_is_refused_in_values_and_puts() -> None:
    bad_kind = struct.pack("!Bd", 0x0C, 1.0) + b"x"  # bits 2-3 = 3: no such kind
    with pytest.raises(p.ProtocolError) as caught:
        p.decode_value(bad_kind)
    assert caught.value.code == p.BAD_REQUEST
    with pytest.raises(p.ProtocolError) as caught:
        p.decode_put(peer_wire.group_key("g", b"k") + bad_kind, 10, 10)
    assert caught.value.code == p.BAD_REQUEST


@given(st.binary(max_size=200))
def test_any_payload_bytes_decode_or_raise_protocol_error(data: bytes) -> None:
    for decode in (
        lambda: p.decode_get(data, 64, 64),
        lambda: p.decode_lookup(data, 64),
        lambda: p.decode_remove(data, 64),
        lambda: p.decode_put(data, 64, 64),
        lambda: p.decode_leave(data),
        lambda: p.decode_value(data),
        lambda: p.decode_error(data),
    ):
        with contextlib.suppress(p.ProtocolError):
            decode()


def test_frames_flow_both_ways_with_macs() -> None:
    client, server = pair()
    frames = server.receive(client.frame(p.GET, 1, b"a") + client.frame(p.PING, 2))
    assert frames == [(p.GET, 1, b"a"), (p.PING, 2, b"")]
    data = server.frame(p.OK, 2) + server.frame(p.VALUE, 1, b"v")
    # byte by byte: frames come out only when complete
    got = [f for i in range(len(data)) for f in client.receive(data[i : i + 1])]
    assert got == [(p.OK, 2, b""), (p.VALUE, 1, b"v")]


@given(
    # SHA-256's 64-byte block is where HMAC's key handling changes: lengths around it are drawn
    # as often as any other length.
    key=st.one_of(
        st.sampled_from([0, 1, 32, 63, 64, 65, 128]).flatmap(
            lambda n: st.binary(min_size=n, max_size=n)
        ),
        st.binary(max_size=200),
    ),
    seq=st.integers(min_value=0, max_value=2**64 - 1),
    frame=st.binary(max_size=3000),
)
@example(key=b"k" * 64, seq=1, frame=b"frame")
@example(key=b"k" * 65, seq=1, frame=b"frame")
def test_a_frame_key_is_hmac_sha256_of_seq_and_frame(key: bytes, seq: int, frame: bytes) -> None:
    # The precomputed key states must give the documented MAC for every key length (keys over
    # SHA-256's 64-byte block are hashed first), sequence number and frame, bytes or a view.
    expected = hmac.new(key, struct.pack("!Q", seq) + frame, hashlib.sha256).digest()[:16]
    frame_key = sig.FrameKey(key)
    assert frame_key.mac(seq, frame) == expected
    assert frame_key.mac(seq, memoryview(bytearray(frame))) == expected
    assert frame_key.matches(seq, frame, expected)
    assert not frame_key.matches(seq + 1 if seq < 2**64 - 1 else 0, frame, expected)


def test_replayed_reordered_and_tampered_frames_fail_the_mac() -> None:
    for mutate in ("replay", "reorder", "flip"):
        client, server = pair()
        first, second = client.frame(p.PING, 1), client.frame(p.PING, 2)
        if mutate == "replay":
            server.receive(first)
            data = first
        elif mutate == "reorder":
            data = second
        else:
            data = first[:-17] + bytes([first[-17] ^ 1]) + first[-16:]
        with pytest.raises(p.ProtocolError) as caught:
            server.receive(data)
        assert caught.value.code == p.UNAUTHORIZED
        assert server.state == "closed"
        # the refusal is an ERROR frame the real client can check
        kind, rid, payload = client.receive(server.refusal(caught.value.code, "x"))[0]
        assert (kind, rid, payload[0]) == (p.ERROR, 0, p.UNAUTHORIZED)


def test_wrong_secret_and_missing_secret_fail_the_handshake() -> None:
    client = Channel(client=True, secret=b"other", limits=limits)
    server = Channel(client=False, secret=SECRET, limits=limits)
    server.receive(client.start())
    with pytest.raises(p.ProtocolError) as caught:
        client.receive(server.data_to_send())  # the server's proof does not verify
    assert caught.value.code == p.UNAUTHORIZED
    unauth = Channel(client=True, secret=None, limits=limits)
    server = Channel(client=False, secret=SECRET, limits=limits)
    with pytest.raises(p.ProtocolError) as caught:
        server.receive(unauth.start())
    refusal = server.refusal(caught.value.code, "")
    assert refusal[:4] == b"TKCP" and refusal[5] == 3  # status: auth mismatch
    with pytest.raises(p.ProtocolError):
        unauth.receive(refusal)


def test_versions_and_foreign_protocols_are_refused_cleanly() -> None:
    server = Channel(client=False, secret=None, limits=limits)
    with pytest.raises(p.ProtocolError) as caught:
        server.receive(peer_wire.client_hello(version=2, flags=0))
    assert caught.value.code == p.UNSUPPORTED_VERSION
    refusal = server.refusal(caught.value.code, "")
    assert len(refusal) == 72 and refusal[4] == 1 and refusal[5] == 1
    server = Channel(client=False, secret=None, limits=limits)
    with pytest.raises(p.ProtocolError):
        server.receive(b"G")  # the first wrong byte is enough
    assert server.refusal(p.BAD_REQUEST, "")[5] == 2


def test_frame_limits_apply_before_the_body_is_buffered() -> None:
    _, server = pair(None)
    with pytest.raises(p.ProtocolError) as caught:
        server.receive(struct.pack("!IBI", 0xFFFFFFFF, p.GET, 1))  # 4 GiB announced
    assert caught.value.code == p.TOO_LARGE
    _, server = pair(None)
    with pytest.raises(p.ProtocolError) as caught:
        server.receive(struct.pack("!IBI", 5, 0x7F, 1))
    assert caught.value.code == p.BAD_REQUEST
    _, server = pair()
    with pytest.raises(p.ProtocolError):
        server.receive(struct.pack("!IBI", 4, p.PING, 1))  # shorter than its own MAC


@given(st.binary(min_size=1, max_size=300))
def test_any_bytes_after_the_handshake_yield_frames_or_a_protocol_error(data: bytes) -> None:
    _, server = pair()
    try:
        frames = server.receive(data)
    except p.ProtocolError:
        return
    assert frames == []  # nothing without the session key's MAC ever comes out


def test_liveness_tells_slow_from_dead_with_a_fake_clock() -> None:
    clock = FakeClock()
    inflight: InFlight[str] = InFlight(3.0)
    inflight.add(1, "slow", clock.now(), max_wait=30.0)
    inflight.add(2, "quick", clock.now(), max_wait=30.0)
    assert inflight.pop(2) == "quick"
    for _ in range(20):  # 20 s of heartbeats a second apart: alive all along
        clock.advance(1.0)
        inflight.touch(1, clock.now())
        assert not inflight.dead(clock.now())
    clock.advance(10.0)
    assert inflight.expired(clock.now()) == ["slow"]  # slow: its own deadline, not dead
    inflight.add(3, "frozen", clock.now(), max_wait=30.0)
    clock.advance(2.9)
    assert not inflight.dead(clock.now())
    clock.advance(0.2)
    assert inflight.dead(clock.now())  # silence for the liveness timeout
    assert inflight.pop_all() == ["frozen"]


def test_refusals_are_logged_once_per_interval(caplog: pytest.LogCaptureFixture) -> None:
    clock = FakeClock()
    log = RateLimitedLog(logging.getLogger("test.refusals"), interval=10.0, clock=clock)
    with caplog.at_level(logging.WARNING, "test.refusals"):
        for _ in range(1000):
            log.refused("10.0.0.1:5", "bad-request: x")
        clock.advance(10.0)
        log.refused("10.0.0.1:5", "bad-request: x")
    lines = [r.getMessage() for r in caplog.records]
    assert len(lines) == 2
    assert "999 more refused" in lines[1]
