"""Pure parts of the OAuth2 plugin: keys, token parsing, the token request, retries (fake sender)."""

from __future__ import annotations

import base64
import json
import logging
import random
import urllib.parse
from collections.abc import Mapping

import pytest

from tokencache import plugin
from tokencache.plugin._token import (
    MAX_LIFETIME,
    cache_ttl,
    default_leeway,
    parse_token,
    rejection,
    retry_after,
)

SECRET = "MARKER-SECRET-5f1e"
EP = "https://idp.example/token"


def creds(**kw: object) -> plugin.Credentials:
    params: dict[str, object] = {
        "token_url": "https://idp.example/token",
        "client_id": "svc",
        "client_secret": SECRET,
        "scope": "write read",
    }
    params.update(kw)
    return plugin.Credentials.build(**params)  # type: ignore[arg-type]


# -- keys -----------------------------------------------------------------------------------------


def test_key_names_endpoint_client_sorted_scopes_extras_and_fingerprint_not_secret() -> None:
    c = creds(extra_params={"resource": "r1", "audience": "api"})
    data = json.loads(c.key)
    assert data[1:4] == ["https://idp.example/token", "svc", ["read", "write"]]
    assert data[4] == [["audience", "api"], ["resource", "r1"]]
    assert data[0] == "oauth2/v2"
    assert len(data[6]) == 64
    assert SECRET not in c.key
    assert SECRET not in repr(c)


def test_key_ignores_scope_order_and_duplicates() -> None:
    assert creds(scope="read write").key == creds(scope=["write", "read", "read"]).key


@pytest.mark.parametrize(
    "change",
    [
        {"client_secret": "other"},
        {"client_id": "svc2"},
        {"scope": "read"},
        {"extra_params": {"audience": "x"}},
        {"token_url": "https://idp.example/other"},
        {"auth_method": "client_secret_post"},
    ],
)
def test_any_credential_difference_gives_another_key(change: dict[str, object]) -> None:
    assert creds(**change).key != creds().key


@pytest.mark.parametrize("key", [None, plugin.fingerprint_key("cluster-secret")])
def test_fingerprint_is_bound_to_client_id_and_length_prefixed(key: bytes | None) -> None:
    fp = plugin.secret_fingerprint
    assert fp("ab", "c", key=key) != fp("a", "bc", key=key)
    assert fp("a", "s", key=key) != fp("b", "s", key=key)
    assert fp("a", "s", token_url="u1", key=key) != fp("a", "s", token_url="u2", key=key)
    assert len(fp("a", "s", key=key)) == 64


# -- token responses --------------------------------------------------------------------------------


def test_token_round_trips_and_hides_itself() -> None:
    tok = plugin.Token("abc", "bearer", 3600.0)
    assert plugin.Token.decode(tok.encode()) == tok
    assert tok.authorization == "Bearer abc"
    assert "abc" not in repr(tok)


def test_parse_token_reads_expires_in() -> None:
    body = json.dumps({"access_token": "t", "token_type": "Bearer", "expires_in": 120}).encode()
    assert parse_token(body, default_lifetime=5, client_id="svc", endpoint=EP) == plugin.Token(
        "t", "Bearer", 120
    )


def test_missing_expires_in_takes_default_and_says_why(caplog: pytest.LogCaptureFixture) -> None:
    data: dict[str, object] = {"access_token": "TOKEN-VALUE-xyz", "token_type": "bearer"}
    with caplog.at_level(logging.DEBUG):
        tok = parse_token(
            json.dumps(data).encode(), default_lifetime=77, client_id="svc", endpoint=EP
        )
    assert tok.lifetime == 77
    assert "expires_in missing" in caplog.text
    assert "default lifetime" in caplog.text
    assert "TOKEN-VALUE-xyz" not in caplog.text


