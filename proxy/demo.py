"""`make demo` / `python -m proxy.demo [--once]`: three proxies, one backend, one token, on loopback.

What it starts, each a real process bound to 127.0.0.1 and stopped by PID on exit:

1. an OAuth2 authorization server (npm oidc-provider, the test harness
   ``tests/support/oauth_server.py``; ``make tools`` installs it);
2. a demo backend (``tests/support/demo_backend.py``) that answers only requests whose bearer token
   the authorization server calls active (RFC 7662 introspection), and counts requests;
3. three ``tokencache-proxy`` processes with static peers, a peer secret and the OAuth2 settings.

It then prints curl commands for a miss, a hit on another node and the ``Cache-Status`` header,
runs them once itself, prints the results and the counters (backend requests: 1, token requests: 1)
and waits for Ctrl-C. ``--once`` exits after printing. Run it from the repository root.
"""

from __future__ import annotations

import argparse
import importlib
import secrets
import signal
import sys
import tempfile
import threading
import urllib.request
from pathlib import Path
from types import FrameType
from typing import Any

import tokencache

DEMO_PATH = "/api/catalog?page=1"


def _support(name: str) -> Any:
    # The harnesses live with the tests (they are test tools, not part of the product).
    repo = Path(__file__).resolve().parents[1]
    if str(repo) not in sys.path:
        sys.path.insert(0, str(repo))
    return importlib.import_module(f"tests.support.{name}")


def _get(url: str) -> tuple[int, str, bytes]:
    with urllib.request.urlopen(url, timeout=30) as resp:  # noqa: S310 - loopback URL we built
        return resp.status, resp.headers.get("Cache-Status", ""), resp.read()


def _show(title: str, url: str) -> None:
    print(f"\n# {title}\ncurl -si '{url}' | grep -i -e '^HTTP' -e '^cache-status'")
    status, cache_status, body = _get(url)
    print(f"  -> HTTP {status}, Cache-Status: {cache_status}, body: {body[:60]!r}")


def run_demo(once: bool) -> int:
    """Start everything, show the requests, wait (unless `once`), stop everything."""
    oauth_mod, cluster_mod = _support("oauth_server"), _support("proxy_cluster")
    proxy_secret, backend_secret = secrets.token_urlsafe(24), secrets.token_urlsafe(24)
    clients = [
        oauth_mod.OAuthClient("demo-proxy", proxy_secret, scopes=["catalog"]),
        oauth_mod.OAuthClient("demo-backend", backend_secret),
    ]
    stop = threading.Event()

    def on_sigterm(signum: int, frame: FrameType | None) -> None:
        raise KeyboardInterrupt  # the same clean-up path as Ctrl-C

    signal.signal(signal.SIGTERM, on_sigterm)
    with tempfile.TemporaryDirectory(prefix="tokencache-demo-") as tmp:
        work = Path(tmp)
        secret_file = work / "backend-secret"
        secret_file.touch(mode=0o600)
        secret_file.write_text(backend_secret)
        oauth = oauth_mod.OAuthServer(clients, token_ttl=300)
        backend = cluster = None
        try:
            oauth.start()
            backend = cluster_mod.BackendProcess(
                work,
                *("--introspect-url", oauth.issuer + "/token/introspection"),
                *("--introspect-client", "demo-backend"),
                *("--introspect-secret-file", str(secret_file)),
            ).start()
            env = {
                "OAUTH2_TOKEN_URL": oauth.token_url,
                "OAUTH2_CLIENT_ID": "demo-proxy",
                "OAUTH2_CLIENT_SECRET": proxy_secret,
                "OAUTH2_SCOPE": "catalog",
                "CACHE_TTL": "60s",
            }
            cluster = cluster_mod.ProxyCluster(3, backend.url, work, env=env).start()
            nodes = cluster.nodes
            print("tokencache demo: 3 proxies, 1 OAuth2-protected backend, 1 authorization server")
            for n in nodes:
                print(f"  proxy {n.index}: {n.url}  (ready: {n.health_url}/ready, PID {n.pid})")
            print(f"  backend: {backend.url} (needs a bearer token)  token URL: {oauth.token_url}")
            ring = tokencache.Ring([n.peer_url for n in nodes])
            owner = [n.peer_url for n in nodes].index(ring.owner(f"GET {DEMO_PATH}") or "")
            other = (owner + 1) % len(nodes)
            _show(
                f"a miss: proxy {owner} owns the key and asks the backend",
                nodes[owner].url + DEMO_PATH,
            )
            _show(f"a hit on another node: proxy {other}", nodes[other].url + DEMO_PATH)
            _show("and on the third", nodes[(owner + 2) % len(nodes)].url + DEMO_PATH)
            stats = backend.stats()
            print(f"\nbackend requests: {stats['by_target'].get(DEMO_PATH, 0)}")
            print(f"token requests: {oauth.token_requests()}")
            print(f"metrics: curl -s {nodes[0].metrics_url} | grep -e requests_seconds_count")
            if not once:
                print("\nrunning; press Ctrl-C to stop everything")
                while not stop.wait(3600):
                    pass
        except KeyboardInterrupt:
            print("\nstopping")
        finally:
            if cluster is not None:
                cluster.stop()
            if backend is not None:
                backend.stop()
            oauth.stop()
    print("stopped")
    return 0


def main(argv: list[str] | None = None) -> int:
    """Entry point of `python -m proxy.demo`."""
    parser = argparse.ArgumentParser(prog="python -m proxy.demo", description=__doc__)
    parser.add_argument("--once", action="store_true", help="exit after printing the results")
    return run_demo(parser.parse_args(argv).once)


if __name__ == "__main__":
    sys.exit(main())
