"""Byte-level fuzzing of the public port of a real `tokencache-proxy` process (hypothesis).

Whole requests are generated as bytes: every method (including CONNECT, OPTIONS, TRACE, made-up
and lower-case ones, raw bytes), every request-target form (origin, absolute, authority,
asterisk, ``x:@host``, ``//host``, ``@host``, high bytes), header names and values of any byte
0x00-0xFF, Content-Length/Transfer-Encoding combinations, chunk errors, bodies cut short, and
pipelined sequences of them. Each example is one connection: the bytes are sent, the client
half-closes, and everything the proxy answers is read until it closes (bounded).

Properties, per example: every answer is a well-formed HTTP/1.1 response and none is a 500; the
proxy never answers more responses than request heads were sent, and exactly one per request when
the sequence is well-formed; the process lives. Over the run: a raw recording listener — the
"other host" every absolute/authority/userinfo target names — received no connection; no
traceback in the log, no internal error counted; RSS grew by less than `RSS_BOUND_MIB`.
"""

from __future__ import annotations

import re
import socket
import time
from collections.abc import Iterator
from dataclasses import dataclass, field

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.support.chaos_load import rss_kib
from tests.support.proxy_cluster import BackendProcess, ProxyCluster, ProxyNode, http_get
from tests.support.raw_listener import RawListener

EXAMPLES = 300
RSS_BOUND_MIB = 40
READ_BOUND = 5.0


@dataclass
class Target:
    node: ProxyNode
    other_port: int
    counts: dict[str, int] = field(default_factory=dict)


@pytest.fixture(scope="module")
def target(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Target]:
    work = tmp_path_factory.mktemp("fuzz")
    with (
        BackendProcess(work) as backend,
        RawListener(work, "other") as other,
        ProxyCluster(
            1,
            backend.url,
            work,
            env={"MAX_REQUEST_BODY_BYTES": "4096", "BACKEND_TIMEOUT": "5s"},
        ) as cluster,
    ):
        node = cluster.nodes[0]
        t = Target(node, other.port)
        before = rss_kib(node.pid)
        yield t
        assert node.proc is not None and node.proc.poll() is None, "the proxy died"
        growth = (rss_kib(node.pid) - before) / 1024
        time.sleep(0.2)
        assert other.records() == [], "the proxy connected to another host"
        log = node.log_text()
        assert "Traceback" not in log
        status, body, _ = http_get(node.metrics_url)
        assert status == 200
        internal = re.search(rb"^proxy_internal_errors_total (\S+)$", body, re.M)
        assert internal is not None and float(internal.group(1)) == 0
        assert growth < RSS_BOUND_MIB, f"RSS grew {growth:.1f} MiB"
        print(f"public-port fuzz: {t.counts} (RSS {growth:+.1f} MiB)")


# --- strategies -------------------------------------------------------------------------------

any_bytes = st.binary(max_size=24)


def mostly(
    sane: st.SearchStrategy[bytes], wild: st.SearchStrategy[bytes]
) -> st.SearchStrategy[bytes]:
    """`sane` seven times in eight: enough requests get past the parser to reach the proxy's rules."""
    return st.integers(0, 7).flatmap(lambda i: wild if i == 0 else sane)


METHODS = [b"GET", b"HEAD", b"POST", b"PUT", b"DELETE", b"PATCH", b"OPTIONS", b"CONNECT", b"TRACE"]
methods = mostly(
    st.sampled_from(METHODS),
    st.one_of(
        st.sampled_from([b"FOO", b"get", b"PURGE", b"PROPFIND", b"G\xc9T"]),
        any_bytes.filter(lambda b: b" " not in b and b"\r" not in b and b"\n" not in b),
    ),
)