@pytest.mark.parametrize(
    "expires_in",
    [
        *("soon", -3, 0, "0", True, False, 1e400, pytest.param(10**400, id="10**400")),
        *([5], {"s": 5}),
        *(float("nan"), float("-inf"), "nan", "inf", "-1", ""),
    ],
)
def test_expires_in_zero_negative_or_garbage_is_a_response_error_not_300s(
    expires_in: object,
) -> None:
    # json.dumps writes NaN / -Infinity literals, which json.loads (and some servers) accept.
    body = json.dumps({"access_token": "TOKEN-VALUE-xyz", "expires_in": expires_in}).encode()
    with pytest.raises(plugin.TokenResponseError, match="expires_in") as info:
        parse_token(body, default_lifetime=300, client_id="svc", endpoint=EP)
    assert EP in str(info.value)
    assert "TOKEN-VALUE-xyz" not in str(info.value)


@pytest.mark.parametrize(
    ("expires_in", "lifetime"),
    [
        *((1e300, MAX_LIFETIME), ("1e300", MAX_LIFETIME), (86401, MAX_LIFETIME)),
        *((MAX_LIFETIME, MAX_LIFETIME), ("3599", 3599.0), (1.5, 1.5)),
    ],
)
def test_an_absurd_expires_in_is_capped_to_max_lifetime(
    expires_in: object, lifetime: float, caplog: pytest.LogCaptureFixture
) -> None:
    # Before: 1e300 was cached as given (a token kept for ever, TTL arithmetic near overflow).
    # A numeric string is accepted as some servers (Azure AD v1) send "3599".
    body = json.dumps({"access_token": "TOKEN-VALUE-xyz", "expires_in": expires_in}).encode()
    with caplog.at_level(logging.WARNING, logger="tokencache.plugin.oauth2"):
        tok = parse_token(body, default_lifetime=300, client_id="svc", endpoint=EP)
    assert tok.lifetime == lifetime
    assert ("capped" in caplog.text) == (lifetime == MAX_LIFETIME and expires_in != MAX_LIFETIME)
    assert "TOKEN-VALUE-xyz" not in caplog.text
    assert cache_ttl(1e300, None) == MAX_LIFETIME - 60 and cache_ttl(1e300, 0) == MAX_LIFETIME


@pytest.mark.parametrize(
    "body",
    [
        b"not json",
        b"[]",
        b'{"token_type": "bearer"}',
        b'{"access_token": "", "token_type": "bearer"}',
        b'{"access_token": "   ", "token_type": "bearer"}',
        b'{"access_token": 12, "token_type": "bearer"}',
        b'{"access_token": "a b", "token_type": "bearer"}',
        b'{"access_token": "a\\r\\nX-Evil: 1", "token_type": "bearer"}',
        b"\xff\xfe",
    ],
)
def test_unusable_2xx_body_is_a_response_error_naming_the_endpoint(body: bytes) -> None:
    with pytest.raises(plugin.TokenResponseError) as info:
        parse_token(body, default_lifetime=5, client_id="svc", endpoint=EP)
    assert info.value.endpoint == EP
    assert EP in str(info.value)


@pytest.mark.parametrize("token_type", ["DPoP", "mac", "N_A", "", 7])
def test_token_type_other_than_bearer_is_an_error_unless_accepted(token_type: object) -> None:
    body = json.dumps({"access_token": "tok", "token_type": token_type, "expires_in": 60}).encode()
    with pytest.raises(plugin.TokenResponseError, match="token_type"):
        parse_token(body, default_lifetime=5, client_id="svc", endpoint=EP)
    if token_type == "DPoP":
        tok = parse_token(
            body, default_lifetime=5, client_id="svc", endpoint=EP, token_types=("dpop",)
        )
        assert tok.authorization == "DPoP tok"


@pytest.mark.parametrize("token_type", ["bearer", "Bearer", "BEARER", None])
def test_bearer_in_any_case_or_missing_is_sent_as_bearer(token_type: str | None) -> None:
    data: dict[str, object] = {"access_token": "tok", "expires_in": 60}
    if token_type is not None:
        data["token_type"] = token_type
    tok = parse_token(json.dumps(data).encode(), default_lifetime=5, client_id="svc", endpoint=EP)
    assert tok.authorization == "Bearer tok"


