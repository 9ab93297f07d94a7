"""A WSGI app for gunicorn ``--preload``: the auth is built, and its first token fetched, in the
master before it forks the workers (what a service that builds its clients at import does).

    gunicorn --preload -w 3 'tests.support.preload_app:make_app("/path/config.json")'

The config names ``token_url``, ``client_id``, ``client_secret``, ``scope``. Each request answers
``{"pid": N, "token": sha256-prefix}`` with the token the plugin holds in that worker.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

from tokencache import plugin

StartResponse = Callable[[str, list[tuple[str, str]]], Any]


def make_app(config_path: str) -> Callable[[dict[str, Any], StartResponse], Iterable[bytes]]:
    config = json.loads(Path(config_path).read_text())
    auth = plugin.ClientCredentialsAuth(
        config["token_url"], config["client_id"], config["client_secret"], scope=config["scope"]
    )
    auth.token()  # in the master: the engine thread and loop exist before the fork

    def app(environ: dict[str, Any], start_response: StartResponse) -> Iterable[bytes]:
        import os

        token = auth.token()  # in a worker: must not hang on the master's dead loop thread
        body = json.dumps(
            {
                "pid": os.getpid(),
                "token": hashlib.sha256(token.access_token.encode()).hexdigest()[:16],
            }
        ).encode()
        start_response("200 OK", [("Content-Type", "application/json")])
        return [body]

    return app
