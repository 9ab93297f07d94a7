"""What loaders return and what keys may be: the value types shared by the load path and the wire.

Pure definitions (no I/O): :class:`Entry` (value, TTL and :class:`~tokencache.Kind`), the
:class:`Loader` protocol, the key check every entry point applies, and the digest that
compare-and-remove sends instead of a value.
"""

from __future__ import annotations

import hashlib
from collections.abc import Awaitable
from dataclasses import dataclass
from typing import Protocol

from ._errors import InvalidArgument
from ._fetched import Kind


@dataclass(frozen=True, slots=True)
class Entry:
    """What a loader returns: the value, its lifetime in seconds, and its kind.

    ``ttl=None`` never expires; ``ttl<=0`` or ``kind=Kind.TRANSIENT`` is handed to the callers
    waiting now and stored nowhere; ``kind=Kind.MARKER`` is stored but is not a value (see
    :class:`tokencache.Kind`).
    """

    value: bytes
    ttl: float | None = None
    kind: Kind = Kind.VALUE


class Loader(Protocol):
    """Loads the value of a key when no cache in the cluster has it. A plain ``async def``."""

    def __call__(self, key: str, /) -> Awaitable[Entry]:
        """Return the entry for ``key``; raise ``NotFound`` or ``Declined`` to steer the caller."""
        ...


Result = tuple[bytes, float | None]


def value_digest(value: bytes) -> str:
    """The digest compare-and-remove sends instead of the value itself."""
    return hashlib.sha256(value).hexdigest()


def check_key(key: str, max_key_bytes: int) -> None:
    """Refuse keys the peer protocol cannot carry."""
    if not isinstance(key, str):
        raise InvalidArgument("keys are str")
    try:
        size = len(key.encode("utf-8"))
    except UnicodeEncodeError:
        raise InvalidArgument("keys must be encodable as UTF-8") from None
    if size > max_key_bytes:
        raise InvalidArgument(f"key longer than {max_key_bytes} bytes")
