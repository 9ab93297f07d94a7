"""The token request, sans-IO, built by authlib's client-credentials support.

authlib's ``prepare_token_request`` writes the form body and its ``ClientAuth`` applies the client
authentication method (every method of :mod:`plugin._client_auth`). The
HTTP integrations of authlib are deliberately not used: with httpx2 installed they are built on
httpx2, and the httpx code path must not mix the two libraries. Each sender (httpx, httpx2) sends
the :class:`TokenRequest` built here.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Protocol

from authlib.oauth2.rfc6749.parameters import prepare_token_request

from tokencache.plugin._client_auth import build_client_auth
from tokencache.plugin._key import Credentials


@dataclass(frozen=True, repr=False)
class TokenRequest:
    """One HTTP request to the token endpoint (holds credentials: never log it)."""

    method: str
    url: str
    headers: dict[str, str]
    body: bytes

    def __repr__(self) -> str:
        return f"TokenRequest({self.method} {self.url}, <hidden>)"


@dataclass(frozen=True)
class TokenHttpResponse:
    """The token endpoint's answer as the fetcher needs it; header names are lower-case."""

    status: int
    headers: Mapping[str, str] = field(default_factory=dict)
    body: bytes = b""


class TokenSender(Protocol):
    """Sends a :class:`TokenRequest`; transport failures become TokenTimeout/ConnectionError."""

    async def send(self, request: TokenRequest) -> TokenHttpResponse:
        """Send ``request`` and return the answer, whatever its status."""
        ...

    async def aclose(self) -> None:
        """Release connections."""
        ...


def build_token_request(creds: Credentials) -> TokenRequest:
    """Build the client-credentials request for ``creds`` (fresh each attempt: JWT ids differ)."""
    auth = creds.auth or build_client_auth(creds.auth_method, creds.client_id, creds.client_secret)
    params: dict[str, str] = dict(creds.extra_params)
    if creds.scopes:
        params["scope"] = " ".join(creds.scopes)
    body = prepare_token_request("client_credentials", **params)
    headers = {
        "Content-Type": "application/x-www-form-urlencoded",
        "Accept": "application/json",
    }
    headers, body = auth.apply(creds.token_url, headers, body)
    return TokenRequest("POST", creds.token_url, headers, body.encode())


def lower_headers(items: Mapping[str, str]) -> dict[str, str]:
    """Header mapping with lower-case names, for senders to build :class:`TokenHttpResponse`."""
    return {k.lower(): v for k, v in items.items()}
