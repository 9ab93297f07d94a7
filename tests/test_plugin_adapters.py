"""The ``requests`` and ``aiohttp`` adapters against the real authorization server (oidc-provider)
and a real protected API on loopback: one token for many requests, the 401 rule (one retry with a
new token, the body sent again), the persistent-401 cooldown, and bodies that cannot be replayed.

The API accepts a token only if the authorization server issued it (asked through the harness)
and the test has not revoked it, so every assertion on tokens is about real tokens."""

from __future__ import annotations

import asyncio
import hashlib
import subprocess
import sys
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import aiohttp
import pytest
import requests
from aiohttp import web

import tokencache
import tokencache.plugin.aiohttp
import tokencache.plugin.requests
from tests.support.oauth_server import OAuthClient, OAuthServer
from tokencache import plugin

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[1]
SECRET = "MARKER-SECRET-adapt-5e11"
CLIENTS = [
    OAuthClient("svc-req", SECRET, scopes=("read",)),
    OAuthClient("svc-aio", SECRET, scopes=("read",)),
]


@dataclass
class Api:
    """A protected API: 200 (with a digest of the token and the body) for a token the server
    issued and the test has not revoked; 401 otherwise, or for everything when ``reject_all``."""

    oauth: OAuthServer
    url: str = ""
    revoked: set[str] = field(default_factory=set)
    reject_all: bool = False
    seen: list[str] = field(default_factory=list)

    async def handle(self, request: web.Request) -> web.Response:
        header = request.headers.get("Authorization", "")
        body = await request.read()
        self.seen.append(header)
        scheme, _, token = header.partition(" ")
        known = await asyncio.to_thread(self.oauth.token_info, token) if token else None
        if self.reject_all or scheme != "Bearer" or known is None or token in self.revoked:
            return web.Response(status=401, headers={"WWW-Authenticate": "Bearer"})
        digest = hashlib.sha256(token.encode()).hexdigest()[:16]
        return web.json_response({"token": digest, "body": body.decode()})


@pytest.fixture(scope="module")
def oauth() -> Iterator[OAuthServer]:
    with OAuthServer(CLIENTS, token_ttl=600) as server:
        yield server


@pytest.fixture(scope="module")
def api_server(oauth: OAuthServer) -> Iterator[Api]:
    api = Api(oauth)
    loop = tokencache.BackgroundLoop(name="test-api")
    app = web.Application()
    app.router.add_route("*", "/things", api.handle)
    runner = web.AppRunner(app, access_log=None, handle_signals=False)

    async def start() -> None:
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        api.url = f"http://127.0.0.1:{runner.addresses[0][1]}/things"

    loop.run(start(), timeout=30)
    try:
        yield api
    finally:
        loop.run(runner.cleanup(), timeout=30)
        loop.close()


@pytest.fixture
def api(api_server: Api, oauth: OAuthServer) -> Api:
    oauth.reset()
    api_server.revoked.clear()
    api_server.reject_all = False
    api_server.seen.clear()
    return api_server


@pytest.fixture
def runtime() -> Iterator[plugin.PluginRuntime]:
    rt = plugin.PluginRuntime()
    try:
        yield rt
    finally:
        rt.close()


def bearer(header: str) -> str:
    return header.split(" ", 1)[1]


# -- requests --------------------------------------------------------------------------------------


@pytest.fixture
def req_auth(
    oauth: OAuthServer, runtime: plugin.PluginRuntime
) -> Iterator[plugin.requests.ClientCredentialsAuth]:
    auth = plugin.requests.ClientCredentialsAuth(
        oauth.token_url, "svc-req", SECRET, scope="read", runtime=runtime
    )
    try:
        yield auth
    finally:
        auth.close()


def test_requests_session_sends_one_token_for_many_requests(
    api: Api, oauth: OAuthServer, req_auth: plugin.requests.ClientCredentialsAuth
) -> None:
    with requests.Session() as session:
        session.auth = req_auth
        answers = [session.get(api.url, timeout=10) for _ in range(20)]
    assert [a.status_code for a in answers] == [200] * 20
    assert len({a.json()["token"] for a in answers}) == 1
    assert oauth.token_requests() == 1
    assert requests.get(api.url, auth=req_auth, timeout=10).status_code == 200  # per-call auth=


def test_requests_401_renews_the_token_and_sends_the_body_again(
    api: Api, oauth: OAuthServer, req_auth: plugin.requests.ClientCredentialsAuth
) -> None:
    with requests.Session() as session:
        session.auth = req_auth
        first = session.post(api.url, data=b"payload-1", timeout=10)
        api.revoked.add(bearer(api.seen[-1]))  # the API stops accepting the current token
        second = session.post(api.url, json={"n": 2}, timeout=10)
    assert first.status_code == 200
    assert second.status_code == 200
    assert [r.status_code for r in second.history] == [401]
    assert second.json()["body"] == '{"n": 2}'
    assert second.json()["token"] != first.json()["token"]
    assert oauth.token_requests() == 2
    assert req_auth.token_cache.stats.unauthorized_retries == 1


