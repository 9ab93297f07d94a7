"""Fork safety against the real authorization server: an auth built (and used) before fork()
works in every child (multiprocessing with the fork start method, gunicorn --preload), and no
child hangs; an auth on a caller's workspace built before the fork fails at once in the child."""

from __future__ import annotations

import asyncio
import functools
import hashlib
import json
import multiprocessing
import multiprocessing.connection
import os
import signal
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

import tokencache
from tests.support.net import free_port
from tests.support.oauth_server import OAuthClient, OAuthServer
from tokencache import plugin

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[1]
SECRET = "MARKER-SECRET-fork-9d02"
CLIENTS = [
    OAuthClient("svc-fork", SECRET, scopes=("read",)),
    OAuthClient("svc-preload", SECRET, scopes=("read",)),
    OAuthClient("svc-fork-ws", SECRET, scopes=("read",)),
]
CHILD_DEADLINE = 30.0


@pytest.fixture(scope="module")
def oauth() -> Iterator[OAuthServer]:
    with OAuthServer(CLIENTS, token_ttl=600) as server:
        yield server


def digest(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()[:16]


def child_uses_the_auth(
    auth: plugin.ClientCredentialsAuth, out: multiprocessing.connection.Connection
) -> None:
    """In the child: the sync API, a sync httpx request and an async one on a new loop."""
    try:
        seen = [digest(auth.token().access_token)]
        transport = httpx.MockTransport(
            lambda r: httpx.Response(200, text=r.headers["authorization"])
        )
        with httpx.Client(auth=auth, transport=transport) as client:
            seen.append(digest(client.get("https://api.test/").text.split()[1]))

        async def async_side() -> str:
            return digest((await auth.atoken()).access_token)

        seen.append(asyncio.run(async_side()))
        out.send({"pid": os.getpid(), "tokens": seen})
    except BaseException as exc:
        out.send({"pid": os.getpid(), "error": f"{type(exc).__name__}: {exc}"})
    finally:
        out.close()


def run_children(target: Any, auth: Any, count: int) -> list[dict[str, Any]]:
    ctx = multiprocessing.get_context("fork")
    started: list[tuple[Any, multiprocessing.connection.Connection]] = []
    results: list[dict[str, Any]] = []
    try:
        for _ in range(count):
            reader, writer = ctx.Pipe(duplex=False)
            process = ctx.Process(target=target, args=(auth, writer))
            process.start()
            writer.close()
            started.append((process, reader))
        deadline = time.monotonic() + CHILD_DEADLINE
        for process, reader in started:
            if not reader.poll(max(0.0, deadline - time.monotonic())):
                pytest.fail(f"child {process.pid} hung: no answer in {CHILD_DEADLINE}s")
            results.append(reader.recv())
            process.join(max(0.0, deadline - time.monotonic()))
            assert process.exitcode == 0
    finally:
        for process, reader in started:
            reader.close()
            if process.is_alive():
                process.kill()  # by its own PID
                process.join(5)
    return results


def test_auth_used_before_fork_gets_tokens_in_every_forked_child(oauth: OAuthServer) -> None:
    oauth.reset()
    auth = plugin.ClientCredentialsAuth(oauth.token_url, "svc-fork", SECRET, scope="read")
    parent_token = auth.token()  # the engine thread and loop now exist in the parent
    results = run_children(child_uses_the_auth, auth, 3)
    assert [r.get("error") for r in results] == [None, None, None]
    for result in results:
        assert len(set(result["tokens"])) == 1  # one token per child, for all three paths
    # Each child starts from a clean state: its own fetch (a child holds no lock or thread of
    # the parent's); the parent's token is unaffected and still served from its cache.
    assert oauth.token_requests() == 1 + 3
    assert auth.token().access_token == parent_token.access_token
    assert oauth.token_requests() == 4
    auth.close()


def child_builds_other_options(
    token_url: str, auth: plugin.ClientCredentialsAuth, out: multiprocessing.connection.Connection
) -> None:
    """In the child: an auth with other options than the parent's registration, then the parent's."""
    try:
        other = plugin.ClientCredentialsAuth(token_url, "svc-fork", SECRET, scope="read")
        seen = [digest(other.token().access_token)]
        try:
            auth.token()
            seen.append("parent's auth accepted")
        except plugin.ConfigurationError as exc:
            seen.append("refused: leeway" if "leeway" in str(exc) else str(exc))
        out.send({"pid": os.getpid(), "tokens": seen})
    except BaseException as exc:
        out.send({"pid": os.getpid(), "error": f"{type(exc).__name__}: {exc}"})
    finally:
        out.close()


def test_a_child_starts_with_no_registrations_and_the_option_rule_applies_anew(
    oauth: OAuthServer,
) -> None:
    # docs/plugin.md: the parent's registrations do not exist in a child; the first auth used
    # there registers its options, and an auth built before the fork registers at its first use
    # in the child, so it is refused there when another configuration is in use.
    oauth.reset()
    auth = plugin.ClientCredentialsAuth(oauth.token_url, "svc-fork", SECRET, scope="read", leeway=5)
    try:
        auth.token()
        with pytest.raises(plugin.ConfigurationError, match="leeway"):
            plugin.ClientCredentialsAuth(oauth.token_url, "svc-fork", SECRET, scope="read")
        results = run_children(
            functools.partial(child_builds_other_options, oauth.token_url), auth, 1
        )
        assert [r.get("error") for r in results] == [None]
        assert results[0]["tokens"][1] == "refused: leeway"
    finally:
        auth.close()


def child_reports_the_error(
    auth: plugin.ClientCredentialsAuth, out: multiprocessing.connection.Connection
) -> None:
    started = time.monotonic()
    try:
        auth.token()
        out.send({"error": None})
    except BaseException as exc:
        out.send(
            {"error": type(exc).__name__, "text": str(exc), "took": time.monotonic() - started}
        )
    finally:
        out.close()


def test_auth_on_a_workspace_built_before_fork_fails_at_once_in_the_child(
    oauth: OAuthServer,
) -> None:
    loop = tokencache.BackgroundLoop(name="fork-test-engine")
    ws = tokencache.Workspace("")
    auth = plugin.ClientCredentialsAuth(
        oauth.token_url, "svc-fork-ws", SECRET, scope="read", workspace=ws, loop=loop
    )
    try:
        auth.token()
        [result] = run_children(child_reports_the_error, auth, 1)
        assert result["error"] == "ConfigurationError"
        assert "fork" in result["text"] and result["took"] < 5
        assert auth.token() is not None  # the parent is unaffected
    finally:
        auth.close()
        loop.run(ws.close(), timeout=10)
        loop.close()


def test_gunicorn_preload_workers_get_tokens_and_none_hangs(
    oauth: OAuthServer, tmp_path: Path
) -> None:
    oauth.reset()
    config = tmp_path / "app.json"
    config.write_text(
        json.dumps(
            {
                "token_url": oauth.token_url,
                "client_id": "svc-preload",
                "client_secret": SECRET,
                "scope": "read",
            }
        )
    )
    config.chmod(0o600)
    port = free_port()
    log = (tmp_path / "gunicorn.log").open("wb")
    server = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "gunicorn",
            "--preload",
            "--workers",
            "3",
            "--bind",
            f"127.0.0.1:{port}",
            "--timeout",
            "20",
            f"tests.support.preload_app:make_app({str(config)!r})",
        ],
        cwd=REPO,
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    try:
        answers: list[dict[str, Any]] = []
        deadline = time.monotonic() + 60
        opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
        for _ in range(600):  # bounded in count and in time
            if len({a["pid"] for a in answers}) == 3 or time.monotonic() > deadline:
                break
            try:
                with opener.open(f"http://127.0.0.1:{port}/", timeout=10) as reply:
                    answers.append(json.loads(reply.read()))
            except OSError:
                time.sleep(0.1)  # gunicorn is still starting its workers
        pids = {a["pid"] for a in answers}
        assert len(pids) == 3, (pids, (tmp_path / "gunicorn.log").read_text())
        assert server.pid not in pids  # answered by forked workers, not the master
        per_worker: dict[int, set[str]] = {}
        for answer in answers:
            per_worker.setdefault(answer["pid"], set()).add(answer["token"])
        assert all(len(tokens) == 1 for tokens in per_worker.values())
        # The master's one fetch, then one per worker (each child starts clean).
        assert oauth.token_requests() == 1 + 3
        assert SECRET not in (tmp_path / "gunicorn.log").read_text()
    finally:
        server.send_signal(signal.SIGTERM)
        try:
            server.wait(timeout=20)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait(timeout=10)
        log.close()
