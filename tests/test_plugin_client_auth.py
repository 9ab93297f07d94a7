"""Every client-authentication method against the real authorization server (oidc-provider):
client_secret_jwt, private_key_jwt (RSA and EC, with ``kid``), RFC 8705 tls_client_auth and
self_signed_tls_client_auth over https with a CA made in the test, certificate-bound tokens, and a
custom CA for the token endpoint. The server itself verifies each assertion and certificate."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.support.client_keys import (
    LocalPki,
    ec_key,
    jwks,
    pem,
    public_jwk,
    rsa_key,
    thumbprint,
)
from tests.support.oauth_server import OAuthClient, OAuthServer
from tokencache import plugin

pytestmark = pytest.mark.slow

RSA_A, RSA_B, EC_KEY, STRANGER = rsa_key(), rsa_key(), ec_key(), rsa_key()
JWT_CLIENTS = [
    OAuthClient("svc-hs", "hs-secret-0123456789abcdef0123456789ab", ("read",), "client_secret_jwt"),
    OAuthClient(
        "svc-pk",
        "",
        ("read",),
        "private_key_jwt",
        jwks=jwks(public_jwk(RSA_A, "key-a"), public_jwk(RSA_B, "key-b")),
    ),
    OAuthClient("svc-ec", "", ("read",), "private_key_jwt", jwks=jwks(public_jwk(EC_KEY, "ec-1"))),
]


@pytest.fixture(scope="module")
def jwt_server() -> Iterator[OAuthServer]:
    with OAuthServer(JWT_CLIENTS, token_ttl=600) as server:
        yield server


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> LocalPki:
    return LocalPki(tmp_path_factory.mktemp("pki"))


@pytest.fixture(scope="module")
def tls_setup(pki: LocalPki) -> Iterator[tuple[OAuthServer, dict[str, Any]]]:
    ca_client = pki.client_cert("svc-mtls.client.test")
    self_cert, self_jwks = pki.self_signed_client("svc-self.client.test")
    clients = [
        OAuthClient(
            "svc-mtls",
            "",
            ("read",),
            "tls_client_auth",
            tls_san_dns="svc-mtls.client.test",
            certificate_bound=True,
        ),
        OAuthClient(
            "svc-self",
            "",
            ("read",),
            "self_signed_tls_client_auth",
            jwks=self_jwks,
            certificate_bound=True,
        ),
        OAuthClient("svc-basic-tls", "basic-tls-secret", ("read",)),
    ]
    with OAuthServer(clients, token_ttl=600, tls=pki.server_tls) as server:
        yield server, {"ca_client": ca_client, "self_cert": self_cert}


def make(server: OAuthServer, client_id: str, secret: str, method: str, **kw: Any) -> Any:
    return plugin.ClientCredentialsAuth(
        server.token_url, client_id, secret, scope="read", auth_method=method, **kw
    )


def fetch_one(auth: plugin.ClientCredentialsAuth) -> plugin.AccessToken:
    try:
        return auth.token()
    finally:
        auth.close()


# -- JWT assertions (RFC 7523) -------------------------------------------------------------------


def test_client_secret_jwt_gets_a_token_and_a_wrong_secret_is_invalid_client(
    jwt_server: OAuthServer,
) -> None:
    jwt_server.reset()
    good = JWT_CLIENTS[0].secret
    token = fetch_one(make(jwt_server, "svc-hs", good, "client_secret_jwt"))
    assert jwt_server.token_info(token.access_token) == {
        "client_id": "svc-hs",
        "scope": "read",
        "x5t#S256": None,
    }
    assert token.expires_in() > 500
    wrong = "wrong-secret-0123456789abcdef0123456789"
    with pytest.raises(plugin.InvalidClientError) as info:
        fetch_one(make(jwt_server, "svc-hs", wrong, "client_secret_jwt", signing_alg="HS512"))
    assert jwt_server.token_url in str(info.value)
    assert wrong not in str(info.value)
    assert jwt_server.token_requests_by_client() == {"svc-hs": 2}


def test_private_key_jwt_rsa_with_kid_selects_the_registered_key(jwt_server: OAuthServer) -> None:
    jwt_server.reset()
    for key, kid in ((RSA_B, "key-b"), (RSA_A, "key-a")):
        token = fetch_one(make(jwt_server, "svc-pk", pem(key), "private_key_jwt", kid=kid))
        assert jwt_server.token_info(token.access_token)["client_id"] == "svc-pk"  # type: ignore[index]
    # PS256 with the same RSA key is a different JWS algorithm the server also verifies.
    fetch_one(
        make(jwt_server, "svc-pk", pem(RSA_B), "private_key_jwt", kid="key-b", signing_alg="PS256")
    )
    # Key B signing under key A's kid: the server checks the signature with key A and refuses.
    with pytest.raises(plugin.InvalidClientError):
        fetch_one(make(jwt_server, "svc-pk", pem(RSA_B), "private_key_jwt", kid="key-a"))
    with pytest.raises(plugin.InvalidClientError):
        fetch_one(make(jwt_server, "svc-pk", pem(STRANGER), "private_key_jwt"))


def test_private_key_jwt_ec_key_defaults_to_es256(jwt_server: OAuthServer) -> None:
    token = fetch_one(make(jwt_server, "svc-ec", pem(EC_KEY), "private_key_jwt", kid="ec-1"))
    assert jwt_server.token_info(token.access_token)["client_id"] == "svc-ec"  # type: ignore[index]


# -- mutual TLS (RFC 8705) and a custom CA -----------------------------------------------------------


def test_tls_client_auth_with_a_ca_issued_certificate_gets_a_certificate_bound_token(
    tls_setup: tuple[OAuthServer, dict[str, Any]], pki: LocalPki
) -> None:
    server, material = tls_setup
    cert = material["ca_client"]
    token = fetch_one(
        make(
            server,
            "svc-mtls",
            "",
            "tls_client_auth",
            ca_file=pki.ca_file,
            client_cert=cert.cert,
            client_key=cert.key,
        )
    )
    info = server.token_info(token.access_token)
    assert info is not None and info["client_id"] == "svc-mtls"
    assert info["x5t#S256"] == thumbprint(cert.cert.read_bytes())  # bound to our certificate
    assert token.authorization == f"Bearer {token.access_token}"  # passed through unchanged


def test_self_signed_tls_client_auth_gets_a_certificate_bound_token(
    tls_setup: tuple[OAuthServer, dict[str, Any]], pki: LocalPki
) -> None:
    server, material = tls_setup
    cert = material["self_cert"]
    token = fetch_one(
        make(
            server,
            "svc-self",
            "",
            "self_signed_tls_client_auth",
            ca_file=pki.ca_file,
            client_cert=cert.cert,
            client_key=cert.key,
        )
    )
    info = server.token_info(token.access_token)
    assert info is not None and info["x5t#S256"] == thumbprint(cert.cert.read_bytes())


def test_tls_client_auth_with_another_certificate_is_refused(
    tls_setup: tuple[OAuthServer, dict[str, Any]], pki: LocalPki
) -> None:
    server, material = tls_setup
    other = material["self_cert"]  # self-signed: does not chain to the CA tls_client_auth needs
    with pytest.raises(plugin.InvalidClientError) as info:
        fetch_one(
            make(
                server,
                "svc-mtls",
                "",
                "tls_client_auth",
                ca_file=pki.ca_file,
                client_cert=other.cert,
                client_key=other.key,
            )
        )
    assert server.token_url in str(info.value)


def test_custom_ca_is_needed_for_a_private_pki_token_endpoint(
    tls_setup: tuple[OAuthServer, dict[str, Any]], pki: LocalPki
) -> None:
    server, _ = tls_setup
    with pytest.raises(plugin.TokenConnectionError) as info:
        fetch_one(make(server, "svc-basic-tls", "basic-tls-secret", "client_secret_basic"))
    assert "CERTIFICATE_VERIFY_FAILED" in str(info.value)
    assert server.token_url in str(info.value)
    token = fetch_one(
        make(
            server, "svc-basic-tls", "basic-tls-secret", "client_secret_basic", ca_file=pki.ca_file
        )
    )
    assert server.token_info(token.access_token) is not None


def test_the_tls_token_can_be_used_with_the_same_certificate_by_any_client(
    tls_setup: tuple[OAuthServer, dict[str, Any]], pki: LocalPki
) -> None:
    """The token request's TLS settings never leak into the API client: the auth only sets the
    header; the caller's own client presents its certificate to the API (RFC 8705 3)."""
    server, material = tls_setup
    cert = material["ca_client"]
    auth = make(
        server,
        "svc-mtls",
        "",
        "tls_client_auth",
        ca_file=pki.ca_file,
        client_cert=cert.cert,
        client_key=cert.key,
    )
    seen: list[str] = []

    def api(request: httpx.Request) -> httpx.Response:
        seen.append(request.headers["authorization"])
        return httpx.Response(200)

    try:
        with httpx.Client(auth=auth, transport=httpx.MockTransport(api)) as client:
            assert client.get("https://api.test/x").status_code == 200
    finally:
        auth.close()
    assert seen and seen[0].startswith("Bearer ")


