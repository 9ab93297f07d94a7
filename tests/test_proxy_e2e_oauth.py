"""Black-box test: an OAuth2-protected backend behind 3 proxies and a real authorization server.

The backend accepts a request only when the authorization server (oidc-provider, a real process)
says its bearer token is active (RFC 7662 introspection). The proxies fetch tokens through the
plugin; the ``oauth2`` group lives in the same workspace as the ``http`` group, so the cluster asks
the authorization server exactly once.
"""

from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.support.net import free_port
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


# --- item 7: a token failure is a clear 502, one log line, a metric ---------------------------

WRONG_SECRET = "wrong-secret-the-proxy-must-never-print"


def _token_env(token_url: str, secret: str = WRONG_SECRET, **extra: str) -> dict[str, str]:
    return {
        "OAUTH2_TOKEN_URL": token_url,
        "OAUTH2_CLIENT_ID": "proxy",
        "OAUTH2_CLIENT_SECRET": secret,
        "OAUTH2_SCOPE": "read",
        **extra,
    }


def _metric(text: str, name: str, labels: str) -> float:
    for line in text.splitlines():
        if line.startswith(f"{name}{{{labels}}} "):
            return float(line.rsplit(" ", 1)[1])
    raise AssertionError(f"{name}{{{labels}}} not in the scrape")


def _token_lines(log: str) -> list[str]:
    return [line for line in log.splitlines() if "backend token failure" in line]


@pytest.mark.parametrize("fault", ["refused", "bad_response", "endpoint_down"])
async def test_a_token_failure_answers_502_detail_token_with_one_log_line_and_a_metric(
    oauth: OAuthServer, tmp_path: Path, fault: str
) -> None:
    token_url = oauth.token_url
    secret = WRONG_SECRET
    error_class = "InvalidClientError"
    if fault == "bad_response":
        secret = PROXY_SECRET
        oauth.set_fault(mode="body", body={"access_token": "", "token_type": "Bearer"})
        error_class = "TokenResponseError"
    elif fault == "endpoint_down":
        secret = PROXY_SECRET
        token_url = f"http://127.0.0.1:{free_port()}/token"  # nothing listens there
        error_class = "TokenConnectionError"
    with BackendProcess(tmp_path) as backend:
        env = _token_env(token_url, secret)
        with ProxyCluster(1, backend.url, tmp_path, env=env) as cluster:
            node = cluster.nodes[0]
            status, body, headers = await asyncio.to_thread(http_get, node.url + "/things/1")
            log_after_get = node.log_text()
            scrape = (await asyncio.to_thread(http_get, node.metrics_url))[1].decode()
            # The forwarding path (a POST is never cached) answers the same way.
            async with httpx.AsyncClient(timeout=30) as client:
                posted = await client.post(node.url + "/things", content=b"{}")
            log = node.log_text()
        stats = backend.stats()
    assert status == 502
    assert body == b"backend credentials unavailable\n"
    assert headers["Cache-Status"] == "tokencache; fwd=miss; detail=token"
    assert posted.status_code == 502
    assert posted.headers["Cache-Status"].endswith("; detail=token")
    lines = _token_lines(log_after_get)
    assert len(lines) == 1, log_after_get
    line = json.loads(lines[0])
    assert line["error"] == error_class
    assert line["token_endpoint"] == token_url
    assert line["fault"] == "token"
    assert len(_token_lines(log)) == 2  # and one for the POST
    assert "Traceback" not in log
    assert WRONG_SECRET not in log and PROXY_SECRET not in log
    assert _metric(scrape, "proxy_backend_errors_total", 'kind="token"') == 1
    assert _metric(scrape, "proxy_backend_errors_total", 'kind="other"') == 0
    assert stats["requests"] == 0  # nothing went to the backend without a token


def _start_one(tmp_path: Path, backend_url: str, env: dict[str, str]) -> ProxyCluster:
    return ProxyCluster(1, backend_url, tmp_path, env=env)


async def test_oauth2_check_at_start_refuses_to_start_without_a_token(
    oauth: OAuthServer, tmp_path: Path
) -> None:
    env = _token_env(oauth.token_url, OAUTH2_CHECK_AT_START="true")
    cluster = _start_one(tmp_path, "http://127.0.0.1:9", env)
    node = cluster.nodes[0]
    node.start()
    assert node.proc is not None
    code = await asyncio.to_thread(node.proc.wait, 60)
    log = node.log_text()
    assert code == 2, log
    assert "configuration error: OAUTH2_CHECK_AT_START" in log
    assert "InvalidClientError" in log
    assert oauth.token_url in log
    assert "Traceback" not in log
    assert WRONG_SECRET not in log
    assert oauth.token_requests() >= 1


async def test_oauth2_check_at_start_passes_with_good_credentials(
    oauth: OAuthServer, tmp_path: Path
) -> None:
    env = _token_env(oauth.token_url, PROXY_SECRET, OAUTH2_CHECK_AT_START="true")
    with _start_one(tmp_path, "http://127.0.0.1:9", env) as cluster:
        requests_at_start = oauth.token_requests()  # before any client request
        log = cluster.logs()
    assert requests_at_start == 1
    assert "OAuth2 token check passed" in log
    assert PROXY_SECRET not in log
