"""The plugin as a service uses it, against the real authorization server (oidc-provider): the
persistent-401 cooldown, one token per process for every auth object with the same credentials,
the public token API, and every failure a caller can see, with its type and message."""

from __future__ import annotations

import asyncio
import gc
import logging
import random
import ssl
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import trustme

import tokencache
from tests.support.oauth_server import OAuthClient, OAuthServer
from tokencache import plugin

pytestmark = pytest.mark.slow

SECRET = "MARKER-SECRET-life-41c7"
CLIENTS = [
    OAuthClient("svc-life", SECRET, scopes=("read",)),
    OAuthClient("svc-401", SECRET, scopes=("read",)),
]
API = "https://api.test/things"


@pytest.fixture(scope="module")
def oauth() -> Iterator[OAuthServer]:
    with OAuthServer(CLIENTS, token_ttl=600) as server:
        yield server


@pytest.fixture
def runtime() -> Iterator[plugin.PluginRuntime]:
    rt = plugin.PluginRuntime()
    try:
        yield rt
    finally:
        rt.close()


def make(
    oauth: OAuthServer, runtime: plugin.PluginRuntime, client_id: str = "svc-life", **kw: Any
) -> plugin.ClientCredentialsAuth:
    params: dict[str, Any] = {"scope": "read", "runtime": runtime}
    params.update(kw)
    secret = params.pop("client_secret", SECRET)
    return plugin.ClientCredentialsAuth(oauth.token_url, client_id, secret, **params)


def rejecting_api() -> tuple[httpx.MockTransport, list[str]]:
    seen: list[str] = []

    def answer(request: httpx.Request) -> httpx.Response:
        seen.append(request.headers["authorization"])
        return httpx.Response(401)

    return httpx.MockTransport(answer), seen


# -- 1. persistent 401 ----------------------------------------------------------------------------


def test_persistent_401_costs_one_renewal_not_one_token_request_per_call(
    oauth: OAuthServer, runtime: plugin.PluginRuntime, caplog: pytest.LogCaptureFixture
) -> None:
    oauth.reset()
    auth = make(oauth, runtime, "svc-401")
    transport, seen = rejecting_api()
    with (
        caplog.at_level(logging.DEBUG, logger="tokencache.plugin.oauth2"),
        httpx.Client(auth=auth, transport=transport) as client,
    ):
        statuses = [client.get(API).status_code for _ in range(50)]
    assert statuses == [401] * 50
    # The first token, then one renewal after the first 401; its retry failed, so the credential
    # is in its cooldown and the other 49 calls return their 401 without asking for a token.
    assert oauth.token_requests() == 2
    assert len(seen) == 51  # the first call retried once, no other call did
    assert auth.token_cache.stats.unauthorized_retries == 1
    assert auth.token_cache.stats.unauthorized_cooldowns == 49
    text = caplog.text
    assert "401 from the API" in text and "cooldown" in text and "fetching a token" in text
    # The logger docs/plugin.md names (it was "plugin.oauth2": a generic name, not the documented one)
    assert {r.name for r in caplog.records} == {"tokencache.plugin.oauth2"}
    assert SECRET not in text
    assert not any(header.split()[1] in text for header in seen)  # no token in the log
    auth.close()


async def test_concurrent_401s_on_one_token_cost_one_token_request(
    oauth: OAuthServer, runtime: plugin.PluginRuntime, caplog: pytest.LogCaptureFixture
) -> None:
    # Before: every renewal compare-and-invalidated the rejected token while the first renewal's
    # fetch was in flight; with no copy left to compare, the remove stopped that load from being
    # joined and each renewal fetched again (20 concurrent 401s: up to 20 token fetches).
    oauth.reset()
    auth = make(oauth, runtime, "svc-401")
    first = await auth.atoken()
    held = auth.token_cache.peek(auth.key)
    assert held is not None and held.token.access_token == first.access_token
    # A slow renewal: the other renewals of the same rejected token arrive while it is in flight.
    await asyncio.to_thread(oauth.set_fault, mode="none", delay_ms=300)
    with caplog.at_level(logging.DEBUG, logger="tokencache.plugin.oauth2"):
        renewed = await asyncio.gather(*(auth._core.renew(held) for _ in range(20)))
    await asyncio.to_thread(oauth.clear_fault)
    assert len({h.token.access_token for h in renewed}) == 1
    assert renewed[0].token.access_token != first.access_token
    # (a superseded fetch was abandoned mid-request: the server may not count it, the log does)
    assert caplog.text.count("after a 401\n") == 1
    assert auth.token_cache.stats.fetches == 2  # the first, one renewal
    assert await asyncio.to_thread(oauth.token_requests) == 2
    await auth.aclose()


