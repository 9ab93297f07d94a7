"""RFC 9111 freshness, storability, request directives and reuse: the pure policy modules."""

from __future__ import annotations

import email.utils

import pytest
from hypothesis import given
from hypothesis import strategies as st

from tokencache.proxy._freshness import assess, delta_seconds, http_date, parse_directives
from tokencache.proxy._reuse import (
    BACKGROUND,
    FRESH,
    REVALIDATE,
    STALE_OK,
    request_directives,
    reuse,
)
from tokencache.proxy._stored import MUST_REVALIDATE, NO_CACHE
from tokencache.proxy._targeted import targeted_directives

NOW = 1_800_000_000.0


def date(offset: float) -> bytes:
    return email.utils.formatdate(NOW + offset, usegmt=True).encode()


def judge(status: int = 200, *headers: tuple[bytes, bytes], **options: object):
    settings: dict[str, object] = {
        "request_time": 10.0,
        "response_time": 10.0,
        "now_wall": NOW,
        "default_ttl": 0.0,
        "default_error_ttl": 0.0,
    }
    settings.update(options)
    return assess(status, list(headers), **settings)  # type: ignore[arg-type]


# --- directives -------------------------------------------------------------------------------


def test_directives_first_occurrence_wins_across_lines():
    d = parse_directives([b"max-age=60, no-cache", b"MAX-AGE=1, private"])
    assert d == {"max-age": "60", "no-cache": None, "private": None}


def test_quoted_arguments_hide_commas_and_directive_names():
    d = parse_directives([b'no-cache="set-cookie, max-age=1", max-age=5'])
    assert d == {"no-cache": "set-cookie, max-age=1", "max-age": "5"}


@pytest.mark.parametrize(
    ("value", "seconds"),
    [(b"max-age=003600", 3600), (b"max-age='3600'", 0), (b"max-age=-1", 0), (b"max-age=1.5", 0)],
)
def test_delta_seconds_invalid_means_stale(value: bytes, seconds: int):
    assert delta_seconds(parse_directives([value]), "max-age") == seconds


def test_delta_seconds_saturates_at_2_to_31():
    assert delta_seconds({"max-age": "9" * 40}, "max-age") == 2**31


@given(st.binary(max_size=200))
def test_directive_parser_takes_any_bytes(raw: bytes):
    parsed = parse_directives([raw])
    assert all(name == name.lower() for name in parsed)


def test_http_date_forms():
    assert http_date(b"Sun, 06 Nov 1994 08:49:37 GMT") == 784111777.0
    assert http_date(b"Sunday, 06-Nov-94 08:49:37 GMT") == 784111777.0
    assert http_date(b"Sun Nov  6 08:49:37 1994") == 784111777.0
    assert http_date(b"yesterday") is None


@pytest.mark.parametrize(
    "value",
    [
        b"THU, 18 Aug 2050 02:01:18 GMT",
        b"Thu, 18 AUG 2050 02:01:18 GMT",
        b"Thu, 18 Aug 2050 02:01:18 gMT",
    ],
)
def test_http_date_names_in_any_case(value: bytes):
    # RFC 9110 §5.6.7 encourages robust timestamp parsing; the suite's freshness-expires-wrong-case-*
    assert http_date(value) == http_date(b"Thu, 18 Aug 2050 02:01:18 GMT") == 2544400878.0


@pytest.mark.parametrize(
    "value",
    [
        b"Thu, 18 Aug 2050 02:01:18 UTC",
        b"Thu, 18 Aug 50 02:01:18 GMT",
        b"Thu 18 Aug 2050 02:01:18 GMT",
        b"Thu, 18  Aug  2050 02:01:18 GMT",
        b"Thu, 18 Aug 2050 2:01:18 GMT",
    ],
)
def test_http_date_other_deviations_stay_invalid(value: bytes):
    assert http_date(value) is None


def test_must_understand_lifts_no_store_only_for_known_statuses():
    cc = (b"Cache-Control", b"max-age=3600, no-store, must-understand")
    ok = judge(200, cc)
    assert (ok.why_not, ok.lifetime) == (None, 3600.0)
    assert judge(404, cc).why_not is None
    assert judge(599, cc).why_not == "must-understand"
    assert judge(299, (b"Cache-Control", b"max-age=60, must-understand")).why_not == (
        "must-understand"
    )
    assert judge(200, (b"Cache-Control", b"max-age=60, no-store")).why_not == "no-store"


# --- freshness lifetime -----------------------------------------------------------------------


