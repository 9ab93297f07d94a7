"""Plugin benchmark: auth overhead per request with a cached token, and token requests in a herd.

1. Overhead: requests through an in-process ``MockTransport`` API (so only auth cost is measured),
   with this plugin (httpx and httpx2, sync and async), authlib's ``OAuth2Client`` /
   ``AsyncOAuth2Client`` (built on httpx2 when it is installed) and httpx-auth's
   ``OAuth2ClientCredentials`` (httpx). Rounds are interleaved; medians are reported, and the
   overhead is the median minus the bare client's median for the same library and mode.
2. Herd: 3 processes each start cold and fire their share of a 1000-way concurrent burst; the real
   authorization server (tests/support/oauth_server.py, needs node) counts the token requests.
   Plugin processes form one cluster over loopback; the libraries have only per-process caches.

    python -m scripts.bench_plugin [--rounds 15] [--requests 500] [--herd 1000] [--no-herd]
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import select
import statistics
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import httpx
import httpx2

import tokencache.plugin.httpx2  # noqa: F401 - makes plugin.httpx2 available
from tests.support.net import free_port
from tokencache import plugin

REPO = Path(__file__).resolve().parents[1]
TOKEN_URL = "http://idp.bench/token"
API = "http://api.bench/things"
_TOKEN_BODY = {"access_token": "bench-token", "token_type": "bearer", "expires_in": 3600}


def _token_httpx(request: httpx.Request) -> httpx.Response:
    return httpx.Response(200, json=_TOKEN_BODY)


def _api_httpx(request: httpx.Request) -> httpx.Response:
    return httpx.Response(200, content=b"ok")


def _token_httpx2(request: httpx2.Request) -> httpx2.Response:
    return httpx2.Response(200, json=_TOKEN_BODY)


def _api_httpx2(request: httpx2.Request) -> httpx2.Response:
    if request.url.path == "/token":
        return httpx2.Response(200, json=_TOKEN_BODY)
    return httpx2.Response(200, content=b"ok")


# -- overhead -----------------------------------------------------------------------------------------

SyncRun = Callable[[int], None]
AsyncRun = Callable[[int], Awaitable[None]]


def _sync_variants() -> tuple[dict[str, tuple[str, SyncRun]], list[Callable[[], None]]]:
    from authlib.integrations.httpx_client import OAuth2Client
    from httpx_auth import OAuth2ClientCredentials

    closers: list[Callable[[], None]] = []
    mine = plugin.ClientCredentialsAuth(
        TOKEN_URL, "bench", "bench-secret", token_transport=httpx.MockTransport(_token_httpx)
    )
    mine2 = plugin.httpx2.ClientCredentialsAuth(
        TOKEN_URL, "bench", "bench-secret", token_transport=httpx2.MockTransport(_token_httpx2)
    )
    closers += [mine.close, mine2.close]
    token_client = httpx.Client(transport=httpx.MockTransport(_token_httpx))
    theirs = OAuth2ClientCredentials(TOKEN_URL, "bench", "bench-secret", client=token_client)
    clients: dict[str, tuple[str, Any]] = {
        "httpx (no auth)": ("httpx", httpx.Client(transport=httpx.MockTransport(_api_httpx))),
        "plugin (httpx)": (
            "httpx",
            httpx.Client(auth=mine, transport=httpx.MockTransport(_api_httpx)),
        ),
        "httpx-auth OAuth2ClientCredentials": (
            "httpx",
            httpx.Client(auth=theirs, transport=httpx.MockTransport(_api_httpx)),
        ),
        "httpx2 (no auth)": ("httpx2", httpx2.Client(transport=httpx2.MockTransport(_api_httpx2))),
        "plugin.httpx2": (
            "httpx2",
            httpx2.Client(auth=mine2, transport=httpx2.MockTransport(_api_httpx2)),
        ),
    }
    authlib_client = OAuth2Client(
        "bench", "bench-secret", transport=httpx2.MockTransport(_api_httpx2)
    )
    authlib_client.fetch_token(TOKEN_URL, grant_type="client_credentials")
    clients["authlib OAuth2Client (httpx2)"] = ("httpx2", authlib_client)
    closers.append(token_client.close)
    for _, client in clients.values():
        closers.insert(0, client.close)

    def runner(client: Any) -> SyncRun:
        def run(n: int) -> None:
            for _ in range(n):
                client.get(API)

        return run

    return {name: (lib, runner(c)) for name, (lib, c) in clients.items()}, closers


async def _async_variants() -> tuple[
    dict[str, tuple[str, AsyncRun]], list[Callable[[], Awaitable[None]]]
]:
    from authlib.integrations.httpx_client import AsyncOAuth2Client
    from httpx_auth import OAuth2ClientCredentials

    mine = plugin.ClientCredentialsAuth(
        TOKEN_URL, "bench-a", "bench-secret", token_transport=httpx.MockTransport(_token_httpx)
    )
    mine2 = plugin.httpx2.ClientCredentialsAuth(
        TOKEN_URL, "bench-a", "bench-secret", token_transport=httpx2.MockTransport(_token_httpx2)
    )
    token_client = httpx.Client(transport=httpx.MockTransport(_token_httpx))
    theirs = OAuth2ClientCredentials(TOKEN_URL, "bench-a", "bench-secret", client=token_client)
    authlib_client = AsyncOAuth2Client(
        "bench-a", "bench-secret", transport=httpx2.MockTransport(_api_httpx2)
    )
    await authlib_client.fetch_token(TOKEN_URL, grant_type="client_credentials")
    clients: dict[str, tuple[str, Any]] = {
        "httpx (no auth)": ("httpx", httpx.AsyncClient(transport=httpx.MockTransport(_api_httpx))),
        "plugin (httpx)": (
            "httpx",
            httpx.AsyncClient(auth=mine, transport=httpx.MockTransport(_api_httpx)),
        ),
        "httpx-auth OAuth2ClientCredentials": (
            "httpx",
            httpx.AsyncClient(auth=theirs, transport=httpx.MockTransport(_api_httpx)),
        ),
        "httpx2 (no auth)": (
            "httpx2",
            httpx2.AsyncClient(transport=httpx2.MockTransport(_api_httpx2)),
        ),
        "plugin.httpx2": (
            "httpx2",
            httpx2.AsyncClient(auth=mine2, transport=httpx2.MockTransport(_api_httpx2)),
        ),
        "authlib AsyncOAuth2Client (httpx2)": ("httpx2", authlib_client),
    }

    def runner(client: Any) -> AsyncRun:
        async def run(n: int) -> None:
            for _ in range(n):
                await client.get(API)

        return run

    closers: list[Callable[[], Awaitable[None]]] = [c.aclose for _, c in clients.values()]
    closers += [mine.aclose, mine2.aclose, lambda: asyncio.to_thread(token_client.close)]
    return {name: (lib, runner(c)) for name, (lib, c) in clients.items()}, closers


def _rows(
    mode: str, libs: dict[str, str], samples: dict[str, list[float]]
) -> list[tuple[str, str, float, float, str]]:
    medians = {name: statistics.median(values) for name, values in samples.items()}
    base = {libs[name]: medians[name] for name in medians if "(no auth)" in name}
    ours = {lib: medians[name] for name, lib in libs.items() if name.startswith("plugin")}
    rows = []
    for name, median in medians.items():
        overhead = median - base[libs[name]]
        ratio = f"{median / ours[libs[name]]:.2f}"
        rows.append((mode, name, median, overhead, ratio))
    return rows


def overhead(rounds: int, requests: int) -> list[tuple[str, str, float, float, str]]:
    """Per-request µs (median of rounds) and overhead above the bare client, sync and async."""
    sync_variants, sync_closers = _sync_variants()
    sync_samples: dict[str, list[float]] = {name: [] for name in sync_variants}
    try:
        for _, run in sync_variants.values():
            run(50)  # warm up: first token fetch, connection objects, caches
        for _ in range(rounds):
            for name, (_, run) in sync_variants.items():
                gc.collect()
                gc.disable()  # a collection inside one variant's chunk would be charged to it
                started = time.perf_counter()
                run(requests)
                sync_samples[name].append((time.perf_counter() - started) / requests * 1e6)
                gc.enable()
    finally:
        for close in sync_closers:
            close()

    async_libs: dict[str, str] = {}

    async def measure_async() -> dict[str, list[float]]:
        variants, closers = await _async_variants()
        async_libs.update({name: lib for name, (lib, _) in variants.items()})
        samples: dict[str, list[float]] = {name: [] for name in variants}
        try:
            for _, run in variants.values():
                await run(50)
            for _ in range(rounds):
                for name, (_, run) in variants.items():
                    gc.collect()
                    gc.disable()
                    started = time.perf_counter()
                    await run(requests)
                    samples[name].append((time.perf_counter() - started) / requests * 1e6)
                    gc.enable()
        finally:
            for close in closers:
                await close()
        return samples

    async_samples = asyncio.run(measure_async())
    sync_libs = {name: lib for name, (lib, _) in sync_variants.items()}
    return _rows("sync", sync_libs, sync_samples) + _rows("async", async_libs, async_samples)


# -- herd --------------------------------------------------------------------------------------------

HERD_LIBS = ("plugin", "authlib", "httpx-auth")


async def _herd_worker(args: argparse.Namespace) -> None:
    """One herd process: set up cold, say ready, wait for "go", fire ``n`` concurrent requests."""
    api = httpx.MockTransport(_api_httpx)
    closers: list[Callable[[], Awaitable[None]]] = []
    send: Callable[[], Awaitable[Any]]
    if args.lib == "plugin":
        import tokencache

        ws = tokencache.Workspace(f"http://127.0.0.1:{args.port}", peer_secret="bench-peers")
        ws.set_peers(args.peers.split(","))
        await ws.serve("127.0.0.1", args.port)
        auth = plugin.ClientCredentialsAuth(
            args.token_url, args.client_id, args.secret, scope="read", workspace=ws
        )
        client = httpx.AsyncClient(auth=auth, transport=api)
        closers += [client.aclose, auth.aclose, ws.close]
        send = lambda: client.get(API)  # noqa: E731
    elif args.lib == "authlib":
        from authlib.integrations.httpx_client import AsyncOAuth2Client

        # An expired token and the token endpoint: authlib refreshes under its own lock (its
        # documented client-credentials mode), so each process makes one request.
        aclient = AsyncOAuth2Client(
            args.client_id,
            args.secret,
            scope="read",
            token={"access_token": "expired", "token_type": "bearer", "expires_at": 1},
            token_endpoint=args.token_url,
            grant_type="client_credentials",
            mounts={"http://api.bench": httpx2.MockTransport(_api_httpx2)},
        )
        closers.append(aclient.aclose)
        send = lambda: aclient.get(API)  # noqa: E731
    else:
        from httpx_auth import OAuth2ClientCredentials

        auth2 = OAuth2ClientCredentials(args.token_url, args.client_id, args.secret, scope="read")
        client = httpx.AsyncClient(auth=auth2, transport=api)
        closers.append(client.aclose)
        send = lambda: client.get(API)  # noqa: E731
    print(json.dumps({"ready": True}), flush=True)
    await asyncio.get_running_loop().run_in_executor(None, sys.stdin.readline)
    results = await asyncio.gather(*(send() for _ in range(args.n)), return_exceptions=True)
    ok = sum(1 for r in results if not isinstance(r, BaseException) and r.status_code == 200)
    print(json.dumps({"ok": ok, "errors": len(results) - ok}), flush=True)
    for close in closers:
        await close()


def _read_line(process: subprocess.Popen[str], timeout: float) -> dict[str, Any]:
    assert process.stdout is not None
    readable, _, _ = select.select([process.stdout], [], [], timeout)
    if not readable:
        raise TimeoutError(f"herd worker {process.pid} gave no answer in {timeout}s")
    line = process.stdout.readline()
    if not line:
        raise RuntimeError(f"herd worker {process.pid} exited with {process.poll()}")
    answer: dict[str, Any] = json.loads(line)
    return answer


def herd(size: int) -> list[tuple[str, int, int, int]]:
    """Token requests at the real authorization server for a ``size``-way herd on 3 processes."""
    sys.path.insert(0, str(REPO))
    from tests.support.oauth_server import OAuthClient, OAuthServer

    clients = [
        OAuthClient(f"herd-{lib}", f"herd-secret-{lib}", scopes=("read",)) for lib in HERD_LIBS
    ]
    rows = []
    with OAuthServer(clients, token_ttl=3600) as server:
        for lib, client in zip(HERD_LIBS, clients, strict=True):
            ports = [free_port() for _ in range(3)]
            peers = ",".join(f"http://127.0.0.1:{p}" for p in ports)
            share = [size // 3 + (1 if i < size % 3 else 0) for i in range(3)]
            processes: list[subprocess.Popen[str]] = []
            try:
                for port, n in zip(ports, share, strict=True):
                    processes.append(
                        subprocess.Popen(
                            [
                                sys.executable,
                                "-m",
                                "scripts.bench_plugin",
                                "--herd-worker",
                                lib,
                                "--token-url",
                                server.token_url,
                                "--client-id",
                                client.client_id,
                                "--secret",
                                client.secret,
                                "--port",
                                str(port),
                                "--peers",
                                peers,
                                "--n",
                                str(n),
                            ],
                            cwd=REPO,
                            stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE,
                            text=True,
                        )
                    )
                for process in processes:
                    _read_line(process, 60)
                for process in processes:  # all set up: release the herd
                    assert process.stdin is not None
                    process.stdin.write("go\n")
                    process.stdin.flush()
                answers = [_read_line(process, 120) for process in processes]
            finally:
                for process in processes:
                    if process.poll() is None:
                        try:
                            process.wait(timeout=15)
                        except subprocess.TimeoutExpired:
                            process.kill()
                            process.wait(timeout=15)
                    for pipe in (process.stdin, process.stdout):
                        if pipe is not None:
                            pipe.close()
            ok = sum(a["ok"] for a in answers)
            requests = server.token_requests_by_client().get(client.client_id, 0)
            rows.append((lib, size, ok, requests))
    return rows


# -- report ------------------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> None:
    """Print the overhead and herd tables (defaults when called from scripts/bench.py)."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--rounds", type=int, default=15)
    parser.add_argument("--requests", type=int, default=500)
    parser.add_argument("--herd", type=int, default=1000)
    parser.add_argument("--no-herd", action="store_true")
    args = parser.parse_args(argv or [])
    print("## OAuth2 plugin (plugin/)")
    print()
    print(
        f"Per-request cost with a cached token, µs, median of {args.rounds} rounds x "
        f"{args.requests} requests (in-process MockTransport API)."
    )
    print(
        "Overhead = median minus the bare client of the same library and mode (noise: a few µs "
        "either way); ratio = µs/request over the plugin's, same library and mode."
    )
    print()
    print("| mode | client | µs/request | overhead µs | ratio |")
    print("|---|---|---:|---:|---:|")
    for mode, name, median, extra, ratio in overhead(args.rounds, args.requests):
        print(f"| {mode} | {name} | {median:.1f} | {extra:.1f} | {ratio} |")
    if args.no_herd:
        return
    print()
    print(
        "Token requests at the real authorization server, cold start, one concurrent herd split "
        "over 3 processes:"
    )
    print()
    print("| client | herd size | requests ok | token requests |")
    print("|---|---:|---:|---:|")
    try:
        rows = herd(args.herd)
    except Exception as exc:  # the harness needs node; the overhead table stands on its own
        print(f"| (herd skipped: {type(exc).__name__}: {exc}) | | | |")
        return
    for lib, size, ok, requests in rows:
        print(f"| {lib} | {size} | {ok} | {requests} |")


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "--herd-worker":
        worker = argparse.ArgumentParser()
        worker.add_argument("--herd-worker", dest="lib", choices=HERD_LIBS)
        for flag in ("--token-url", "--client-id", "--secret", "--peers"):
            worker.add_argument(flag, required=True)
        worker.add_argument("--port", type=int, required=True)
        worker.add_argument("--n", type=int, required=True)
        asyncio.run(_herd_worker(worker.parse_args()))
    else:
        main(sys.argv[1:])
