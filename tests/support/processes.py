"""Start real OS processes for tests and always stop them by PID."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Sequence

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


class Process:
    """A child process started for a test; ``stop`` terminates it, then kills it."""

    def __init__(
        self, args: Sequence[str], env: dict[str, str] | None = None, name: str = ""
    ) -> None:
        self.name = name or args[0]
        full_env = {**os.environ, "PYTHONPATH": ROOT, **(env or {})}
        self.popen = subprocess.Popen(
            list(args),
            cwd=ROOT,
            env=full_env,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
        )
        self.pid = self.popen.pid

    @classmethod
    def python(cls, module: str, *args: str, env: dict[str, str] | None = None) -> Process:
        """Run ``python -m module args…`` with the test interpreter."""
        return cls([sys.executable, "-m", module, *args], env=env, name=module)

    def alive(self) -> bool:
        return self.popen.poll() is None

    def kill9(self) -> None:
        with contextlib.suppress(ProcessLookupError):
            os.kill(self.pid, signal.SIGKILL)
        self.popen.wait(timeout=10)

    def stop(self, timeout: float = 10.0) -> str:
        """Stop the process (SIGTERM, then SIGKILL) and return what it printed."""
        if self.alive():
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.pid, signal.SIGTERM)
            try:
                self.popen.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                self.kill9()
        out = self.popen.stdout.read() if self.popen.stdout else b""
        if self.popen.stdout:
            self.popen.stdout.close()
        return out.decode(errors="replace")


def wait_http(url: str, timeout: float = 20.0, proc: Process | None = None) -> None:
    """Poll ``url`` until it answers (any status), bounded by ``timeout``."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and not proc.alive():
            raise RuntimeError(f"{proc.name} exited early:\n{proc.stop()}")
        try:
            with urllib.request.urlopen(url, timeout=1):
                return
        except urllib.error.HTTPError:
            return
        except OSError:
            time.sleep(0.05)
    raise TimeoutError(f"{url} did not answer within {timeout}s")
