"""ClientCredentialsAuth flows against respx (token endpoint and protected API), fake clock and sleep.

Standalone mode: each auth runs a private single-node workspace on its own loop thread, so these
tests also cover the async bridge (test loop → engine loop) and the sync bridge (threads).
"""

from __future__ import annotations

import asyncio
import json
import logging
import threading
from collections.abc import AsyncIterator, Callable, Iterator

import httpx
import pytest
import respx
from prometheus_client import CollectorRegistry, generate_latest

from tokencache import plugin
from tokencache.testing import FakeClock

TOKEN_URL = "https://idp.example/token"
API = "https://api.example/things"
SECRET = "MARKER-SECRET-9c2d"

MakeAuth = Callable[..., plugin.ClientCredentialsAuth]


def token_response(token: str, expires_in: object = 100) -> httpx.Response:
    body: dict[str, object] = {"access_token": token, "token_type": "bearer"}
    if expires_in is not None:
        body["expires_in"] = expires_in
    return httpx.Response(200, json=body)


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def sleeps() -> list[float]:
    return []


@pytest.fixture
def mock() -> Iterator[respx.MockRouter]:
    with respx.mock(assert_all_called=False) as router:
        yield router


@pytest.fixture
async def make_auth(clock: FakeClock, sleeps: list[float]) -> AsyncIterator[MakeAuth]:
    made: list[plugin.ClientCredentialsAuth] = []

    async def fake_sleep(seconds: float) -> None:
        sleeps.append(seconds)

    def make(**kw: object) -> plugin.ClientCredentialsAuth:
        params: dict[str, object] = {
            "token_url": TOKEN_URL,
            "client_id": "svc",
            "client_secret": SECRET,
            "scope": "read",
            "clock": clock,
            "sleep": fake_sleep,
        }
        params.update(kw)
        auth = plugin.ClientCredentialsAuth(**params)  # type: ignore[arg-type]
        made.append(auth)
        return auth

    try:
        yield make
    finally:
        for auth in reversed(made):  # an auth may share an earlier one's private loop
            await auth.aclose()


def bearer(call: respx.models.Call) -> str:
    return call.request.headers["authorization"]


async def drain_refreshes(auth: plugin.ClientCredentialsAuth) -> None:
    for future in list(auth.token_cache.background):
        await asyncio.wrap_future(future)


# -- first use, reuse, expiry ------------------------------------------------------------------------


async def test_first_use_fetches_once_then_reuses(
    mock: respx.MockRouter, make_auth: MakeAuth
) -> None:
    idp = mock.post(TOKEN_URL).mock(return_value=token_response("t1"))
    api = mock.get(API).mock(return_value=httpx.Response(200))
    auth = make_auth()
    async with httpx.AsyncClient(auth=auth) as client:
        results = await asyncio.gather(*(client.get(API) for _ in range(30)))
    assert all(r.status_code == 200 for r in results)
    assert idp.call_count == 1
    assert {bearer(c) for c in api.calls} == {"Bearer t1"}
    sent = idp.calls[0].request
    assert sent.headers["authorization"].startswith("Basic ")
    assert b"grant_type=client_credentials" in sent.content
    assert b"scope=read" in sent.content


async def test_token_is_fetched_again_after_its_ttl(
    mock: respx.MockRouter, make_auth: MakeAuth, clock: FakeClock
) -> None:
    idp = mock.post(TOKEN_URL).mock(side_effect=[token_response("t1"), token_response("t2")])
    api = mock.get(API).mock(return_value=httpx.Response(200))
    auth = make_auth(refresh_fraction=0.0)
    async with httpx.AsyncClient(auth=auth) as client:
        await client.get(API)
        clock.advance(89)  # expires_in 100 - leeway 10 = 90 s of cache life
        await client.get(API)
        assert idp.call_count == 1
        clock.advance(2)
        await client.get(API)
    assert idp.call_count == 2
    assert [bearer(c) for c in api.calls] == ["Bearer t1", "Bearer t1", "Bearer t2"]


