"""Cache keys: every key the public port can make is accepted; hostile keys (from the peer port)
are refused before anything reaches the backend. Unit tests: the loader talks to respx."""

from __future__ import annotations

import logging
import re

import httpx
import pytest
import respx
from hypothesis import given, settings
from hypothesis import strategies as st

import tokencache
from tokencache.proxy._forward import BackendSender
from tokencache.proxy._http_rules import check_head
from tokencache.proxy._keys import BadKey, base_key, check_key, parse_key, variant_key
from tokencache.proxy._loader import BackendLoader
from tokencache.proxy._metrics import ProxyMetrics
from tokencache.proxy._policy import CachePolicy
from tokencache.proxy._stored import encode_response, encode_vary

METHODS = frozenset({"GET", "HEAD"})
BACKEND = "http://backend.test:8080"

HOSTILE = [
    "DELETE /users/1",
    "POST /x",
    "GET /x\nhost: internal-admin",
    "GET /x\ncontent-length: 5",
    "GET /x\nauthorization: Bearer stolen",
    "GET /x\r\nhost: a",
    "GET /x\nx-v: a\r\nhost: b",
    "GET /x\nx-v: a\x00b",
    "GET /x\nx-v: \u0100",
    "GET /x\nx-v:no-space",
    "GET /x\nX-V: upper",
    "GET /x\nx v: a",
    "GET /x\nx-v: a\nx-v: b",
    "GET /x\n",
    "GET x:@evil:1/steal",
    "GET @evil/steal",
    "GET http://evil/steal",
    "GET //evil/steal\nnot-a-line",
    "GET /a/../../admin",
    "GET /a b",
    "GET /\xff",
    "GET",
    "",
    "GET  /x",
    "GET /v\naccept-language: fr",  # a variant without its generation line
    "GET /v\n#0A1B\naccept-language: fr",  # not a generation this proxy makes
    "GET /v\n#0a1b",  # a generation and no varied header
    "GET /v\n#0a1b\n#0a1b\naccept-language: fr",
]


@pytest.mark.parametrize("key", HOSTILE)
def test_hostile_keys_are_refused(key: str):
    with pytest.raises(BadKey):
        check_key(key, METHODS)
    assert issubclass(BadKey, tokencache.InvalidArgument)


# Requests the public port accepts, as raw head parts.
pchar = st.sampled_from([*"abcXYZ019-._~!$&'()*+,;=:@", "%2F", "%41"])
paths = st.lists(st.lists(pchar, max_size=3).map("".join), min_size=1, max_size=4).map(
    lambda segs: "/" + "/".join(segs)
)
queries = st.one_of(st.just(""), st.text(st.sampled_from(list("ab=&?/:@%")), max_size=6))
field_values = st.binary(max_size=12).map(
    lambda b: bytes(c for c in b if c == 9 or 32 <= c <= 126 or c >= 128).strip(b" \t")
)


@settings(max_examples=300, deadline=None)
@given(
    method=st.sampled_from(["GET", "HEAD"]),
    path=paths,
    query=queries,
    values=st.lists(st.one_of(st.none(), field_values), max_size=3),
)
def test_every_key_the_public_port_makes_is_accepted(
    method: str, path: str, query: str, values: list[bytes | None]
):
    target = path + ("?" + query if query else "")
    if "%" in query and not re.fullmatch(r"(?:[^%]|%[0-9A-Fa-f]{2})*", query):
        return  # the public port refuses such a target before any key exists
    verdict = check_head(method, target, "1.1", [(b"Host", b"h")], {b"host": b"h"}, 1 << 20)
    assert verdict.status == 0
    origin = verdict.origin or target  # (empty: the target is origin-form as it is)
    names = [f"x-h{i}" for i in range(len(values))]
    base = base_key(method, origin)
    key = variant_key(base, names, values, "0a1b") if names else base
    parsed = check_key(key, METHODS)
    assert (parsed.method, parsed.target) == (method, origin)
    assert parsed.names == tuple(names)
    assert list(parsed.headers) == parse_key(key)[2]


def _loader(group_value: bytes | None = None) -> tuple[BackendLoader, ProxyMetrics]:
    metrics = ProxyMetrics()
    client = httpx.AsyncClient()
    sender = BackendSender(
        client=client, fresh_client=client, timeout=5.0, auth=None, metrics=metrics
    )
    loader = BackendLoader(
        sender=sender,
        backend_url=BACKEND + "/api",
        policy=CachePolicy(
            methods=METHODS, routes=(), cache_ttl=60, error_ttl=10, max_body_bytes=1 << 20
        ),
        metrics=metrics,
        logger=logging.getLogger("test"),
        new_generation=lambda: "0a1b",
    )
    return loader, metrics


