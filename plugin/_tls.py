"""TLS towards the token endpoint: a custom CA and a client certificate, checked at construction.

``ca_file`` replaces the system trust store for the token endpoint only (a private PKI);
``client_cert`` / ``client_key`` present a certificate in the handshake: RFC 8705 mutual-TLS
client authentication, or a gateway in front of the authorization server that asks for one. The
files are read once, when the auth is built: a missing file or a key that does not match its
certificate is a :class:`ConfigurationError` then, not at the first request. The certificate's bytes
feed the token key's fingerprint (another certificate, another token).
"""

from __future__ import annotations

import hashlib
import os
import ssl
import uuid
from dataclasses import dataclass
from pathlib import Path

from tokencache.plugin._errors import ConfigurationError

PathLike = str | os.PathLike[str]


@dataclass(frozen=True)
class TokenTls:
    """The TLS settings of the token endpoint's connection."""

    context: ssl.SSLContext | None  # None: the library's default verification
    certificate: bytes  # the client certificate (PEM), b"" when none


def _read(path: PathLike, what: str) -> bytes:
    try:
        return Path(path).read_bytes()
    except OSError as exc:
        raise ConfigurationError(
            f"{what} {os.fspath(path)!r} cannot be read ({exc.strerror})"
        ) from None


def build_tls(
    *,
    ca_file: PathLike | None = None,
    client_cert: PathLike | None = None,
    client_key: PathLike | None = None,
    ssl_context: ssl.SSLContext | None = None,
) -> TokenTls:
    """Build (and check) the token endpoint's TLS settings.

    ``ssl_context`` is used as given when passed (then ``client_cert`` only names the certificate
    for the key's fingerprint); else a default context is made with ``ca_file`` as its only trust
    anchor (when given) and the client certificate chain loaded (when given).
    """
    if client_key is not None and client_cert is None:
        raise ConfigurationError("client_key needs client_cert")
    certificate = _read(client_cert, "client_cert") if client_cert is not None else b""
    if ssl_context is not None:
        return TokenTls(ssl_context, certificate)
    if ca_file is None and client_cert is None:
        return TokenTls(None, b"")
    context = ssl.create_default_context()
    if ca_file is not None:
        _read(ca_file, "ca_file")
        try:
            context = ssl.create_default_context(cafile=os.fspath(ca_file))
        except (ssl.SSLError, ValueError):
            raise ConfigurationError(
                f"ca_file {os.fspath(ca_file)!r} holds no PEM CA certificate"
            ) from None
    if client_cert is not None:
        if client_key is not None:
            _read(client_key, "client_key")
        try:
            context.load_cert_chain(
                os.fspath(client_cert), None if client_key is None else os.fspath(client_key)
            )
        except (ssl.SSLError, ValueError) as exc:
            raise ConfigurationError(
                "client_cert / client_key are not a matching PEM certificate and private key "
                f"({type(exc).__name__})"
            ) from None
    return TokenTls(context, certificate)


def context_fingerprint(context: ssl.SSLContext) -> str:
    """A digest of everything an :class:`ssl.SSLContext` shows about how it verifies and connects.

    Two contexts built the same way (``ssl.create_default_context()`` per auth object) have the
    same fingerprint, so auth objects built with them share one registration. Compared: the
    protocol, verification mode and flags, hostname checking, options, TLS versions, security
    level, ciphers (in order), the trust anchors loaded from a file or data (DER) and the store's
    counts, the key log file. Python cannot read the client certificate chain, ALPN protocols or
    callbacks set on a context: a context's client certificate is named with ``client_cert=``
    (which then keys the token); docs/plugin.md.

    A verifying context whose store shows no trust anchor yet (``capath``: OpenSSL reads that
    directory only during a handshake) shows nothing of what it trusts: it gets a fingerprint of
    its own, so it equals only itself (two such contexts never share a registration).
    """
    stats = context.cert_store_stats()
    if context.verify_mode != ssl.CERT_NONE and not stats.get("x509_ca"):
        return "unreadable-trust:" + uuid.uuid4().hex
    parts: list[object] = [
        type(context).__module__,
        type(context).__qualname__,
        int(context.protocol),
        int(context.verify_mode),
        int(context.verify_flags),
        context.check_hostname,
        int(context.options),
        int(context.minimum_version),
        int(context.maximum_version),
        getattr(context, "security_level", None),
        context.post_handshake_auth,
        context.hostname_checks_common_name,
        context.keylog_filename,
        [c["name"] for c in context.get_ciphers()],
        sorted(stats.items()),
    ]
    digest = hashlib.sha256(repr(parts).encode())
    for der in context.get_ca_certs(binary_form=True):
        digest.update(len(der).to_bytes(8, "big") + der)
    return digest.hexdigest()