async def test_persistent_401_cooldown_ends_and_the_next_401_renews_again(
    oauth: OAuthServer, runtime: plugin.PluginRuntime
) -> None:
    oauth.reset()
    auth = make(oauth, runtime, "svc-401", unauthorized_cooldown=0.5)
    transport, _ = rejecting_api()
    async with httpx.AsyncClient(auth=auth, transport=transport) as client:
        for _ in range(5):
            assert (await client.get(API)).status_code == 401
        assert await oauth.await_token_requests(2) == 2
        deadline = time.monotonic() + 10
        for _ in range(100):  # bounded: past the 0.5 s window the next 401 renews once more
            await asyncio.sleep(0.1)  # real time must pass: the cooldown is on the real clock
            await client.get(API)
            if await asyncio.to_thread(oauth.token_requests) >= 3 or time.monotonic() > deadline:
                break
    assert oauth.token_requests() == 3
    await auth.aclose()


# -- 3. one token cache per process per credential ------------------------------------------------


def test_fifty_auth_objects_with_the_same_credentials_share_one_fetch_and_no_thread(
    oauth: OAuthServer, runtime: plugin.PluginRuntime
) -> None:
    oauth.reset()
    threads_before = threading.active_count()
    first = make(oauth, runtime)
    first.token()  # starts the runtime's one loop thread
    threads_with_engine = threading.active_count()
    assert threads_with_engine <= threads_before + 1
    tokens = set()
    transport = httpx.MockTransport(lambda r: httpx.Response(200, text=r.headers["authorization"]))
    for _ in range(50):  # one auth per request, as real code often does
        with httpx.Client(auth=make(oauth, runtime), transport=transport) as client:
            tokens.add(client.get(API).text)
    assert threading.active_count() == threads_with_engine
    assert len(tokens) == 1
    assert oauth.token_requests() == 1


async def test_sync_and_async_auths_on_many_loops_share_one_token(
    oauth: OAuthServer, runtime: plugin.PluginRuntime
) -> None:
    oauth.reset()

    def in_thread() -> str:
        async def one() -> str:
            return (await make(oauth, runtime).atoken()).access_token

        return asyncio.run(one())

    results = await asyncio.gather(
        *(asyncio.to_thread(in_thread) for _ in range(4)),
        *(asyncio.to_thread(lambda: make(oauth, runtime).token().access_token) for _ in range(4)),
    )
    assert len(set(results)) == 1
    assert oauth.token_requests() == 1


# Options that change how or where a token is fetched or accepted: two auth objects with the same
# credentials share one registration (token cache, fetcher, token client) only when these are equal.
# Before, the first registration's options won silently (an auth with default TLS verification
# could fetch through another auth's CERT_NONE context).
def _unverified() -> ssl.SSLContext:
    context = ssl.create_default_context()
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    return context


OTHER_OPTIONS: list[tuple[dict[str, Any], str]] = [
    ({"ssl_context": _unverified()}, "ssl_context"),
    ({"token_types": ("Bearer", "DPoP")}, "token_types"),
    ({"timeout": 3.0}, "timeout"),
    ({"token_transport": httpx.AsyncHTTPTransport()}, "token_transport"),
    ({"max_attempts": 1}, "max_attempts"),
    ({"max_retry_after": 5}, "max_retry_after"),
    ({"leeway": 5}, "leeway"),
    ({"refresh_fraction": 0.5}, "refresh_fraction"),
    ({"cooldown": 0}, "cooldown"),
    ({"unauthorized_cooldown": 1}, "unauthorized_cooldown"),
    ({"default_lifetime": 60}, "default_lifetime"),
    ({"rng": random.Random(1)}, "rng"),
]


@pytest.mark.parametrize(("options", "name"), OTHER_OPTIONS)
def test_an_auth_with_other_fetch_options_is_refused_at_construction_naming_the_option(
    oauth: OAuthServer, runtime: plugin.PluginRuntime, options: dict[str, Any], name: str
) -> None:
    oauth.reset()
    first = make(oauth, runtime, **options)  # the first registration (e.g. CERT_NONE)
    try:
        first.token()  # the engine runs and holds the registration
        with pytest.raises(plugin.ConfigurationError, match=name) as info:
            make(oauth, runtime)  # default options: must not fetch through the first's
        message = str(info.value)
        assert "svc-life" in message and oauth.token_url in message and SECRET not in message
        assert "equal options" in message
        # The other way round as well, and the refused auths left nothing registered.
        make(oauth, runtime, **options, group_name="other").close()
        second = make(oauth, runtime, group_name="other")
        second.token()
        with pytest.raises(plugin.ConfigurationError, match=name):
            make(oauth, runtime, **options, group_name="other")
        second.close()
        assert first.token_cache.registered(first.key)
    finally:
        first.close()