# -- construction-time checks ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("method", "secret", "options", "message"),
    [
        ("private_key_jwt", "not a pem", {}, "not a PEM private key"),
        ("private_key_jwt", "RSA", {"signing_alg": "ES256"}, "does not fit"),
        ("client_secret_jwt", "s3cret-s3cret", {"signing_alg": "RS256"}, "alg must be"),
        ("client_secret_basic", "", {}, "non-empty client_secret"),
        ("client_secret_post", "MARKER-SECRET-77a1", {"signing_alg": "HS256"}, "JWT methods only"),
        ("tls_client_auth", "", {}, "client certificate"),
        (
            "client_secret_basic",
            "MARKER-SECRET-77a1",
            {"ca_file": "/nonexistent/ca.pem"},
            "cannot be read",
        ),
        (
            "client_secret_basic",
            "MARKER-SECRET-77a1",
            {"client_key": "/x.key"},
            "client_key needs client_cert",
        ),
        ("private_key_jwt", "RSA", {"kid": ""}, "kid must be"),
    ],
)
def test_bad_client_auth_configuration_fails_at_construction(
    method: str, secret: str, options: dict[str, Any], message: str, tmp_path: Path
) -> None:
    if secret == "RSA":
        secret = pem(RSA_A)
    with pytest.raises(plugin.ConfigurationError, match=message) as info:
        plugin.ClientCredentialsAuth(
            "https://idp.test/token", "svc", secret, auth_method=method, **options
        )
    assert (secret or "\0") not in str(info.value)


