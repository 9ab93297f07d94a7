"""A real ``moto_server`` (moto[server]'s AWS emulator) on loopback, for secret-reference tests.

``running_moto_server()`` starts ``moto_server -H 127.0.0.1 -p <free port>`` from this virtualenv,
waits (bounded) until it answers, and stops it by PID when the block ends. ``extra_env`` reaches
only the child process: ``INITIAL_NO_AUTH_ACTION_COUNT=N`` makes moto enforce IAM (signatures and
policies) for every call after the first N, which is how the access-denied tests get a real "no".
The ``moto_server`` fixture is the plain (no IAM) instance shared by a test module.
"""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.support.net import free_port

__all__ = ["MotoServer", "free_port", "moto_server", "running_moto_server"]

_START_DEADLINE = 30.0  # seconds for moto_server to answer; it imports a lot on first start
_STOP_DEADLINE = 10.0
_START_ATTEMPTS = 3  # a free port can be taken between asking and binding: retry on a new one


@dataclass(frozen=True)
class MotoServer:
    """A running moto_server: where it listens and the process behind it."""

    endpoint_url: str
    process: subprocess.Popen[bytes]

    @property
    def pid(self) -> int:
        """The server's process id."""
        return self.process.pid


def _moto_executable() -> str:
    found = Path(sys.executable).with_name("moto_server")
    if not found.exists():
        raise RuntimeError(f"moto_server not found next to {sys.executable}: install moto[server]")
    return str(found)


def _child_env(extra_env: Mapping[str, str]) -> dict[str, str]:
    # The emulator must not see the developer's real AWS settings, nor inherit a no-auth count.
    env = {k: v for k, v in os.environ.items() if not k.startswith("AWS_")}
    env.pop("INITIAL_NO_AUTH_ACTION_COUNT", None)
    env.update(extra_env)
    return env


def _answers(endpoint_url: str) -> bool:
    try:
        with urllib.request.urlopen(f"{endpoint_url}/moto-api/", timeout=1.0) as reply:
            return int(reply.status) == 200
    except (urllib.error.URLError, OSError):
        return False


def _stop(process: subprocess.Popen[bytes]) -> None:
    if process.poll() is None:
        process.terminate()  # by PID: only the process this module started
        try:
            process.wait(timeout=_STOP_DEADLINE)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=_STOP_DEADLINE)


def _start_once(extra_env: Mapping[str, str], log: Path) -> MotoServer | None:
    """Start one server; None when it exited early (port taken), raise when it never answers."""
    port = free_port()
    with log.open("wb") as sink:
        process = subprocess.Popen(
            [_moto_executable(), "-H", "127.0.0.1", "-p", str(port)],
            stdin=subprocess.DEVNULL,
            stdout=sink,
            stderr=subprocess.STDOUT,
            env=_child_env(extra_env),
        )
    server = MotoServer(f"http://127.0.0.1:{port}", process)
    deadline = time.monotonic() + _START_DEADLINE
    try:
        for _ in range(int(_START_DEADLINE / 0.05) + 1):  # bounded in count and in time
            if process.poll() is not None:
                return None
            if _answers(server.endpoint_url):
                return server
            if time.monotonic() > deadline:
                break
            time.sleep(0.05)  # polling a real process, not waiting for a fixed time
    except BaseException:
        _stop(process)
        raise
    _stop(process)
    raise RuntimeError(f"moto_server did not answer within {_START_DEADLINE}s:\n{log.read_text()}")


@contextlib.contextmanager
def running_moto_server(extra_env: Mapping[str, str] | None = None) -> Iterator[MotoServer]:
    """Run a moto_server on 127.0.0.1 for the duration of the block; always stopped afterwards."""
    with tempfile.TemporaryDirectory(prefix="moto-") as tmp:
        log = Path(tmp) / "moto_server.log"
        server = None
        for _ in range(_START_ATTEMPTS):
            server = _start_once(extra_env or {}, log)
            if server is not None:
                break
        if server is None:
            raise RuntimeError(f"moto_server exited at start-up:\n{log.read_text()}")
        try:
            yield server
        finally:
            _stop(server.process)


@pytest.fixture(scope="module")
def moto_server() -> Iterator[MotoServer]:
    """A plain moto_server (no IAM enforcement) shared by the tests of one module."""
    with running_moto_server() as server:
        yield server
