"""Start real OS processes for tests and always stop them by PID."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import tempfile
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
        # Output goes to a file, not a pipe: nobody reads a pipe while the test runs, and a chatty
        # child would block once the pipe buffer fills.
        self._log = tempfile.TemporaryFile()  # noqa: SIM115 - read and kept for output()
        self.popen = subprocess.Popen(
            list(args),
            cwd=ROOT,
            env=full_env,
            stdin=subprocess.DEVNULL,
            stdout=self._log,
            stderr=subprocess.STDOUT,
        )
        self.pid = self.popen.pid
        self._final_output = ""

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
        if not self._log.closed:
            self._final_output = self.output()
            self._log.close()
        return self._final_output

    def output(self) -> str:
        """What the process printed so far (all of it, once stopped)."""
        if self._log.closed:
            return self._final_output
        self._log.seek(0)
        return self._log.read().decode(errors="replace")


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
