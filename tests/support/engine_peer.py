"""One engine peer as a real OS process, for the cluster tests.

Runs a Workspace (peer server on ``--port``) with one group ``g`` whose loader waits
``--load-delay`` seconds and counts its runs, plus a control server on ``--control-port``:

- ``POST /get``   body = key → 200 value | 404 not found | 500 error text
- ``GET /stats``  → JSON: the group counters and ``loader_runs``
- ``POST /peers`` JSON list of URLs → set_peers

With ``--tls-cert/--tls-key/--tls-ca`` the peer port and the peer client use mutual TLS.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import os
import signal

from aiohttp import web

import tokencache


async def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--control-port", type=int, required=True)
    parser.add_argument("--peers", default="")
    parser.add_argument("--load-delay", type=float, default=0.0)
    parser.add_argument("--ttl", type=float, default=60.0)
    parser.add_argument("--peer-timeout", type=float, default=2.0)
    parser.add_argument("--liveness", type=float, default=3.0)
    parser.add_argument("--secret", default="")
    parser.add_argument("--tls-cert", default="")
    parser.add_argument("--tls-key", default="")
    parser.add_argument("--tls-ca", default="")
    args = parser.parse_args()

    self_url = f"http://127.0.0.1:{args.port}"
    ssl_server = ssl_client = None
    if args.tls_cert:
        ssl_server, ssl_client = tokencache.peer_tls_contexts(
            args.tls_cert, args.tls_key, args.tls_ca, check_hostname=True
        )
    ws = tokencache.Workspace(
        self_url,
        peer_secret=args.secret or None,
        peer_timeout=args.peer_timeout,
        peer_liveness_timeout=args.liveness,
        ssl_server=ssl_server,
        ssl_client=ssl_client,
    )
    ws.set_peers([p for p in args.peers.split(",") if p])
    loads = 0

    async def load(key: str) -> tokencache.Entry:
        nonlocal loads
        loads += 1
        await asyncio.sleep(args.load_delay)
        return tokencache.Entry(f"{key}|{os.getpid()}|{loads}".encode(), args.ttl)

    group = ws.new_group("g", 64 << 20, load)
    await ws.serve("127.0.0.1", args.port)

    async def get(request: web.Request) -> web.Response:
        key = (await request.read()).decode()
        try:
            return web.Response(body=await group.get(key))
        except tokencache.NotFound:
            return web.Response(status=404)
        except Exception as exc:  # reported to the test as a failure
            return web.Response(status=500, text=repr(exc))

    async def stats(_: web.Request) -> web.Response:
        return web.json_response({**dataclasses.asdict(group.stats), "loader_runs": loads})

    async def peers(request: web.Request) -> web.Response:
        ws.set_peers(await request.json())
        return web.Response(text="ok")

    app = web.Application()
    app.router.add_post("/get", get)
    app.router.add_get("/stats", stats)
    app.router.add_post("/peers", peers)
    runner = web.AppRunner(app, access_log=None, handle_signals=False)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", args.control_port).start()

    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    loop.add_signal_handler(signal.SIGTERM, stop.set)
    await stop.wait()
    await runner.cleanup()
    await ws.close()


if __name__ == "__main__":
    try:  # the loop a deployed peer runs on (the proxy uses uvloop too)
        import uvloop
    except ImportError:  # pragma: no cover - uvloop is a dependency except on Windows
        asyncio.run(main())
    else:
        uvloop.run(main())
