"""The OAuth2 plugin for httpx2: ``tokencache.plugin.httpx2.ClientCredentialsAuth``.

Same behaviour and parameters as :class:`tokencache.plugin.ClientCredentialsAuth`; requests and token
fetches go through httpx2 only (install the ``httpx2`` extra).
"""

from tokencache.plugin.httpx2._auth import ClientCredentialsAuth
from tokencache.plugin.httpx2._sender import Httpx2TokenSender

__all__ = ["ClientCredentialsAuth", "Httpx2TokenSender"]
