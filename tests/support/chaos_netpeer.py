"""An engine peer for the partition scenario, run inside a network namespace.

    python -m tests.support.chaos_netpeer serve --host H --port P --peers URL,... [--value-bytes N]
    python -m tests.support.chaos_netpeer drive --host H --port P --peers URL,... --keys N
        [--peer-timeout S] [--concurrency C] [--prefix P]

``serve`` runs a Workspace whose group ``g`` loads ``value-bytes`` bytes per key, until SIGTERM.
``drive`` is a ring member too: it waits (bounded) until every peer accepts TCP connections, gets
``keys`` distinct keys once each (all misses, so every get asks the key's owner), and prints one
JSON document: per request the owner, latency and error, plus the group's peer-error count.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import json
import signal
import sys
import time
import urllib.parse

import tokencache

_CONNECT_DEADLINE = 20.0


async def _serve(args: argparse.Namespace) -> None:
    ws = tokencache.Workspace(
        f"http://{args.host}:{args.port}",
        peer_timeout=args.peer_timeout,
        peer_liveness_timeout=args.peer_timeout,
    )
    ws.set_peers(args.peers.split(","))
    payload = b"v" * args.value_bytes

    async def load(key: str) -> tokencache.Entry:
        return tokencache.Entry(payload, 600.0)

    ws.new_group("g", 256 << 20, load)
    await ws.serve(args.host, args.port)
    stop = asyncio.Event()
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
    print(json.dumps({"ready": args.port}), flush=True)
    await stop.wait()
    await ws.close()


async def _reachable(url: str) -> bool:
    parts = urllib.parse.urlsplit(url)
    try:
        _, writer = await asyncio.wait_for(asyncio.open_connection(parts.hostname, parts.port), 1.0)
    except (OSError, TimeoutError):
        return False
    writer.close()
    return True


async def _drive(args: argparse.Namespace) -> None:
    self_url = f"http://{args.host}:{args.port}"
    # The scenario's "peer timeout" is how long a caller waits on an owner that says nothing:
    # the liveness timeout; a loading owner may take as long (its loads here are instant).
    ws = tokencache.Workspace(
        self_url, peer_timeout=args.peer_timeout, peer_liveness_timeout=args.peer_timeout
    )
    peers = args.peers.split(",")
    ws.set_peers(peers)

    async def load(key: str) -> tokencache.Entry:
        return tokencache.Entry(b"local", 600.0)

    group = ws.new_group("g", 256 << 20, load)
    await ws.serve(args.host, args.port)
    deadline = time.monotonic() + _CONNECT_DEADLINE
    for url in peers:
        while not await _reachable(url) and args.wait_for_peers:
            if time.monotonic() > deadline:
                raise SystemExit(f"peer {url} unreachable")
            await asyncio.sleep(0.05)
    keys = [f"{args.prefix}-{i}" for i in range(args.keys)]
    results: list[dict[str, object]] = []
    queue = iter(keys)

    async def worker() -> None:
        for key in queue:
            started = time.monotonic()
            error = ""
            try:
                await asyncio.wait_for(group.get(key), args.peer_timeout * 10 + 5)
            except Exception as exc:  # counted and reported
                error = type(exc).__name__
            results.append(
                {
                    "owner": ws.owner(key) or self_url,
                    "latency": time.monotonic() - started,
                    "error": error,
                }
            )

    await asyncio.gather(*(worker() for _ in range(args.concurrency)))
    print(json.dumps({"results": results, "stats": dataclasses.asdict(group.stats)}), flush=True)
    await ws.close()


def main() -> int:
    """Run ``serve`` or ``drive``."""
    parser = argparse.ArgumentParser()
    parser.add_argument("mode", choices=("serve", "drive"))
    parser.add_argument("--host", required=True)
    parser.add_argument("--port", type=int, default=7000)
    parser.add_argument("--peers", required=True)
    parser.add_argument("--value-bytes", type=int, default=64)
    parser.add_argument("--peer-timeout", type=float, default=1.0)
    parser.add_argument("--keys", type=int, default=60)
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument("--prefix", default="k")
    parser.add_argument("--wait-for-peers", type=int, default=1)
    args = parser.parse_args()
    asyncio.run(_serve(args) if args.mode == "serve" else _drive(args))
    return 0


if __name__ == "__main__":
    sys.exit(main())