def test_an_auth_with_other_options_built_before_the_engine_runs_is_refused_at_first_use(
    oauth: OAuthServer, runtime: plugin.PluginRuntime
) -> None:
    oauth.reset()
    unverified = make(oauth, runtime, ssl_context=_unverified())
    verified = make(oauth, runtime)  # no engine yet: checked when it binds
    try:
        unverified.token()
        with pytest.raises(plugin.ConfigurationError, match="ssl_context"):
            verified.token()
        with pytest.raises(plugin.ConfigurationError, match="ssl_context"):
            httpx.Client(
                auth=verified, transport=httpx.MockTransport(lambda r: httpx.Response(200))
            ).get(API)
        assert oauth.token_requests() == 1
    finally:
        unverified.close()
    # Once the other registration is gone, this one registers with its own options.
    assert verified.token().access_token
    verified.close()


def test_auths_with_equal_options_share_one_registration_per_process(
    oauth: OAuthServer, runtime: plugin.PluginRuntime, tmp_path: Path
) -> None:
    oauth.reset()
    ca = trustme.CA()
    ca_file = tmp_path / "ca.pem"
    ca.cert_pem.write_to_path(ca_file)
    context = _unverified()
    transport = httpx.MockTransport(lambda r: httpx.Response(200, text=r.headers["authorization"]))
    fetched = 0
    for shared in (
        {"ca_file": ca_file},  # a new SSLContext per auth, the same file: equal
        {"ca_file": str(ca_file), "token_types": ["bearer"], "timeout": 10},
        {"ssl_context": context},  # the same object: equal
    ):
        auths = [make(oauth, runtime, **shared) for _ in range(20)]  # as one per request
        seen = set()
        for auth in auths:
            with httpx.Client(auth=auth, transport=transport) as client:
                seen.add(client.get(API).text)
        assert len(seen) == 1
        assert oauth.token_requests() <= fetched + 1  # none per auth object
        fetched = oauth.token_requests()
        # Registrations last until closed: the next configuration may differ only after that.
        for auth in auths:
            auth.close()
    # The second configuration equals the first (same file, token_types and timeout by value);
    # the third differs (ssl_context): it does not use the token fetched under the first two.
    assert fetched == 2
    first = make(oauth, runtime, ssl_context=context)
    first.token()
    equal = make(oauth, runtime, ssl_context=_unverified())  # another object, equal settings
    with pytest.raises(plugin.ConfigurationError, match="ssl_context"):
        make(oauth, runtime, ssl_context=ssl.create_default_context())  # verifies: other settings
    equal.close()
    first.close()


# An auth dropped without close() used to stay registered for the process's life, and an
# ssl_context or token_transport compared by identity: building one auth per request with an
# inline ssl.create_default_context() raised ConfigurationError at the second request (even after
# gc.collect()), and from then on no auth with other options could be built for the credentials.


def test_one_auth_per_request_with_an_inline_ssl_context_costs_one_token_request(
    oauth: OAuthServer, runtime: plugin.PluginRuntime
) -> None:
    oauth.reset()
    transport = httpx.MockTransport(lambda r: httpx.Response(200, text=r.headers["authorization"]))
    seen = set()
    for _ in range(20):  # the reviewer's loop: the previous auth is still referenced by `client`
        auth = make(oauth, runtime, ssl_context=ssl.create_default_context())
        with httpx.Client(auth=auth, transport=transport) as client:
            seen.add(client.get(API).text)
    assert len(seen) == 1
    assert oauth.token_requests() == 1
    del auth, client  # every auth of the first loop gone: other options may register
    gc.collect()
    # The same with an inline httpx transport (a plain one compares by its settings).
    for _ in range(20):
        with httpx.Client(
            auth=make(oauth, runtime, token_transport=httpx.AsyncHTTPTransport(retries=1)),
            transport=transport,
        ) as client:
            seen.add(client.get(API).text)
    assert oauth.token_requests() == 2  # other options than the first loop's: its own token
    assert len(seen) == 2


class _Transport(httpx.AsyncHTTPTransport):
    """A transport of the caller's own class: compared by identity."""

    closed = 0

    async def aclose(self) -> None:
        type(self).closed += 1
        await super().aclose()