async def test_missing_expires_in_uses_default_lifetime_and_logs_why(
    mock: respx.MockRouter, make_auth: MakeAuth, clock: FakeClock, caplog: pytest.LogCaptureFixture
) -> None:
    idp = mock.post(TOKEN_URL).mock(return_value=token_response("TOKEN-abc", expires_in=None))
    mock.get(API).mock(return_value=httpx.Response(200))
    auth = make_auth(default_lifetime=200, refresh_fraction=0.0)
    with caplog.at_level(logging.INFO):
        async with httpx.AsyncClient(auth=auth) as client:
            await client.get(API)
            clock.advance(179)  # 200 - min(60, 20) = 180 s
            await client.get(API)
            assert idp.call_count == 1
            clock.advance(2)
            await client.get(API)
    assert idp.call_count == 2
    assert "expires_in missing" in caplog.text
    assert "TOKEN-abc" not in caplog.text


# -- refresh ahead -----------------------------------------------------------------------------------


async def test_refresh_ahead_reloads_once_in_background_while_old_token_serves(
    mock: respx.MockRouter, make_auth: MakeAuth, clock: FakeClock
) -> None:
    idp = mock.post(TOKEN_URL).mock(side_effect=[token_response("t1"), token_response("t2")])
    api = mock.get(API).mock(return_value=httpx.Response(200))
    auth = make_auth(refresh_fraction=0.2)  # cache life 90 s, refresh in the last 18 s
    async with httpx.AsyncClient(auth=auth) as client:
        await client.get(API)
        clock.advance(71)
        await client.get(API)
        assert not auth.token_cache.background
        clock.advance(4)  # 75 s: inside the window
        for _ in range(10):
            await client.get(API)
        await drain_refreshes(auth)
        await client.get(API)
    assert idp.call_count == 2
    seen = [bearer(c) for c in api.calls]
    assert seen[:3] == ["Bearer t1"] * 3  # the request that triggered the refresh was not held up
    assert seen[-1] == "Bearer t2"
    assert auth.token_cache.stats.refreshes == 1


def test_refresh_due_admits_one_refresh_per_key_at_a_time(
    mock: respx.MockRouter, make_auth: MakeAuth
) -> None:
    auth = make_auth()
    cache = auth.token_cache
    held = plugin.Held(
        b"v", plugin.Token("t", "bearer", 100), expires_at=0.0, refresh_at=0.0, window=10
    )
    assert cache.refresh_due(auth.key, held) is True
    assert cache.refresh_due(auth.key, held) is False
    assert cache.refresh_due('["other"]', held) is True


def test_sync_client_refresh_ahead(
    mock: respx.MockRouter, make_auth: MakeAuth, clock: FakeClock
) -> None:
    idp = mock.post(TOKEN_URL).mock(side_effect=[token_response("t1"), token_response("t2")])
    api = mock.get(API).mock(return_value=httpx.Response(200))
    auth = make_auth()
    with httpx.Client(auth=auth) as client:
        client.get(API)
        clock.advance(80)
        client.get(API)
        for future in list(auth.token_cache.background):
            future.result(timeout=10)
        client.get(API)
    assert idp.call_count == 2
    assert [bearer(c) for c in api.calls] == ["Bearer t1", "Bearer t1", "Bearer t2"]
    auth.close()


# -- 401: compare-and-invalidate, one retry ------------------------------------------------------------


async def test_401_retries_once_with_a_new_token(
    mock: respx.MockRouter, make_auth: MakeAuth
) -> None:
    idp = mock.post(TOKEN_URL).mock(side_effect=[token_response("t1"), token_response("t2")])

    def api_answer(request: httpx.Request) -> httpx.Response:
        return httpx.Response(401 if request.headers["authorization"] == "Bearer t1" else 200)

    api = mock.post(API).mock(side_effect=api_answer)
    auth = make_auth()
    async with httpx.AsyncClient(auth=auth) as client:
        response = await client.post(API, json={"n": 1})
        again = await client.post(API, json={"n": 2})
    assert response.status_code == 200
    assert again.status_code == 200
    assert idp.call_count == 2
    assert [bearer(c) for c in api.calls] == ["Bearer t1", "Bearer t2", "Bearer t2"]
    assert api.calls[1].request.content == b'{"n":1}'  # the body was replayed
    assert auth.token_cache.stats.unauthorized_retries == 1


