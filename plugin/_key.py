"""Cache keys for tokens: who asks, where, for what, and a keyed fingerprint of the secret.

Theory of operation: a token is shared by everyone who presents *the same credentials* for the same
request. The key therefore names the token endpoint, the client id, the sorted scopes, the extra
token parameters (audience, resource, …), the client authentication method and a fingerprint of
every secret input (the secret or private key, ``alg``, ``kid``, the TLS client certificate). Two
callers with the same client id but different secrets get different keys, so a caller with a wrong
secret can never be handed the token fetched with the right one (the flaw of
udhos/groupcache_oauth2, which keyed by client id alone).

The fingerprint is *keyed*, because keys cross the peer port and may show up in debugging output,
and an unkeyed hash of a guessable secret can be brute-forced offline from a key:

- with a cluster secret (the peer secret every process of the cluster shares, or the private
  random key of a standalone process), HMAC-SHA-256 under a key derived from it: without that
  secret a key tells nothing about the client secret, and computing it costs nothing;
- without one (a cluster with no peer secret), scrypt (N=2**14, r=8, p=1: about 16 MiB and tens of
  milliseconds) salted with the endpoint and client id: every guess costs an attacker the same,
  and no table built for one client serves another. The process pays it once per credential (the
  runtime memoises it), never per request.

Inputs are length-prefixed so no two (endpoint, id, secret) triples share one. docs/plugin.md has
the reasoning.
"""

from __future__ import annotations

import hashlib
import hmac
import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from urllib.parse import urlsplit

from tokencache.plugin._client_auth import ClientAuthMethod
from tokencache.plugin._errors import ConfigurationError

_FINGERPRINT_DOMAIN = b"tokencache/plugin/oauth2-client-secret/v2\x00"
_HMAC_KEY_LABEL = b"tokencache/plugin/key-fingerprint-hmac/v2"
_KEY_VERSION = "oauth2/v2"
SCRYPT_N, SCRYPT_R, SCRYPT_P = 1 << 14, 8, 1
#: Token request parameters the plugin sets itself: not accepted in ``extra_params``.
_RESERVED_PARAMS = frozenset(
    {"grant_type", "scope", "client_secret", "client_assertion", "client_assertion_type"}
)


def _framed(*parts: bytes) -> bytes:
    return b"".join(len(p).to_bytes(8, "big") + p for p in parts)


def fingerprint_key(cluster_secret: bytes | str) -> bytes:
    """The HMAC key for fingerprints, derived from a cluster secret (never used raw twice)."""
    raw = cluster_secret.encode() if isinstance(cluster_secret, str) else cluster_secret
    return hmac.new(raw, _HMAC_KEY_LABEL, hashlib.sha256).digest()


def secret_fingerprint(
    client_id: str,
    client_secret: str | bytes,
    *,
    token_url: str = "",
    key: bytes | None = None,
) -> str:
    """A keyed one-way fingerprint of ``client_secret`` bound to ``token_url`` and ``client_id``.

    With ``key`` (see :func:`fingerprint_key`): HMAC-SHA-256. Without: scrypt, salted with the
    endpoint and client id (slow on purpose: memoise it). Hex, 64 characters.
    """
    secret = client_secret.encode() if isinstance(client_secret, str) else client_secret
    context = _framed(_FINGERPRINT_DOMAIN, token_url.encode(), client_id.encode())
    if key is not None:
        return hmac.new(key, context + _framed(secret), hashlib.sha256).hexdigest()
    salt = hashlib.sha256(context).digest()
    derived = hashlib.scrypt(
        secret, salt=salt, n=SCRYPT_N, r=SCRYPT_R, p=SCRYPT_P, maxmem=64 << 20, dklen=32
    )
    return derived.hex()


def safe_endpoint(url: str) -> str:
    """``url`` without userinfo, query or fragment: what messages and logs may show."""
    try:
        parts = urlsplit(url)
        host = parts.hostname or ""
        port = f":{parts.port}" if parts.port is not None else ""
    except ValueError:
        return "<invalid url>"
    if ":" in host:
        host = f"[{host}]"
    return f"{parts.scheme}://{host}{port}{parts.path}"