def test_auths_collected_without_close_unregister_and_other_options_then_work(
    oauth: OAuthServer, runtime: plugin.PluginRuntime
) -> None:
    oauth.reset()
    _Transport.closed = 0
    transport = httpx.MockTransport(lambda r: httpx.Response(200, text=r.headers["authorization"]))
    for i in range(3):
        auth = make(oauth, runtime, token_transport=_Transport())  # X: a new object each time
        key, cache = auth.key, auth.token_cache
        with httpx.Client(auth=auth, transport=transport) as client:
            assert client.get(API).status_code == 200
        del auth, client
        gc.collect()
        # Gone and collected: its registration goes too (and its token client is closed).
        deadline = time.monotonic() + 5
        while (cache.registered(key) or _Transport.closed <= i) and time.monotonic() < deadline:
            time.sleep(0.01)
        assert not cache.registered(key)
        assert _Transport.closed == i + 1
    assert oauth.token_requests() == 3  # transports not known equal: each fetched its own
    # Y (defaults) after every X is gone: no ConfigurationError; then X again is refused while Y lives.
    other = make(oauth, runtime)
    assert other.token().access_token
    with pytest.raises(plugin.ConfigurationError, match="token_transport"):
        make(oauth, runtime, token_transport=_Transport())
    other.close()


def test_the_401_cooldown_outlives_collected_per_request_auths(
    oauth: OAuthServer, runtime: plugin.PluginRuntime
) -> None:
    oauth.reset()
    transport, seen = rejecting_api()
    statuses = []
    for _ in range(10):
        with httpx.Client(auth=make(oauth, runtime, "svc-401"), transport=transport) as client:
            statuses.append(client.get(API).status_code)
        del client
        gc.collect()
    assert statuses == [401] * 10
    assert len(seen) == 11  # the first call retried once, no other call did
    # As with one long-lived auth: the first token and one renewal; collecting the auth that
    # started the cooldown did not end it.
    assert oauth.token_requests() == 2


def test_a_token_fetched_under_closed_options_is_not_used_under_other_options(
    oauth: OAuthServer, runtime: plugin.PluginRuntime
) -> None:
    oauth.reset()
    context = _unverified()
    unverified = make(oauth, runtime, ssl_context=context)
    old = unverified.token().access_token
    unverified.close()
    same = make(oauth, runtime, ssl_context=context)
    assert same.token().access_token == old  # equal options: the cached token is reused
    same.close()
    verified = make(oauth, runtime)
    try:
        # Before: handed the token fetched through the CERT_NONE context (no request).
        assert verified.token().access_token != old
        assert oauth.token_requests() == 2
    finally:
        verified.close()
    again = make(oauth, runtime)  # closed and rebuilt with equal options: no new request
    assert again.token().access_token != old
    assert oauth.token_requests() == 2
    again.close()


async def test_a_workspace_auth_with_other_options_is_refused_at_construction(
    oauth: OAuthServer,
) -> None:
    ws = tokencache.Workspace("")
    first = plugin.ClientCredentialsAuth(
        oauth.token_url, "svc-life", SECRET, scope="read", workspace=ws, leeway=5
    )
    try:
        with pytest.raises(plugin.ConfigurationError, match="leeway"):
            plugin.ClientCredentialsAuth(
                oauth.token_url, "svc-life", SECRET, scope="read", workspace=ws
            )
        same = plugin.ClientCredentialsAuth(
            oauth.token_url, "svc-life", SECRET, scope="read", workspace=ws, leeway=5.0
        )
        assert (await same.atoken()).access_token == (await first.atoken()).access_token
        await same.aclose()
    finally:
        await first.aclose()
        await ws.close()


# -- 4. the public token API ------------------------------------------------------------------------


async def test_token_and_atoken_return_the_token_and_its_expiry(
    oauth: OAuthServer, runtime: plugin.PluginRuntime
) -> None:
    auth = make(oauth, runtime)
    before = time.time()
    token = await auth.atoken()
    assert token.token_type.lower() == "bearer"
    assert token.authorization == f"Bearer {token.access_token}"
    # expires_in 600 minus the default leeway min(60, 10 %) = 540 s of use
    assert before + 530 < token.expires_at < time.time() + 541
    assert 530 < token.expires_in() <= 540
    assert token.access_token not in repr(token)
    assert (await asyncio.to_thread(auth.token)).access_token == token.access_token
    info = oauth.token_info(token.access_token)
    assert info is not None and info["client_id"] == "svc-life"
    await auth.aclose()


# -- 6. every failure a caller can see ------------------------------------------------------------


def test_sync_wait_past_sync_timeout_is_a_token_timeout_error_naming_the_endpoint(
    oauth: OAuthServer, runtime: plugin.PluginRuntime
) -> None:
    oauth.reset()
    oauth.set_fault(mode="none", delay_ms=3000, count=1)
    auth = make(oauth, runtime, sync_timeout=0.3)
    started = time.monotonic()
    with pytest.raises(plugin.TokenTimeoutError) as info:
        auth.token()
    assert time.monotonic() - started < 2.5
    assert oauth.token_url in str(info.value) and "sync_timeout" in str(info.value)
    assert info.value.endpoint == oauth.token_url
    assert isinstance(info.value, plugin.TokenError)
    auth.close()


