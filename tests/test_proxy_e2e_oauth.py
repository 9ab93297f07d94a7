"""Black-box test: an OAuth2-protected backend behind 3 proxies and a real authorization server.

The backend accepts a request only when the authorization server (oidc-provider, a real process)
says its bearer token is active (RFC 7662 introspection). The proxies fetch tokens through the
plugin; the ``oauth2`` group lives in the same workspace as the ``http`` group, so the cluster asks
the authorization server exactly once.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.support.oauth_server import OAuthClient, OAuthServer
from tests.support.proxy_cluster import BackendProcess, ProxyCluster, http_get

pytestmark = pytest.mark.slow

PROXY_SECRET = "proxy-client-secret-never-logged"
BACKEND_SECRET = "backend-introspection-secret"


@pytest.fixture
def oauth() -> Iterator[OAuthServer]:
    clients = [
        OAuthClient("proxy", PROXY_SECRET, scopes=["read"]),
        OAuthClient("demo-backend", BACKEND_SECRET),
    ]
    with OAuthServer(clients, token_ttl=600) as server:
        yield server


async def test_one_token_request_for_the_whole_cluster(oauth: OAuthServer, tmp_path: Path) -> None:
    secret_file = tmp_path / "backend-secret"
    secret_file.write_text(BACKEND_SECRET)
    args = (
        *("--introspect-url", oauth.issuer + "/token/introspection"),
        *("--introspect-client", "demo-backend", "--introspect-secret-file", str(secret_file)),
    )
    env = {
        "OAUTH2_TOKEN_URL": oauth.token_url,
        "OAUTH2_CLIENT_ID": "proxy",
        "OAUTH2_CLIENT_SECRET": PROXY_SECRET,
        "OAUTH2_SCOPE": "read",
        "DEBUG_LOG": "true",
    }
    with BackendProcess(tmp_path, *args) as backend:
        # Without a token the backend refuses: the protection is real.
        status = (await asyncio.to_thread(http_get, backend.url + "/direct"))[0]
        assert status == 401
        with ProxyCluster(3, backend.url, tmp_path, env=env) as cluster:
            targets = [f"/api/{uuid.uuid4().hex}" for _ in range(6)]
            async with httpx.AsyncClient(timeout=30) as client:
                responses = await asyncio.gather(
                    *(client.get(cluster.nodes[i % 3].url + t) for i, t in enumerate(targets * 5))
                )
            metrics = [
                (await asyncio.to_thread(http_get, n.metrics_url))[1].decode()
                for n in cluster.nodes
            ]
            logs = cluster.logs()
        stats = backend.stats()
    assert [r.status_code for r in responses] == [200] * 30
    assert oauth.token_requests_by_client() == {"proxy": 1}
    assert stats["unauthorized"] == 1  # the direct request above, nothing through the proxies
    assert all(stats["by_target"][t] == 1 for t in targets)
    assert PROXY_SECRET not in logs
    for text in metrics:  # both groups and the plugin's token counters, on every node
        assert 'group="path"' in text
        assert 'group="oauth2"' in text
        assert "oauth2_token_fetches" in text
        assert PROXY_SECRET not in text
    # Exactly one node fetched the token: the fetch counters sum to one across the cluster.
    fetched = [
        float(line.rsplit(" ", 1)[1])
        for text in metrics
        for line in text.splitlines()
        if line.startswith("oauth2_token_fetches_total")
    ]
    assert sum(fetched) == 1
