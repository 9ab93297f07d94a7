"""Black-box tests: the proxy's OAUTH2_AUTH_METHOD settings against the real authorization server.

A real ``python -m tokencache.proxy`` process authenticates at the token endpoint (oidc-provider, a real
process that verifies each assertion and certificate itself) with ``private_key_jwt`` (the key
from a ``file:`` reference, its ``kid`` selecting one of two registered keys) and with RFC 8705
``tls_client_auth`` over https with a CA made in the test (OAUTH2_CA_FILE, OAUTH2_CLIENT_CERT,
OAUTH2_CLIENT_KEY); the backend checks the tokens by introspection or shows what it received.
"""

from __future__ import annotations

import asyncio
import json
import uuid
from pathlib import Path

import pytest

from tests.support.client_keys import LocalPki, jwks, pem, public_jwk, rsa_key, thumbprint
from tests.support.oauth_server import OAuthClient, OAuthServer
from tests.support.proxy_cluster import BackendProcess, ProxyCluster, http_get

pytestmark = pytest.mark.slow

BACKEND_SECRET = "backend-introspection-secret"
KEY_A, KEY_B = rsa_key(), rsa_key()


async def test_private_key_jwt_with_a_key_file_reference_and_kid(tmp_path: Path) -> None:
    clients = [
        OAuthClient(
            "svc-pk",
            "",
            ("read",),
            "private_key_jwt",
            jwks=jwks(public_jwk(KEY_A, "key-a"), public_jwk(KEY_B, "key-b")),
        ),
        OAuthClient("demo-backend", BACKEND_SECRET),
    ]
    key_file = tmp_path / "svc-pk.pem"
    key_file.write_text(pem(KEY_B))
    key_file.chmod(0o600)
    secret_file = tmp_path / "backend-secret"
    secret_file.write_text(BACKEND_SECRET)
    with OAuthServer(clients, token_ttl=600) as oauth:
        args = (
            *("--introspect-url", oauth.issuer + "/token/introspection"),
            *("--introspect-client", "demo-backend", "--introspect-secret-file", str(secret_file)),
        )
        env = {
            "OAUTH2_TOKEN_URL": oauth.token_url,
            "OAUTH2_CLIENT_ID": "svc-pk",
            "OAUTH2_SCOPE": "read",
            "OAUTH2_AUTH_METHOD": "private_key_jwt",
            "OAUTH2_PRIVATE_KEY": f"file:{key_file}",
            "OAUTH2_KEY_ID": "key-b",
            "OAUTH2_CHECK_AT_START": "true",
            "DEBUG_LOG": "true",
        }
        with BackendProcess(tmp_path, *args) as backend:
            with ProxyCluster(1, backend.url, tmp_path, env=env) as cluster:
                node = cluster.nodes[0]
                targets = [f"/api/{uuid.uuid4().hex}" for _ in range(3)]
                answers = [await asyncio.to_thread(http_get, node.url + t) for t in targets]
                log = cluster.logs()
            stats = backend.stats()
        by_client = oauth.token_requests_by_client()
    assert [a[0] for a in answers] == [200, 200, 200]
    assert stats["unauthorized"] == 0
    assert by_client == {"svc-pk": 1}  # the start-up check's token serves every request
    body = pem(KEY_B).splitlines()[1]
    assert body not in log and "PRIVATE KEY" not in log


async def test_tls_client_auth_with_a_private_ca_gets_a_certificate_bound_token(
    tmp_path: Path,
) -> None:
    pki = LocalPki(tmp_path)
    client = pki.client_cert("svc-mtls.client.test")
    clients = [
        OAuthClient(
            "svc-mtls",
            "",
            ("read",),
            "tls_client_auth",
            tls_san_dns="svc-mtls.client.test",
            certificate_bound=True,
        )
    ]
    with OAuthServer(clients, token_ttl=600, tls=pki.server_tls) as oauth:
        assert oauth.token_url.startswith("https://")
        env = {
            "OAUTH2_TOKEN_URL": oauth.token_url,
            "OAUTH2_CLIENT_ID": "svc-mtls",
            "OAUTH2_SCOPE": "read",
            "OAUTH2_AUTH_METHOD": "tls_client_auth",
            "OAUTH2_CLIENT_CERT": str(client.cert),
            "OAUTH2_CLIENT_KEY": str(client.key),
            "OAUTH2_CA_FILE": str(pki.ca_file),
        }
        with (
            BackendProcess(tmp_path) as backend,
            ProxyCluster(1, backend.url, tmp_path, env=env) as cluster,
        ):
            status, body, _ = await asyncio.to_thread(
                http_get, cluster.nodes[0].url + "/echo?n=" + uuid.uuid4().hex
            )
        assert status == 200, body
        seen = json.loads(body)
        headers = {k.lower(): v for k, v in seen["headers"]}
        scheme, _, access_token = headers["authorization"].partition(" ")
        info = oauth.token_info(access_token)
        by_client = oauth.token_requests_by_client()
    assert scheme == "Bearer"
    assert by_client == {"svc-mtls": 1}
    assert info is not None and info["client_id"] == "svc-mtls"
    # RFC 8705: the token is bound to the proxy's client certificate and passed through unchanged.
    assert info["x5t#S256"] == thumbprint(client.cert.read_bytes())
