"""A real OAuth2 authorization server (npm ``oidc-provider``) on loopback, for the tests.

Theory of operation: ``OAuthServer`` writes the clients to a JSON file in a private temporary
directory (mode 0600: it holds secrets), starts ``node tests/oauth/server.mjs`` as a child process
bound to 127.0.0.1, and waits, bounded in count and time, for the ready file the server writes once
it listens. The first start asks for port 0, so the OS picks a free port with no race; ``restart()``
asks for the same port again. The server keeps tokens and counters in memory: a restart forgets
both, as a real authorization server without persistence would.

API (the plugin's and proxy's tests rely on it; keep it stable)::

    clients = [
        OAuthClient("svc-a", "secret-a", scopes=["read"]),  # client_secret_basic
        OAuthClient("svc-b", "secret-b", scopes=["read"], auth_method="client_secret_post"),
    ]
    with OAuthServer(clients, token_ttl=3600) as server:  # or server.start() ... server.stop()
        server.token_url                  # http://127.0.0.1:PORT/token
        server.issuer                     # http://127.0.0.1:PORT
        server.token_requests()           # token requests that arrived, faulted ones included
        server.token_requests_by_client() # {"svc-a": 2, ...}
        server.faulted_requests()         # answered by an injected fault
        server.stats()                    # the whole counter document (see tests/oauth/control.mjs)
        server.reset()                    # counters to zero and the fault cleared
        server.set_fault(status=429, retry_after=3)   # token endpoint answers 429 + Retry-After
        server.set_fault(mode="none", delay_ms=2000)  # token endpoint answers, 2 s late
        server.set_fault(status=503, count=1)         # only the next token request fails
        server.set_fault(mode="reset")                # connection closed without an answer
        server.set_fault(mode="body", body={"access_token": ""})  # 200 with this JSON body
        server.clear_fault()
        server.wait_for_token_requests(1)             # bounded poll, e.g. for a slow request
        await server.await_token_requests(1)          # the same without blocking the event loop
        server.restart()                  # stop, then start on the same port
        server.token_info(access_token)   # {"client_id", "scope", "x5t#S256"} or None

Every client-authentication method oidc-provider knows is available: ``client_secret_jwt``,
``private_key_jwt`` (``jwks=`` the client's public keys), and with ``tls=ServerTls(cert, key, ca)``
(https, client certificates asked for) the RFC 8705 methods ``tls_client_auth`` (``tls_san_dns=``)
and ``self_signed_tls_client_auth`` (``jwks=`` with ``x5c``), with certificate-bound tokens
(``certificate_bound=True``). tests/support/client_keys.py makes the key material.

What the server enforces: the client secret (401 ``invalid_client``), the registered
authentication method (``enforce_auth_method=False`` accepts basic and post alike, as plain
oidc-provider does), the client's registered scopes (400 ``invalid_scope`` for any other scope),
the grant type. ``expires_in`` equals ``token_ttl``. With ``audience`` set, tokens are issued for
that resource (RFC 8707 ``resource``), as opaque strings or, with ``access_token_format="jwt"``,
as RS256 JWTs whose ``aud`` is the audience.

Errors: every failure of the harness itself (node missing, install failed, no start within the
deadline, control API refused) raises ``OAuthServerError``. Secrets never appear in its messages.

If ``tests/oauth/node_modules`` is missing or older than the lock file, ``start()`` runs
``scripts/tools.d/20-oauth-server.sh`` first (what ``make tools`` runs).
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import shutil
import ssl
import subprocess
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Any, Literal, Self

__all__ = [
    "AuthMethod",
    "FaultMode",
    "OAuthClient",
    "OAuthServer",
    "OAuthServerError",
    "ServerTls",
    "ensure_installed",
]

AuthMethod = Literal[
    "client_secret_basic",
    "client_secret_post",
    "client_secret_jwt",
    "private_key_jwt",
    "tls_client_auth",
    "self_signed_tls_client_auth",
]
FaultMode = Literal["none", "status", "reset", "body"]

_REPO = Path(__file__).resolve().parents[2]
_OAUTH_DIR = _REPO / "tests" / "oauth"
_TOOLS_SCRIPT = _REPO / "scripts" / "tools.d" / "20-oauth-server.sh"
_STAMP = _OAUTH_DIR / "node_modules" / ".tokencache-lock.sha256"

_START_DEADLINE = 30.0  # seconds until the ready file appears; node starts in well under one
_STOP_DEADLINE = 10.0
_INSTALL_DEADLINE = 600.0
_POLL_INTERVAL = 0.02
_CONTROL_TIMEOUT = 10.0


class OAuthServerError(RuntimeError):
    """The test authorization server could not be installed, started or controlled."""


class OAuthServerTimeout(OAuthServerError):
    """The server process ran but did not listen within the start deadline."""


@dataclass(frozen=True)
class OAuthClient:
    """A client registered at the test server. ``scopes`` are the only scopes it may request."""

    client_id: str
    secret: str = field(repr=False)
    scopes: Sequence[str] = ()
    auth_method: AuthMethod = "client_secret_basic"
    #: Public keys (JWKS JSON text): private_key_jwt, self_signed_tls_client_auth (with x5c).
    jwks: str | None = None
    #: The client certificate's DNS name: tls_client_auth.
    tls_san_dns: str | None = None
    #: RFC 8705 certificate-bound access tokens (on an https server).
    certificate_bound: bool = False

    def __post_init__(self) -> None:
        # A tuple keeps the frozen dataclass hashable when a caller passes a list.
        object.__setattr__(self, "scopes", tuple(self.scopes))

    def to_config(self) -> dict[str, Any]:
        """The client as server.mjs reads it (see tests/oauth/config.mjs)."""
        config: dict[str, Any] = {
            "client_id": self.client_id,
            "client_secret": self.secret,
            "scopes": list(self.scopes),
            "auth_method": self.auth_method,
            "certificate_bound": self.certificate_bound,
        }
        if self.jwks is not None:
            config["jwks"] = json.loads(self.jwks)
        if self.tls_san_dns is not None:
            config["tls_client_auth_san_dns"] = self.tls_san_dns
        return config


@dataclass(frozen=True)
class ServerTls:
    """PEM files for an https server: its certificate and key, and the CA its clients' certs
    must chain to for ``tls_client_auth`` (self-signed client certificates are admitted too)."""

    cert: Path
    key: Path
    ca: Path


def _installed() -> bool:
    lock = _OAUTH_DIR / "package-lock.json"
    if not (_OAUTH_DIR / "node_modules" / "oidc-provider" / "package.json").is_file():
        return False
    try:
        stamp = _STAMP.read_text().strip()
    except OSError:
        return False
    return stamp == hashlib.sha256(lock.read_bytes()).hexdigest()


def ensure_installed() -> None:
    """Install tests/oauth/node_modules through the tools script unless the lock is satisfied."""
    if _installed():
        return
    try:
        done = subprocess.run(
            ["bash", str(_TOOLS_SCRIPT)],
            cwd=_REPO,
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            timeout=_INSTALL_DEADLINE,
            check=False,
        )
    except subprocess.TimeoutExpired as exc:
        raise OAuthServerError(
            f"{_TOOLS_SCRIPT.name} did not finish in {_INSTALL_DEADLINE}s"
        ) from exc
    if done.returncode != 0 or not _installed():
        raise OAuthServerError(
            f"{_TOOLS_SCRIPT.name} failed (exit {done.returncode}):\n{done.stdout}\n{done.stderr}"
        )


def _node() -> str:
    node = shutil.which("node")
    if node is None:
        raise OAuthServerError("node is not on PATH: run `make tools` (Node >= 20 is needed)")
    return node


class OAuthServer:
    """One oidc-provider process on 127.0.0.1 with the given clients; see the module docstring."""

    def __init__(
        self,
        clients: Iterable[OAuthClient],
        token_ttl: int = 3600,
        *,
        audience: str | None = None,
        access_token_format: Literal["opaque", "jwt"] = "opaque",
        enforce_auth_method: bool = True,
        start_timeout: float = _START_DEADLINE,
        tls: ServerTls | None = None,
    ) -> None:
        self.clients: tuple[OAuthClient, ...] = tuple(clients)
        self.token_ttl = token_ttl
        self.audience = audience
        self._config = {
            "clients": [c.to_config() for c in self.clients],
            "token_ttl": token_ttl,
            "audience": audience,
            "access_token_format": access_token_format,
            "enforce_auth_method": enforce_auth_method,
        }
        self.tls = tls
        if tls is not None:
            self._config["tls"] = {k: str(getattr(tls, k)) for k in ("cert", "key", "ca")}
        self._start_timeout = start_timeout
        self._process: subprocess.Popen[bytes] | None = None
        self._workdir: tempfile.TemporaryDirectory[str] | None = None
        self._port: int | None = None  # kept across stop() so restart() reuses it

    # -- lifecycle -----------------------------------------------------------------------------

    def start(self, port: int | None = None) -> Self:
        """Start the server (on ``port``, else a free one) and wait until it listens.

        A start that does not listen in time is tried once more: on this shared 2-core machine a
        full test run has (rarely) seen node sit silent past the deadline right after start-up,
        which a second start has always cleared. A second failure is raised with both logs.
        """
        if self.running:
            raise OAuthServerError("the OAuth server is already running")
        ensure_installed()
        try:
            return self._start_once(port)
        except OAuthServerTimeout as first:
            try:
                return self._start_once(port)
            except OAuthServerError as second:
                raise OAuthServerError(f"{second}\n(first attempt: {first})") from None

    def _start_once(self, port: int | None) -> Self:
        self._workdir = tempfile.TemporaryDirectory(prefix="oauth-server-")
        work = Path(self._workdir.name)
        config = work / "config.json"
        fd = os.open(config, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as out:
            json.dump(self._config, out)
        ready = work / "ready.json"
        with (work / "server.log").open("ab") as log:
            self._process = subprocess.Popen(
                [
                    _node(),
                    str(_OAUTH_DIR / "server.mjs"),
                    "--port",
                    str(port if port is not None else 0),
                    "--config",
                    str(config),
                    "--ready-file",
                    str(ready),
                ],
                cwd=_OAUTH_DIR,  # ESM imports resolve from the script's folder
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        try:
            self._port = self._wait_ready(ready)
        except BaseException:
            self.stop()
            raise
        return self

    def _wait_ready(self, ready: Path) -> int:
        assert self._process is not None
        deadline = time.monotonic() + self._start_timeout
        for _ in range(int(self._start_timeout / _POLL_INTERVAL) + 1):  # bounded in count and time
            if ready.is_file():
                return int(json.loads(ready.read_text())["port"])
            if self._process.poll() is not None:
                raise OAuthServerError(
                    f"the OAuth server exited at start-up (code {self._process.returncode}):\n"
                    + self.log_text()
                )
            if time.monotonic() > deadline:
                break
            time.sleep(_POLL_INTERVAL)  # polling a real process, not waiting a fixed time
        raise OAuthServerTimeout(
            f"the OAuth server did not listen within {self._start_timeout}s:\n{self.log_text()}"
        )

    def stop(self) -> None:
        """Stop the server by PID (SIGTERM, then SIGKILL) and remove its files. Idempotent."""
        process, self._process = self._process, None
        try:
            if process is not None and process.poll() is None:
                process.terminate()
                try:
                    process.wait(timeout=_STOP_DEADLINE)
                except subprocess.TimeoutExpired:
                    process.kill()
                    process.wait(timeout=_STOP_DEADLINE)
        finally:
            workdir, self._workdir = self._workdir, None
            if workdir is not None:
                workdir.cleanup()

    def restart(self) -> Self:
        """Stop the server, then start it again on the same port (tokens and counters reset)."""
        if self._port is None:
            raise OAuthServerError("restart() needs a server that was started before")
        port = self._port
        self.stop()
        return self.start(port)

    def __enter__(self) -> Self:
        return self if self.running else self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    # -- where it is -----------------------------------------------------------------------------

    @property
    def running(self) -> bool:
        """Whether the server process is alive."""
        return self._process is not None and self._process.poll() is None

    @property
    def pid(self) -> int:
        """The server's process id."""
        if self._process is None:
            raise OAuthServerError("the OAuth server is not running")
        return self._process.pid

    @property
    def port(self) -> int:
        """The port on 127.0.0.1 (still known after stop(), for connection-refused tests)."""
        if self._port is None:
            raise OAuthServerError("the OAuth server was never started")
        return self._port

    @property
    def issuer(self) -> str:
        """The issuer identifier, ``http://127.0.0.1:PORT`` (``https`` with ``tls``)."""
        scheme = "http" if self.tls is None else "https"
        return f"{scheme}://127.0.0.1:{self.port}"

    @property
    def token_url(self) -> str:
        """The token endpoint."""
        return f"{self.issuer}/token"

    def log_text(self) -> str:
        """What the server printed so far (empty once stopped). Carries no secrets."""
        if self._workdir is None:
            return ""
        log = Path(self._workdir.name) / "server.log"
        return log.read_text(errors="replace") if log.exists() else ""

    # -- control API -----------------------------------------------------------------------------

    def _control(self, method: str, path: str, body: dict[str, Any] | None = None) -> Any:
        data = None if body is None else json.dumps(body).encode()
        request = urllib.request.Request(
            f"{self.issuer}/_control/{path}",
            data=data,
            method=method,
            headers={"content-type": "application/json"},
        )
        # No proxy from the environment: the server is on loopback.
        handlers: list[urllib.request.BaseHandler] = [urllib.request.ProxyHandler({})]
        if self.tls is not None:
            context = ssl.create_default_context(cafile=str(self.tls.ca))
            handlers.append(urllib.request.HTTPSHandler(context=context))
        opener = urllib.request.build_opener(*handlers)
        try:
            with opener.open(request, timeout=_CONTROL_TIMEOUT) as reply:
                return json.loads(reply.read())
        except urllib.error.HTTPError as exc:
            raise OAuthServerError(f"control {method} {path}: {exc.code} {exc.read()!r}") from exc
        except OSError as exc:
            raise OAuthServerError(f"control {method} {path}: {exc}") from exc

    def stats(self) -> dict[str, Any]:
        """The counter document: token_requests, by_client, issued, rejected, faulted, …"""
        stats: dict[str, Any] = self._control("GET", "stats")
        return stats

    def token_requests(self) -> int:
        """Token requests that arrived since start or reset, faulted ones included."""
        return int(self.stats()["token_requests"])

    def token_requests_by_client(self) -> dict[str, int]:
        """Token requests per claimed client id (``(none)`` when a request named none)."""
        return {k: int(v) for k, v in self.stats()["by_client"].items()}

    def faulted_requests(self) -> int:
        """Token requests answered by an injected fault instead of oidc-provider."""
        return int(self.stats()["faulted"])

    def token_info(self, access_token: str) -> dict[str, Any] | None:
        """What the server recorded for an issued token (``client_id``, ``scope``,
        ``x5t#S256`` for a certificate-bound one), or None for a token it does not know."""
        try:
            info: dict[str, Any] = self._control("POST", "token-info", {"token": access_token})
        except OAuthServerError as exc:
            if isinstance(exc.__cause__, urllib.error.HTTPError) and exc.__cause__.code == 404:
                return None
            raise
        return info

    def reset(self) -> None:
        """Set every counter to zero and clear the fault."""
        self._control("POST", "reset")

    def set_fault(
        self,
        mode: FaultMode = "status",
        status: int | None = 503,
        retry_after: int | None = None,
        delay_ms: int = 0,
        count: int | None = None,
        body: dict[str, Any] | None = None,
    ) -> dict[str, Any]:
        """Make the token endpoint fail or stall; returns the fault the server armed.

        ``mode="status"`` answers ``status`` with an OAuth2 JSON error body (``Retry-After``
        when ``retry_after`` is given); ``mode="reset"`` closes the connection unanswered;
        ``mode="none"`` with ``delay_ms`` only delays; ``mode="body"`` answers 200 with ``body``
        (a malformed token response). ``delay_ms`` applies before any mode.
        ``count`` limits the fault to that many requests; None keeps it until cleared.
        """
        fault: dict[str, Any] = {"mode": mode, "delay_ms": delay_ms}
        if mode == "status":
            fault["status"] = status
        if retry_after is not None:
            fault["retry_after"] = retry_after
        if body is not None:
            fault["body"] = body
        if count is not None:
            fault["count"] = count
        armed: dict[str, Any] = self._control("POST", "fault", fault)
        return armed

    def clear_fault(self) -> None:
        """Let the token endpoint answer normally again."""
        self._control("POST", "fault", {"mode": "none"})

    def wait_for_token_requests(self, at_least: int, within: float = 10.0) -> int:
        """Poll (bounded) until ``at_least`` token requests arrived; returns the count."""
        deadline = time.monotonic() + within
        seen = self.token_requests()
        for _ in range(int(within / _POLL_INTERVAL) + 1):
            if seen >= at_least or time.monotonic() > deadline:
                break
            time.sleep(_POLL_INTERVAL)  # polling a real process, not waiting a fixed time
            seen = self.token_requests()
        if seen < at_least:
            raise OAuthServerError(f"{seen} token requests after {within}s, wanted {at_least}")
        return seen

    async def await_token_requests(self, at_least: int, within: float = 10.0) -> int:
        """Like wait_for_token_requests, for async tests: the event loop keeps running."""
        deadline = time.monotonic() + within
        seen = await asyncio.to_thread(self.token_requests)
        for _ in range(int(within / _POLL_INTERVAL) + 1):
            if seen >= at_least or time.monotonic() > deadline:
                break
            await asyncio.sleep(_POLL_INTERVAL)  # polling a real process, not waiting a fixed time
            seen = await asyncio.to_thread(self.token_requests)
        if seen < at_least:
            raise OAuthServerError(f"{seen} token requests after {within}s, wanted {at_least}")
        return seen