def test_a_missing_token_type_is_only_ever_bearer(caplog: pytest.LogCaptureFixture) -> None:
    # docs/plugin.md "Token type": lenient on a missing token_type (RFC 6749 5.1 requires it),
    # as Bearer only: a caller whose token_types leave Bearer out gets a TokenResponseError.
    body = json.dumps({"access_token": "tok", "expires_in": 60}).encode()
    with caplog.at_level(logging.DEBUG, logger="tokencache.plugin.oauth2"):
        tok = parse_token(body, default_lifetime=5, client_id="svc", endpoint=EP)
    assert (tok.token_type, tok.authorization) == ("Bearer", "Bearer tok")
    assert "no token_type" in caplog.text
    with pytest.raises(plugin.TokenResponseError, match="token_type"):
        parse_token(body, default_lifetime=5, client_id="svc", endpoint=EP, token_types=("dpop",))


def test_leeway_default_is_min_of_60s_and_10_percent() -> None:
    assert default_leeway(3600) == 60
    assert default_leeway(100) == 10
    assert cache_ttl(100, None) == 90
    assert cache_ttl(100, 5) == 95
    assert cache_ttl(3, 10) == 0


@pytest.mark.parametrize(
    ("error", "cls"),
    [
        ("invalid_client", plugin.InvalidClientError),
        ("invalid_scope", plugin.InvalidScopeError),
        ("unauthorized_client", plugin.UnauthorizedClientError),
        ("invalid_grant", plugin.InvalidRequestError),
    ],
)
def test_rejection_maps_oauth_error_and_scrubs_the_secret(
    error: str, cls: type[plugin.TokenError]
) -> None:
    body = json.dumps({"error": error, "error_description": f"bad secret {SECRET}"}).encode()
    exc = rejection(400, body, client_id="svc", secret=SECRET, endpoint=EP)
    assert type(exc) is cls
    assert EP in str(exc)
    assert exc.endpoint == EP
    assert exc.error == error
    assert exc.error_description == "bad secret <hidden>"
    assert exc.status == 400
    assert SECRET not in str(exc)
    assert error in str(exc)


def test_bare_401_from_token_endpoint_is_invalid_client() -> None:
    exc = rejection(401, b"", client_id="svc", secret=SECRET, endpoint=EP)
    assert isinstance(exc, plugin.InvalidClientError)
    assert exc.error is None


def test_retry_after_seconds_and_http_date() -> None:
    assert retry_after({"retry-after": "7"}, now_epoch=0) == 7
    date = "Thu, 01 Jan 1970 00:00:30 GMT"
    assert retry_after({"retry-after": date}, now_epoch=10) == 20
    assert retry_after({"retry-after": "garbage"}, now_epoch=0) is None
    assert retry_after({}, now_epoch=0) is None


# -- the token request (authlib) --------------------------------------------------------------------


def form(req: plugin.TokenRequest) -> dict[str, str]:
    return dict(urllib.parse.parse_qsl(req.body.decode()))


def test_basic_auth_request_carries_grant_scope_extras() -> None:
    req = plugin.build_token_request(creds(extra_params={"audience": "api"}))
    expected = base64.b64encode(f"svc:{SECRET}".encode()).decode()
    assert req.headers["Authorization"] == f"Basic {expected}"
    assert form(req) == {
        "grant_type": "client_credentials",
        "scope": "read write",
        "audience": "api",
    }
    assert SECRET not in repr(req)


def test_post_auth_request_puts_credentials_in_body() -> None:
    req = plugin.build_token_request(creds(auth_method="client_secret_post"))
    assert "Authorization" not in req.headers
    assert form(req)["client_id"] == "svc"
    assert form(req)["client_secret"] == SECRET


def test_private_key_jwt_request_sends_an_assertion_not_the_key() -> None:
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import rsa

    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    ).decode()
    req = plugin.build_token_request(creds(client_secret=pem, auth_method="private_key_jwt"))
    body = form(req)
    assert body["client_assertion_type"].endswith("jwt-bearer")
    assert body["client_assertion"].count(".") == 2
    assert "PRIVATE KEY" not in req.body.decode()