async def test_401_is_retried_at_most_once(mock: respx.MockRouter, make_auth: MakeAuth) -> None:
    idp = mock.post(TOKEN_URL).mock(side_effect=[token_response(f"t{i}") for i in range(5)])
    api = mock.get(API).mock(return_value=httpx.Response(401))
    auth = make_auth()
    async with httpx.AsyncClient(auth=auth) as client:
        response = await client.get(API)
    assert response.status_code == 401
    assert api.call_count == 2
    assert idp.call_count == 2


async def test_401_with_the_same_token_again_returns_the_401(
    mock: respx.MockRouter, make_auth: MakeAuth
) -> None:
    idp = mock.post(TOKEN_URL).mock(return_value=token_response("same"))
    api = mock.get(API).mock(return_value=httpx.Response(401))
    auth = make_auth()
    async with httpx.AsyncClient(auth=auth) as client:
        response = await client.get(API)
    assert response.status_code == 401
    assert api.call_count == 1  # never retried with the token that was just rejected
    assert idp.call_count == 2


def test_sync_401_retry_and_streaming_body_is_not_replayed(
    mock: respx.MockRouter, make_auth: MakeAuth
) -> None:
    idp = mock.post(TOKEN_URL).mock(side_effect=[token_response(f"t{i}") for i in range(5)])
    rejected = {"Bearer t0"}

    def api_answer(request: httpx.Request) -> httpx.Response:
        return httpx.Response(401 if request.headers["authorization"] in rejected else 200)

    api = mock.put(API).mock(side_effect=api_answer)
    # No persistent-401 window: t1 (fetched after a 401) is rejected at once below, which would
    # otherwise count as "the renewal did not help" (see the cooldown tests).
    auth = make_auth(unauthorized_cooldown=0)
    with httpx.Client(auth=auth) as client:
        assert client.put(API, content=b"bytes body").status_code == 200  # t0 401, t1 200
        assert [bearer(c) for c in api.calls] == ["Bearer t0", "Bearer t1"]
        assert api.calls[1].request.content == b"bytes body"

        def chunks() -> Iterator[bytes]:
            yield b"stream"

        rejected.add("Bearer t1")
        response = client.put(API, content=chunks())
        assert response.status_code == 401  # a generator body cannot be sent twice
        assert api.call_count == 3
        assert idp.call_count == 3  # ...but the rejected token was invalidated: t2 is cached
        assert client.put(API, content=b"next").status_code == 200
    assert bearer(api.calls[-1]) == "Bearer t2"
    assert idp.call_count == 3
    assert auth.token_cache.stats.unauthorized_retries == 1
    auth.close()


# -- token endpoint faults ---------------------------------------------------------------------------


async def test_invalid_client_raises_not_retried_and_cools_down(
    mock: respx.MockRouter, make_auth: MakeAuth, clock: FakeClock, sleeps: list[float]
) -> None:
    idp = mock.post(TOKEN_URL).mock(
        return_value=httpx.Response(
            401, json={"error": "invalid_client", "error_description": "bad"}
        )
    )
    api = mock.get(API).mock(return_value=httpx.Response(200))
    auth = make_auth(cooldown=5)
    async with httpx.AsyncClient(auth=auth) as client:
        with pytest.raises(plugin.InvalidClientError) as info:
            await client.get(API)
        assert info.value.error == "invalid_client"
        assert info.value.error_description == "bad"
        with pytest.raises(plugin.InvalidClientError):
            await client.get(API)  # in cooldown: the last error at once
        assert idp.call_count == 1
        clock.advance(6)
        with pytest.raises(plugin.InvalidClientError):
            await client.get(API)
    assert idp.call_count == 2
    assert api.call_count == 0
    assert sleeps == []
    assert auth.token_cache.stats.fetch_errors["invalid_client"] == 2
    assert auth.token_cache.stats.cooldown_rejections == 1


