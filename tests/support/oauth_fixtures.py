"""pytest fixtures around ``OAuthServer`` (tests/support/oauth_server.py).

Import both into a test module (``x as x`` marks the import as intended, so ruff does not
report it unused or redefined; ``oauth_server`` needs ``oauth_server_factory``)::

    from tests.support.oauth_fixtures import oauth_server as oauth_server
    from tests.support.oauth_fixtures import oauth_server_factory as oauth_server_factory

    def test_something(oauth_server): ...           # DEFAULT_CLIENTS, token_ttl=3600
    def test_other(oauth_server_factory):
        server = oauth_server_factory([OAuthClient("svc", "s3cret")], token_ttl=5)

(or list ``"tests.support.oauth_fixtures"`` in ``pytest_plugins`` of the root tests/conftest.py;
pytest refuses ``pytest_plugins`` outside the root conftest once the module is imported)

or build a fixture with your own clients, shared as widely as you like::

    shared_oauth = oauth_server_fixture(clients=[...], token_ttl=60, scope="module")

A wider-than-function server keeps its counters and fault between tests: call ``reset()``
first. Every server a fixture started is stopped by PID at teardown, even when the test fails.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from typing import Any, Literal

import pytest

from tests.support.oauth_server import OAuthClient, OAuthServer

__all__ = [
    "DEFAULT_CLIENTS",
    "oauth_server",
    "oauth_server_factory",
    "oauth_server_fixture",
]

DEFAULT_CLIENTS: tuple[OAuthClient, ...] = (
    OAuthClient("svc-basic", "basic-secret", scopes=("read", "write")),
    OAuthClient("svc-post", "post-secret", scopes=("read",), auth_method="client_secret_post"),
)

OAuthServerFactory = Callable[..., OAuthServer]
_Scope = Literal["session", "package", "module", "class", "function"]


@pytest.fixture
def oauth_server_factory() -> Iterator[OAuthServerFactory]:
    """Start servers on demand: ``factory(clients=DEFAULT_CLIENTS, token_ttl=3600, **options)``.

    Options are OAuthServer's keywords (audience, access_token_format, enforce_auth_method).
    """
    started: list[OAuthServer] = []

    def make(
        clients: Iterable[OAuthClient] = DEFAULT_CLIENTS,
        token_ttl: int = 3600,
        **options: Any,
    ) -> OAuthServer:
        server = OAuthServer(clients, token_ttl, **options)
        started.append(server)  # before start(): a half-started server is stopped too
        return server.start()

    try:
        yield make
    finally:
        for server in started:
            server.stop()


@pytest.fixture
def oauth_server(oauth_server_factory: OAuthServerFactory) -> OAuthServer:
    """A running server with DEFAULT_CLIENTS and a one-hour token lifetime."""
    return oauth_server_factory()


def oauth_server_fixture(
    *,
    clients: Iterable[OAuthClient] = DEFAULT_CLIENTS,
    token_ttl: int = 3600,
    scope: _Scope = "function",
    **options: Any,
) -> Any:
    """Return a pytest fixture running one server with these clients for ``scope``."""
    frozen_clients = tuple(clients)

    @pytest.fixture(scope=scope)
    def _oauth_server() -> Iterator[OAuthServer]:
        with OAuthServer(frozen_clients, token_ttl, **options) as server:
            yield server

    return _oauth_server