def test_unknown_auth_method_is_a_configuration_error() -> None:
    with pytest.raises(plugin.ConfigurationError, match="unknown auth_method"):
        creds(auth_method="client_secret_magic")
    with pytest.raises(plugin.ConfigurationError, match="client certificate"):
        creds(auth_method="tls_client_auth")


# -- retries (a scripted sender, a recording sleep) ----------------------------------------------------


class ScriptedSender:
    def __init__(self, answers: list[plugin.TokenHttpResponse | Exception]) -> None:
        self.answers = answers
        self.sent = 0

    async def send(self, request: plugin.TokenRequest) -> plugin.TokenHttpResponse:
        answer = self.answers[min(self.sent, len(self.answers) - 1)]
        self.sent += 1
        if isinstance(answer, Exception):
            raise answer
        return answer

    async def aclose(self) -> None:
        return None


def ok(token: str = "t") -> plugin.TokenHttpResponse:
    return plugin.TokenHttpResponse(
        200, {}, json.dumps({"access_token": token, "expires_in": 60}).encode()
    )


def status(code: int, headers: Mapping[str, str] | None = None) -> plugin.TokenHttpResponse:
    return plugin.TokenHttpResponse(
        code, dict(headers or {}), b'{"error": "temporarily_unavailable"}'
    )


def fetcher(sender: ScriptedSender, sleeps: list[float], **kw: object) -> plugin.TokenFetcher:
    async def sleep(seconds: float) -> None:
        sleeps.append(seconds)

    return plugin.TokenFetcher(
        creds(),
        sender,
        sleep=sleep,
        rng=random.Random(1),
        wall_clock=lambda: 0.0,
        **kw,  # type: ignore[arg-type]
    )


async def test_5xx_is_retried_with_backoff_then_succeeds() -> None:
    sleeps: list[float] = []
    sender = ScriptedSender([status(503), status(500), ok("fresh")])
    tok = await fetcher(sender, sleeps).fetch()
    assert tok.access_token == "fresh"
    assert sender.sent == 3
    assert len(sleeps) == 2
    assert 0.1 <= sleeps[0] <= 0.2 and 0.2 <= sleeps[1] <= 0.4  # exponential, jittered


async def test_429_retry_after_is_honoured() -> None:
    sleeps: list[float] = []
    sender = ScriptedSender([status(429, {"retry-after": "3"}), ok()])
    await fetcher(sender, sleeps).fetch()
    assert sleeps == [3.0]


async def test_retry_after_beyond_the_cap_stops_at_once() -> None:
    sleeps: list[float] = []
    sender = ScriptedSender([status(429, {"retry-after": "120"}), ok()])
    with pytest.raises(plugin.TokenThrottledError) as info:
        await fetcher(sender, sleeps, max_retry_after=30).fetch()
    assert sender.sent == 1
    assert sleeps == []
    assert info.value.retry_after == 120


async def test_retries_are_bounded_and_the_last_error_is_raised() -> None:
    sleeps: list[float] = []
    sender = ScriptedSender([status(503)])
    with pytest.raises(plugin.TokenServerError) as info:
        await fetcher(sender, sleeps, max_attempts=4).fetch()
    assert sender.sent == 4
    assert len(sleeps) == 3
    assert info.value.status == 503


@pytest.mark.parametrize(
    "failure",
    [plugin.TokenTimeoutError("timed out"), plugin.TokenConnectionError("refused")],
)
async def test_timeouts_and_connection_errors_are_retried(failure: Exception) -> None:
    sleeps: list[float] = []
    sender = ScriptedSender([failure, ok()])
    assert (await fetcher(sender, sleeps).fetch()).access_token == "t"
    assert sender.sent == 2


async def test_4xx_is_final_and_not_retried() -> None:
    sleeps: list[float] = []
    body = json.dumps({"error": "invalid_scope", "error_description": "nope"}).encode()
    sender = ScriptedSender([plugin.TokenHttpResponse(400, {}, body), ok()])
    with pytest.raises(plugin.InvalidScopeError) as info:
        await fetcher(sender, sleeps).fetch()
    assert sender.sent == 1
    assert sleeps == []
    assert info.value.error_description == "nope"
