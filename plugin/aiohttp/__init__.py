"""The OAuth2 plugin for ``aiohttp`` clients: ``tokencache.plugin.aiohttp.ClientCredentialsAuth``,
a client middleware (aiohttp 3.12 or later)::

    from tokencache import plugin

    auth = plugin.aiohttp.ClientCredentialsAuth(TOKEN_URL, "my-service", SECRET, scope="read")
    async with aiohttp.ClientSession(middlewares=(auth,)) as session:
        async with session.get(API) as response: ...

Same parameters and behaviour as :class:`tokencache.plugin.ClientCredentialsAuth` (token requests go
through httpx, a dependency of the plugin).
"""

from tokencache.plugin.aiohttp._auth import ClientCredentialsAuth

__all__ = ["ClientCredentialsAuth"]
