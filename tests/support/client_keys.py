"""Key material for client-authentication tests: private keys as PEM, their public JWKS, a
self-signed client certificate (RFC 8705 self_signed_tls_client_auth), and a local CA (trustme)
with an https server certificate and CA-issued client certificates, all written to a directory."""

from __future__ import annotations

import base64
import datetime
import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import trustme
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import NameOID
from joserfc.jwk import ECKey, RSAKey

from tests.support.oauth_server import ServerTls

PrivateKey = rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey


def rsa_key() -> rsa.RSAPrivateKey:
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


def ec_key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


def pem(key: PrivateKey) -> str:
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    ).decode()


def public_jwk(key: PrivateKey, kid: str, x5c: bytes | None = None) -> dict[str, Any]:
    """The public JWK of ``key`` with ``kid`` (and an ``x5c`` certificate, DER, when given)."""
    cls = RSAKey if isinstance(key, rsa.RSAPrivateKey) else ECKey
    jwk: dict[str, Any] = dict(cls.import_key(pem(key)).as_dict(private=False))
    jwk["kid"] = kid
    if x5c is not None:
        jwk["x5c"] = [base64.b64encode(x5c).decode()]
    return jwk


def jwks(*keys: dict[str, Any]) -> str:
    return json.dumps({"keys": list(keys)})


def self_signed(key: rsa.RSAPrivateKey, name: str) -> x509.Certificate:
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    now = datetime.datetime.now(datetime.UTC)
    return (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.SubjectAlternativeName([x509.DNSName(name)]), critical=False)
        .sign(key, hashes.SHA256())
    )


def thumbprint(cert_pem: bytes) -> str:
    """RFC 8705 ``x5t#S256``: base64url SHA-256 of the certificate's DER, unpadded."""
    der = x509.load_pem_x509_certificate(cert_pem).public_bytes(serialization.Encoding.DER)
    return base64.urlsafe_b64encode(hashlib.sha256(der).digest()).rstrip(b"=").decode()


@dataclass(frozen=True)
class ClientCert:
    cert: Path
    key: Path


class LocalPki:
    """A CA made for the test, an https certificate for 127.0.0.1, and client certificates."""

    def __init__(self, directory: Path) -> None:
        self.dir = directory
        self.ca = trustme.CA()
        self.ca_file = directory / "ca.pem"
        self.ca.cert_pem.write_to_path(str(self.ca_file))
        server = self.ca.issue_cert("127.0.0.1", "localhost")
        cert, key = directory / "server.pem", directory / "server.key"
        server.cert_chain_pems[0].write_to_path(str(cert))
        server.private_key_pem.write_to_path(str(key))
        self.server_tls = ServerTls(cert=cert, key=key, ca=self.ca_file)

    def client_cert(self, name: str) -> ClientCert:
        issued = self.ca.issue_cert(name)
        cert, key = self.dir / f"{name}.pem", self.dir / f"{name}.key"
        issued.cert_chain_pems[0].write_to_path(str(cert))
        issued.private_key_pem.write_to_path(str(key))
        return ClientCert(cert, key)

    def self_signed_client(self, name: str) -> tuple[ClientCert, str]:
        """A self-signed client certificate and the JWKS that registers it (with x5c)."""
        key = rsa_key()
        cert = self_signed(key, name)
        cert_path, key_path = self.dir / f"{name}.pem", self.dir / f"{name}.key"
        cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
        key_path.write_text(pem(key))
        der = cert.public_bytes(serialization.Encoding.DER)
        return ClientCert(cert_path, key_path), jwks(public_jwk(key, name, x5c=der))
