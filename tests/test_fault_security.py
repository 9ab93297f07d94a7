"""Scenario 6: no one gets in — the peer port, the public port and the token group.

Against real proxy processes (peer secret set) and the real authorization server: peer connections
without the secret, with another secret, with replayed or reordered frames are refused and never
get a value; the public port never answers from the peer protocol; a token cached for one secret never reaches a caller with another.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

import tokencache
from tests.support import peer_wire as pw
from tests.support.net import free_port
from tests.support.oauth_server import OAuthClient, OAuthServer
from tests.support.proxy_cluster import PEER_SECRET, BackendProcess, ProxyCluster
from tokencache.plugin import ClientCredentialsAuth, InvalidClientError

pytestmark = pytest.mark.slow


def signed(path: str, body: bytes, secret: str, *, at: float | None = None) -> dict[str, str]:
    """Signature headers written from the wire contract (docs/engine-api.md), not engine code."""
    ts = f"{time.time() if at is None else at:.3f}"
    nonce = secrets.token_hex(16)
    msg = "\n".join(("POST", path, ts, nonce, hashlib.sha256(body).hexdigest())).encode()
    sig = hmac.new(secret.encode(), msg, hashlib.sha256).hexdigest()
    return {
        "X-Tokencache-Timestamp": ts,
        "X-Tokencache-Nonce": nonce,
        "X-Tokencache-Signature": sig,
    }


@pytest.fixture(scope="module")
def cluster(
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[tuple[ProxyCluster, BackendProcess]]:
    work = tmp_path_factory.mktemp("security")
    with BackendProcess(work) as backend, ProxyCluster(2, backend.url, work) as nodes:
        yield nodes, backend


def test_peer_requests_need_the_secret_and_a_fresh_sequence(
    cluster: tuple[ProxyCluster, BackendProcess],
) -> None:
    nodes, _ = cluster
    target = f"/sec/{uuid.uuid4().hex}"
    cached = httpx.get(nodes.nodes[0].url + target, timeout=10)
    assert cached.status_code == 200
    # The HTTP group is named "path", like kubecache's.
    payload = pw.get_payload("path", f"GET {target}".encode())
    refused: list[str] = []
    for node in nodes.nodes:
        with pw.WireClient(node.peer_port, PEER_SECRET.encode(), timeout=10) as c:
            c.handshake()
            frame = c.frame(pw.GET, 1, payload)
            kind, answer = c.request_frame(frame, 1)
            # A well-signed request is served (a non-owner loads it itself: never forwarded).
            assert kind == pw.VALUE and target.encode() in answer
            c.send(frame)  # replayed: same bytes, same sequence number
            refused.append(_refusal(c))
        with pw.WireClient(node.peer_port, None, timeout=10) as c:  # no secret at all
            refused.append(_refusal(c, handshake=True))
        with pw.WireClient(node.peer_port, PEER_SECRET.encode(), timeout=10) as c:
            c.handshake(proof_secret=b"wrong")  # proves another secret
            c.send(c.frame(pw.GET, 1, payload))
            refused.append(_refusal(c))
        with pw.WireClient(node.peer_port, PEER_SECRET.encode(), timeout=10) as c:
            c.handshake()
            c.send(c.frame(pw.PING, 2, b"") + c.frame(pw.GET, 1, payload, seq=0))  # reordered
            refused.append(_refusal(c))
    assert refused == ["error 6", "status 3", "closed", "error 6"] * len(nodes.nodes)


def _refusal(c: pw.WireClient, *, handshake: bool = False) -> str:
    """How the server refused: an ERROR frame's code, a refusal hello, or closing."""
    if handshake:
        try:
            c.handshake()
        except pw.WireError as exc:
            return "status 3" if "status 3" in str(exc) else str(exc)
        raise AssertionError("handshake accepted")
    for _ in range(100):
        try:
            kind, rid, payload = c.read_frame()
        except pw.WireError:
            return "closed"
        if kind == pw.ERROR and rid == 0:
            return f"error {payload[0]}"
        assert kind not in (pw.VALUE, pw.OK), "answered a refused frame"
    raise AssertionError("no refusal")


@pytest.mark.parametrize("method", ["GET", "POST"])
@pytest.mark.parametrize("group", ["path", "http", "oauth2"])
def test_public_port_never_speaks_the_peer_protocol(
    cluster: tuple[ProxyCluster, BackendProcess], method: str, group: str
) -> None:
    nodes, backend = cluster
    target = f"/pub/{uuid.uuid4().hex}"
    cached = httpx.get(nodes.nodes[0].url + target, timeout=10)
    assert cached.status_code == 200
    path = f"/_tokencache/v1/{group}/get"
    body = f"GET {target}".encode()
    for node in nodes.nodes:
        answer = httpx.request(
            method,
            node.url + path,
            content=body if method == "POST" else None,
            headers=signed(path, body, PEER_SECRET),
            timeout=10,
        )
        assert cached.content not in answer.content
        assert "X-Tokencache-Error" not in answer.headers
        forwarded = backend.stats()["by_target"].get(path, 0) > 0
        assert forwarded or 400 <= answer.status_code < 500, answer.status_code


async def test_a_token_is_never_handed_to_a_caller_with_another_secret(tmp_path: Path) -> None:
    good, bad = "right-secret-" + uuid.uuid4().hex, "wrong-secret-" + uuid.uuid4().hex
    ports = [free_port(), free_port()]
    urls = [f"http://127.0.0.1:{p}" for p in ports]
    with (
        OAuthServer([OAuthClient("svc", good, scopes=["read"])]) as oauth,
        BackendProcess(tmp_path) as backend,
    ):
        spaces = [tokencache.Workspace(u, peer_secret="ws-secret") for u in urls]
        try:
            for ws, port in zip(spaces, ports, strict=True):
                ws.set_peers(urls)
                await ws.serve("127.0.0.1", port)
            right = ClientCredentialsAuth(oauth.token_url, "svc", good, "read", workspace=spaces[0])
            wrong = [
                ClientCredentialsAuth(oauth.token_url, "svc", bad, "read", workspace=ws)
                for ws in spaces
            ]
            async with httpx.AsyncClient(timeout=20, trust_env=False) as client:
                echo = (await client.get(backend.url + "/echo", auth=right)).json()
                token = dict((k.lower(), v) for k, v in echo["headers"])["authorization"]
                assert token.startswith("Bearer ")
                for auth in wrong:
                    assert auth.key != right.key
                    with pytest.raises(InvalidClientError) as caught:
                        await client.get(backend.url + "/echo", auth=auth)
                    assert token.split()[1] not in str(caught.value)
            after = backend.stats()
            assert after["by_target"].get("/echo") == 1  # the wrong secret never reached it
        finally:
            for auth in (right, *wrong):
                await auth.aclose()
            for ws in spaces:
                await ws.close()
