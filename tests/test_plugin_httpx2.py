"""plugin.httpx2.ClientCredentialsAuth: the same flows on httpx2, token fetches through httpx2 only.

respx patches httpx, not httpx2, so both the token endpoint and the protected API are
``httpx2.MockTransport`` handlers here. A respx router that fails every request proves the httpx2
path never touches httpx."""

from __future__ import annotations

import asyncio
import json
import threading
from collections.abc import AsyncIterator, Callable, Iterator

import httpx2
import pytest
import respx

import tokencache.plugin.httpx2  # noqa: F401 - makes plugin.httpx2 available
from tokencache import plugin
from tokencache.testing import FakeClock

TOKEN_URL = "https://idp.example/token"
API = "https://api.example/things"


class IdP:
    """A scripted token endpoint (thread-safe: it runs on the plugin's private loop thread)."""

    def __init__(self, answers: list[httpx2.Response]) -> None:
        self.answers = answers
        self.requests: list[httpx2.Request] = []
        self._lock = threading.Lock()

    def __call__(self, request: httpx2.Request) -> httpx2.Response:
        with self._lock:
            self.requests.append(request)
            return self.answers[min(len(self.requests), len(self.answers)) - 1]


def token(value: str) -> httpx2.Response:
    return httpx2.Response(
        200, json={"access_token": value, "token_type": "bearer", "expires_in": 100}
    )


@pytest.fixture
def no_httpx() -> Iterator[respx.MockRouter]:
    with respx.mock(assert_all_called=False) as router:
        router.route().mock(side_effect=AssertionError("the httpx2 path used httpx"))
        yield router


@pytest.fixture
async def make_auth(
    no_httpx: respx.MockRouter,
) -> AsyncIterator[Callable[..., plugin.httpx2.ClientCredentialsAuth]]:
    made: list[plugin.httpx2.ClientCredentialsAuth] = []

    def make(idp: IdP, **kw: object) -> plugin.httpx2.ClientCredentialsAuth:
        params: dict[str, object] = {
            "token_url": TOKEN_URL,
            "client_id": "svc",
            "client_secret": "s3cret",
            "scope": "read",
            "token_transport": httpx2.MockTransport(idp),
            "clock": FakeClock(),
        }
        params.update(kw)
        auth = plugin.httpx2.ClientCredentialsAuth(**params)  # type: ignore[arg-type]
        made.append(auth)
        return auth

    try:
        yield make
    finally:
        for auth in made:
            await auth.aclose()
    assert no_httpx.calls.call_count == 0


async def test_async_httpx2_fetches_once_and_retries_401(
    make_auth: Callable[..., plugin.httpx2.ClientCredentialsAuth],
) -> None:
    idp = IdP([token("t1"), token("t2")])
    seen: list[str] = []

    def api(request: httpx2.Request) -> httpx2.Response:
        seen.append(request.headers["authorization"])
        return httpx2.Response(
            401 if request.headers["authorization"] == "Bearer t1" and len(seen) > 10 else 200
        )

    auth = make_auth(idp)
    async with httpx2.AsyncClient(auth=auth, transport=httpx2.MockTransport(api)) as client:
        replies = await asyncio.gather(*(client.get(API) for _ in range(10)))
        assert [r.status_code for r in replies] == [200] * 10
        assert len(idp.requests) == 1
        retried = await client.post(API, json={"a": 1})
    assert retried.status_code == 200
    assert seen[-2:] == ["Bearer t1", "Bearer t2"]
    assert len(idp.requests) == 2
    assert b"grant_type=client_credentials" in idp.requests[0].content


def test_sync_httpx2_with_post_auth_and_errors(
    make_auth: Callable[..., plugin.httpx2.ClientCredentialsAuth],
) -> None:
    idp = IdP([httpx2.Response(400, json={"error": "invalid_scope", "error_description": "no"})])
    auth = make_auth(idp, auth_method="client_secret_post")
    with (
        httpx2.Client(
            auth=auth, transport=httpx2.MockTransport(lambda r: httpx2.Response(200))
        ) as client,
        pytest.raises(plugin.InvalidScopeError) as info,
    ):
        client.get(API)
    assert info.value.error_description == "no"
    body = idp.requests[0].content.decode()
    assert "client_secret=s3cret" in body
    assert len(idp.requests) == 1


def test_sync_httpx2_many_threads_one_fetch(
    make_auth: Callable[..., plugin.httpx2.ClientCredentialsAuth],
) -> None:
    idp = IdP([token("t1")])
    auth = make_auth(idp)
    errors: list[BaseException] = []

    def worker() -> None:
        try:
            with httpx2.Client(
                auth=auth, transport=httpx2.MockTransport(lambda r: httpx2.Response(200))
            ) as c:
                for _ in range(5):
                    assert c.get(API).request.headers["authorization"] == "Bearer t1"
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=worker) for _ in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=30)
    assert not errors
    assert len(idp.requests) == 1


def test_transport_failures_on_httpx2_are_token_connection_errors(
    make_auth: Callable[..., plugin.httpx2.ClientCredentialsAuth],
) -> None:
    def refuse(request: httpx2.Request) -> httpx2.Response:
        raise httpx2.ConnectError("refused")

    auth = make_auth(IdP([]), token_transport=httpx2.MockTransport(refuse), max_attempts=2)
    with (
        httpx2.Client(
            auth=auth, transport=httpx2.MockTransport(lambda r: httpx2.Response(200))
        ) as c,
        pytest.raises(plugin.TokenConnectionError),
    ):
        c.get(API)
    assert json.loads(auth.key)[2] == "svc"
