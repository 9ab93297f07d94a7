"""The proxy's cache policy: pure functions, checked exhaustively."""

from __future__ import annotations

import re

import pytest
from hypothesis import given
from hypothesis import strategies as st

from tokencache.proxy._keys import variant_value
from tokencache.proxy._policy import (
    HOP_BY_HOP,
    CachePolicy,
    base_key,
    cache_status,
    parse_key,
    strip_hop_by_hop,
    variant_key,
)


def policy(**overrides: object) -> CachePolicy:
    options: dict[str, object] = {
        "methods": frozenset({"GET", "HEAD"}),
        "routes": (),
        "cache_ttl": 300.0,
        "error_ttl": 60.0,
        "max_body_bytes": 1000,
    }
    options.update(overrides)
    return CachePolicy(**options)  # type: ignore[arg-type]


def bypass(p: CachePolicy, method: str = "GET", target: str = "/x", **flags: bool) -> str | None:
    options = {"has_authorization": False, "has_cookie": False, "has_body": False}
    options.update(flags)
    return p.request_bypass(method, target, **options)


# --- requests -------------------------------------------------------------------------------


def test_get_and_head_are_cacheable_by_default():
    assert bypass(policy(), "GET") is None
    assert bypass(policy(), "HEAD") is None


@pytest.mark.parametrize("method", ["POST", "PUT", "DELETE", "PATCH", "OPTIONS", "get"])
def test_other_methods_are_forwarded(method: str):
    assert bypass(policy(), method) == "method"


def test_routes_are_searched_in_path_and_query_like_kubecache():
    # kubecache matched Go's URL.RequestURI(): the path and the query together.
    p = policy(routes=(re.compile("^/prod"), re.compile("/develop/?$")))
    assert bypass(p, target="/prod/app") is None
    assert bypass(p, target="/x/develop/") is None
    assert bypass(p, target="/x/develop?y=1") == "route"  # "$" is after the query
    assert bypass(p, target="/other?/prod") == "route"  # "^/prod" anchors at the path
    assert bypass(p, target="/develop/x") == "route"
    q = policy(routes=(re.compile(r"[?&]cache=yes"),))
    assert bypass(q, target="/a?cache=yes") is None
    assert bypass(q, target="/a?cache=no") == "route"


def test_no_routes_means_every_route():
    assert bypass(policy(routes=()), target="/anything/at/all?q") is None


@pytest.mark.parametrize(
    ("flags", "reason"),
    [
        ({"has_authorization": True}, "authorization"),
        ({"has_cookie": True}, "cookie"),
        ({"has_body": True}, "body"),
        ({"has_authorization": True, "has_cookie": True}, "authorization"),
    ],
)
def test_credentials_and_bodies_bypass(flags: dict[str, bool], reason: str):
    assert bypass(policy(), **flags) == reason


def test_allow_auth_caching_lets_credentials_through_but_not_bodies():
    p = policy(allow_auth_caching=True)
    assert bypass(p, has_authorization=True, has_cookie=True) is None
    assert bypass(p, has_body=True) == "body"


def test_method_is_checked_before_route():
    p = policy(routes=(re.compile("^/only"),))
    assert bypass(p, "POST", "/elsewhere") == "method"


# --- responses ------------------------------------------------------------------------------


def test_base_key_is_method_and_target():
    assert base_key("GET", "/a/b?c=d") == "GET /a/b?c=d"


def test_variant_key_distinguishes_absent_from_empty():
    absent = variant_key("GET /x", ["accept"], [None], "g1")
    empty = variant_key("GET /x", ["accept"], [b""], "g1")
    assert absent != empty
    assert parse_key(absent) == ("GET", "/x", [])
    assert parse_key(empty) == ("GET", "/x", [("accept", "")])


def test_parse_key_round_trips_varied_headers():
    key = variant_key("GET /p?q=1 2", ["accept-language", "x-v"], [b"fr, en;q=0.5", b"a:b"])
    assert parse_key(key) == (
        "GET",
        "/p?q=1 2",
        [("accept-language", "fr,en;q=0.5"), ("x-v", "a:b")],  # list whitespace: one variant
    )


header_value = st.binary(max_size=30).filter(lambda b: b"\n" not in b and b"\r" not in b)


@given(
    method=st.sampled_from(["GET", "HEAD", "PURGE"]),
    target=st.text(alphabet=st.characters(blacklist_characters="\n\r"), min_size=1, max_size=40),
    values=st.lists(st.one_of(st.none(), header_value), max_size=4),
)
def test_key_round_trip_property(method: str, target: str, values: list[bytes | None]):
    names = [f"h{i}" for i in range(len(values))]
    key = variant_key(base_key(method, target), names, values)
    expected = [
        (n, variant_value(n, v).decode("latin-1"))
        for n, v in zip(names, values, strict=True)
        if v is not None
    ]
    assert parse_key(key) == (method, target, expected)


# --- hop-by-hop -----------------------------------------------------------------------------


def test_hop_by_hop_headers_are_dropped_case_insensitively():
    headers = [(name.upper(), b"v") for name in HOP_BY_HOP] + [(b"X-Keep", b"1")]
    assert strip_hop_by_hop(headers) == [(b"X-Keep", b"1")]


def test_headers_named_in_connection_are_dropped():
    headers = [
        (b"Connection", b"keep-alive, X-Private , x-other"),
        (b"X-Private", b"secret"),
        (b"X-Other", b"o"),
        (b"X-Public", b"p"),
        (b"Content-Length", b"3"),
    ]
    assert strip_hop_by_hop(headers) == [(b"X-Public", b"p"), (b"Content-Length", b"3")]


def test_order_and_spelling_survive():
    headers = [(b"B", b"2"), (b"a", b"1"), (b"B", b"3")]
    assert strip_hop_by_hop(headers) == headers


# --- Cache-Status ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("kwargs", "text"),
    [
        ({"hit": True, "ttl": 42.9}, b"tokencache; hit; ttl=42"),
        ({"fwd": "miss", "stored": True}, b"tokencache; fwd=miss; stored"),
        ({"fwd": "uri-miss", "detail": "no-store"}, b"tokencache; fwd=uri-miss; detail=no-store"),
        ({"fwd": "bypass"}, b"tokencache; fwd=bypass"),
        (
            {"hit": True, "fwd_status": 502, "detail": "stale"},
            b"tokencache; hit; fwd-status=502; detail=stale",
        ),
        ({}, b"tokencache"),
    ],
)
def test_cache_status_values(kwargs: dict[str, object], text: bytes):
    assert cache_status(**kwargs) == text  # type: ignore[arg-type]