def targets(other: bytes) -> st.SearchStrategy[bytes]:
    segment = st.binary(max_size=8).map(lambda b: b.replace(b" ", b"%20")) | st.just(b"%zz")
    origin = st.lists(
        mostly(st.sampled_from([b"echo", b"a", b"..", b".", b"%2e", b"x?y=1", b""]), segment),
        min_size=1,
        max_size=4,
    ).map(lambda segs: b"/" + b"/".join(segs))
    return mostly(
        origin,
        st.sampled_from(
            [
                b"*",
                other,
                b"x:@" + other + b"/steal",
                b"//" + other + b"/steal",
                b"@" + other + b"/steal",
                b"http://" + other + b"/steal",
                b"http://x:@" + other + b"/steal",
                b"https://" + other,
                b"ftp://" + other + b"/x",
                b"/\x80\xff",
                b"/a#frag",
            ]
        )
        | any_bytes.filter(lambda b: b and b" " not in b and b"\r" not in b and b"\n" not in b),
    )


names = mostly(
    st.sampled_from(
        [
            b"Host",
            b"Content-Length",
            b"Transfer-Encoding",
            b"Expect",
            b"Connection",
            b"X-Forwarded-For",
            b"Forwarded",
            b"traceparent",
            b"Upgrade",
            b"Accept",
        ]
    ),
    any_bytes,
)
values = mostly(
    st.sampled_from(
        [
            b"chunked",
            b"gzip, chunked",
            b"xchunked",
            b"chunked, chunked",
            b"0",
            b"5",
            b"99999999",
            b"-1",
            b"100-continue",
            b"close",
            b"keep-alive",
            b"h",
            b"a@b",
            b"00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01",
        ]
    ),
    any_bytes,
)
bodies = st.one_of(
    st.just(b""),
    any_bytes,
    st.sampled_from([b"5\r\nhello\r\n0\r\n\r\n", b"zz\r\n", b"5\r\nab", b"0\r\n\r\n"]),
    st.integers(0, 5000).map(lambda n: b"%x\r\n" % n + b"x" * n + b"\r\n0\r\n\r\n"),
)


@st.composite
def raw_request(draw: st.DrawFn, other: bytes) -> bytes:
    method = draw(methods)
    target = draw(targets(other))
    version = draw(
        mostly(
            st.sampled_from([b"HTTP/1.1", b"HTTP/1.0"]), st.sampled_from([b"HTTP/2.0", b"x", b""])
        )
    )
    lines = [method + b" " + target + (b" " + version if version else b"")]
    if draw(st.integers(0, 3)):
        lines.append(b"Host: h")
    framed = False
    for name, value in draw(st.lists(st.tuples(names, values), max_size=5)):
        lines.append(name + b": " + value)
        framed = framed or name.lower() in (b"content-length", b"transfer-encoding")
    body = draw(bodies) if framed else draw(mostly(st.just(b""), bodies))
    return b"\r\n".join(lines) + b"\r\n\r\n" + body


@st.composite
def well_formed(draw: st.DrawFn) -> bytes:
    """A request the proxy must answer: an origin-form GET/HEAD/POST with Host."""
    method = draw(st.sampled_from([b"GET", b"HEAD", b"POST", b"DELETE"]))
    path = draw(st.sampled_from([b"/echo", b"/a", b"/b?x=1", b"/a/../c", b"/%41"]))
    body = draw(st.binary(max_size=64)) if method == b"POST" else b""
    head = b"%s %s HTTP/1.1\r\nHost: h\r\n" % (method, path)
    if method == b"POST":
        if draw(st.booleans()):
            chunked = b"%x\r\n%s\r\n0\r\n\r\n" % (len(body), body) if body else b"0\r\n\r\n"
            return head + b"Transfer-Encoding: chunked\r\n\r\n" + chunked
        return head + b"Content-Length: %d\r\n\r\n" % len(body) + body
    return head + b"\r\n"


# --- running one example ------------------------------------------------------------------------