async def test_use_after_close_is_auth_closed_error(
    oauth: OAuthServer, runtime: plugin.PluginRuntime
) -> None:
    auth = make(oauth, runtime)
    await auth.atoken()
    await auth.aclose()
    with pytest.raises(plugin.AuthClosedError, match="closed") as info:
        await auth.atoken()
    assert oauth.token_url in str(info.value)
    with pytest.raises(plugin.AuthClosedError):
        await asyncio.to_thread(auth.token)
    transport = httpx.MockTransport(lambda r: httpx.Response(200))
    async with httpx.AsyncClient(auth=auth, transport=transport) as client:
        with pytest.raises(plugin.AuthClosedError):
            await client.get(API)


def test_a_closed_private_runtime_is_not_event_loop_is_closed(oauth: OAuthServer) -> None:
    from tokencache.testing import FakeClock

    auth = plugin.ClientCredentialsAuth(
        oauth.token_url, "svc-life", SECRET, scope="read", clock=FakeClock()
    )
    auth.token()
    auth.close()
    with pytest.raises(plugin.AuthClosedError):
        auth.token()


@pytest.mark.parametrize(
    ("token_url", "client_id", "secret", "message"),
    [
        ("notaurl", "svc", SECRET, "absolute http or https URL"),
        ("ftp://idp.test/token", "svc", SECRET, "absolute http or https URL"),
        ("https:///token", "svc", SECRET, "absolute http or https URL"),
        ("https://idp.test:99999/token", "svc", SECRET, "not a valid URL"),
        ("https://idp.test/token#x", "svc", SECRET, "fragment"),
        ("", "svc", SECRET, "non-empty"),
        ("https://idp.test/token", "", SECRET, "client_id"),
        ("https://idp.test/token", "svc", "", "non-empty client_secret"),
    ],
)
def test_bad_arguments_fail_at_construction(
    token_url: str, client_id: str, secret: str, message: str
) -> None:
    with pytest.raises(plugin.ConfigurationError, match=message) as info:
        plugin.ClientCredentialsAuth(token_url, client_id, secret)
    if secret:
        assert secret not in str(info.value)


@pytest.mark.parametrize(
    "extra",
    [
        {"grant_type": "password"},
        {"scope": "admin"},
        {"client_secret": SECRET},
        {"client_assertion_type": "x", "audience": "api"},
    ],
)
def test_extra_params_that_the_plugin_sets_itself_fail_at_construction(
    extra: dict[str, str],
) -> None:
    # grant_type was a TypeError at the first request, scope silently replaced, and a secret
    # passed here sat in the cache key in clear.
    with pytest.raises(plugin.ConfigurationError, match="extra_params must not set") as info:
        plugin.ClientCredentialsAuth(
            "https://idp.test/token", "svc", SECRET, scope="read", extra_params=extra
        )
    assert SECRET not in str(info.value)


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"leeway": -10}, "leeway"),
        ({"leeway": "60"}, "leeway"),
        ({"sync_timeout": 0}, "sync_timeout"),
        ({"max_attempts": 0}, "max_attempts"),
        ({"token_types": "DPoP"}, "token_types"),
        ({"token_types": ["bearer", ""]}, "token_types"),
        # Before: scope=["read", 5] raised AttributeError; timeouts <= 0, NaN and inf were taken.
        ({"scope": ["read", 5]}, "scope"),
        ({"scope": 5}, "scope"),
        ({"scope": b"read"}, "scope"),
        ({"scope": [b"read"]}, "scope"),
        ({"timeout": -1}, "timeout"),
        ({"timeout": 0}, "timeout"),
        ({"timeout": float("nan")}, "timeout"),
        ({"timeout": float("inf")}, "timeout"),
        ({"timeout": "10"}, "timeout"),
        ({"timeout": True}, "timeout"),
        ({"sync_timeout": float("inf")}, "sync_timeout"),
        ({"cooldown": float("inf")}, "cooldown"),
        ({"max_retry_after": -1}, "max_retry_after"),
        ({"max_retry_after": "30"}, "max_retry_after"),
        ({"default_lifetime": 1e300}, "default_lifetime"),
    ],
)
def test_bad_options_fail_at_construction(options: dict[str, Any], message: str) -> None:
    # Before: a string leeway was a TypeError after each fetch, max_attempts=0 a ValueError at the
    # first request, token_types="DPoP" accepted d/p/o/p, sync_timeout=0 a bare TimeoutError.
    with pytest.raises(plugin.ConfigurationError, match=message):
        plugin.ClientCredentialsAuth("https://idp.test/token", "svc", SECRET, **options)


