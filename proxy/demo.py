"""`make demo` / `python -m tokencache.proxy.demo [--once]`: three proxies, one backend, one token.

Everything runs on 127.0.0.1 and needs only the installed package (``tokencache[proxy]``):

1. a toy OAuth2 authorization server inside this process (client-credentials token endpoint with
   ``client_secret_basic`` and RFC 7662 introspection; a demo stand-in, not for production — the
   project's tests use a real one);
2. a backend inside this process that answers only requests whose bearer token the authorization
   server calls active, and counts its requests;
3. three ``tokencache-proxy`` processes (``python -m tokencache.proxy``) with static peers, a peer
   secret and the OAuth2 settings; each is stopped by its PID on exit.

It runs a miss on the key's owner and a hit on each other node, prints the curl commands and the
``Cache-Status`` header of each, the counters (backend requests: 1, token requests: 1), and waits
for Ctrl-C or SIGTERM (``--once`` exits after printing). SIGINT is handled explicitly, so Ctrl-C
also works when a script started the demo in the background (where SIGINT starts out ignored).
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import os
import secrets
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path

from aiohttp import web

import tokencache

DEMO_PATH = "/api/catalog?page=1"
CLIENT_ID = "demo-proxy"
START_DEADLINE = 60.0  # seconds for the proxies to become ready


class DemoIssuer:
    """The toy authorization server: opaque random tokens, a count of token requests."""

    def __init__(self, client_id: str, client_secret: str, token_ttl: int = 300) -> None:
        self._basic = "Basic " + base64.b64encode(f"{client_id}:{client_secret}".encode()).decode()
        self._ttl = token_ttl
        self._active: dict[str, float] = {}  # token -> expiry (monotonic)
        self.token_requests = 0

    def routes(self, app: web.Application) -> None:
        """Mount ``/token`` and ``/introspect``."""
        app.router.add_post("/token", self._token)
        app.router.add_post("/introspect", self._introspect)

    async def _token(self, request: web.Request) -> web.Response:
        self.token_requests += 1
        form = await request.post()
        if request.headers.get("Authorization") != self._basic:
            return web.json_response({"error": "invalid_client"}, status=401)
        if form.get("grant_type") != "client_credentials":
            return web.json_response({"error": "unsupported_grant_type"}, status=400)
        token = secrets.token_urlsafe(24)
        self._active[token] = time.monotonic() + self._ttl
        body = {"access_token": token, "token_type": "Bearer", "expires_in": self._ttl}
        return web.json_response(body, headers={"Cache-Control": "no-store"})

    async def _introspect(self, request: web.Request) -> web.Response:
        form = await request.post()
        return web.json_response({"active": self.active(str(form.get("token", "")))})

    def active(self, token: str) -> bool:
        """Whether ``token`` was issued here and has not expired."""
        expiry = self._active.get(token)
        return expiry is not None and expiry > time.monotonic()


class DemoBackend:
    """The protected backend: 401 without an active bearer token, else a small JSON body."""

    def __init__(self, issuer: DemoIssuer) -> None:
        self._issuer = issuer
        self.requests: dict[str, int] = {}

    def routes(self, app: web.Application) -> None:
        """Answer every GET path."""
        app.router.add_get("/{tail:.*}", self._serve)

    async def _serve(self, request: web.Request) -> web.Response:
        target = request.rel_url.raw_path_qs
        self.requests[target] = self.requests.get(target, 0) + 1
        scheme, _, token = request.headers.get("Authorization", "").partition(" ")
        if scheme.lower() != "bearer" or not self._issuer.active(token):
            return web.Response(status=401, text="no valid token\n")
        body = f'{{"path": "{request.path}", "served_at": {time.time():.3f}}}\n'
        return web.Response(text=body, content_type="application/json")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _get(url: str) -> tuple[int, str, bytes]:
    try:
        with urllib.request.urlopen(url, timeout=30) as resp:  # noqa: S310 - our loopback URL
            return resp.status, resp.headers.get("Cache-Status", ""), resp.read()
    except urllib.error.HTTPError as err:
        return err.code, err.headers.get("Cache-Status", ""), err.read()


def _ready(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=2) as resp:  # noqa: S310 - our loopback URL
            return bool(resp.status == 200)
    except OSError:
        return False


class _Proxies:
    """Three proxy processes with static peers; stopped by PID."""

    def __init__(self, backend_url: str, token_url: str, client_secret: str, work: Path) -> None:
        ports = [(_free_port(), _free_port(), _free_port()) for _ in range(3)]
        self.urls = [f"http://127.0.0.1:{p}" for p, _, _ in ports]
        self.health = [f"http://127.0.0.1:{h}" for _, _, h in ports]
        self.peers = [f"http://127.0.0.1:{peer}" for _, peer, _ in ports]
        peer_secret = secrets.token_urlsafe(24)
        self.procs: list[subprocess.Popen[bytes]] = []
        base = {k: v for k, v in os.environ.items() if not k.startswith(("OTEL_", "AWS_"))}
        for i, (port, peer, health) in enumerate(ports):
            env = {
                **base,
                "BACKEND_URL": backend_url,
                "LISTEN_ADDR": f"127.0.0.1:{port}",
                "GROUPCACHE_PORT": f"127.0.0.1:{peer}",
                "HEALTH_ADDR": f"127.0.0.1:{health}",
                "METRICS_ADDR": f"127.0.0.1:{health}",
                "GROUPCACHE_PEERS": ",".join(self.peers),
                "GROUPCACHE_SELF_URL": self.peers[i],
                "GROUPCACHE_PEER_SECRET": peer_secret,
                "OAUTH2_TOKEN_URL": token_url,
                "OAUTH2_CLIENT_ID": CLIENT_ID,
                "OAUTH2_CLIENT_SECRET": client_secret,
                "PROXY_WORKERS": "1",
                "DOGSTATSD_ENABLE": "false",
                "TRACE": "false",
                "CACHE_TTL": "60s",
            }
            log = (work / f"proxy-{i}.log").open("wb")
            self.procs.append(
                subprocess.Popen(
                    [sys.executable, "-m", "tokencache.proxy"],
                    env=env,
                    stdin=subprocess.DEVNULL,
                    stdout=log,
                    stderr=subprocess.STDOUT,
                    start_new_session=True,  # Ctrl-C reaches the demo, which stops them in order
                )
            )

    async def wait_ready(self) -> None:
        """Until every proxy answers /ready (bounded by START_DEADLINE)."""
        loop = asyncio.get_running_loop()
        end = loop.time() + START_DEADLINE
        for url in self.health:
            while not await asyncio.to_thread(_ready, url + "/ready"):
                if loop.time() > end or any(p.poll() is not None for p in self.procs):
                    raise RuntimeError("a proxy did not start: see proxy-*.log")
                await asyncio.sleep(0.2)

    def stop(self) -> None:
        """SIGTERM each proxy, wait; SIGKILL what is left."""
        for proc in self.procs:
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        for proc in self.procs:
            try:
                proc.wait(timeout=25)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


async def _show(title: str, url: str) -> None:
    print(f"\n# {title}\ncurl -si '{url}' | grep -i -e '^HTTP' -e '^cache-status'")
    status, cache_status, body = await asyncio.to_thread(_get, url)
    print(f"  -> HTTP {status}, Cache-Status: {cache_status}, body: {body[:60]!r}")


async def run_demo(once: bool) -> int:
    """Start everything, show the requests, wait (unless `once`), stop everything."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, stop.set)  # overrides an inherited SIG_IGN too
    issuer = DemoIssuer(CLIENT_ID, client_secret := secrets.token_urlsafe(24))
    backend = DemoBackend(issuer)
    app = web.Application()
    issuer.routes(app)
    backend_app = web.Application()
    backend.routes(backend_app)
    runners = [web.AppRunner(app, access_log=None), web.AppRunner(backend_app, access_log=None)]
    ports = [_free_port(), _free_port()]
    proxies: _Proxies | None = None
    with tempfile.TemporaryDirectory(prefix="tokencache-demo-") as tmp:
        try:
            for runner, port in zip(runners, ports, strict=True):
                await runner.setup()
                await web.TCPSite(runner, "127.0.0.1", port).start()
            token_url, backend_url = (f"http://127.0.0.1:{p}" for p in ports)
            token_url += "/token"
            proxies = _Proxies(backend_url, token_url, client_secret, Path(tmp))
            await proxies.wait_ready()
            print("tokencache demo: 3 proxies, 1 OAuth2-protected backend, 1 authorization server")
            for i, (url, proc) in enumerate(zip(proxies.urls, proxies.procs, strict=True)):
                print(f"  proxy {i}: {url}  (ready: {proxies.health[i]}/ready, PID {proc.pid})")
            print(f"  backend: {backend_url} (needs a bearer token)  token URL: {token_url}")
            owner_url = tokencache.Ring(proxies.peers).owner(f"GET {DEMO_PATH}") or ""
            owner = proxies.peers.index(owner_url)
            other = (owner + 1) % 3
            await _show(
                f"a miss: proxy {owner} owns the key and asks the backend",
                proxies.urls[owner] + DEMO_PATH,
            )
            await _show(f"a hit on another node: proxy {other}", proxies.urls[other] + DEMO_PATH)
            await _show("and on the third", proxies.urls[(owner + 2) % 3] + DEMO_PATH)
            print(f"\nbackend requests: {backend.requests.get(DEMO_PATH, 0)}")
            print(f"token requests: {issuer.token_requests}")
            print(f"metrics: curl -s {proxies.health[0]}/metrics | grep -e requests_seconds_count")
            if not once:
                print("\nrunning; press Ctrl-C to stop everything")
                await stop.wait()
                print("\nstopping")
        finally:
            if proxies is not None:
                await asyncio.to_thread(proxies.stop)
            for runner in runners:
                await runner.cleanup()
    print("stopped")
    return 0


def main(argv: list[str] | None = None) -> int:
    """Entry point of `python -m tokencache.proxy.demo`."""
    parser = argparse.ArgumentParser(prog="python -m tokencache.proxy.demo", description=__doc__)
    parser.add_argument("--once", action="store_true", help="exit after printing the results")
    return asyncio.run(run_demo(parser.parse_args(argv).once))


if __name__ == "__main__":
    sys.exit(main())
