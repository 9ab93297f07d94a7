"""The plugin's process-wide state: one standalone engine, fingerprints, and what fork() resets.

Why process-wide: a token is a property of the *credentials*, not of an auth object. Services build
auth objects freely (one per client, per request, per library); every object with the same
credentials in one process must share one token, one fetch and one loop thread. So standalone auths
(no ``workspace=``) all live in the one :class:`StandaloneEngine` of their :class:`PluginRuntime`: a
single-node workspace on one daemon loop thread, whose token group dedups by key. Building an auth
costs a dict lookup for its fingerprint and a registration: no thread, no fetch.

The runtime is the *one explicit object* that holds this state. :data:`DEFAULT_RUNTIME` is the
process's instance (the one unavoidable module-level object: a process has one set of credentials
to share); tests and embedders pass their own with ``runtime=``.

Laziness and fork safety (gunicorn ``--preload``, Celery prefork, ``multiprocessing`` with fork):
nothing starts a thread or a loop until the first token is asked for, and
``os.register_at_fork(after_in_child=...)`` resets the runtime in a child: the parent's engine is
dropped (never touched: its loop thread does not exist in the child and its locks may be held), the
generation counter moves on, and every auth object rebinds to a fresh engine on its next use. An
auth built on a caller's ``workspace=`` before the fork cannot be rebound (the workspace is the
caller's); it raises :class:`ConfigurationError` in the child instead of hanging.
"""

from __future__ import annotations

import asyncio
import hashlib
import os
import threading
import weakref
from collections import OrderedDict
from collections.abc import Callable

import tokencache
from tokencache.plugin._cache import TokenCache
from tokencache.plugin._key import secret_fingerprint

_FINGERPRINT_MEMO = 4096  # credentials per process whose fingerprint is remembered


class StandaloneEngine:
    """A single-node workspace on its own daemon loop thread, shared by standalone auths."""

    def __init__(self, clock: tokencache.Clock | None) -> None:
        self.background = tokencache.BackgroundLoop(name="plugin-oauth2")
        self.workspace = tokencache.Workspace("", clock=clock)
        self._groups: set[str] = set()  # token group names handed out (closed with the engine)

    def cache(self, group_name: str) -> TokenCache:
        """The engine's token cache called ``group_name`` (created on first use)."""
        self._groups.add(group_name)
        return TokenCache.for_workspace(self.workspace, group_name)

    @property
    def loop(self) -> tokencache.BackgroundLoop:
        """The loop thread the engine runs on."""
        return self.background

    async def _shutdown(self) -> None:
        for name in self._groups:
            await self.cache(name).close_senders()
        await self.workspace.close()
        # Loads still in flight (a caller gave up on a slow endpoint) end here, on their loop,
        # rather than being destroyed half-run when the loop is closed.
        pending = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
        for task in pending:
            task.cancel()
        await asyncio.gather(*pending, return_exceptions=True)

    def close(self) -> None:
        """Close the workspace and every task on its loop, then stop the loop thread."""
        if not self.background.loop.is_closed():
            try:
                self.background.run(self._shutdown(), timeout=10)
            finally:
                self.background.close()


def _after_fork(ref: Callable[[], PluginRuntime | None]) -> None:
    runtime = ref()
    if runtime is not None:
        runtime.forget_after_fork()


class PluginRuntime:
    """The plugin's state in one process (see the module docstring).

    ``clock``: the engine clock of the standalone workspace (tests inject a fake one).
    """

    def __init__(self, *, clock: tokencache.Clock | None = None) -> None:
        self._clock = clock
        self._lock = threading.Lock()  # guards _engine and _fingerprints
        self._engine: StandaloneEngine | None = None
        #: Moves on at every fork (in the child); auths compare it to know they must rebind.
        self.generation = 0
        # A standalone engine's keys never leave the process: a random key for the HMAC
        # fingerprint is the strongest and cheapest choice (docs/plugin.md).
        self.process_key = os.urandom(32)
        self._fingerprints: OrderedDict[bytes, str] = OrderedDict()
        # Engines of the parent, kept referenced in a child so that no finaliser runs on them.
        self._abandoned: list[StandaloneEngine] = []
        ref = weakref.ref(self)  # the fork hook must not keep a discarded runtime alive
        os.register_at_fork(after_in_child=lambda: _after_fork(ref))

    def standalone(self) -> StandaloneEngine:
        """The standalone engine, started on first use."""
        engine = self._engine
        if engine is not None:
            return engine
        with self._lock:
            if self._engine is None:
                self._engine = StandaloneEngine(self._clock)
            return self._engine

    def existing_cache(self, group_name: str) -> TokenCache | None:
        """The standalone engine's token cache ``group_name`` if both exist (nothing starts)."""
        engine = self._engine
        if engine is None or engine.workspace.get_group(group_name) is None:
            return None
        return TokenCache.for_workspace(engine.workspace, group_name)

    def fingerprint(
        self, client_id: str, material: bytes, *, token_url: str, key: bytes | None
    ) -> str:
        """The key fingerprint of these credentials, computed once per process (scrypt is slow)."""
        memo_key = hashlib.sha256(
            b"".join(
                len(p).to_bytes(8, "big") + p
                for p in (key or b"", token_url.encode(), client_id.encode(), material)
            )
        ).digest()
        found = self._fingerprints.get(memo_key)
        if found is not None:
            return found
        value = secret_fingerprint(client_id, material, token_url=token_url, key=key)
        with self._lock:
            self._fingerprints[memo_key] = value
            while len(self._fingerprints) > _FINGERPRINT_MEMO:
                self._fingerprints.popitem(last=False)
        return value

    def forget_after_fork(self) -> None:
        """In a fork child: drop the parent's engine and locks; auths rebind on next use."""
        self._lock = threading.Lock()
        if self._engine is not None:
            self._abandoned.append(self._engine)
        self._engine = None
        self.generation += 1

    def close(self) -> None:
        """Stop the standalone engine (its thread); a later use starts a new one."""
        with self._lock:
            engine, self._engine = self._engine, None
            self.generation += 1  # auths bound to the old engine rebind on next use
        if engine is not None:
            engine.close()


#: The process's runtime, shared by every auth built without ``runtime=`` (module docstring).
DEFAULT_RUNTIME = PluginRuntime()