def test_token_types_empty_is_the_default_and_a_generator_is_read_once(
    oauth: OAuthServer, runtime: plugin.PluginRuntime
) -> None:
    # Before: token_types=[] fetched as bearer-only (the default) but registered as (), so it was
    # refused next to a default auth; a generator was emptied by the check and silently became
    # bearer-only (("Bearer", "DPoP") as a generator was not what the auth accepted).
    oauth.reset()
    first = make(oauth, runtime)
    try:
        first.token()
        make(oauth, runtime, token_types=[]).close()
        with pytest.raises(plugin.ConfigurationError, match="token_types"):
            make(oauth, runtime, token_types=(t for t in ("Bearer", "DPoP")))
    finally:
        first.close()
    both = make(oauth, runtime, token_types=(t for t in ("Bearer", "DPoP")))
    try:
        both.token()
        with pytest.raises(plugin.ConfigurationError, match="token_types"):
            make(oauth, runtime)
        make(oauth, runtime, token_types=["dpop", "BEARER"]).close()
    finally:
        both.close()


def test_userinfo_in_the_token_url_never_reaches_a_message(
    oauth: OAuthServer, runtime: plugin.PluginRuntime
) -> None:
    # Before: accepted; it cannot work (httpx turns it into its own Authorization header) and it
    # showed in auth.key and in httpx's INFO log. Now refused at construction, never echoed.
    for userinfo in ("user:PASSWORD-IN-URL@", "PASSWORD-IN-URL@", "user:PASSWORD-IN-URL:x@"):
        url = oauth.token_url.replace("://", f"://{userinfo}")
        with pytest.raises(plugin.ConfigurationError, match="userinfo") as info:
            plugin.ClientCredentialsAuth(url, "svc-life", SECRET, scope="read", runtime=runtime)
        assert "PASSWORD-IN-URL" not in str(info.value) and SECRET not in str(info.value)
    # A query stays allowed but never reaches a message either.
    url = oauth.token_url + "?k=QUERY-SECRET"
    auth = plugin.ClientCredentialsAuth(url, "svc-life", "wrong", scope="read", runtime=runtime)
    with pytest.raises(plugin.InvalidClientError) as refused:
        auth.token()
    assert "QUERY-SECRET" not in str(refused.value)
    assert oauth.token_url in str(refused.value)
    auth.close()


@pytest.mark.parametrize(
    ("body", "message"),
    [
        ({"access_token": "", "token_type": "Bearer", "expires_in": 60}, "no access_token"),
        ({"access_token": 17, "token_type": "Bearer", "expires_in": 60}, "no access_token"),
        ({"token_type": "Bearer", "expires_in": 60}, "no access_token"),
        ({"access_token": "tok-zero", "token_type": "Bearer", "expires_in": 0}, "expires_in"),
        ({"access_token": "tok-neg", "token_type": "Bearer", "expires_in": -5}, "expires_in"),
        ({"access_token": "tok-dpop", "token_type": "DPoP", "expires_in": 60}, "token_type"),
        ({"access_token": "tok-mac", "token_type": "mac", "expires_in": 60}, "token_type"),
    ],
)
def test_unusable_token_responses_are_token_response_errors(
    oauth: OAuthServer, runtime: plugin.PluginRuntime, body: dict[str, Any], message: str
) -> None:
    oauth.reset()
    oauth.set_fault(mode="body", body=body)
    auth = make(oauth, runtime, cooldown=0)
    try:
        with pytest.raises(plugin.TokenResponseError, match=message) as info:
            auth.token()
        assert oauth.token_url in str(info.value)
        if str(body.get("access_token", "")).startswith("tok-"):
            assert str(body["access_token"]) not in str(info.value)
        assert oauth.token_requests() == 1  # a bad body is final: not retried
    finally:
        oauth.clear_fault()
        auth.close()


def test_a_dpop_token_type_is_used_when_the_caller_opts_in(
    oauth: OAuthServer, runtime: plugin.PluginRuntime
) -> None:
    oauth.set_fault(
        mode="body", body={"access_token": "tok-dpop", "token_type": "DPoP", "expires_in": 60}
    )
    auth = make(oauth, runtime, token_types=("Bearer", "DPoP"))
    try:
        token = auth.token()
        assert token.authorization == "DPoP tok-dpop"
    finally:
        oauth.clear_fault()
        auth.close()