@pytest.fixture
async def group_with_vary():
    ws = tokencache.Workspace()
    loader, metrics = _loader()
    group = ws.new_group("http", max_bytes=1 << 20, loader=loader)
    loader.group = group
    try:
        yield loader, metrics, group
    finally:
        await loader._sender._client.aclose()
        await ws.close()


@pytest.mark.parametrize("key", HOSTILE)
async def test_the_loader_refuses_hostile_keys_without_a_backend_request(group_with_vary, key):
    loader, metrics, _ = group_with_vary
    with respx.mock(assert_all_called=False) as router:
        route = router.route().mock(return_value=httpx.Response(200, text="no"))
        with pytest.raises(BadKey):
            await loader(key)
        assert route.call_count == 0
    assert metrics.refused_requests == {"key": 1}


async def test_variant_keys_must_name_the_stored_vary_headers(group_with_vary):
    loader, metrics, group = group_with_vary
    record = encode_response(200, [(b"Vary", b"Accept-Language")], b"default", ttl=60)
    with respx.mock(assert_all_called=False) as router:
        route = router.get(BACKEND + "/api/v").mock(
            side_effect=[
                httpx.Response(200, text="base", headers={"Vary": "Accept-Language"}),
                httpx.Response(200, text="fr"),
            ]
        )
        # The base key: loaded from the backend, stored as a vary record naming accept-language.
        assert (await group.get("GET /v"))[:4] == encode_vary(
            ["accept-language"], "0a1b", "", record
        )[:4]
        entry = await loader("GET /v\n#0a1b\naccept-language: fr")
        assert b"fr" in entry.value
        sent = route.calls[-1].request
        assert sent.headers["accept-language"] == "fr"
        assert str(sent.url) == BACKEND + "/api/v"
        for forged in (
            "GET /v\n#0a1b\nhost: admin",
            "GET /v\n#0a1b\naccept-language: fr\nx-extra: 1",
        ):
            with pytest.raises(BadKey):
                await loader(forged)
        assert route.call_count == 2
    assert metrics.refused_requests == {"key": 2}


async def test_a_variant_key_of_a_base_without_vary_is_refused(group_with_vary):
    loader, _, group = group_with_vary
    with respx.mock(assert_all_called=False) as router:
        route = router.get(BACKEND + "/api/plain").mock(return_value=httpx.Response(200, text="p"))
        await group.get("GET /plain")
        with pytest.raises(BadKey):
            await loader("GET /plain\n#0a1b\naccept-language: fr")
        assert route.call_count == 1


async def test_the_loader_refuses_a_malformed_context_without_a_backend_request(group_with_vary):
    _, metrics, group = group_with_vary
    with respx.mock(assert_all_called=False) as router:
        route = router.route().mock(return_value=httpx.Response(200, text="no"))
        with pytest.raises(tokencache.InvalidArgument):
            await group.get("GET /x", context=b"TCX1\x00x-a: 1\nHost: admin")
        assert route.call_count == 0
    assert metrics.refused_requests == {"context": 1}


def test_whitespace_around_list_commas_is_one_variant():
    # RFC 9111 §4.1 / RFC 9110 §5.6.1: the suite's vary-normalise-space
    one = variant_key("GET /x", ["foo"], [b"1,2"], "0a1b")
    assert variant_key("GET /x", ["foo"], [b"1 , \t2"], "0a1b") == one
    assert variant_key("GET /x", ["foo"], [b"1, 3"], "0a1b") != one
    # a quoted-string may hold a comma as data: kept as it came
    assert variant_key("GET /x", ["foo"], [b'"a , b"'], "0a1b").endswith('foo: "a , b"')
    assert check_key(one, METHODS).headers == (("foo", "1,2"),)


def test_language_and_coding_case_is_one_variant():
    # the suite's vary-normalise-lang-case; language ranges and codings are case-insensitive
    one = variant_key("GET /x", ["accept-language"], [b"en, de"], "0a1b")
    assert variant_key("GET /x", ["accept-language"], [b"eN, De"], "0a1b") == one
    gzip = variant_key("GET /x", ["accept-encoding"], [b"gzip"], "0a1b")
    assert variant_key("GET /x", ["accept-encoding"], [b"GZIP"], "0a1b") == gzip
    # other fields keep their case
    assert variant_key("GET /x", ["x-tenant"], [b"A"], "0a1b") != variant_key(
        "GET /x", ["x-tenant"], [b"a"], "0a1b"
    )
