"""Cache keys for tokens: who asks, where, for what — and a one-way fingerprint of the secret.

Theory of operation: a token is shared by everyone who presents *the same credentials* for the same
request. The key therefore names the token endpoint, the client id, the sorted scopes, the extra
token parameters (audience, resource, …), the client authentication method and a fingerprint of the
secret. Two callers with the same client id but different secrets get different keys, so a caller
with a wrong secret can never be handed the token fetched with the right one (the flaw of
udhos/groupcache_oauth2, which keyed by client id alone).

The fingerprint is SHA-256 over a domain-separation prefix, the client id and the secret, each
length-prefixed so no two (id, secret) pairs share an input. Keys travel to peers and may show up in
debugging output; they never contain the secret itself.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

_FINGERPRINT_DOMAIN = b"tokencache/plugin/oauth2-client-secret/v1\x00"
_KEY_VERSION = "oauth2/v1"

#: Client authentication methods at the token endpoint.
AUTH_METHODS: tuple[str, ...] = ("client_secret_basic", "client_secret_post", "private_key_jwt")


def secret_fingerprint(client_id: str, client_secret: str) -> str:
    """Return a hex SHA-256 fingerprint of ``client_secret`` bound to ``client_id`` (one-way)."""
    digest = hashlib.sha256(_FINGERPRINT_DOMAIN)
    for part in (client_id.encode(), client_secret.encode()):
        digest.update(len(part).to_bytes(8, "big"))
        digest.update(part)
    return digest.hexdigest()


def normalize_scopes(scope: str | Iterable[str] | None) -> tuple[str, ...]:
    """Split a space-separated scope string (or take an iterable) into sorted, unique scopes."""
    if scope is None:
        return ()
    items = scope.split() if isinstance(scope, str) else [s for part in scope for s in part.split()]
    return tuple(sorted(set(items)))


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
    ) -> Credentials:
        """Normalise the arguments (sorted scopes and parameters) and fingerprint the secret."""
        extras = tuple(sorted((str(k), str(v)) for k, v in (extra_params or {}).items()))
        return cls(
            token_url=token_url,
            client_id=client_id,
            client_secret=client_secret,
            scopes=normalize_scopes(scope),
            extra_params=extras,
            auth_method=auth_method,
            fingerprint=secret_fingerprint(client_id, client_secret),
        )

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
            f"Credentials(token_url={self.token_url!r}, client_id={self.client_id!r}, "
            f"scopes={self.scopes!r}, auth_method={self.auth_method!r}, client_secret=<hidden>)"
        )
