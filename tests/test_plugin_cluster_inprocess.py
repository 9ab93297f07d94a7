"""Several workspaces in one process (tokencache.testing.LocalTransport): the token group's cluster
behaviour — one fetch for the cluster, Declined when the owner lacks the credentials, refresh-ahead
reloaded once by the owner, 401 compare-and-invalidate across peers."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable

import httpx
import pytest
import respx

import tokencache
from tokencache import plugin
from tokencache.testing import FakeClock, LocalTransport

TOKEN_URL = "https://idp.example/token"
API = "https://api.example/things"
URLS = ["http://10.0.0.1:7000", "http://10.0.0.2:7000", "http://10.0.0.3:7000"]

Cluster = list[tokencache.Workspace]
MakeAuth = Callable[..., plugin.ClientCredentialsAuth]


def token_response(token: str, expires_in: int = 100) -> httpx.Response:
    return httpx.Response(
        200, json={"access_token": token, "token_type": "bearer", "expires_in": expires_in}
    )


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
async def cluster(clock: FakeClock) -> AsyncIterator[Cluster]:
    transport = LocalTransport()
    workspaces = [tokencache.Workspace(url, clock=clock, transport=transport) for url in URLS]
    for url, ws in zip(URLS, workspaces, strict=True):
        transport.register(url, ws)
        ws.set_peers(URLS)
    try:
        yield workspaces
    finally:
        for ws in workspaces:
            await ws.close()


@pytest.fixture
async def make_auth() -> AsyncIterator[MakeAuth]:
    made: list[plugin.ClientCredentialsAuth] = []

    def make(workspace: tokencache.Workspace, **kw: object) -> plugin.ClientCredentialsAuth:
        params: dict[str, object] = {
            "token_url": TOKEN_URL,
            "client_id": "svc",
            "client_secret": "s3cret",
            "scope": "read",
            "workspace": workspace,
        }
        params.update(kw)
        auth = plugin.ClientCredentialsAuth(**params)  # type: ignore[arg-type]
        made.append(auth)
        return auth

    try:
        yield make
    finally:
        for auth in made:
            await auth.aclose()


@pytest.fixture
def mock() -> respx.MockRouter:
    with respx.mock(assert_all_called=False) as router:
        yield router


async def hammer(auths: list[plugin.ClientCredentialsAuth], per_auth: int) -> list[str]:
    async def one(auth: plugin.ClientCredentialsAuth) -> list[str]:
        async with httpx.AsyncClient(auth=auth) as client:
            replies = await asyncio.gather(*(client.get(API) for _ in range(per_auth)))
        return [r.request.headers["authorization"] for r in replies]

    seen = await asyncio.gather(*(one(a) for a in auths))
    return [h for part in seen for h in part]


async def test_one_fetch_for_the_whole_cluster(
    cluster: Cluster, make_auth: MakeAuth, mock: respx.MockRouter
) -> None:
    idp = mock.post(TOKEN_URL).mock(return_value=token_response("t1"))
    mock.get(API).mock(return_value=httpx.Response(200))
    auths = [make_auth(ws) for ws in cluster]
    seen = await hammer(auths, 20)
    assert set(seen) == {"Bearer t1"}
    assert idp.call_count == 1
    assert sum(a.token_cache.stats.fetches for a in auths) == 1


async def test_owner_without_credentials_declines_and_the_asker_fetches(
    cluster: Cluster, make_auth: MakeAuth, mock: respx.MockRouter
) -> None:
    idp = mock.post(TOKEN_URL).mock(return_value=token_response("t1"))
    mock.get(API).mock(return_value=httpx.Response(200))
    asker = cluster[0]
    # Find credentials whose key the ring gives to another process (bounded search).
    for n in range(200):
        auth = make_auth(asker, client_id=f"svc-{n}")
        owner = asker.owner(auth.key)
        if owner is not None:
            break
    else:
        pytest.fail("no key owned by another peer in 200 tries")
    owner_ws = cluster[URLS.index(owner)]
    for ws in cluster[1:]:
        plugin.TokenCache.for_workspace(ws)  # the group exists there, with no credentials for it
    assert (await hammer([auth], 5)) == ["Bearer t1"] * 5
    assert idp.call_count == 1
    assert auth.token_cache.stats.fetches == 1  # fetched by the asker, not by the owner
    owner_cache = plugin.TokenCache.for_workspace(owner_ws)
    assert owner_cache.stats.fetches == 0
    assert owner_cache.group.peek(auth.key) is None  # the owner stored nothing it could not load


async def test_refresh_ahead_reloads_once_for_the_cluster(
    cluster: Cluster, make_auth: MakeAuth, mock: respx.MockRouter, clock: FakeClock
) -> None:
    idp = mock.post(TOKEN_URL).mock(side_effect=[token_response("t1"), token_response("t2")])
    mock.get(API).mock(return_value=httpx.Response(200))
    auths = [make_auth(ws) for ws in cluster]
    await hammer(auths, 3)
    clock.advance(80)  # cache life 90 s, window the last 18 s
    await hammer(auths, 3)
    for auth in auths:
        for future in list(auth.token_cache.background):
            await asyncio.wrap_future(future)
    seen = await hammer(auths, 3)
    assert set(seen) == {"Bearer t2"}
    assert idp.call_count == 2


async def test_401_invalidates_cluster_wide_only_the_rejected_token(
    cluster: Cluster, make_auth: MakeAuth, mock: respx.MockRouter
) -> None:
    idp = mock.post(TOKEN_URL).mock(side_effect=[token_response("t1"), token_response("t2")])
    revoked: set[str] = set()

    def api_answer(request: httpx.Request) -> httpx.Response:
        return httpx.Response(401 if request.headers["authorization"] in revoked else 200)

    mock.get(API).mock(side_effect=api_answer)
    auths = [make_auth(ws) for ws in cluster]
    await hammer(auths, 2)
    revoked.add("Bearer t1")
    # Every process sees the 401 for t1; one compare-and-invalidate wins, the others find t2.
    statuses = []
    for auth in auths:
        async with httpx.AsyncClient(auth=auth) as client:
            statuses.append((await client.get(API)).status_code)
    assert statuses == [200, 200, 200]
    assert idp.call_count == 2
    assert set(await hammer(auths, 2)) == {"Bearer t2"}


async def test_an_existing_foreign_group_is_refused(cluster: Cluster) -> None:
    async def load(key: str) -> tokencache.Entry:
        return tokencache.Entry(b"x")

    cluster[0].new_group("oauth2", max_bytes=1024, loader=load)
    with pytest.raises(plugin.ConfigurationError):
        plugin.TokenCache.for_workspace(cluster[0])


async def test_sync_client_needs_the_engine_loop_and_refuses_its_thread(
    cluster: Cluster, make_auth: MakeAuth, mock: respx.MockRouter
) -> None:
    mock.post(TOKEN_URL).mock(return_value=token_response("t1"))
    mock.get(API).mock(return_value=httpx.Response(200))
    auth = make_auth(cluster[0])

    def sync_get() -> int:
        with httpx.Client(auth=auth) as client:
            return client.get(API).status_code

    with pytest.raises(plugin.ConfigurationError, match="loop="):
        await asyncio.to_thread(sync_get)  # no loop known yet: a clear error, not a hang
    await hammer([auth], 1)  # the first async use binds the engine loop (this test's loop)
    assert await asyncio.to_thread(sync_get) == 200  # another thread now bridges to it
    fresh = make_auth(cluster[0], client_id="svc-2", loop=asyncio.get_running_loop())
    with (
        httpx.Client(auth=fresh) as client,
        pytest.raises(plugin.ConfigurationError, match="AsyncClient"),
    ):
        client.get(API)  # noqa: ASYNC212 - on purpose: a miss here would deadlock; refused