def converse(node: ProxyNode, data: bytes) -> bytes:
    """Send `data`, half-close, read until the proxy closes (bounded)."""
    with socket.create_connection(("127.0.0.1", node.port), timeout=READ_BOUND) as sock:
        try:
            sock.sendall(data)
            sock.shutdown(socket.SHUT_WR)
        except (BrokenPipeError, ConnectionResetError):
            pass  # refused mid-way: what it answered is still there to read
        out = b""
        deadline = time.monotonic() + READ_BOUND
        while time.monotonic() < deadline:
            try:
                chunk = sock.recv(65536)
            except ConnectionResetError:
                break
            if not chunk:
                break
            out += chunk
        return out


def statuses(raw: bytes, heads: list[str], methods: list[bytes]) -> list[int]:
    """Final statuses of a response stream (CL, chunked or close-delimited); asserts framing.

    `methods` are the requests' methods in order (the answer to a HEAD has no body).
    """
    out: list[int] = []
    while raw:
        head, sep, rest = raw.partition(b"\r\n\r\n")
        assert sep, raw[:200]
        lines = head.split(b"\r\n")
        m = re.fullmatch(rb"HTTP/1\.1 (\d{3}) [^\r\n]*", lines[0])
        assert m, lines[0]
        status = int(m.group(1))
        fields = {}
        for line in lines[1:]:
            name, colon, value = line.partition(b":")
            assert colon, line
            fields[name.strip().lower()] = value.strip()
        if 100 <= status < 200:
            raw = rest
            continue
        out.append(status)
        heads.append(head.decode("latin-1"))
        head_answer = len(out) <= len(methods) and methods[len(out) - 1] == b"HEAD"
        if head_answer and (not rest or rest.startswith(b"HTTP/1.1 ")):
            raw = rest  # (a refusal of a HEAD request's bytes does carry its text)
        elif b"content-length" in fields:
            raw = rest[int(fields[b"content-length"]) :]
        elif fields.get(b"transfer-encoding") == b"chunked":
            while True:
                size_line, _, rest = rest.partition(b"\r\n")
                size = int(size_line, 16)
                rest = rest[size + 2 :]
                if size == 0:
                    break
            raw = rest
        else:
            raw = b""  # delimited by the close (or a HEAD/204/304 without a body)
    return out


SLOW = settings(
    max_examples=EXAMPLES,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)


@SLOW
@given(data=st.data())
def test_fuzzed_request_sequences(target: Target, data: st.DataObject) -> None:
    other = b"127.0.0.1:%d" % target.other_port
    sequence = data.draw(st.lists(raw_request(other), min_size=1, max_size=4))
    blob = b"".join(sequence)
    if data.draw(st.integers(0, 3)) == 0:
        blob = blob[: data.draw(st.integers(0, len(blob)))]  # cut short anywhere
    heads: list[str] = []
    methods = [r.split(b" ", 1)[0] for r in sequence]
    got = statuses(converse(target.node, blob), heads, methods)
    assert 500 not in got, heads
    # One answer per request at most, plus one 400 when bytes after the last whole request do
    # not parse (a drawn request may carry more body than its framing says): then it closes.
    assert len(got) <= len(sequence) + 1, heads
    if len(got) == len(sequence) + 1:
        assert got[-1] == 400, heads
    for status in got:
        key = str(status)
        target.counts[key] = target.counts.get(key, 0) + 1
    target.counts["examples"] = target.counts.get("examples", 0) + 1


@settings(max_examples=EXAMPLES // 4, deadline=None, parent=SLOW)
@given(sequence=st.lists(well_formed(), min_size=1, max_size=6))
def test_well_formed_pipelines_get_exactly_one_answer_each(
    target: Target, sequence: list[bytes]
) -> None:
    heads: list[str] = []
    methods = [r.split(b" ", 1)[0] for r in sequence]
    got = statuses(converse(target.node, b"".join(sequence)), heads, methods)
    assert len(got) == len(sequence), heads
    assert all(status < 500 for status in got), heads
    target.counts["pipelines"] = target.counts.get("pipelines", 0) + 1