def test_a_certificate_that_does_not_match_its_key_fails_at_construction(pki: LocalPki) -> None:
    one, two = pki.client_cert("one.client.test"), pki.client_cert("two.client.test")
    with pytest.raises(plugin.ConfigurationError, match="matching"):
        plugin.ClientCredentialsAuth(
            "https://idp.test/token",
            "svc",
            "",
            auth_method="tls_client_auth",
            client_cert=one.cert,
            client_key=two.key,
        )


# -- client_secret_basic encoding (RFC 6749 2.3.1) -----------------------------------------------

RESERVED_SECRET = "MARKER-a:b%41+c d&e/=?"


def test_client_secret_basic_form_urlencodes_id_and_secret() -> None:
    # A ':' '%' '+' or space in the id or secret must reach a compliant server intact (oidc-provider
    # form-urldecodes both); authlib's client joined them raw and this client was refused.
    clients = [OAuthClient("svc:odd%id", RESERVED_SECRET, ("read",))]
    with OAuthServer(clients, token_ttl=600) as server:
        token = fetch_one(make(server, "svc:odd%id", RESERVED_SECRET, "client_secret_basic"))
        assert token.access_token
        assert server.token_requests_by_client() == {"svc:odd%id": 1}


def test_a_secret_outside_latin1_is_a_token_error_not_a_unicode_error() -> None:
    # Before: UnicodeEncodeError at the first request, the "id:secret" string in its repr.
    secret = "MARKER-p\u20acss"
    clients = [OAuthClient("svc-euro", "other-secret", ("read",))]
    with OAuthServer(clients, token_ttl=600) as server:
        with pytest.raises(plugin.TokenRejectedError) as info:
            fetch_one(make(server, "svc-euro", secret, "client_secret_basic"))
        assert secret not in repr(info.value) and secret not in str(info.value)