def check_token_url(url: object) -> str:
    """Return ``url`` if it is an absolute http(s) URL with a host; else ConfigurationError."""
    if not isinstance(url, str) or not url:
        raise ConfigurationError("token_url must be a non-empty string")
    try:
        parts = urlsplit(url)
        parts.port  # noqa: B018 - raises ValueError on a bad port
    except ValueError:
        raise ConfigurationError("token_url is not a valid URL") from None
    if "@" in parts.netloc:
        # httpx turns user:password@ into its own Authorization header (clashing with the client
        # authentication) and logs the URL at INFO; the key would carry it too. Never echoed.
        raise ConfigurationError(
            "token_url must not contain userinfo (user:password@): pass the client's "
            "credentials as client_id and client_secret"
        )
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ConfigurationError(
            f"token_url must be an absolute http or https URL, not {safe_endpoint(url)!r}"
        )
    if parts.fragment or any(c.isspace() for c in url):
        raise ConfigurationError("token_url must not contain a fragment or whitespace")
    return url


def normalize_scopes(scope: str | Iterable[str] | None) -> tuple[str, ...]:
    """Split a space-separated scope string (or take an iterable) into sorted, unique scopes.

    Anything but None, a string or an iterable of strings is a :class:`ConfigurationError`.
    """
    raw: object = scope  # checked at run time: callers are not always typed
    if raw is None:
        return ()
    if isinstance(raw, str):
        return tuple(sorted(set(raw.split())))
    parts: list[object] | None = None
    if isinstance(raw, Iterable) and not isinstance(raw, bytes | bytearray):
        parts = list(raw)
    if parts is None or not all(isinstance(part, str) for part in parts):
        raise ConfigurationError("scope must be a string or an iterable of strings")
    return tuple(sorted({s for part in parts if isinstance(part, str) for s in part.split()}))


@dataclass(frozen=True, repr=False)
class Credentials:
    """Everything needed to fetch one client-credentials token. ``repr`` hides the secret."""

    token_url: str
    client_id: str
    client_secret: str
    scopes: tuple[str, ...] = ()
    extra_params: tuple[tuple[str, str], ...] = ()
    auth_method: str = "client_secret_basic"
    fingerprint: str = field(default="", compare=False)
    auth: ClientAuthMethod | None = field(default=None, compare=False)

    @classmethod
    def build(
        cls,
        *,
        token_url: str,
        client_id: str,
        client_secret: str,
        scope: str | Iterable[str] | None = None,
        extra_params: Mapping[str, str] | None = None,
        auth_method: str = "client_secret_basic",
        auth: ClientAuthMethod | None = None,
        fingerprint: str | None = None,
    ) -> Credentials:
        """Check and normalise the arguments (sorted scopes and parameters).

        ``fingerprint`` is the keyed fingerprint of ``auth.material()`` (the runtime computes and
        memoises it); without one, the slow unkeyed form is computed here.
        """
        check_token_url(token_url)
        if not isinstance(client_id, str) or not client_id:
            raise ConfigurationError("client_id must be a non-empty string")
        if auth is None:
            from tokencache.plugin._client_auth import build_client_auth

            auth = build_client_auth(auth_method, client_id, client_secret)
        extras = tuple(sorted((str(k), str(v)) for k, v in (extra_params or {}).items()))
        reserved = sorted({k for k, _ in extras} & _RESERVED_PARAMS)
        if reserved:
            # grant_type raised TypeError at the first request; scope was silently replaced; the
            # client authentication's own parameters would send credentials twice (and a secret
            # here would sit in the cache key in clear).
            raise ConfigurationError(
                f"extra_params must not set {', '.join(reserved)} (use scope= and auth_method=)"
            )
        if fingerprint is None:
            fingerprint = secret_fingerprint(client_id, auth.material(), token_url=token_url)
        return cls(
            token_url=token_url,
            client_id=client_id,
            client_secret=client_secret,
            scopes=normalize_scopes(scope),
            extra_params=extras,
            auth_method=auth.name,
            fingerprint=fingerprint,
            auth=auth,
        )

    @property
    def endpoint(self) -> str:
        """The token endpoint as messages show it (no userinfo, no query)."""
        return safe_endpoint(self.token_url)

    @property
    def key(self) -> str:
        """The cache key: JSON, so every field round-trips whatever characters it holds."""
        return json.dumps(
            [
                _KEY_VERSION,
                self.token_url,
                self.client_id,
                list(self.scopes),
                [list(p) for p in self.extra_params],
                self.auth_method,
                self.fingerprint,
            ],
            separators=(",", ":"),
            ensure_ascii=False,
        )

    def __repr__(self) -> str:
        return (
            f"Credentials(token_url={self.endpoint!r}, client_id={self.client_id!r}, "
            f"scopes={self.scopes!r}, auth_method={self.auth_method!r}, client_secret=<hidden>)"
        )
