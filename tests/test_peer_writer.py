"""The peer connections' write batching (`tokencache._writer.BatchWriter`), on a fake loop and
transport: one write per loop turn, order kept, large bursts not held back, nothing after close."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any, cast

from hypothesis import given
from hypothesis import strategies as st

from tokencache._writer import FLUSH_BYTES, BatchWriter


class _Loop:
    """Keeps `call_soon` callbacks until the test turns the loop."""

    def __init__(self) -> None:
        self.ready: list[Callable[[], object]] = []

    def call_soon(self, callback: Callable[[], object], *args: Any) -> None:
        self.ready.append(lambda: callback(*args))

    def turn(self) -> None:
        ready, self.ready = self.ready, []
        for callback in ready:
            callback()


class _Transport:
    def __init__(self) -> None:
        self.writes: list[bytes] = []
        self.closing = False

    def write(self, data: bytes) -> None:
        self.writes.append(bytes(data))

    def is_closing(self) -> bool:
        return self.closing


def _writer() -> tuple[BatchWriter, _Loop, _Transport]:
    loop, transport = _Loop(), _Transport()
    writer = BatchWriter(cast(asyncio.Transport, transport), cast(asyncio.AbstractEventLoop, loop))
    return writer, loop, transport


def test_the_frames_of_one_loop_turn_go_out_in_one_write_when_it_turns() -> None:
    writer, loop, transport = _writer()
    for frame in (b"a", b"bb", b"ccc"):
        writer.write(frame)
    assert transport.writes == []  # nothing before the loop turns: later frames may join
    loop.turn()
    assert transport.writes == [b"abbccc"]
    writer.write(b"d")
    loop.turn()
    loop.turn()  # nothing queued: no empty write
    assert transport.writes == [b"abbccc", b"d"]


def test_a_burst_past_the_bound_reaches_the_transport_at_once_even_the_first_frame() -> None:
    writer, loop, transport = _writer()
    big = b"x" * FLUSH_BYTES
    writer.write(big)  # alone over the bound: its flow control must see it in this turn
    assert transport.writes == [big]
    writer.write(b"small")
    writer.write(b"y" * FLUSH_BYTES)  # what was queued first, then the large frame, uncopied
    assert transport.writes == [big, b"small", b"y" * FLUSH_BYTES]
    for _ in range(3):
        writer.write(b"z" * (FLUSH_BYTES // 3 + 1))  # small frames adding up past the bound
    assert transport.writes[-1] == b"z" * (3 * (FLUSH_BYTES // 3 + 1))
    writer.write(b"tail")
    loop.turn()
    assert transport.writes[-1] == b"tail"


def test_flush_writes_now_and_a_closing_transport_gets_nothing() -> None:
    writer, loop, transport = _writer()
    writer.write(b"sealed")
    writer.flush()  # before a refusal and close: answers already sealed go first
    assert transport.writes == [b"sealed"]
    writer.write(b"late")
    transport.closing = True
    loop.turn()
    assert transport.writes == [b"sealed"]


@given(
    steps=st.lists(
        st.one_of(
            st.binary(min_size=1, max_size=FLUSH_BYTES // 3),
            st.just(b"TURN"),
            st.just(b"FLUSH"),
        ),
        max_size=40,
    )
)
def test_bytes_reach_the_transport_in_order_and_never_wait_past_the_bound(
    steps: list[bytes],
) -> None:
    writer, loop, transport = _writer()
    given_bytes = b""
    for step in steps:
        if step == b"TURN":
            loop.turn()
        elif step == b"FLUSH":
            writer.flush()
        else:
            writer.write(step)
            given_bytes += step
        held = len(given_bytes) - sum(len(w) for w in transport.writes)
        assert 0 <= held < FLUSH_BYTES  # what waits for the turn stays under the bound
    loop.turn()
    assert b"".join(transport.writes) == given_bytes  # in order (MACs depend on it)
    assert all(transport.writes)