def test_a_response_without_token_type_is_bearer_and_only_bearer(
    oauth: OAuthServer, runtime: plugin.PluginRuntime
) -> None:
    # docs/plugin.md "Token type": lenient interop on a missing token_type (RFC 6749 5.1 says
    # REQUIRED), never more than Bearer.
    oauth.reset()
    oauth.set_fault(mode="body", body={"access_token": "tok-untyped", "expires_in": 60})
    auth = make(oauth, runtime)
    dpop_only = make(oauth, runtime, token_types=("DPoP",), group_name="dpop-only", cooldown=0)
    try:
        assert auth.token().authorization == "Bearer tok-untyped"
        with pytest.raises(plugin.TokenResponseError, match="token_type"):
            dpop_only.token()
    finally:
        oauth.clear_fault()
        auth.close()
        dpop_only.close()


@pytest.mark.parametrize(
    ("fault", "options", "error", "kind"),
    [
        ({"status": 429, "retry_after": 1}, {}, plugin.TokenThrottledError, "throttled"),
        ({"status": 503}, {}, plugin.TokenServerError, "server_error"),
        ({"mode": "reset"}, {}, plugin.TokenConnectionError, "connection"),
        ({"mode": "none", "delay_ms": 2000}, {"timeout": 0.3}, plugin.TokenTimeoutError, "timeout"),
        (None, {"scope": "admin"}, plugin.InvalidScopeError, "invalid_scope"),
        (None, {"client_secret": "wrong-MARKER-9f1e"}, plugin.InvalidClientError, "invalid_client"),
    ],
)
def test_each_token_endpoint_failure_has_its_class_kind_and_a_message_naming_the_endpoint(
    oauth: OAuthServer,
    runtime: plugin.PluginRuntime,
    fault: dict[str, Any] | None,
    options: dict[str, Any],
    error: type[plugin.TokenError],
    kind: str,
) -> None:
    oauth.reset()
    if fault is not None:
        oauth.set_fault(**fault)
    auth = make(oauth, runtime, max_attempts=1, cooldown=0, **options)
    try:
        with pytest.raises(error) as info:
            auth.token()
    finally:
        oauth.clear_fault()
        auth.close()
    exc = info.value
    assert type(exc) is error and exc.kind == kind
    assert exc.endpoint == oauth.token_url and oauth.token_url in str(exc)
    if isinstance(exc, plugin.TokenRejectedError):
        assert "svc-life" in str(exc)
    for secret in (SECRET, "wrong-MARKER-9f1e"):
        assert secret not in str(exc) and secret not in repr(exc)
    if error is plugin.TokenThrottledError:
        assert exc.retry_after == 1  # type: ignore[attr-defined]


def test_debug_logs_name_fetch_refresh_and_failure_cooldown_without_secrets(
    oauth: OAuthServer, runtime: plugin.PluginRuntime, caplog: pytest.LogCaptureFixture
) -> None:
    oauth.reset()
    # A first token that lives 2 s with refresh_fraction near 1: due for a refresh at once.
    short = {"access_token": "tok-short-MARKER", "token_type": "Bearer", "expires_in": 2}
    oauth.set_fault(mode="body", body=short, count=1)
    with caplog.at_level(logging.DEBUG, logger="tokencache.plugin.oauth2"):
        auth = make(oauth, runtime, refresh_fraction=0.99)
        first = auth.token()
        time.sleep(0.1)
        auth.token()
        oauth.wait_for_token_requests(2)
        deadline = time.monotonic() + 5
        while "refreshed ahead" not in caplog.text and time.monotonic() < deadline:
            time.sleep(0.02)
        auth.close()
        wrong = make(oauth, runtime, client_secret="wrong-MARKER-9f1e", cooldown=30)
        for _ in range(2):
            with pytest.raises(plugin.InvalidClientError):
                wrong.token()
        wrong.close()
    text = caplog.text
    assert "fetching a token for client 'svc-life'" in text
    assert "ahead of expiry" in text and "refreshed ahead" in text
    assert "failure cooldown: invalid_client" in text
    assert SECRET not in text and "wrong-MARKER-9f1e" not in text
    assert first.access_token not in text


def _handshake_with_a_capath_ca(client: ssl.SSLContext, ca: trustme.CA) -> None:
    """One TLS handshake of ``client`` with a server whose certificate ``ca`` issued."""
    import socket

    server = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ca.issue_cert("localhost").configure_cert(server)
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen()

        def serve() -> None:
            conn, _ = listener.accept()
            with server.wrap_socket(conn, server_side=True) as tls:
                tls.recv(1)

        thread = threading.Thread(target=serve)
        thread.start()
        with (
            socket.create_connection(listener.getsockname()) as raw,
            client.wrap_socket(raw, server_hostname="localhost") as tls,
        ):
            tls.sendall(b"x")
        thread.join(10)


