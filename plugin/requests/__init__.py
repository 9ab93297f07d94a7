"""The OAuth2 plugin for ``requests``: ``tokencache.plugin.requests.ClientCredentialsAuth`` (an ``AuthBase``).

Same parameters and behaviour as :class:`tokencache.plugin.ClientCredentialsAuth` (the token side is the
same process-wide cache; token requests go through httpx, a dependency of the plugin). Install
the ``requests`` extra; nothing else in the plugin imports ``requests``.
"""

from tokencache.plugin.requests._auth import ClientCredentialsAuth

__all__ = ["ClientCredentialsAuth"]
