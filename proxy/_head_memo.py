"""The listener's head memo: request heads remembered by their bytes, with their parse.

Parsing a head and checking it are pure functions of its bytes, and clients repeat their requests
byte for byte, so a read of the same bytes reuses the parse (`Listener.heads`). A client also sends
the same field section (Host, User-Agent, Accept ...) with every request and varies the request
line: heads whose field sections are equal share one parse of it (the field list and the map)
and what the handler derives from it (`Request.derived`: load contexts per client address). A
shared section is counted once in the memo's bytes, from the first head that uses it until the
last one goes, so the count stays what the memo holds. A head with one short field then takes
~440 bytes (tracemalloc) where it took ~1,300 with its own parse and derived contexts.

Sharing is safe because a request's head is never changed in place (`Request.again`,
`Request.set_host`), a section is shared only by heads whose fields are equal byte for byte, and
what is derived from a head depends on its fields and the connection, not on its request line.
"""

from __future__ import annotations

from ._http_request import DERIVED_MAX, Request
from ._memo import Memo

__all__ = ["HeadMemo", "head_cost", "section_cost"]

Fields = tuple[tuple[bytes, bytes], ...]


def head_cost(data: bytes, req: Request) -> int:
    """What a remembered head takes besides its field section, estimated: its bytes as the key,
    its target and its express key (the target again), up to 3 x its size when the target is
    most of it; and ~450 bytes of objects (the request, the memo's slot). tracemalloc measured
    ~440 bytes for a 62-byte head (this says 636) and 1.4 x what 2 x its size said for heads of
    a 1,900-byte target (tests/test_proxy_head_memo.py)."""
    return 3 * len(data) + 450


def section_cost(headers: list[tuple[bytes, bytes]]) -> int:
    """What one parsed field section takes, estimated: ~250 bytes a field (its pair, its name
    and value, the lower-case name, the list's and the map's slots), its bytes twice, ~400 for
    the list, the map and the key tuple; and what the handler derives from these fields
    (`Request.derived`, shared by the section's heads): up to DERIVED_MAX load contexts, one per
    client address, each the fields again (with their separators) and ``X-Forwarded-For`` and
    ``Forwarded`` naming the address (up to 45 characters of IPv6, twice), and ~300 bytes of
    objects (the bytes, the key with its address string, the map's slot)."""
    size = sum(len(n) + len(v) for n, v in headers)
    context = 2 * size + 4 * len(headers) + 450
    return 250 * len(headers) + 2 * size + 400 + DERIVED_MAX * context


class _Section:
    __slots__ = ("cost", "derived", "headers", "hmap", "users")

    def __init__(self, req: Request) -> None:
        self.headers = req.headers
        self.hmap = req.hmap
        self.derived = req.derived
        self.cost = section_cost(req.headers)
        self.users = 1  # remembered heads that use it (and one being remembered)


class HeadMemo(Memo[bytes, Request]):
    """Heads by their bytes, bounded in entries and in bytes; equal field sections shared."""

    __slots__ = ("_sections",)

    def __init__(self, max_entries: int, max_bytes: int) -> None:
        super().__init__(head_cost, max_entries, max_bytes)
        self._sections: dict[Fields, _Section] = {}

    @property
    def sections(self) -> int:
        """How many distinct field sections the remembered heads use."""
        return len(self._sections)

    def remember(self, data: bytes, req: Request) -> bool:
        """Keep `req` (a request nothing else holds yet) as the parse of `data`; False when it
        can never fit. Its field list and map become the shared ones of an equal section."""
        fields = tuple(req.headers)
        section = self._sections.get(fields)
        if section is None:
            # A new section: no remembered head uses it, so the put cannot evict it; it joins
            # the table (and the count, with the head) only if the head is kept.
            section = _Section(req)
            if not self.put(data, req, section.cost):
                return False
            self._sections[fields] = section
            return True
        req.headers, req.hmap, req.derived = section.headers, section.hmap, section.derived
        # Counted before the put: the put may evict this section's other users.
        section.users += 1
        if self.put(data, req):
            return True
        self._drop_user(fields, section)
        return False

    def pop(self, key: bytes) -> Request | None:
        """Forget `key` (and its section with its last user)."""
        req = super().pop(key)
        if req is not None:
            fields = tuple(req.headers)
            section = self._sections.get(fields)
            if section is not None:
                self._drop_user(fields, section)
        return req

    def _drop_user(self, fields: Fields, section: _Section) -> None:
        section.users -= 1
        if section.users <= 0:
            del self._sections[fields]
            self.release(section.cost)