def test_one_ssl_context_object_shared_by_auths_stays_equal_after_its_first_handshake(
    oauth: OAuthServer, runtime: plugin.PluginRuntime, tmp_path: Path
) -> None:
    # Review 13c: options compared only by fingerprint refused a second auth built with the very
    # same context object once a handshake had loaded its capath anchor into the store (OpenSSL
    # loads those lazily); identity shared it before, and an identical object is the same settings.
    import subprocess

    oauth.reset()
    ca = trustme.CA()
    pem = tmp_path / "ca.pem"
    pem.write_bytes(ca.cert_pem.bytes())
    digest = subprocess.run(
        ["openssl", "x509", "-hash", "-noout", "-in", str(pem)],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    pem.rename(tmp_path / f"{digest}.0")
    context = ssl.create_default_context(capath=str(tmp_path))
    transport = httpx.AsyncHTTPTransport(verify=context)
    first = make(oauth, runtime, ssl_context=context)
    with_transport = make(oauth, runtime, "svc-401", token_transport=transport)
    assert first.token().access_token and with_transport.token().access_token
    assert context.cert_store_stats()["x509_ca"] == 0
    _handshake_with_a_capath_ca(context, ca)
    assert context.cert_store_stats()["x509_ca"] == 1  # what the context shows changed
    second = make(oauth, runtime, ssl_context=context)
    assert second.token().access_token == first.token().access_token
    make(oauth, runtime, "svc-401", token_transport=transport).close()
    assert oauth.token_requests() == 2
    # Another capath context shows nothing of what it trusts until its own first handshake (it
    # could trust another directory: review 13c), so it equals only itself: refused while the
    # first registration lives; one with other trust anchors (cadata) is refused too.
    other_dir = tmp_path / "other"
    other_dir.mkdir()
    with pytest.raises(plugin.ConfigurationError, match="ssl_context"):
        make(oauth, runtime, ssl_context=ssl.create_default_context(capath=str(other_dir)))
    with pytest.raises(plugin.ConfigurationError, match="ssl_context"):
        make(oauth, runtime, ssl_context=ssl.create_default_context(capath=str(tmp_path)))
    other = ssl.create_default_context(cadata=trustme.CA().cert_pem.bytes().decode())
    with pytest.raises(plugin.ConfigurationError, match="ssl_context"):
        make(oauth, runtime, ssl_context=other)
    for auth in (first, second, with_transport):
        auth.close()


def test_per_request_auths_still_refresh_ahead(
    oauth: OAuthServer, runtime: plugin.PluginRuntime
) -> None:
    # Review 13c: the last auth collected drops the local copy; the next auth read the token from
    # the cluster without looking at its refresh window, so with one auth per request a token was
    # never refreshed ahead: it expired and the request that found it expired waited for a fetch.
    oauth.reset()
    first = make(oauth, runtime, refresh_fraction=0.999)  # the window opens ~0.6 s after a fetch
    assert first.token().access_token
    key, cache = first.key, first.token_cache
    del first
    gc.collect()
    deadline = time.monotonic() + 5
    while cache.registered(key) and time.monotonic() < deadline:
        time.sleep(0.01)
    assert not cache.registered(key)
    time.sleep(1.0)
    second = make(oauth, runtime, refresh_fraction=0.999)
    assert second.token().access_token
    assert oauth.wait_for_token_requests(2, within=5) == 2  # refreshed in the background
    second.close()


def test_a_refresh_cut_short_by_collecting_the_last_auth_leaves_no_failure_cooldown(
    oauth: OAuthServer, runtime: plugin.PluginRuntime
) -> None:
    # Review 13c: the last auth collected while its background refresh was in flight closed the
    # token client under the fetch ("client closed"); that failure started the failure cooldown,
    # which outlives the registration, so the next auth got TokenConnectionError from a healthy
    # endpoint for `cooldown` seconds once the token had expired.
    oauth.reset()
    options: dict[str, Any] = {"refresh_fraction": 0.999, "cooldown": 30}
    first = make(oauth, runtime, **options)
    assert first.token().access_token
    key, cache = first.key, first.token_cache
    time.sleep(1.0)  # in the refresh window
    oauth.set_fault(mode="none", delay_ms=1500)
    try:
        assert first.token().access_token  # starts the background refresh
        oauth.wait_for_token_requests(2)
        del first
        gc.collect()
        deadline = time.monotonic() + 10
        while (cache.registered(key) or cache.background) and time.monotonic() < deadline:
            time.sleep(0.01)
        assert not cache.background
    finally:
        oauth.clear_fault()
    cache.check_cooldown(key)  # raised TokenConnectionError before
