"""TLS contexts for the peer port from PEM files: mutual TLS against one cluster CA.

One rule for every process of a cluster: present this certificate, accept only peers (servers and
clients alike) whose certificate chains to the cluster CA. Host names are not checked by default:
peers are addressed by IP and usually share one certificate (a cert-manager Certificate mounted
into every pod), so the CA, not the name, says who is a member. The peer secret still
authenticates every frame inside TLS.
"""

from __future__ import annotations

import ssl


def peer_tls_contexts(
    cert_file: str, key_file: str, ca_file: str, *, check_hostname: bool = False
) -> tuple[ssl.SSLContext, ssl.SSLContext]:
    """``(server, client)`` contexts for ``Workspace(ssl_server=..., ssl_client=...)``.

    Both present ``cert_file``/``key_file`` and require the other side's certificate to chain to
    ``ca_file`` (TLS 1.2 or later).
    """
    server = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH, cafile=ca_file)
    server.verify_mode = ssl.CERT_REQUIRED
    server.minimum_version = ssl.TLSVersion.TLSv1_2
    server.load_cert_chain(cert_file, key_file)
    client = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=ca_file)
    client.check_hostname = check_hostname
    client.verify_mode = ssl.CERT_REQUIRED
    client.minimum_version = ssl.TLSVersion.TLSv1_2
    client.load_cert_chain(cert_file, key_file)
    return server, client