def test_requests_persistent_401_costs_one_renewal(
    api: Api, oauth: OAuthServer, req_auth: plugin.requests.ClientCredentialsAuth
) -> None:
    api.reject_all = True
    with requests.Session() as session:
        session.auth = req_auth
        statuses = [session.get(api.url, timeout=10).status_code for _ in range(30)]
    assert statuses == [401] * 30
    assert oauth.token_requests() == 2  # the first token and one renewal; then the cooldown
    assert len(api.seen) == 31


def test_requests_streaming_body_is_not_sent_twice(
    api: Api, oauth: OAuthServer, req_auth: plugin.requests.ClientCredentialsAuth
) -> None:
    with requests.Session() as session:
        session.auth = req_auth
        assert session.get(api.url, timeout=10).status_code == 200
        api.revoked.add(bearer(api.seen[-1]))
        answer = session.post(api.url, data=iter([b"chunk-1", b"chunk-2"]), timeout=10)
        assert answer.status_code == 401  # a generator cannot be replayed
        assert session.get(api.url, timeout=10).status_code == 200  # ...but the token was renewed
    assert oauth.token_requests() == 2


# -- aiohttp ---------------------------------------------------------------------------------------


@pytest.fixture
async def aio_auth(
    oauth: OAuthServer, runtime: plugin.PluginRuntime
) -> AsyncIterator[plugin.aiohttp.ClientCredentialsAuth]:
    auth = plugin.aiohttp.ClientCredentialsAuth(
        oauth.token_url, "svc-aio", SECRET, scope="read", runtime=runtime
    )
    try:
        yield auth
    finally:
        await auth.aclose()


async def test_aiohttp_middleware_one_token_for_a_concurrent_burst(
    api: Api, oauth: OAuthServer, aio_auth: plugin.aiohttp.ClientCredentialsAuth
) -> None:
    async with aiohttp.ClientSession(middlewares=(aio_auth,)) as session:

        async def one() -> tuple[int, str]:
            async with session.get(api.url) as response:
                return response.status, (await response.json())["token"]

        results = await asyncio.gather(*(one() for _ in range(40)))
    assert {status for status, _ in results} == {200}
    assert len({token for _, token in results}) == 1
    assert await asyncio.to_thread(oauth.token_requests) == 1


async def test_aiohttp_401_renews_the_token_and_sends_the_body_again(
    api: Api, oauth: OAuthServer, aio_auth: plugin.aiohttp.ClientCredentialsAuth
) -> None:
    async with aiohttp.ClientSession(middlewares=(aio_auth,)) as session:
        async with session.post(api.url, data=b"payload-1") as first:
            assert first.status == 200
            first_token = (await first.json())["token"]
        api.revoked.add(bearer(api.seen[-1]))
        async with session.post(api.url, json={"n": 2}) as second:
            assert second.status == 200
            data = await second.json()
    assert data["body"] == '{"n": 2}'
    assert data["token"] != first_token
    assert await asyncio.to_thread(oauth.token_requests) == 2


async def test_aiohttp_persistent_401_costs_one_renewal(
    api: Api, oauth: OAuthServer, aio_auth: plugin.aiohttp.ClientCredentialsAuth
) -> None:
    api.reject_all = True
    async with aiohttp.ClientSession(middlewares=(aio_auth,)) as session:
        statuses = []
        for _ in range(30):
            async with session.get(api.url) as response:
                statuses.append(response.status)
    assert statuses == [401] * 30
    assert await asyncio.to_thread(oauth.token_requests) == 2
    assert len(api.seen) == 31


async def test_aiohttp_streaming_body_is_not_sent_twice(
    api: Api, oauth: OAuthServer, aio_auth: plugin.aiohttp.ClientCredentialsAuth
) -> None:
    async def chunks() -> AsyncIterator[bytes]:
        yield b"chunk-1"
        yield b"chunk-2"

    async with aiohttp.ClientSession(middlewares=(aio_auth,)) as session:
        async with session.get(api.url) as response:
            assert response.status == 200
        api.revoked.add(bearer(api.seen[-1]))
        async with session.post(api.url, data=chunks()) as response:
            assert response.status == 401
        async with session.get(api.url) as response:
            assert response.status == 200
    assert await asyncio.to_thread(oauth.token_requests) == 2


# -- isolation ---------------------------------------------------------------------------------------


def test_only_the_requests_adapter_imports_requests() -> None:
    code = (
        "import sys, plugin, plugin.aiohttp; "
        "assert 'requests' not in sys.modules, 'requests imported'; "
        "import plugin.requests; assert 'requests' in sys.modules; print('ok')"
    )
    done = subprocess.run(
        [sys.executable, "-c", code],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "ok"
