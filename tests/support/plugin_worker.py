"""One process of the plugin's integration cluster: a Workspace with a peer server, the plugin, and a
small protected API, driven by JSON lines on stdin (one JSON answer per line on stdout).

    python -m tests.support.plugin_worker --port P --peers URL,URL,URL --peer-secret S

It prints ``{"ready": true, "self": URL, "api": URL, "pid": N}`` once listening. Commands:

- ``{"op": "burst", "auth": {...}, "threads": 4, "coroutines": 50}``: each thread runs an event
  loop with that many coroutines; each coroutine makes one request with ``httpx.AsyncClient`` and
  one with ``httpx.Client`` (in the loop's executor), all released together by a barrier. ``auth``
  holds ``token_url``, ``client_id``, ``client_secret``, ``scope`` (an auth is built once per such
  tuple and kept). Answer: ``{"ok": n, "errors": {"ClassName": n}, "tokens": [sha256 prefixes]}``.
- ``{"op": "held", "auth": {...}}``: ``{"remaining": seconds or null}`` for this process's copy,
  read without triggering a load or refresh.
- ``{"op": "api", "status": 401}``: the protected API answers that status to every request from
  now on (``null``: back to checking for a Bearer token). Answer: ``{"api": status}``.
- ``{"op": "key", "auth": {...}}``: ``{"key": the token key}`` (no secret in it).

``auth`` may also hold ``unauthorized_cooldown`` and ``cluster_secret`` (the HMAC key of the token
key's fingerprint; the same in every process of a cluster). Without one the peer secret is used, as
an embedding service would; ``""`` means none (the fingerprint is then scrypt).
- ``{"op": "quit"}``.

Tokens are reported as SHA-256 prefixes, never in clear.
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import json
import sys
import threading
import time
from collections import Counter
from typing import Any

import httpx
from aiohttp import web

import tokencache
from tokencache import plugin

_BURST_TIMEOUT = 60.0


def _digest(header: str) -> str:
    return hashlib.sha256(header.encode()).hexdigest()[:16]


class _Api:
    def __init__(self) -> None:
        self.forced_status: int | None = None

    async def handle(self, request: web.Request) -> web.Response:
        header = request.headers.get("Authorization", "")
        if self.forced_status is not None:
            return web.Response(status=self.forced_status)
        if not header.startswith("Bearer "):
            return web.Response(status=401)
        return web.json_response({"token": _digest(header)})


class Worker:
    def __init__(self, args: argparse.Namespace) -> None:
        self.loop = tokencache.BackgroundLoop(name="worker-engine")
        self.self_url = f"http://127.0.0.1:{args.port}"
        self.ws = tokencache.Workspace(self.self_url, peer_secret=args.peer_secret or None)
        self.ws.set_peers(args.peers.split(","))
        self.api_url = ""
        self.api = _Api()
        self.peer_secret: str = args.peer_secret
        self.auths: dict[tuple[str, ...], plugin.ClientCredentialsAuth] = {}
        self._runner: web.AppRunner | None = None
        self.loop.run(self._start(args.port), timeout=30)

    async def _start(self, port: int) -> None:
        await self.ws.serve("127.0.0.1", port)
        app = web.Application()
        app.router.add_get("/things", self.api.handle)
        self._runner = web.AppRunner(app, access_log=None, handle_signals=False)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        self.api_url = f"http://127.0.0.1:{self._runner.addresses[0][1]}/things"

    def auth(self, spec: dict[str, Any]) -> plugin.ClientCredentialsAuth:
        key = tuple(str(spec.get(k, "")) for k in sorted(spec))
        if key not in self.auths:
            self.auths[key] = plugin.ClientCredentialsAuth(
                token_url=spec["token_url"],
                client_id=spec["client_id"],
                client_secret=spec["client_secret"],
                scope=spec.get("scope"),
                auth_method=spec.get("auth_method", "client_secret_basic"),
                workspace=self.ws,
                loop=self.loop,
                cooldown=float(spec.get("cooldown", 0.5)),
                max_attempts=int(spec.get("max_attempts", 2)),
                unauthorized_cooldown=float(spec.get("unauthorized_cooldown", 30.0)),
                cluster_secret=spec.get("cluster_secret", self.peer_secret),
            )
        return self.auths[key]

    def burst(self, spec: dict[str, Any], threads: int, coroutines: int) -> dict[str, Any]:
        auth = self.auth(spec)
        results: list[tuple[str, str]] = []  # ("ok", digest) or ("error", class name)
        lock = threading.Lock()
        barrier = threading.Barrier(threads)

        def record(item: tuple[str, str]) -> None:
            with lock:
                results.append(item)

        async def one(aclient: httpx.AsyncClient, sclient: httpx.Client) -> None:
            loop = asyncio.get_running_loop()
            for call in ("async", "sync"):
                try:
                    if call == "async":
                        response = await aclient.get(self.api_url)
                    else:
                        response = await loop.run_in_executor(None, sclient.get, self.api_url)
                    response.raise_for_status()
                    record(("ok", response.json()["token"]))
                except Exception as exc:  # every failure is counted by type
                    record(("error", type(exc).__name__))

        async def thread_main() -> None:
            limits = httpx.Limits(max_connections=coroutines)
            async with httpx.AsyncClient(auth=auth, limits=limits) as aclient:
                with httpx.Client(auth=auth, limits=limits) as sclient:
                    await asyncio.to_thread(barrier.wait, _BURST_TIMEOUT)
                    await asyncio.gather(*(one(aclient, sclient) for _ in range(coroutines)))

        workers = [
            threading.Thread(target=asyncio.run, args=(thread_main(),)) for _ in range(threads)
        ]
        started = time.monotonic()
        for t in workers:
            t.start()
        for t in workers:
            t.join(_BURST_TIMEOUT)
        ok = [d for kind, d in results if kind == "ok"]
        errors = Counter(d for kind, d in results if kind == "error")
        stats = auth.token_cache.stats
        return {
            "ok": len(ok),
            "errors": dict(errors),
            "tokens": sorted(set(ok)),
            "seconds": time.monotonic() - started,
            "fetches": stats.fetches,  # token fetches this process made (diagnostics)
            "owner": self.ws.owner(auth.key) or self.self_url,
        }

    def held(self, spec: dict[str, Any]) -> dict[str, Any]:
        auth = self.auth(spec)
        cache = auth.token_cache
        held = cache._memo.get(auth.key)
        if held is None:
            return {"remaining": None}
        return {"remaining": held.expires_at - self.ws.clock.now()}

    def close(self) -> None:
        async def shutdown() -> None:
            for auth in self.auths.values():
                await auth.aclose()
            if self._runner is not None:
                await self._runner.cleanup()
            await self.ws.close()

        self.loop.run(shutdown(), timeout=30)
        self.loop.close()


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--peers", required=True)
    parser.add_argument("--peer-secret", default="")
    args = parser.parse_args()
    worker = Worker(args)
    print(json.dumps({"ready": True, "self": worker.self_url, "api": worker.api_url}), flush=True)
    try:
        for line in sys.stdin:
            command = json.loads(line)
            op = command["op"]
            if op == "quit":
                break
            if op == "burst":
                answer = worker.burst(
                    command["auth"],
                    int(command.get("threads", 4)),
                    int(command.get("coroutines", 50)),
                )
            elif op == "held":
                answer = worker.held(command["auth"])
            elif op == "api":
                worker.api.forced_status = command.get("status")
                answer = {"api": worker.api.forced_status}
            elif op == "key":
                answer = {"key": worker.auth(command["auth"]).key}
            else:
                answer = {"error": f"unknown op {op!r}"}
            print(json.dumps(answer), flush=True)
    finally:
        worker.close()


if __name__ == "__main__":
    main()