async def test_invalid_scope_maps_to_its_class(mock: respx.MockRouter, make_auth: MakeAuth) -> None:
    mock.post(TOKEN_URL).mock(return_value=httpx.Response(400, json={"error": "invalid_scope"}))
    auth = make_auth()
    async with httpx.AsyncClient(auth=auth) as client:
        with pytest.raises(plugin.InvalidScopeError):
            await client.get(API)


async def test_5xx_then_success_is_retried_and_not_cached_as_failure(
    mock: respx.MockRouter, make_auth: MakeAuth, sleeps: list[float]
) -> None:
    idp = mock.post(TOKEN_URL).mock(
        side_effect=[httpx.Response(503), httpx.Response(502), token_response("t1")]
    )
    mock.get(API).mock(return_value=httpx.Response(200))
    auth = make_auth()
    async with httpx.AsyncClient(auth=auth) as client:
        assert (await client.get(API)).status_code == 200
    assert idp.call_count == 3
    assert len(sleeps) == 2


async def test_429_honours_retry_after_and_a_failure_is_not_cached(
    mock: respx.MockRouter, make_auth: MakeAuth, clock: FakeClock, sleeps: list[float]
) -> None:
    throttled = httpx.Response(429, headers={"Retry-After": "4"})
    idp = mock.post(TOKEN_URL).mock(
        side_effect=[throttled, throttled, throttled, token_response("t1")]
    )
    mock.get(API).mock(return_value=httpx.Response(200))
    auth = make_auth(max_attempts=3, cooldown=1)
    async with httpx.AsyncClient(auth=auth) as client:
        with pytest.raises(plugin.TokenThrottledError):
            await client.get(API)
        assert sleeps == [4.0, 4.0]
        clock.advance(2)
        with pytest.raises(plugin.TokenThrottledError):
            await client.get(API)  # the cooldown follows Retry-After (4 s), not the 1 s default
        clock.advance(3)
        assert (await client.get(API)).status_code == 200
    assert idp.call_count == 4
    assert auth.token_cache.stats.fetch_errors["throttled"] == 1


async def test_connection_errors_become_token_connection_error(
    mock: respx.MockRouter, make_auth: MakeAuth
) -> None:
    idp = mock.post(TOKEN_URL).mock(side_effect=httpx.ConnectError("refused"))
    auth = make_auth(max_attempts=2)
    async with httpx.AsyncClient(auth=auth) as client:
        with pytest.raises(plugin.TokenConnectionError):
            await client.get(API)
    assert idp.call_count == 2


async def test_waiters_share_one_failure(mock: respx.MockRouter, make_auth: MakeAuth) -> None:
    idp = mock.post(TOKEN_URL).mock(
        return_value=httpx.Response(400, json={"error": "invalid_scope"})
    )
    auth = make_auth(cooldown=0)
    async with httpx.AsyncClient(auth=auth) as client:
        results = await asyncio.gather(
            *(client.get(API) for _ in range(20)), return_exceptions=True
        )
    assert all(isinstance(r, plugin.InvalidScopeError) for r in results)
    assert idp.call_count <= 2  # one flight (a waiter arriving after it ended may start one more)


# -- secrets -----------------------------------------------------------------------------------------