def test_s_maxage_beats_max_age_beats_expires():
    a = judge(200, (b"Cache-Control", b"max-age=60, s-maxage=30"), (b"Expires", date(600)))
    assert (a.why_not, a.lifetime, a.must_revalidate) == (None, 30.0, True)
    b = judge(200, (b"Cache-Control", b"max-age=60"), (b"Expires", date(600)))
    assert b.lifetime == 60.0
    c = judge(200, (b"Expires", date(600)), (b"Date", date(0)))
    assert c.lifetime == 600.0


def test_expires_counts_from_the_date_field_not_from_now():
    a = judge(200, (b"Expires", date(600)), (b"Date", date(-100)))
    assert a.lifetime == 700.0
    assert a.age == 100.0  # apparent age: now - Date


def test_invalid_expires_is_in_the_past():
    assert judge(200, (b"Expires", b"0")).lifetime == 0.0


def test_targeted_field_replaces_cache_control_and_expires():
    a = judge(
        200,
        (b"Cache-Control", b"no-store"),
        (b"CDN-Cache-Control", b"max-age=120"),
        (b"Expires", date(5)),
    )
    # RFC 9213 §2.1: this cache obeys CDN-Cache-Control only, Cache-Control's no-store included
    assert (a.why_not, a.lifetime) == (None, 120.0)
    b = judge(200, (b"Cache-Control", b"max-age=5"), (b"CDN-Cache-Control", b"max-age=120"))
    assert b.lifetime == 120.0
    c = judge(
        200,
        (b"Cache-Control", b"max-age=5"),
        (b"Surrogate-Control", b"max-age=9"),
        targeted=b"surrogate-control",
    )
    assert c.lifetime == 9.0


@pytest.mark.parametrize(
    "targeted",
    [
        b"max-age=10000, &&&&&",  # not a Structured Field (suite: cdn-cc-invalid-sh-type-unknown)
        b'max-age="10000"',  # a String where an Integer belongs (cdn-cc-invalid-sh-type-wrong)
        b"max-age=10.5",
        b"max-age=-1",
        b"max-age =100",
        b"max-age= 100",
        b"max-age=10000,",
        b"",
    ],
)
def test_invalid_or_empty_targeted_field_is_ignored(targeted: bytes):
    # RFC 9213 §2.1: an empty or unparsable targeted field is ignored; Cache-Control rules again
    a = judge(200, (b"Cache-Control", b"no-store"), (b"CDN-Cache-Control", targeted))
    assert a.why_not == "no-store"
    b = judge(200, (b"Cache-Control", b"max-age=1"), (b"CDN-Cache-Control", targeted))
    assert (b.why_not, b.lifetime) == (None, 1.0)


@pytest.mark.parametrize(
    ("targeted", "lifetime"),
    [
        (b"max-age=10000", 10000.0),
        (b"foobar, max-age=3600", 3600.0),  # unknown directives are members like any other
        (b"Max-Age=60", 60.0),  # directive names are case-insensitive (RFC 9111 §5.2)
        (b"max-age=99999999999", float(2**31)),  # saturates as delta-seconds do
        (b'max-age=5;x="y", private=?0, x=(a b);q=1, y=:AQI=:', 5.0),  # params, ?0, lists, bytes
        (b"max-age=1, max-age=7", 7.0),  # a Dictionary's last member wins
    ],
)
def test_valid_targeted_field_is_obeyed(targeted: bytes, lifetime: float):
    a = judge(200, (b"Cache-Control", b"no-store"), (b"CDN-Cache-Control", targeted))
    assert (a.why_not, a.lifetime) == (None, lifetime)


@given(st.binary(max_size=64))
def test_targeted_parser_takes_any_bytes(raw: bytes):
    parsed = targeted_directives([raw])
    assert parsed is None or all(isinstance(k, str) and k == k.lower() for k in parsed)


def test_targeted_field_lines_are_one_dictionary():
    a = judge(200, (b"CDN-Cache-Control", b"max-age=60"), (b"CDN-Cache-Control", b"no-cache"))
    assert (a.lifetime, a.no_cache) == (60.0, True)
    b = judge(200, (b"CDN-Cache-Control", b"private"), (b"Cache-Control", b"max-age=60"))
    assert b.why_not == "private"


def test_age_is_the_larger_of_apparent_age_and_age_plus_delay():
    a = judge(200, (b"Cache-Control", b"max-age=60"), (b"Age", b"30"), response_time=12.5)
    assert a.age == 32.0  # 30 + 2.5 s of response delay, whole seconds
    assert a.fresh_for == 28.0
    b = judge(200, (b"Cache-Control", b"max-age=60"), (b"Age", b"90"))
    assert b.fresh_for == 0.0  # stale on arrival


