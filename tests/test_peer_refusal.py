"""A refused peer connection is closed within the write timeout, whatever its client does.

After a refusal the server writes the refusal and closes; the close waits for the write buffer to
drain. These tests drive one server-side connection with a transport that never drains (a client
that stopped reading), so the only way out is the server's own abort.
"""

from __future__ import annotations

import asyncio
import struct

from tests.support import peer_wire as pw
from tests.support.fake_transport import FakeTransport
from tokencache import Entry, PeerServer, Workspace

SECRET = "peer-secret-for-tests"


class StuckTransport(FakeTransport):
    """A transport whose peer reads nothing: writes pile up in `out`, close() never completes
    (connection_lost comes only with an abort)."""

    def __init__(self) -> None:
        super().__init__()
        self.aborted = 0
        self.gone = asyncio.Event()  # set by abort()
        self.protocol: asyncio.Protocol | None = None

    def get_write_buffer_size(self) -> int:
        return len(self.out)  # nothing ever leaves

    def abort(self) -> None:
        super().abort()
        self.aborted += 1
        self.gone.set()
        if self.protocol is not None:
            protocol, self.protocol = self.protocol, None
            protocol.connection_lost(None)


async def _connection(
    write_timeout: float, handshake_timeout: float = 10.0, secret: str | None = SECRET
) -> tuple[PeerServer, StuckTransport, asyncio.Protocol]:
    async def load(key: str) -> Entry:
        return Entry(key.encode(), 60)

    ws = Workspace("http://127.0.0.1:1", peer_secret=secret)
    ws.new_group("echo", 1 << 20, load)
    server = PeerServer(
        ws, secret=secret, write_timeout=write_timeout, handshake_timeout=handshake_timeout
    )
    protocol = server.accepted()
    transport = StuckTransport()
    transport.protocol = protocol
    protocol.connection_made(transport)  # type: ignore[arg-type]
    return server, transport, protocol


async def test_a_refused_connection_that_never_drains_is_aborted_after_the_write_timeout() -> None:
    # (no secret: the handshake is a hello each way, which this test can write by hand)
    server, transport, protocol = await _connection(write_timeout=0.2, secret=None)
    protocol.data_received(pw.client_hello(flags=0))
    assert server.handshaking == 0 and not transport.is_closing()  # open
    protocol.data_received(struct.pack("!IBI", 5, 0x42, 1))  # an unknown frame type: refused
    assert transport.is_closing() and transport.out  # hello and refusal, waiting to be read
    assert transport.aborted == 0  # not yet: the client gets the write timeout to read it
    await asyncio.wait_for(transport.gone.wait(), 5.0)
    assert transport.aborted == 1
    assert server.stats.bad_requests == 1  # one refusal, counted once
    await server.close()


async def test_a_refused_connection_is_aborted_when_the_server_closes() -> None:
    server, transport, protocol = await _connection(write_timeout=60.0)
    protocol.data_received(pw.client_hello(version=9))  # a version we do not speak
    assert transport.is_closing() and transport.aborted == 0
    await server.close()  # shutdown does not wait for a client that reads nothing
    assert transport.aborted == 1


async def test_a_refusal_in_the_handshake_keeps_its_slot_until_gone_within_the_handshake_timeout() -> (
    None
):
    # Before the handshake nothing sealed waits: the connection goes within what is left of
    # handshake_timeout, not write_timeout, and holds its handshake slot until then, so
    # max_handshaking still bounds connections that never let their close finish (over TLS,
    # a client that never sends close_notify).
    server, transport, protocol = await _connection(write_timeout=60.0, handshake_timeout=0.2)
    assert server.handshaking == 1
    protocol.data_received(b"GET / HTTP/1.1\r\n\r\n")
    assert transport.is_closing() and server.handshaking == 1
    await asyncio.wait_for(transport.gone.wait(), 5.0)
    assert server.handshaking == 0
    await server.close()
    assert server.handshaking == 0


async def test_a_hello_and_a_bad_frame_in_one_read_get_the_hello_and_the_reason() -> None:
    # (second review) The refusal after a hello answered in the same read was the hello alone:
    # the client saw the connection open and close with no reason given.
    server, transport, protocol = await _connection(write_timeout=60.0, secret=None)
    protocol.data_received(pw.client_hello(flags=0) + struct.pack("!IBI", 5, 0x42, 1))
    hello, rest = bytes(transport.out[:72]), bytes(transport.out[72:])
    assert hello[:4] == b"TKCP" and hello[5] == 0  # the hello, accepting
    length, kind, rid = struct.unpack("!IBI", rest[:9])
    assert (kind, rid) == (pw.ERROR, 0) and len(rest) == 4 + length
    assert rest[9] == pw.ERR_BAD_REQUEST
    await server.close()