async def test_wrong_secret_is_another_key_and_never_gets_the_right_token(
    mock: respx.MockRouter, make_auth: MakeAuth
) -> None:
    def idp_answer(request: httpx.Request) -> httpx.Response:
        if request.headers["authorization"] == httpx.BasicAuth("svc", SECRET)._auth_header:
            return token_response("right")
        return httpx.Response(401, json={"error": "invalid_client"})

    mock.post(TOKEN_URL).mock(side_effect=idp_answer)
    api = mock.get(API).mock(return_value=httpx.Response(200))
    good = make_auth()
    wrong = make_auth(
        client_secret="guess", workspace=good.token_cache.workspace, loop=good._core.bridge.loop
    )  # same workspace: same group
    assert wrong.key != good.key
    assert wrong.token_cache is good.token_cache
    async with httpx.AsyncClient(auth=good) as client:
        await client.get(API)
    async with httpx.AsyncClient(auth=wrong) as client:
        with pytest.raises(plugin.InvalidClientError):
            await client.get(API)
    assert [bearer(c) for c in api.calls] == ["Bearer right"]


async def test_secret_never_in_key_logs_errors_or_metrics(
    mock: respx.MockRouter, make_auth: MakeAuth, caplog: pytest.LogCaptureFixture
) -> None:
    mock.post(TOKEN_URL).mock(
        side_effect=[
            httpx.Response(503),
            httpx.Response(
                401, json={"error": "invalid_client", "error_description": f"echo {SECRET}"}
            ),
        ]
    )
    auth = make_auth(max_attempts=2)
    registry = CollectorRegistry()
    registry.register(plugin.TokenMetricsCollector([auth.token_cache]))
    with caplog.at_level(logging.DEBUG):
        async with httpx.AsyncClient(auth=auth) as client:
            with pytest.raises(plugin.TokenError) as info:
                await client.get(API)
    texts = [
        auth.key,
        caplog.text,
        str(info.value),
        repr(info.value),
        repr(auth._core.creds),
        str(info.value.error_description),
        generate_latest(registry).decode(),
    ]
    assert all(SECRET not in text for text in texts)


# -- sync clients and threads ---------------------------------------------------------------------------


def test_sync_client_from_many_threads_fetches_once(
    mock: respx.MockRouter, make_auth: MakeAuth
) -> None:
    idp = mock.post(TOKEN_URL).mock(return_value=token_response("t1"))
    api = mock.get(API).mock(return_value=httpx.Response(200))
    auth = make_auth()
    errors: list[BaseException] = []
    start = threading.Barrier(8)

    def worker() -> None:
        try:
            start.wait(timeout=10)
            with httpx.Client(auth=auth) as client:
                for _ in range(5):
                    assert client.get(API).status_code == 200
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=worker) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=30)
    assert not errors
    assert idp.call_count == 1
    assert api.call_count == 40
    auth.close()


# -- metrics -----------------------------------------------------------------------------------------


async def test_metrics_count_fetches_errors_hits_with_namespace(
    mock: respx.MockRouter, make_auth: MakeAuth
) -> None:
    mock.post(TOKEN_URL).mock(return_value=token_response("t1"))
    mock.get(API).mock(return_value=httpx.Response(200))
    auth = make_auth(group_name="tokens")
    registry = CollectorRegistry()
    registry.register(plugin.TokenMetricsCollector([auth.token_cache], namespace="svc"))
    async with httpx.AsyncClient(auth=auth) as client:
        for _ in range(3):
            await client.get(API)
    sample = registry.get_sample_value
    assert sample("svc_oauth2_token_fetches_total", {"group": "tokens"}) == 1
    assert sample("svc_oauth2_token_cache_hits_total", {"group": "tokens"}) == 2
    assert sample("svc_oauth2_token_cache_misses_total", {"group": "tokens"}) == 1
    assert (
        sample("svc_oauth2_token_fetch_errors_total", {"group": "tokens", "kind": "throttled"}) == 0
    )
    kinds = {
        s.labels["kind"]
        for m in registry.collect()
        if m.name == "svc_oauth2_token_fetch_errors"
        for s in m.samples
    }
    assert kinds == set(plugin.ERROR_KINDS)
    assert json.loads(auth.key)[0] == "oauth2/v2"
