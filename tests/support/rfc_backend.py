"""A backend that speaks HTTP caching, for the proxy's RFC 9111 black-box tests (a real process).

    python -m tests.support.rfc_backend [--port N] [--ready-file PATH]

A raw asyncio HTTP/1.1 server (not a framework: it must be able to send broken framing). Every
request outside ``/_control/`` is recorded (method, target, headers) and answered by its query:

    cc=V        Cache-Control: V               cdn=V      CDN-Cache-Control: V
    expires=S   Expires: now + S seconds       date=S     Date: now + S (default now)
    age=N       Age: N                         lm=S       Last-Modified: now + S (S < 0)
    age1=N      Age: N on the target's first response only (later ones are new)
    etag=X      ETag: "X"; a matching If-None-Match gets 304 (with the same cc/expires fields)
    vary=NAME   Vary: NAME (the body then names the request's value of NAME)
    cookie=1    Set-Cookie                     status=N   answer with status N
    loc=PATH    Location: PATH                 cloc=PATH  Content-Location: PATH
    delay=S     wait S seconds first (at most 10)

The body is ``<target> #<count of this target>``; every response (304 too) has ``X-Count``. ``/poison`` answers ``Content-Length: 5`` and
sends ten bytes (the surplus is what a pooled connection must not keep). ``POST
/_control/fail?target=T&status=N`` makes target T answer N (no cache fields) until N=0;
``GET /_control/log`` returns every recorded request as JSON; ``POST /_control/reset`` clears it.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import email.utils
import json
import os
import signal
import time
import urllib.parse
from pathlib import Path

MAX_DELAY = 10.0
MAX_HEAD = 65536


class State:
    """Everything the backend remembers: the request log, counts, forced failures."""

    def __init__(self) -> None:
        self.log: list[dict[str, object]] = []
        self.counts: dict[str, int] = {}
        self.failing: dict[str, int] = {}


def _date(offset: float) -> bytes:
    return email.utils.formatdate(time.time() + offset, usegmt=True).encode()


def _response(status: int, headers: list[tuple[bytes, bytes]], body: bytes) -> bytes:
    lines = [b"HTTP/1.1 %d X\r\n" % status]
    lines.extend(b"%s: %s\r\n" % (n, v) for n, v in headers)
    if status not in (204, 304):
        lines.append(b"Content-Length: %d\r\n" % len(body))
    else:
        body = b""
    return b"".join((*lines, b"\r\n", body))


async def _answer(
    state: State, method: str, target: str, headers: dict[str, str], body: bytes
) -> bytes:
    parts = urllib.parse.urlsplit(target)
    if parts.path.startswith("/_control/"):
        q = dict(urllib.parse.parse_qsl(parts.query))
        if parts.path == "/_control/log":
            return _response(
                200, [(b"Content-Type", b"application/json")], json.dumps(state.log).encode()
            )
        if parts.path == "/_control/reset":
            state.log.clear()
            state.counts.clear()
            state.failing.clear()
            return _response(200, [], b"ok")
        if parts.path == "/_control/fail":
            state.failing[q["target"]] = int(q.get("status", "0"))
            return _response(200, [], b"ok")
        return _response(404, [], b"no such control")
    state.log.append({"method": method, "target": target, "headers": headers})
    count = state.counts[target] = state.counts.get(target, 0) + 1
    if parts.path == "/poison":
        return b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhelloXXXXX"
    failing = state.failing.get(target, 0)
    if failing:
        return _response(failing, [], b"failing #%d" % count)
    q = dict(urllib.parse.parse_qsl(parts.query))
    delay = min(float(q.get("delay", "0")), MAX_DELAY)
    if delay > 0:
        await asyncio.sleep(delay)
    out: list[tuple[bytes, bytes]] = [
        (b"Date", _date(float(q.get("date", "0")))),
        (b"X-Count", b"%d" % count),
    ]
    if "cc" in q:
        out.append((b"Cache-Control", q["cc"].encode()))
    if "cdn" in q:
        out.append((b"CDN-Cache-Control", q["cdn"].encode()))
    if "expires" in q:
        out.append((b"Expires", _date(float(q["expires"]))))
    if "age" in q:
        out.append((b"Age", q["age"].encode()))
    if "age1" in q and count == 1:
        out.append((b"Age", q["age1"].encode()))
    if "lm" in q:
        out.append((b"Last-Modified", _date(float(q["lm"]))))
    if "loc" in q:
        out.append((b"Location", q["loc"].encode()))
    if "cloc" in q:
        out.append((b"Content-Location", q["cloc"].encode()))
    if q.get("cookie") == "1":
        out.append((b"Set-Cookie", b"session=%d" % count))
    text = f"{target} #{count}"
    if "vary" in q:
        out.append((b"Vary", q["vary"].encode()))
        text += f" {q['vary'].lower()}={headers.get(q['vary'].lower(), '-')}"
    if "etag" in q:
        tag = f'"{q["etag"]}"'.encode()
        out.append((b"ETag", tag))
        if headers.get("if-none-match", "").encode() == tag:
            return _response(304, out, b"")
    status = int(q.get("status", "200"))
    return _response(status, [*out, (b"Content-Type", b"text/plain")], text.encode())


async def _serve(state: State, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    try:
        while True:
            try:
                head = await reader.readuntil(b"\r\n\r\n")
            except (asyncio.IncompleteReadError, asyncio.LimitOverrunError, ConnectionError):
                return
            lines = head.decode("latin-1").split("\r\n")
            method, target, _ = lines[0].split(" ", 2)
            headers: dict[str, str] = {}
            for line in lines[1:]:
                if ":" in line:
                    name, value = line.split(":", 1)
                    lname = name.strip().lower()
                    prev = headers.get(lname)
                    headers[lname] = value.strip() if prev is None else f"{prev}, {value.strip()}"
            body = b""
            if "content-length" in headers:
                body = await reader.readexactly(int(headers["content-length"]))
            elif headers.get("transfer-encoding", "").lower() == "chunked":
                while True:
                    size = int((await reader.readline()).split(b";")[0], 16)
                    chunk = await reader.readexactly(size + 2)
                    body += chunk[:-2]
                    if size == 0:
                        break
            writer.write(await _answer(state, method, target, headers, body))
            await writer.drain()
    finally:
        writer.close()


async def main(port: int, ready_file: Path | None) -> None:
    state = State()
    server = await asyncio.start_server(
        lambda r, w: _serve(state, r, w), "127.0.0.1", port, limit=MAX_HEAD
    )
    port = server.sockets[0].getsockname()[1]
    line = json.dumps({"port": port, "pid": os.getpid()})
    if ready_file is not None:
        tmp = ready_file.with_suffix(".tmp")
        tmp.write_text(line)
        tmp.replace(ready_file)
    print(line, flush=True)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    async with server:
        await stop.wait()


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--ready-file", type=Path)
    args = parser.parse_args()
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(main(args.port, args.ready_file))
