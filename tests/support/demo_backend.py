"""A counting HTTP backend for the proxy's demo and black-box tests (a real server on 127.0.0.1).

    python -m tests.support.demo_backend [--port N] [--ready-file PATH]
        [--introspect-url URL --introspect-client ID --introspect-secret-file PATH]

Every request outside ``/_control/`` is counted (in total and per path+query) and answered by what
its query asks for, so one backend serves every test case:

    status=N        answer with status N                 cc=VALUE      Cache-Control: VALUE
    cookie=1        add Set-Cookie                        vary=NAME     Vary: NAME
    delay=SECONDS   wait before answering (max 60)        size=N        pad the body to N bytes
    gzip=1          body gzip-compressed, Content-Encoding: gzip (bytes must pass unchanged)

The body is ``<path>?<query> #<count>`` (padded), so a second backend fetch of the same URL shows
up as a different body. ``/echo`` answers JSON describing the request (method, headers, body
digest). With ``--introspect-url`` each request must carry a bearer token the authorization server
says is active (RFC 7662 introspection); otherwise 401.

Control: ``GET /_control/stats`` → ``{"requests": n, "by_target": {...}, "unauthorized": n}``,
``POST /_control/reset``. On start one JSON line ``{"port": N, "pid": P}`` goes to stdout (and to
``--ready-file``, atomically).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import gzip
import hashlib
import json
import os
import signal
import sys
from dataclasses import dataclass, field
from pathlib import Path

import aiohttp
from aiohttp import web

MAX_DELAY = 60.0


@dataclass
class Counters:
    """Request counts; reset by POST /_control/reset."""

    requests: int = 0
    unauthorized: int = 0
    by_target: dict[str, int] = field(default_factory=dict)


@dataclass
class Introspection:
    """How to ask the authorization server whether a bearer token is active."""

    url: str
    client_id: str
    client_secret: str


def build_app(introspection: Introspection | None = None) -> web.Application:
    """The backend application (also usable in-process by unit-style tests)."""
    counters = Counters()
    app = web.Application(client_max_size=64 << 20)
    session: dict[str, aiohttp.ClientSession] = {}

    async def stats(_: web.Request) -> web.Response:
        return web.json_response(
            {
                "requests": counters.requests,
                "unauthorized": counters.unauthorized,
                "by_target": counters.by_target,
            }
        )

    async def reset(_: web.Request) -> web.Response:
        counters.requests = counters.unauthorized = 0
        counters.by_target.clear()
        return web.json_response({"ok": True})

    async def token_ok(request: web.Request) -> bool:
        if introspection is None:
            return True
        scheme, _, token = request.headers.get("Authorization", "").partition(" ")
        if scheme.lower() != "bearer" or not token:
            return False
        if "client" not in session:
            session["client"] = aiohttp.ClientSession()
        auth = aiohttp.BasicAuth(introspection.client_id, introspection.client_secret)
        async with session["client"].post(
            introspection.url, data={"token": token}, auth=auth
        ) as resp:
            if resp.status != 200:
                return False
            return bool((await resp.json()).get("active"))

    async def any_route(request: web.Request) -> web.StreamResponse:
        if not await token_ok(request):
            counters.unauthorized += 1
            return web.Response(
                status=401, text="unauthorized\n", headers={"WWW-Authenticate": "Bearer"}
            )
        target = request.path_qs
        counters.requests += 1
        n = counters.by_target[target] = counters.by_target.get(target, 0) + 1
        q = request.query
        if request.path == "/echo":
            body = await request.read()
            return web.json_response(
                {
                    "method": request.method,
                    "path_qs": target,
                    "headers": [[k, v] for k, v in request.headers.items()],
                    "body_len": len(body),
                    "body_sha256": hashlib.sha256(body).hexdigest(),
                    "count": n,
                }
            )
        if "delay" in q:
            await asyncio.sleep(min(float(q["delay"]), MAX_DELAY))
        payload = f"{target} #{n}\n".encode()
        size = int(q.get("size", "0"))
        if size > len(payload):
            payload += b"x" * (size - len(payload))
        headers = {"Content-Type": "text/plain"}
        if "cc" in q:
            headers["Cache-Control"] = q["cc"]
        if q.get("cookie") == "1":
            headers["Set-Cookie"] = f"session=s{n}; Path=/"
        if "vary" in q:
            headers["Vary"] = q["vary"]
        if q.get("gzip") == "1":
            payload = gzip.compress(payload, mtime=0)
            headers["Content-Encoding"] = "gzip"
        return web.Response(status=int(q.get("status", "200")), body=payload, headers=headers)

    async def close_session(_: web.Application) -> None:
        if "client" in session:
            await session["client"].close()

    app.router.add_get("/_control/stats", stats)
    app.router.add_post("/_control/reset", reset)
    app.router.add_route("*", "/{tail:.*}", any_route)
    app.on_cleanup.append(close_session)
    return app


async def _serve(args: argparse.Namespace, introspection: Introspection | None) -> None:
    runner = web.AppRunner(build_app(introspection), access_log=None, handle_signals=False)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", args.port)
    await site.start()
    port = runner.addresses[0][1]
    line = json.dumps({"port": port, "pid": os.getpid()})
    print(line, flush=True)
    if args.ready_file:
        _write_atomically(Path(args.ready_file), line)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    await runner.cleanup()


def _write_atomically(path: Path, text: str) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text)
    tmp.rename(path)


def main(argv: list[str] | None = None) -> int:
    """Run the backend until SIGTERM/SIGINT."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--ready-file", default="")
    parser.add_argument("--introspect-url", default="")
    parser.add_argument("--introspect-client", default="")
    parser.add_argument("--introspect-secret-file", default="")
    args = parser.parse_args(argv)
    introspection = None
    if args.introspect_url:
        secret = Path(args.introspect_secret_file).read_text().strip()
        introspection = Introspection(args.introspect_url, args.introspect_client, secret)
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(_serve(args, introspection))
    return 0


if __name__ == "__main__":
    sys.exit(main())
