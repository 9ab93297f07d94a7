"""Client authentication at the token endpoint: which method, checked once, applied with authlib.

Methods (RFC 6749 2.3, RFC 7523, RFC 8705), all through authlib's implementations:

- ``client_secret_basic`` / ``client_secret_post``: the secret in the ``Authorization`` header or
  the form body (``authlib.oauth2.auth.ClientAuth``);
- ``client_secret_jwt``: an HMAC-signed assertion keyed by the secret (``ClientSecretJWT``,
  ``alg`` HS256 unless given);
- ``private_key_jwt``: an assertion signed with the client's private key (``PrivateKeyJWT``), the
  key a PEM (RSA, EC or Ed25519) given as the secret; ``alg`` follows the key type unless given,
  ``kid`` goes into the JWT header when given (servers with several registered keys need it);
- ``tls_client_auth`` / ``self_signed_tls_client_auth`` (RFC 8705): the client proves itself with
  its TLS client certificate (see :mod:`plugin._tls`); the body carries only ``client_id``
  (authlib's ``none`` encoding). Tokens the server binds to that certificate (``cnf.x5t#S256``) are
  passed through unchanged: the caller presents the same certificate to the API.

Everything is checked at construction (:func:`build_client_auth`): an unknown method, an empty
secret, a PEM that is not a private key, an ``alg`` that does not fit the key raise
:class:`ConfigurationError` at once, never at the first request. Messages never contain the secret.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import quote

from authlib.oauth2.auth import ClientAuth

from tokencache.plugin._errors import ConfigurationError

#: Client authentication methods at the token endpoint.
AUTH_METHODS: tuple[str, ...] = (
    "client_secret_basic",
    "client_secret_jwt",
    "client_secret_post",
    "private_key_jwt",
    "self_signed_tls_client_auth",
    "tls_client_auth",
)
#: The methods that authenticate with a TLS client certificate (RFC 8705).
TLS_METHODS: frozenset[str] = frozenset({"self_signed_tls_client_auth", "tls_client_auth"})
_SECRET_METHODS = frozenset({"client_secret_basic", "client_secret_jwt", "client_secret_post"})
_HMAC_ALGS = ("HS256", "HS384", "HS512")
_ALGS_BY_KEY = {
    "RSA": ("RS256", "RS384", "RS512", "PS256", "PS384", "PS512"),
    "EC": ("ES256", "ES384", "ES512"),
    "OKP": ("EdDSA", "Ed25519"),
}
_EC_DEFAULT = {"P-256": "ES256", "P-384": "ES384", "P-521": "ES512"}


def _import_private_key(pem: str, client_id: str) -> Any:
    from joserfc.jwk import ECKey, OKPKey, RSAKey

    for cls in (RSAKey, ECKey, OKPKey):
        try:
            key = cls.import_key(pem)
        except Exception:  # noqa: BLE001,S112 - try the next key type; the last one reports
            continue
        if key.is_private:
            return key
        raise ConfigurationError(
            f"private_key_jwt for client {client_id!r}: the key is a public key, not a private one"
        )
    raise ConfigurationError(
        f"private_key_jwt for client {client_id!r}: client_secret is not a PEM private key "
        "(RSA, EC or Ed25519)"
    )


def _default_alg(key: Any) -> str:
    if key.key_type == "EC":
        return _EC_DEFAULT.get(str(key.curve_name), "ES256")
    return str(_ALGS_BY_KEY[key.key_type][0])


@dataclass(frozen=True, repr=False)
class ClientAuthMethod:
    """One client's authentication at the token endpoint, checked. ``repr`` hides the secret."""

    name: str
    client_id: str
    secret: str
    alg: str | None = None
    kid: str | None = None
    certificate: bytes = b""  # the TLS client certificate (PEM) for the RFC 8705 methods
    key: Any = field(default=None, compare=False)  # the imported private key (private_key_jwt)

    def material(self) -> bytes:
        """Every secret-bearing input, for the key's fingerprint (two configurations that
        authenticate differently never share a token)."""
        return json.dumps(
            [self.name, self.secret, self.alg, self.kid, self.certificate.decode("latin-1")],
            separators=(",", ":"),
        ).encode()

    def apply(
        self, token_url: str, headers: dict[str, str], body: str
    ) -> tuple[dict[str, str], str]:
        """Authenticate one token request (a fresh assertion, with a fresh ``jti``, each time)."""
        method: object
        secret: object = self.secret
        jwt_header = {"kid": self.kid} if self.kid else None
        if self.name == "client_secret_jwt":
            from authlib.oauth2.rfc7523 import ClientSecretJWT

            method = ClientSecretJWT(token_url, headers=jwt_header, alg=self.alg)
        elif self.name == "private_key_jwt":
            from authlib.oauth2.rfc7523 import PrivateKeyJWT

            method = PrivateKeyJWT(token_url, headers=jwt_header, alg=self.alg)
            secret = self.key
        elif self.name in TLS_METHODS:
            method = "none"  # RFC 8705 2: client_id in the body, the proof is the TLS handshake
        else:
            method = self.name
        client_id = self.client_id
        if method == "client_secret_basic":
            # RFC 6749 2.3.1: id and secret are form-urlencoded (UTF-8) before Basic encoding;
            # authlib's client joins them raw (a ':', '%' or '+' then breaks at a compliant
            # server, and a character outside latin-1 raised UnicodeEncodeError, secret in repr).
            client_id, secret = quote(client_id, safe=""), quote(self.secret, safe="")
        auth = ClientAuth(client_id, secret, method)
        _, out_headers, out_body = auth.prepare("POST", token_url, headers, body)
        return dict(out_headers), str(out_body)

    def __repr__(self) -> str:
        return f"ClientAuthMethod({self.name!r}, alg={self.alg!r}, kid={self.kid!r}, <hidden>)"


def build_client_auth(
    method: str,
    client_id: str,
    secret: str,
    *,
    alg: str | None = None,
    kid: str | None = None,
    certificate: bytes = b"",
) -> ClientAuthMethod:
    """Check a client authentication configuration; raise :class:`ConfigurationError` if bad."""
    if method not in AUTH_METHODS:
        raise ConfigurationError(
            f"unknown auth_method {method!r}; one of {', '.join(AUTH_METHODS)}"
        )
    if not isinstance(secret, str):
        raise ConfigurationError("client_secret must be a string")
    if method in _SECRET_METHODS and not secret:
        raise ConfigurationError(
            f"{method} for client {client_id!r} needs a non-empty client_secret"
        )
    if kid is not None and (not isinstance(kid, str) or not kid):
        raise ConfigurationError("kid must be a non-empty string when given")
    key: Any = None
    if method == "client_secret_jwt":
        alg = alg or "HS256"
        if alg not in _HMAC_ALGS:
            raise ConfigurationError(
                f"client_secret_jwt: alg must be one of {', '.join(_HMAC_ALGS)}"
            )
    elif method == "private_key_jwt":
        key = _import_private_key(secret, client_id)
        allowed = _ALGS_BY_KEY[key.key_type]
        alg = alg or _default_alg(key)
        if alg not in allowed:
            raise ConfigurationError(
                f"private_key_jwt: alg {alg!r} does not fit a {key.key_type} key "
                f"(one of {', '.join(allowed)})"
            )
    elif alg is not None:
        raise ConfigurationError(f"alg applies to the JWT methods only, not to {method}")
    if method in TLS_METHODS and not certificate:
        raise ConfigurationError(
            f"{method} for client {client_id!r} needs a client certificate (client_cert=)"
        )
    return ClientAuthMethod(method, client_id, secret, alg, kid, certificate, key)
