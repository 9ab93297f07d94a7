"""A listener that records every byte it receives, as a real process (for black-box tests).

Each connection's bytes are appended to the record file as one JSON line ``{"hex": ...}`` when
the connection ends (or when a request on it is answered). Every request whose head and body
(``Content-Length``, or chunked up to its last chunk) have arrived gets one fixed answer: ``--answer-json`` as an
``application/json`` 200 (a stand-in OAuth2 token endpoint), else ``ok``. On start one JSON line
``{"port": N, "pid": P}`` goes to ``--ready-file`` (atomically).

Used two ways: as "another host" that a proxy must never reach (its record must stay empty) and
as the token endpoint whose token must reach only the backend.

    python -m tests.support.raw_listener --record rec.jsonl --ready-file ready.json
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import signal
import subprocess
import sys
from pathlib import Path
from typing import Self

from tests.support.proxy_cluster import REPO, START_DEADLINE, _stop, base_env, wait_until

READ_IDLE = 10.0
MAX_BYTES = 1 << 20


class Recorder:
    """Serves connections and appends what each sent to `record`."""

    def __init__(self, record: Path, answer: bytes, content_type: bytes) -> None:
        self.record = record
        self.answer = b"".join(
            (
                b"HTTP/1.1 200 OK\r\nContent-Type: %s\r\n" % content_type,
                b"Content-Length: %d\r\nConnection: close\r\n\r\n" % len(answer),
                answer,
            )
        )

    def _save(self, data: bytes) -> None:
        with self.record.open("a") as out:
            out.write(json.dumps({"hex": data.hex()}) + "\n")

    async def serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        data = b""
        try:
            while len(data) < MAX_BYTES:
                chunk = await asyncio.wait_for(reader.read(65536), READ_IDLE)
                if not chunk:
                    break
                data += chunk
                head, sep, body = data.partition(b"\r\n\r\n")
                if not sep:
                    continue
                length, chunked = 0, False
                for line in head.split(b"\r\n")[1:]:
                    name, _, value = line.partition(b":")
                    name = name.strip().lower()
                    if name == b"content-length" and value.strip().isdigit():
                        length = int(value.strip())
                    chunked = chunked or name == b"transfer-encoding"
                # (a chunked body ends with the last chunk; trailers are not expected here)
                if body.endswith(b"0\r\n\r\n") if chunked else len(body) >= length:
                    writer.write(self.answer)
                    await writer.drain()
                    break
        except (TimeoutError, ConnectionError):
            pass
        finally:
            self._save(data)
            writer.close()


def _write_ready(path: Path, text: str) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text)
    tmp.replace(path)


async def _serve(args: argparse.Namespace) -> None:
    answer, ctype = (
        (args.answer_json.encode(), b"application/json")
        if args.answer_json
        else (
            b"ok\n",
            b"text/plain",
        )
    )
    recorder = Recorder(Path(args.record), answer, ctype)
    server = await asyncio.start_server(recorder.serve, "127.0.0.1", args.port)
    port = server.sockets[0].getsockname()[1]
    _write_ready(Path(args.ready_file), json.dumps({"port": port, "pid": os.getpid()}))
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    async with server:
        await stop.wait()


class RawListener:
    """This module as a real process: `port`, `records()` (bytes per connection), `stop()`."""

    def __init__(self, workdir: Path, name: str, answer_json: str = "") -> None:
        self.record = workdir / f"{name}.jsonl"
        self.ready = workdir / f"{name}-ready.json"
        self.log = workdir / f"{name}.log"
        self.answer_json = answer_json
        self.proc: subprocess.Popen[bytes] | None = None
        self.port = 0

    def start(self) -> Self:
        """Start it and wait for its ready file (bounded)."""
        args = [sys.executable, "-m", "tests.support.raw_listener", "--record", str(self.record)]
        args += ["--ready-file", str(self.ready)]
        if self.answer_json:
            args += ["--answer-json", self.answer_json]
        with self.log.open("ab") as out:
            self.proc = subprocess.Popen(
                args, cwd=REPO, env=base_env(), stdin=subprocess.DEVNULL, stdout=out, stderr=out
            )

        def check() -> int:
            assert self.proc is not None
            if self.proc.poll() is not None:
                raise RuntimeError(f"raw listener exited with {self.proc.returncode}")
            return int(json.loads(self.ready.read_text())["port"]) if self.ready.exists() else 0

        self.port = wait_until(check, START_DEADLINE, "raw listener ready")
        return self

    def records(self) -> list[bytes]:
        """What each finished connection sent, in order."""
        if not self.record.exists():
            return []
        lines = self.record.read_text().splitlines()
        return [bytes.fromhex(json.loads(line)["hex"]) for line in lines if line]

    def stop(self) -> None:
        """SIGTERM the PID (SIGKILL after the deadline). Idempotent."""
        proc, self.proc = self.proc, None
        if proc is not None:
            _stop(proc)

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def main(argv: list[str] | None = None) -> int:
    """Run until SIGTERM."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--record", required=True)
    parser.add_argument("--ready-file", required=True)
    parser.add_argument("--answer-json", default="")
    args = parser.parse_args(argv)
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(_serve(args))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
