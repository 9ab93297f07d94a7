"""The per-request context a caller hands to the loader of the key's owner.

A caller may pass ``context=`` (opaque bytes, not part of the key) to ``Group.get``; it travels to
the owner with the peer request, and the loader that runs for that flight reads it with
:func:`load_context`. Concurrent callers share one flight, so the loader sees the context of the
caller that started it (a reverse proxy forwards the triggering client's request headers this way).
A context variable rather than a loader argument keeps the plain ``async def load(key)`` loaders
working unchanged.
"""

from __future__ import annotations

from contextvars import ContextVar

# Set only around one loader call (see ``Group._run_loader``), so it holds no state between loads.
_current: ContextVar[bytes | None] = ContextVar("tokencache_load_context", default=None)

MAX_CONTEXT_BYTES = 64 << 10


def load_context() -> bytes | None:
    """The context of the get that started the running load, or ``None``."""
    return _current.get()
