"""The OAuth2 test harness is a real authorization server: plain httpx against real processes.

Each test starts its own oidc-provider process on 127.0.0.1 through the fixtures (stopped by PID
at teardown), so counters and faults never leak between tests.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import os
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from tests.support.oauth_fixtures import DEFAULT_CLIENTS, OAuthServerFactory
from tests.support.oauth_fixtures import oauth_server as oauth_server
from tests.support.oauth_fixtures import oauth_server_factory as oauth_server_factory
from tests.support.oauth_server import OAuthClient, OAuthServer, OAuthServerError

pytestmark = pytest.mark.slow

BASIC, POST = DEFAULT_CLIENTS  # svc-basic (client_secret_basic), svc-post (client_secret_post)
GRANT = {"grant_type": "client_credentials"}


@pytest.fixture
def http() -> Iterator[httpx.Client]:
    # trust_env=False: no proxy from the environment between the test and loopback.
    with httpx.Client(trust_env=False, timeout=10.0) as client:
        yield client


def basic_token(http: httpx.Client, server: OAuthServer, **form: str) -> httpx.Response:
    return http.post(server.token_url, data=GRANT | form, auth=(BASIC.client_id, BASIC.secret))


def post_token(http: httpx.Client, server: OAuthServer, **form: str) -> httpx.Response:
    data = GRANT | {"client_id": POST.client_id, "client_secret": POST.secret} | form
    return http.post(server.token_url, data=data)


def basic_token_with_timeout(
    http: httpx.Client, server: OAuthServer, read_timeout: float
) -> httpx.Response:
    return http.post(
        server.token_url,
        data=GRANT,
        auth=(BASIC.client_id, BASIC.secret),
        timeout=httpx.Timeout(10.0, read=read_timeout),
    )


def jwt_claims(token: str) -> dict[str, Any]:
    payload = token.split(".")[1]
    claims: dict[str, Any] = json.loads(
        base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4))
    )
    return claims


def test_basic_auth_client_gets_a_bearer_token(
    http: httpx.Client, oauth_server: OAuthServer
) -> None:
    reply = basic_token(http, oauth_server, scope="read write")

    assert reply.status_code == 200
    body = reply.json()
    assert body["token_type"] == "Bearer"
    assert body["access_token"]
    assert body["scope"] == "read write"
    assert body["expires_in"] == 3600
    assert reply.headers["cache-control"] == "no-store"


def test_post_auth_client_gets_a_token(http: httpx.Client, oauth_server: OAuthServer) -> None:
    reply = post_token(http, oauth_server, scope="read")

    assert reply.status_code == 200
    assert reply.json()["access_token"]
    assert reply.json()["scope"] == "read"


def test_tokens_are_fresh_per_request(http: httpx.Client, oauth_server: OAuthServer) -> None:
    first = basic_token(http, oauth_server).json()["access_token"]
    second = basic_token(http, oauth_server).json()["access_token"]

    assert first != second


def test_expires_in_is_the_configured_lifetime(
    http: httpx.Client, oauth_server_factory: OAuthServerFactory
) -> None:
    server = oauth_server_factory(token_ttl=1234)

    assert basic_token(http, server).json()["expires_in"] == 1234
    assert post_token(http, server).json()["expires_in"] == 1234


def test_wrong_secret_is_invalid_client(http: httpx.Client, oauth_server: OAuthServer) -> None:
    reply = http.post(oauth_server.token_url, data=GRANT, auth=(BASIC.client_id, "not-the-secret"))

    assert reply.status_code == 401
    assert reply.json()["error"] == "invalid_client"
    assert "Basic" in reply.headers["www-authenticate"]


def test_unknown_client_is_invalid_client(http: httpx.Client, oauth_server: OAuthServer) -> None:
    reply = http.post(oauth_server.token_url, data=GRANT, auth=("nobody", "whatever"))

    assert reply.status_code == 401
    assert reply.json()["error"] == "invalid_client"


def test_unknown_scope_is_invalid_scope(http: httpx.Client, oauth_server: OAuthServer) -> None:
    reply = basic_token(http, oauth_server, scope="read admin")

    assert reply.status_code == 400
    assert reply.json()["error"] == "invalid_scope"


def test_scope_of_another_client_is_invalid_scope(
    http: httpx.Client, oauth_server: OAuthServer
) -> None:
    reply = post_token(http, oauth_server, scope="write")  # only svc-basic may ask for write

    assert reply.status_code == 400
    assert reply.json()["error"] == "invalid_scope"


def test_registered_auth_method_is_enforced(http: httpx.Client, oauth_server: OAuthServer) -> None:
    basic_for_post_client = http.post(
        oauth_server.token_url, data=GRANT, auth=(POST.client_id, POST.secret)
    )
    post_for_basic_client = http.post(
        oauth_server.token_url,
        data=GRANT | {"client_id": BASIC.client_id, "client_secret": BASIC.secret},
    )

    assert basic_for_post_client.status_code == 401
    assert basic_for_post_client.json()["error"] == "invalid_client"
    assert post_for_basic_client.status_code == 401
    assert post_for_basic_client.json()["error"] == "invalid_client"


def test_auth_method_can_be_lenient(
    http: httpx.Client, oauth_server_factory: OAuthServerFactory
) -> None:
    server = oauth_server_factory(enforce_auth_method=False)

    reply = http.post(server.token_url, data=GRANT, auth=(POST.client_id, POST.secret))

    assert reply.status_code == 200


def test_counter_counts_per_client_and_outcome(
    http: httpx.Client, oauth_server: OAuthServer
) -> None:
    assert oauth_server.token_requests() == 0

    basic_token(http, oauth_server)
    basic_token(http, oauth_server)
    post_token(http, oauth_server)
    post_token(http, oauth_server, scope="admin")  # rejected, still a request

    assert oauth_server.token_requests() == 4
    assert oauth_server.token_requests_by_client() == {"svc-basic": 2, "svc-post": 2}
    stats = oauth_server.stats()
    assert stats["issued"] == 3
    assert stats["issued_by_client"] == {"svc-basic": 2, "svc-post": 1}
    assert stats["rejected"] == 1
    assert stats["faulted"] == 0
    assert stats["in_flight"] == 0

    oauth_server.reset()
    assert oauth_server.token_requests() == 0
    assert oauth_server.token_requests_by_client() == {}


def test_other_endpoints_are_not_counted(http: httpx.Client, oauth_server: OAuthServer) -> None:
    discovery = http.get(f"{oauth_server.issuer}/.well-known/openid-configuration")

    assert discovery.status_code == 200
    assert discovery.json()["token_endpoint"] == oauth_server.token_url
    assert discovery.json()["issuer"] == oauth_server.issuer
    assert oauth_server.token_requests() == 0


def test_fault_429_answers_with_retry_after_and_is_counted(
    http: httpx.Client, oauth_server: OAuthServer
) -> None:
    armed = oauth_server.set_fault(status=429, retry_after=7)
    assert armed["mode"] == "status"

    basic = basic_token(http, oauth_server)
    post = post_token(http, oauth_server)

    for reply in (basic, post):
        assert reply.status_code == 429
        assert reply.headers["retry-after"] == "7"
        assert reply.headers["content-type"].startswith("application/json")
        assert reply.json()["error"] == "temporarily_unavailable"
        assert "access_token" not in reply.json()
    stats = oauth_server.stats()
    assert stats["token_requests"] == 2
    assert stats["faulted"] == 2
    assert stats["faulted_by_client"] == {"svc-basic": 1, "svc-post": 1}
    assert stats["issued"] == 0

    oauth_server.clear_fault()
    assert basic_token(http, oauth_server).status_code == 200
    assert oauth_server.faulted_requests() == 2


@pytest.mark.parametrize(
    ("status", "error"), [(500, "server_error"), (503, "temporarily_unavailable")]
)
def test_fault_5xx_for_a_counted_number_of_requests(
    http: httpx.Client, oauth_server: OAuthServer, status: int, error: str
) -> None:
    oauth_server.set_fault(status=status, count=2)

    replies = [basic_token(http, oauth_server) for _ in range(3)]

    assert [r.status_code for r in replies] == [status, status, 200]
    assert replies[0].json()["error"] == error
    assert "retry-after" not in replies[0].headers
    assert oauth_server.faulted_requests() == 2
    assert oauth_server.token_requests() == 3


def test_fault_delay_holds_the_request(http: httpx.Client, oauth_server: OAuthServer) -> None:
    # A minute of delay against a half-second read timeout: the outcome does not depend on speed.
    oauth_server.set_fault(mode="none", delay_ms=60_000)

    with pytest.raises(httpx.ReadTimeout):
        basic_token_with_timeout(http, oauth_server, read_timeout=0.5)

    assert oauth_server.wait_for_token_requests(1) == 1
    stats = oauth_server.stats()
    assert stats["in_flight"] == 1
    assert stats["issued"] == 0
    assert stats["faulted"] == 0  # a delay alone answers normally in the end


async def test_async_wait_sees_a_request_the_event_loop_sent(oauth_server: OAuthServer) -> None:
    # The request is sent by a task on this loop, so waiting must not block the loop.
    oauth_server.set_fault(mode="none", delay_ms=60_000)
    async with httpx.AsyncClient(trust_env=False, timeout=10.0) as client:
        pending = asyncio.create_task(
            client.post(oauth_server.token_url, data=GRANT, auth=(BASIC.client_id, BASIC.secret))
        )
        try:
            assert await oauth_server.await_token_requests(1) == 1
            stats = await asyncio.to_thread(oauth_server.stats)
            assert stats["in_flight"] == 1
            assert stats["by_client"] == {"svc-basic": 1}
            assert not pending.done()
        finally:
            pending.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await pending


def test_wait_for_token_requests_gives_up_when_none_arrive(oauth_server: OAuthServer) -> None:
    with pytest.raises(OAuthServerError, match="wanted 1"):
        oauth_server.wait_for_token_requests(1, within=0.2)


def test_fault_reset_drops_the_connection(http: httpx.Client, oauth_server: OAuthServer) -> None:
    oauth_server.set_fault(mode="reset", count=1)

    with pytest.raises(httpx.RemoteProtocolError):
        basic_token(http, oauth_server)

    assert basic_token(http, oauth_server).status_code == 200
    assert oauth_server.faulted_requests() == 1


def test_bad_fault_is_refused(oauth_server: OAuthServer) -> None:
    with pytest.raises(OAuthServerError, match="status must be"):
        oauth_server.set_fault(status=200)


def test_stop_refuses_connections_and_restart_serves_again(
    http: httpx.Client, oauth_server: OAuthServer
) -> None:
    port = oauth_server.port
    assert basic_token(http, oauth_server).status_code == 200

    oauth_server.stop()
    assert not oauth_server.running
    with pytest.raises(httpx.ConnectError):
        basic_token(http, oauth_server)

    oauth_server.restart()
    assert oauth_server.port == port
    reply = basic_token(http, oauth_server)
    assert reply.status_code == 200
    assert reply.json()["expires_in"] == 3600
    assert oauth_server.token_requests() == 1  # a restarted server starts counting afresh


def test_restart_while_running_keeps_the_port(
    http: httpx.Client, oauth_server: OAuthServer
) -> None:
    old_pid, port = oauth_server.pid, oauth_server.port

    oauth_server.restart()

    assert oauth_server.pid != old_pid
    assert oauth_server.port == port
    assert post_token(http, oauth_server).status_code == 200


def test_audience_binds_jwt_access_tokens(
    http: httpx.Client, oauth_server_factory: OAuthServerFactory
) -> None:
    server = oauth_server_factory(
        token_ttl=600, audience="https://api.example.test", access_token_format="jwt"
    )

    body = basic_token(http, server, scope="read").json()

    claims = jwt_claims(body["access_token"])
    assert claims["aud"] == "https://api.example.test"
    assert claims["client_id"] == BASIC.client_id
    assert claims["iss"] == server.issuer
    assert claims["exp"] - claims["iat"] == 600
    assert body["expires_in"] == 600
    other = basic_token(http, server, resource="https://elsewhere.test")
    assert other.status_code == 400
    assert other.json()["error"] == "invalid_target"


def test_secrets_stay_out_of_logs_and_stats(http: httpx.Client, oauth_server: OAuthServer) -> None:
    basic_token(http, oauth_server)
    post_token(http, oauth_server)
    http.post(oauth_server.token_url, data=GRANT, auth=(BASIC.client_id, "leaky-wrong-secret"))

    seen = oauth_server.log_text() + json.dumps(oauth_server.stats())
    for secret in (BASIC.secret, POST.secret, "leaky-wrong-secret"):
        assert secret not in seen


def test_context_manager_stops_the_process(http: httpx.Client) -> None:
    with OAuthServer([OAuthClient("solo", "solo-secret")], token_ttl=30) as server:
        pid = server.pid
        reply = http.post(server.token_url, data=GRANT, auth=("solo", "solo-secret"))
        assert reply.json()["expires_in"] == 30

    assert not server.running
    with pytest.raises(ProcessLookupError):
        os.kill(pid, 0)  # reaped: the pid is gone


def test_bad_config_fails_start_without_leaking_the_secret() -> None:
    bad = OAuthClient("odd", "do-not-print-me", auth_method="client_secret_magic")  # type: ignore[arg-type]
    server = OAuthServer([bad])

    with pytest.raises(OAuthServerError, match="auth_method") as caught:
        server.start()

    assert "do-not-print-me" not in str(caught.value)
    assert not server.running