def test_defaults_apply_only_without_explicit_freshness():
    assert judge(200, default_ttl=300.0).lifetime == 300.0
    assert judge(200, (b"Cache-Control", b"max-age=5"), default_ttl=300.0).lifetime == 5.0
    assert judge(404, default_error_ttl=60.0).lifetime == 60.0
    assert judge(200).lifetime == 0.0  # pure RFC mode: nothing said, nothing assumed


def test_override_restores_the_fixed_ttl():
    a = judge(200, (b"Cache-Control", b"max-age=5"), default_ttl=300.0, override=True)
    assert a.lifetime == 300.0


@pytest.mark.parametrize("status", [500, 502, 503, 504, 302, 307, 201])
def test_statuses_that_are_not_heuristically_cacheable_need_explicit_freshness(status: int):
    assert judge(status, default_ttl=300.0, default_error_ttl=60.0).why_not == "status"
    assert judge(status, (b"Cache-Control", b"max-age=10")).why_not is None


def test_last_modified_heuristic_when_no_default():
    a = judge(200, (b"Last-Modified", date(-1000)), (b"Date", date(0)))
    assert a.lifetime == 100.0  # 10 % of the time since the last change


@pytest.mark.parametrize(
    ("header", "why"),
    [
        ((b"Cache-Control", b"no-store"), "no-store"),
        ((b"Cache-Control", b"private, max-age=60"), "private"),
        ((b"Set-Cookie", b"a=1"), "set-cookie"),
        ((b"Vary", b"*"), "vary-star"),
        ((b"Vary", b"Cookie"), "vary-credentials"),
        ((b"Vary", b"Accept, Host"), "vary-field"),
        ((b"Vary", b"Transfer-Encoding"), "vary-field"),
        ((b"Vary", b"x-a\x01b"), "vary-field"),
    ],
)
def test_refusals(header: tuple[bytes, bytes], why: str):
    assert judge(200, (b"Cache-Control", b"max-age=60"), header).why_not == why


def test_stale_directives():
    a = judge(
        200,
        (b"Cache-Control", b"max-age=1, stale-while-revalidate=30, stale-if-error=600, no-cache"),
    )
    assert (a.stale_while_revalidate, a.stale_if_error, a.no_cache) == (30.0, 600.0, True)


# --- request directives and reuse -------------------------------------------------------------


def decide(directives: dict[str, str | None] | None = None, **stored: float) -> str:
    values = {"age": 10.0, "elapsed": 10.0, "fresh": 60.0, "flags": 0, "swr": 0.0}
    values.update(stored)
    return reuse(
        age=values["age"],
        elapsed=values["elapsed"],
        fresh=values["fresh"],
        flags=int(values["flags"]),
        stale_while_revalidate=values["swr"],
        directives=directives or {},
    )


def test_fresh_stale_and_background():
    assert decide() == FRESH
    assert decide(elapsed=70.0) == REVALIDATE
    assert decide(elapsed=70.0, swr=30.0) == BACKGROUND
    assert decide(elapsed=70.0, swr=30.0, flags=MUST_REVALIDATE) == REVALIDATE
    assert decide(flags=NO_CACHE) == REVALIDATE


def test_request_directives():
    assert decide({"no-cache": None}) == REVALIDATE
    assert decide({"max-age": "5"}) == REVALIDATE
    assert decide({"max-age": "50"}) == FRESH
    assert decide({"min-fresh": "55"}) == REVALIDATE
    assert decide({"max-stale": None}, elapsed=500.0) == STALE_OK
    assert decide({"max-stale": "100"}, elapsed=100.0) == STALE_OK
    assert decide({"max-stale": "10"}, elapsed=100.0) == REVALIDATE
    assert decide({"max-stale": None}, elapsed=500.0, flags=MUST_REVALIDATE) == REVALIDATE


def test_pragma_counts_only_without_cache_control():
    assert request_directives({b"pragma": b"no-cache"}) == {"no-cache": None}
    assert request_directives({b"pragma": b"no-cache", b"cache-control": b"max-age=9"}) == {
        "max-age": "9"
    }
    assert request_directives({}) == {}


@pytest.mark.parametrize(
    ("cache_control", "stored"),
    [
        (b"max-age=60", False),
        (b"no-cache, max-age=60", False),
        (b"public, max-age=60", True),
        (b"s-maxage=60", True),
        (b"max-age=60, must-revalidate", True),
    ],
)
def test_a_response_to_an_authorized_request_needs_a_shared_cache_directive(
    cache_control: bytes, stored: bool
):
    # RFC 9111 §3.5 (reachable with CACHE_ALLOW_AUTHORIZED): public, s-maxage or must-revalidate.
    a = judge(200, (b"cache-control", cache_control), authorized=True)
    assert (a.why_not is None) is stored, a.why_not
    assert judge(200, (b"cache-control", cache_control)).why_not is None  # no Authorization
