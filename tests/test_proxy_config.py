"""Unit tests for proxy._config: every parser, every error, secret references, cross-checks."""

from __future__ import annotations

import gc
import importlib
import io
import json
import logging
import re
import socket
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import pytest
from prometheus_client import CollectorRegistry, Counter

from tests.support.net import free_port
from tokencache.proxy._config import (
    Address,
    Settings,
    parse_address,
    parse_bool,
    parse_buckets,
    parse_choice,
    parse_duration,
    parse_int,
    parse_list,
    parse_path,
    parse_peer_urls,
    parse_regexp,
    parse_url,
)
from tokencache.proxy._errors import ConfigError, ProxyError
from tokencache.proxy._health import AppServer, Readiness, build_app
from tokencache.proxy._logging import JsonFormatter, RedactingFilter, configure_logging
from tokencache.proxy._tracing import build_sampler, build_tracer_provider

BASE = {"BACKEND_URL": "http://127.0.0.1:9000", "PEER_DISCOVERY": "none"}
_OAUTH = {
    "OAUTH2_TOKEN_URL": "http://as/token",
    "OAUTH2_CLIENT_ID": "cid",
    "OAUTH2_CLIENT_SECRET": "csecret",
}
_PEM = "-----BEGIN PRIVATE KEY-----\nMC4CAQAwBQYDK2VwBCIEIA==\n-----END PRIVATE KEY-----"


class FakeResolver:
    """Resolves `file:`-looking references from a dict; records what it was asked."""

    def __init__(self, values: dict[str, str]) -> None:
        self.values = values
        self.asked: list[tuple[str, str]] = []

    def resolve(self, name: str, value: str) -> str:
        self.asked.append((name, value))
        if value not in self.values:
            raise ProxyError(f"{name}: cannot resolve file reference: missing")
        return self.values[value]


@pytest.mark.parametrize(
    ("text", "seconds"),
    [
        ("300s", 300.0),
        ("5m", 300.0),
        ("1h", 3600.0),
        ("250ms", 0.25),
        ("1h30m", 5400.0),
        ("1.5s", 1.5),
        ("2.5", 2.5),
        ("0", 0.0),
        (" 10 ", 10.0),
        ("100us", 0.0001),
    ],
)
def test_parse_duration_accepts(text: str, seconds: float) -> None:
    assert parse_duration(text) == pytest.approx(seconds)


@pytest.mark.parametrize("text", ["", "abc", "5x", "-1", "-5s", "s", "5 m", "nan", "inf", "1h-2m"])
def test_parse_duration_rejects(text: str) -> None:
    with pytest.raises(ValueError, match="duration"):
        parse_duration(text)


def test_parse_list_json_and_commas() -> None:
    assert parse_list('["GET", "HEAD"]') == ("GET", "HEAD")
    assert parse_list("GET, HEAD,,") == ("GET", "HEAD")
    assert parse_list("") == ()
    with pytest.raises(ValueError, match="invalid JSON list"):
        parse_list('["GET",')
    with pytest.raises(ValueError, match="only strings"):
        parse_list("[1, 2]")


@pytest.mark.parametrize(
    ("text", "value"),
    [
        *[("true", True), ("TRUE", True), ("1", True), ("yes", True), ("on", True)],
        *[("false", False), ("0", False), ("No", False), ("off", False), ("", False)],
    ],
)
def test_parse_bool(text: str, value: bool) -> None:
    assert parse_bool(text) is value


def test_parse_bool_rejects() -> None:
    with pytest.raises(ValueError, match="not a boolean"):
        parse_bool("maybe")


def test_parse_int() -> None:
    assert parse_int("100_000_000") == 100_000_000
    assert parse_int(" 7 ", minimum=1) == 7
    with pytest.raises(ValueError, match="not an integer"):
        parse_int("1e6")
    with pytest.raises(ValueError, match="below the minimum 1"):
        parse_int("0", minimum=1)


@pytest.mark.parametrize(
    ("text", "addr"),
    [
        (":8080", Address("", 8080)),
        ("127.0.0.1:8080", Address("127.0.0.1", 8080)),
        ("[::1]:5000", Address("::1", 5000)),
        ("localhost:0", Address("localhost", 0)),
        ("3000", Address("", 3000)),
    ],
)
def test_parse_address(text: str, addr: Address) -> None:
    assert parse_address(text) == addr


@pytest.mark.parametrize("text", ["", "8080:", "host", ":99999", "a b:80", "http://x:80"])
def test_parse_address_rejects(text: str) -> None:
    with pytest.raises(ValueError, match=r"address|out of range"):
        parse_address(text)


def test_address_str_and_bind_host() -> None:
    assert str(Address("::1", 80)) == "[::1]:80"
    assert Address("", 80).bind_host == "0.0.0.0"
    assert Address("127.0.0.1", 80).bind_host == "127.0.0.1"


def test_parse_url() -> None:
    assert parse_url("http://backend:9000/") == "http://backend:9000"
    assert parse_url("https://b.example/api") == "https://b.example/api"
    for bad in ("ftp://x", "backend:9000", "http://", "http://x:notaport"):
        with pytest.raises(ValueError, match="URL"):
            parse_url(bad)
    with pytest.raises(ValueError, match="required"):
        parse_url("")


def test_parse_peer_urls() -> None:
    assert parse_peer_urls('["http://a:5000", "http://b:5000/"]') == (
        "http://a:5000",
        "http://b:5000",
    )
    with pytest.raises(ValueError, match="twice"):
        parse_peer_urls("http://a:5000,http://a:5000")


def test_parse_regexp() -> None:
    pats = parse_regexp('["^/api/v1/", "^/x{1,2}$"]')
    assert [p.pattern for p in pats] == ["^/api/v1/", "^/x{1,2}$"]
    assert parse_regexp("^/a,^/b")[1].search("/b/c")
    with pytest.raises(ValueError, match="bad regexp"):
        parse_regexp("^/(unclosed")


def test_parse_buckets() -> None:
    assert parse_buckets("0.01, 0.1, 1") == (0.01, 0.1, 1.0)
    assert parse_buckets('["0.5", "1"]') == (0.5, 1.0)
    with pytest.raises(ValueError, match="not a number"):
        parse_buckets("0.1,fast")
    with pytest.raises(ValueError, match="strictly increasing"):
        parse_buckets("1,0.5")


def test_parse_path_and_choice() -> None:
    assert parse_path("/ready") == "/ready"
    with pytest.raises(ValueError, match="not a path"):
        parse_path("ready")
    assert parse_choice("Static", ("static", "none")) == "static"
    with pytest.raises(ValueError, match="not one of static, none"):
        parse_choice("k8s", ("static", "none"))


def test_defaults() -> None:
    s = Settings.from_env({"BACKEND_URL": "http://b:9000"}, resolver=FakeResolver({}))
    assert s.listen_addr == Address("", 8080)
    assert s.backend_timeout == 300.0
    assert s.cache_ttl == 300.0
    assert s.cache_error_ttl == 60.0
    assert s.restrict_method == ("GET", "HEAD")
    assert s.restrict_route_regexp == ()
    assert s.groupcache_port == Address("", 5000)
    assert s.groupcache_size_bytes == 100_000_000
    assert s.groupcache_hot_fraction == 0.5
    assert (s.health_addr, s.health_path, s.ready_path) == (Address("", 8888), "/health", "/ready")
    assert (s.metrics_addr, s.metrics_path) == (Address("", 3000), "/metrics")
    assert s.metrics_namespace == ""
    assert s.debug_log is False
    assert s.trace is True
    assert s.cache_stale_if_error == 0.0
    assert s.shutdown_timeout == 20.0
    assert s.kubegroup_debounce == 1.0
    assert s.peer_discovery == "none"  # auto, no peers, not in Kubernetes
    assert s.groupcache_self_url.endswith(":5000")
    assert s.oauth2_auth_method == "client_secret_basic"


def test_every_variable_is_parsed() -> None:
    env = {
        "LISTEN_ADDR": "127.0.0.1:18080",
        "BACKEND_URL": "http://127.0.0.1:9000/",
        "BACKEND_TIMEOUT": "5s",
        "CACHE_TTL": "2m",
        "CACHE_ERROR_TTL": "1500ms",
        "RESTRICT_METHOD": '["get"]',
        "RESTRICT_ROUTE_REGEXP": "^/api/",
        "GROUPCACHE_PORT": "127.0.0.1:15000",
        "GROUPCACHE_SIZE_BYTES": "1000",
        "GROUPCACHE_HOT_FRACTION": "0.25",
        "HEALTH_ADDR": "127.0.0.1:18888",
        "HEALTH_PATH": "/livez",
        "READY_PATH": "/readyz",
        "METRICS_ADDR": "127.0.0.1:13000",
        "METRICS_PATH": "/m",
        "METRICS_NAMESPACE": "ns",
        "METRICS_BUCKETS_LATENCY_HTTP": "0.1,1",
        "DEBUG_LOG": "true",
        "TRACE": "false",
        "GROUPCACHE_PEERS": "http://127.0.0.1:15000,http://127.0.0.1:15001",
        "GROUPCACHE_PEER_SECRET": "s3cret",
        "CACHE_MAX_BODY_BYTES": "2048",
        "CACHE_STALE_IF_ERROR": "30s",
        "CACHE_ALLOW_AUTHORIZED": "yes",
        "OAUTH2_TOKEN_URL": "http://127.0.0.1:4000/token",
        "OAUTH2_CLIENT_ID": "cid",
        "OAUTH2_CLIENT_SECRET": "csecret",
        "OAUTH2_SCOPE": "read write",
        "OAUTH2_AUTH_METHOD": "client_secret_post",
        "KUBEGROUP_LABEL_SELECTOR": "app=x",
        "KUBEGROUP_DEBOUNCE": "2s",
        "SHUTDOWN_TIMEOUT": "3s",
        "OTEL_SERVICE_NAME": "svc",
    }
    s = Settings.from_env(env, resolver=FakeResolver({}))
    assert s.listen_addr == Address("127.0.0.1", 18080)
    assert s.backend_url == "http://127.0.0.1:9000"
    assert (s.backend_timeout, s.cache_ttl, s.cache_error_ttl) == (5.0, 120.0, 1.5)
    assert s.restrict_method == ("GET",)
    assert s.restrict_route_regexp[0].pattern == "^/api/"
    assert s.groupcache_size_bytes == 1000
    assert s.groupcache_hot_fraction == 0.25
    assert (s.health_path, s.ready_path, s.metrics_path) == ("/livez", "/readyz", "/m")
    assert s.metrics_namespace == "ns"
    assert s.metrics_buckets_latency_http == (0.1, 1.0)
    assert s.debug_log is True
    assert s.trace is False
    assert s.peer_discovery == "static"
    assert s.groupcache_self_url == "http://127.0.0.1:15000"  # from GROUPCACHE_PORT's host
    assert s.groupcache_peer_secret == "s3cret"
    assert (s.cache_max_body_bytes, s.cache_stale_if_error) == (2048, 30.0)
    assert s.cache_allow_authorized is True
    assert s.oauth2_auth_method == "client_secret_post"
    assert (s.oauth2_client_id, s.oauth2_scope) == ("cid", "read write")
    assert (s.kubegroup_label_selector, s.kubegroup_debounce, s.shutdown_timeout) == (
        "app=x",
        2.0,
        3.0,
    )
    assert s.otel == {"OTEL_SERVICE_NAME": "svc"}
    assert set(s.secret_values()) == {"s3cret", "csecret"}


@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({"BACKEND_TIMEOUT": "soon"}, r"^BACKEND_TIMEOUT: 'soon' is not a duration"),
        ({"CACHE_TTL": "-1"}, r"^CACHE_TTL: .*non-negative"),
        ({"LISTEN_ADDR": "nowhere"}, r"^LISTEN_ADDR: 'nowhere' is not an address"),
        ({"GROUPCACHE_SIZE_BYTES": "0"}, r"^GROUPCACHE_SIZE_BYTES: 0 is below the minimum 1"),
        ({"GROUPCACHE_HOT_FRACTION": "1.5"}, r"^GROUPCACHE_HOT_FRACTION: '1.5' is not a number"),
        ({"GROUPCACHE_HOT_FRACTION": "nan"}, r"^GROUPCACHE_HOT_FRACTION: 'nan' is not a number"),
        ({"DEBUG_LOG": "perhaps"}, r"^DEBUG_LOG: 'perhaps' is not a boolean"),
        ({"RESTRICT_METHOD": "GET,HE AD"}, r"^RESTRICT_METHOD: 'HE AD' is not an HTTP method"),
        ({"RESTRICT_ROUTE_REGEXP": "("}, r"^RESTRICT_ROUTE_REGEXP: bad regexp"),
        ({"PEER_DISCOVERY": "dns"}, r"^PEER_DISCOVERY: 'dns' is not one of"),
        ({"HEALTH_PATH": "health"}, r"^HEALTH_PATH: 'health' is not a path"),
        ({"METRICS_BUCKETS_LATENCY_HTTP": "2,1"}, r"^METRICS_BUCKETS_LATENCY_HTTP: buckets"),
        ({"BACKEND_URL": ""}, r"^BACKEND_URL: required"),
        ({"BACKEND_URL": "backend"}, r"^BACKEND_URL: not an http\(s\) URL"),
        ({"PEER_DISCOVERY": "static"}, r"^GROUPCACHE_PEERS: required when PEER_DISCOVERY=static"),
        (
            {
                "GROUPCACHE_PEERS": "http://10.0.0.1:5000",
                "GROUPCACHE_SELF_URL": "http://10.0.0.2:5000",
            },
            r"^GROUPCACHE_SELF_URL: http://10.0.0.2:5000 is not one of GROUPCACHE_PEERS",
        ),
        ({"OAUTH2_TOKEN_URL": "http://as/token"}, r"^OAUTH2_CLIENT_ID: .*required"),
        ({"OAUTH2_AUTH_METHOD": "client_secret_magic"}, r"^OAUTH2_AUTH_METHOD: .*not one of"),
        ({**_OAUTH, "OAUTH2_CLIENT_SECRET": ""}, r"^OAUTH2_CLIENT_SECRET: required"),
        (
            {**_OAUTH, "OAUTH2_AUTH_METHOD": "client_secret_jwt", "OAUTH2_CLIENT_SECRET": ""},
            r"^OAUTH2_CLIENT_SECRET: required with OAUTH2_AUTH_METHOD=client_secret_jwt",
        ),
        (
            {**_OAUTH, "OAUTH2_AUTH_METHOD": "private_key_jwt"},
            r"^OAUTH2_PRIVATE_KEY: required with OAUTH2_AUTH_METHOD=private_key_jwt",
        ),
        (
            {**_OAUTH, "OAUTH2_PRIVATE_KEY": _PEM},
            r"^OAUTH2_PRIVATE_KEY: used by private_key_jwt only",
        ),
        (
            {**_OAUTH, "OAUTH2_AUTH_METHOD": "private_key_jwt", "OAUTH2_PRIVATE_KEY": "nope"},
            r"^OAUTH2_PRIVATE_KEY: invalid value \(not shown: secret\)$",
        ),
        (
            {**_OAUTH, "OAUTH2_AUTH_METHOD": "tls_client_auth"},
            r"^OAUTH2_CLIENT_CERT: required with OAUTH2_AUTH_METHOD=tls_client_auth",
        ),
        (
            {**_OAUTH, "OAUTH2_AUTH_METHOD": "self_signed_tls_client_auth"},
            r"^OAUTH2_CLIENT_CERT: required with OAUTH2_AUTH_METHOD=self_signed_tls",
        ),
        ({**_OAUTH, "OAUTH2_CLIENT_CERT": "/no/such/cert.pem"}, r"^OAUTH2_CLIENT_CERT: .*file"),
        (
            {**_OAUTH, "OAUTH2_CA_FILE": "/no/such/ca.pem"},
            r"^OAUTH2_CA_FILE: '/no/such/ca.pem' is not a file",
        ),
        (
            {**_OAUTH, "OAUTH2_CLIENT_KEY": __file__},
            r"^OAUTH2_CLIENT_KEY: needs OAUTH2_CLIENT_CERT",
        ),
        ({**_OAUTH, "OAUTH2_SIGNING_ALG": "none"}, r"^OAUTH2_SIGNING_ALG: 'none' is not one of"),
        ({**_OAUTH, "OAUTH2_SIGNING_ALG": "HS256"}, r"^OAUTH2_SIGNING_ALG: applies to"),
        ({**_OAUTH, "OAUTH2_KEY_ID": "k1"}, r"^OAUTH2_KEY_ID: applies to"),
        ({**_OAUTH, "OAUTH2_CHECK_AT_START": "maybe"}, r"^OAUTH2_CHECK_AT_START: 'maybe'"),
    ],
)
def test_bad_values_name_the_variable(env: dict[str, str], message: str) -> None:
    merged = {**BASE, "PEER_DISCOVERY": "auto", **env}
    with pytest.raises(ConfigError, match=message) as info:
        Settings.from_env(merged, resolver=FakeResolver({}))
    assert "\n" not in str(info.value)


def test_secret_values_are_never_echoed() -> None:
    # A value that came from a reference and fails to parse must not appear in the message.
    resolver = FakeResolver({"file:/run/peers": "hunter2-not-a-url"})
    env = {**BASE, "GROUPCACHE_PEERS": "file:/run/peers"}
    with pytest.raises(ConfigError) as info:
        Settings.from_env(env, resolver=resolver)
    assert "hunter2" not in str(info.value)
    assert str(info.value) == "GROUPCACHE_PEERS: invalid value (not shown: secret)"


def test_secret_references_are_resolved_for_secrets_and_urls() -> None:
    resolver = FakeResolver(
        {
            "file:/run/secret": "peer-key\n",
            "aws-secretsmanager:us-east-1:backend:url": "http://10.1.2.3:80",
            "aws-parameterstore:eu-west-1:/oauth/secret": "oauth-secret",
            "file:/x": "app=from-file",
        }
    )
    env = {
        **BASE,
        "GROUPCACHE_PEER_SECRET": "file:/run/secret",
        "BACKEND_URL": "aws-secretsmanager:us-east-1:backend:url",
        "OAUTH2_TOKEN_URL": "http://as:4000/token",
        "OAUTH2_CLIENT_ID": "cid",
        "OAUTH2_CLIENT_SECRET": "aws-parameterstore:eu-west-1:/oauth/secret",
        # kubecache resolved references on every variable: so does the proxy.
        "KUBEGROUP_LABEL_SELECTOR": "file:/x",
    }
    s = Settings.from_env(env, resolver=resolver)
    assert s.groupcache_peer_secret == "peer-key"
    assert s.backend_url == "http://10.1.2.3:80"
    assert s.oauth2_client_secret == "oauth-secret"
    assert s.kubegroup_label_selector == "app=from-file"
    assert {n for n, _ in resolver.asked} == {
        "GROUPCACHE_PEER_SECRET",
        "BACKEND_URL",
        "OAUTH2_CLIENT_SECRET",
        "KUBEGROUP_LABEL_SELECTOR",
    }
    assert "peer-key" in s.secret_values()


def test_failed_reference_is_a_config_error_naming_the_variable() -> None:
    env = {**BASE, "OAUTH2_CLIENT_SECRET": "file:/nope"}
    with pytest.raises(ConfigError, match=r"^OAUTH2_CLIENT_SECRET: cannot resolve"):
        Settings.from_env(env, resolver=FakeResolver({}))


def test_real_file_reference(tmp_path: Path) -> None:
    # The real SecretResolver reads a mounted secret file (no AWS involved).
    secret = tmp_path / "peer-secret"
    secret.write_text("from-a-file\n")
    s = Settings.from_env({**BASE, "GROUPCACHE_PEER_SECRET": f"file:{secret}"})
    assert s.groupcache_peer_secret == "from-a-file"
    with pytest.raises(ConfigError, match=r"^GROUPCACHE_PEER_SECRET: ") as info:
        Settings.from_env({**BASE, "GROUPCACHE_PEER_SECRET": f"file:{tmp_path / 'missing'}"})
    assert "\n" not in str(info.value)


def test_discovery_auto_and_self_url() -> None:
    k8s = {
        **BASE,
        "PEER_DISCOVERY": "auto",
        "KUBERNETES_SERVICE_HOST": "10.0.0.1",
        "POD_IP": "10.9.8.7",
        "GROUPCACHE_PEER_SECRET": "s",  # required with kubernetes discovery
    }
    s = Settings.from_env(k8s, resolver=FakeResolver({}))
    assert s.peer_discovery == "kubernetes"
    assert s.groupcache_self_url == "http://10.9.8.7:5000"
    v6 = {**BASE, "POD_IP": "fd00::1", "GROUPCACHE_PORT": ":5001"}
    assert Settings.from_env(v6).groupcache_self_url == "http://[fd00::1]:5001"
    explicit = {**BASE, "GROUPCACHE_SELF_URL": "http://me:5000/"}
    assert Settings.from_env(explicit).groupcache_self_url == "http://me:5000"


def test_url_password_is_a_secret_value() -> None:
    s = Settings.from_env({**BASE, "BACKEND_URL": "http://user:pa55word@b:9000"})
    assert s.secret_values() == ("pa55word",)


def test_oauth2_client_auth_settings() -> None:
    pem = _PEM
    resolver = FakeResolver({"file:/run/keys/client.pem": pem})
    env = {
        **BASE,
        **_OAUTH,
        "OAUTH2_CLIENT_SECRET": "",
        "OAUTH2_AUTH_METHOD": "private_key_jwt",
        "OAUTH2_PRIVATE_KEY": "file:/run/keys/client.pem",
        "OAUTH2_SIGNING_ALG": "ES256",
        "OAUTH2_KEY_ID": "key-1",
        "OAUTH2_CHECK_AT_START": "true",
    }
    s = Settings.from_env(env, resolver=resolver)
    assert s.oauth2_auth_method == "private_key_jwt"
    assert s.oauth2_private_key == pem + "\n"
    assert (s.oauth2_signing_alg, s.oauth2_key_id) == ("ES256", "key-1")
    assert s.oauth2_check_at_start is True
    assert pem + "\n" in s.secret_values()  # redacted from every log line
    # RFC 8705: a certificate (and key) file, no secret; a custom CA for a private PKI.
    tls = {
        **BASE,
        **_OAUTH,
        "OAUTH2_CLIENT_SECRET": "",
        "OAUTH2_AUTH_METHOD": "TLS_CLIENT_AUTH",
        "OAUTH2_CLIENT_CERT": __file__,
        "OAUTH2_CLIENT_KEY": __file__,
        "OAUTH2_CA_FILE": __file__,
    }
    s = Settings.from_env(tls)
    assert s.oauth2_auth_method == "tls_client_auth"
    assert s.oauth2_client_cert == s.oauth2_client_key == s.oauth2_ca_file == __file__
    assert Settings.from_env(BASE).oauth2_check_at_start is False


def test_help_rows_cover_every_setting() -> None:
    rows = Settings.help_rows()
    names = [r[0] for r in rows]
    required = """LISTEN_ADDR BACKEND_URL BACKEND_TIMEOUT CACHE_TTL CACHE_ERROR_TTL RESTRICT_METHOD
        RESTRICT_ROUTE_REGEXP GROUPCACHE_PORT GROUPCACHE_SIZE_BYTES GROUPCACHE_HOT_FRACTION
        HEALTH_ADDR HEALTH_PATH
        METRICS_ADDR METRICS_PATH METRICS_NAMESPACE METRICS_BUCKETS_LATENCY_HTTP DEBUG_LOG TRACE
        SECRET_ROLE_ARN GROUPCACHE_PEERS GROUPCACHE_SELF_URL GROUPCACHE_PEER_SECRET
        CACHE_MAX_BODY_BYTES CACHE_STALE_IF_ERROR OAUTH2_TOKEN_URL OAUTH2_CLIENT_ID
        OAUTH2_CLIENT_SECRET OAUTH2_SCOPE OAUTH2_AUTH_METHOD OAUTH2_PRIVATE_KEY OAUTH2_SIGNING_ALG
        OAUTH2_KEY_ID OAUTH2_CLIENT_CERT OAUTH2_CLIENT_KEY OAUTH2_CA_FILE OAUTH2_CHECK_AT_START
        READY_PATH PEER_DISCOVERY
        KUBEGROUP_LABEL_SELECTOR KUBEGROUP_DEBOUNCE POD_IP SHUTDOWN_TIMEOUT"""
    required_names = required.split()
    assert set(required_names) <= set(names)
    assert len(names) == len(set(names))
    assert all(help_text for _, _, help_text in rows)
    assert dict((n, d) for n, d, _ in rows)["CACHE_TTL"] == "300s"
    assert all(re.fullmatch(r"[A-Z0-9_]+", n) for n in names)


# --- logging: JSON lines and the redaction filter ---------------------------------------------


def _log_lines(
    secrets: tuple[str, ...], emit: Callable[[logging.Logger], None]
) -> list[dict[str, Any]]:
    out = io.StringIO()
    handler = logging.StreamHandler(out)
    handler.setFormatter(JsonFormatter())
    handler.addFilter(RedactingFilter(secrets))
    logger = logging.getLogger(f"test.{uuid.uuid4().hex}")
    logger.propagate = False
    logger.setLevel(logging.DEBUG)
    logger.addHandler(handler)
    emit(logger)
    return [json.loads(line) for line in out.getvalue().splitlines()]


def test_json_lines_carry_level_time_msg_and_fields() -> None:
    [line] = _log_lines((), lambda log: log.warning("backend %s slow", "b1", extra={"ms": 12}))
    assert line["level"] == "warning"
    assert line["msg"] == "backend b1 slow"
    assert line["ms"] == 12
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}\+00:00", line["time"])


def test_redaction_covers_message_args_fields_and_tracebacks() -> None:
    secret = "sup3r-s3cret-value"

    def emit(log: logging.Logger) -> None:
        log.info("token %s", secret, extra={"header": f"Bearer {secret}", "n": [secret]})
        try:
            raise ValueError(f"bad {secret}")
        except ValueError:
            log.exception("failed")

    lines = _log_lines((secret, "ab"), emit)
    text = json.dumps(lines)
    assert secret not in text
    assert lines[0]["msg"] == "token [REDACTED]"
    assert lines[0]["header"] == "Bearer [REDACTED]"
    assert lines[0]["n"] == "[REDACTED]"
    assert "ValueError: bad [REDACTED]" in lines[1]["exc"]
    # Too-short "secrets" are ignored rather than shredding ordinary words.
    assert _log_lines(("ab",), lambda log: log.info("about"))[0]["msg"] == "about"


def test_configure_logging_sets_level_and_one_handler() -> None:
    root = logging.getLogger()
    saved = (list(root.handlers), root.level)
    quiet = {name: logging.getLogger(name).level for name in ("botocore", "httpx")}
    out = io.StringIO()
    try:
        configure_logging(debug=False, secrets=("hunter2-hunter2",), stream=out)
        configure_logging(debug=True, secrets=("hunter2-hunter2",), stream=out)
        assert len(root.handlers) == 1
        assert root.level == logging.DEBUG
        logging.getLogger("any.library").debug("leak hunter2-hunter2")
        assert json.loads(out.getvalue())["msg"] == "leak [REDACTED]"
        # Libraries that log request details stay quiet even in debug mode.
        assert logging.getLogger("botocore").getEffectiveLevel() == logging.WARNING
    finally:
        root.handlers[:] = saved[0]
        root.setLevel(saved[1])
        for name, level in quiet.items():
            logging.getLogger(name).setLevel(level)


# --- tracing: provider, sampler and exporter from OTEL_* --------------------------------------


def test_trace_false_means_no_provider() -> None:
    assert build_tracer_provider(False, {"OTEL_TRACES_EXPORTER": "console"}) is None


def test_console_exporter_and_resource() -> None:
    out = io.StringIO()
    otel = {
        "OTEL_TRACES_EXPORTER": "console",
        "OTEL_SERVICE_NAME": "svc-x",
        "OTEL_RESOURCE_ATTRIBUTES": "deployment.environment=test",
    }
    provider = build_tracer_provider(True, otel, console_out=out)
    assert provider is not None
    with provider.get_tracer("t").start_as_current_span("span-one"):
        pass
    provider.shutdown()
    span = json.loads(out.getvalue())
    assert span["name"] == "span-one"
    assert span["resource"]["attributes"]["service.name"] == "svc-x"
    assert span["resource"]["attributes"]["deployment.environment"] == "test"


def test_resource_attributes_are_percent_decoded_as_the_sdk_does() -> None:
    out = io.StringIO()
    otel = {
        "OTEL_TRACES_EXPORTER": "console",
        "OTEL_RESOURCE_ATTRIBUTES": "team=caf%C3%A9%20ops,k%3Dv=a%2Cb",
    }
    provider = build_tracer_provider(True, otel, console_out=out)
    assert provider is not None
    with provider.get_tracer("t").start_as_current_span("span-two"):
        pass
    provider.shutdown()
    attributes = json.loads(out.getvalue())["resource"]["attributes"]
    assert attributes["team"] == "café ops"
    assert attributes["k=v"] == "a,b"


def test_default_exporter_is_none_without_endpoint_and_otlp_with_one() -> None:
    provider = build_tracer_provider(True, {})
    assert provider is not None
    assert provider.sampler.get_description().startswith("ParentBased{root:AlwaysOnSampler")
    provider.shutdown()
    # The OTLP exporter is an optional extra; without it the start fails loudly.
    try:
        importlib.import_module("opentelemetry.exporter.otlp.proto.http.trace_exporter")
    except ImportError:
        with pytest.raises(ConfigError, match=r"^OTEL_TRACES_EXPORTER: otlp needs"):
            build_tracer_provider(True, {"OTEL_EXPORTER_OTLP_ENDPOINT": "http://127.0.0.1:4318"})
    else:
        otlp = build_tracer_provider(True, {"OTEL_EXPORTER_OTLP_ENDPOINT": "http://127.0.0.1:1"})
        assert otlp is not None
        otlp.shutdown()


@pytest.mark.parametrize(
    ("otel", "description"),
    [
        ({"OTEL_TRACES_SAMPLER": "always_off"}, "AlwaysOffSampler"),
        ({"OTEL_TRACES_SAMPLER": "traceidratio", "OTEL_TRACES_SAMPLER_ARG": "0.25"}, "0.25"),
        ({"OTEL_TRACES_SAMPLER": "parentbased_traceidratio"}, "ParentBased{root:TraceIdRatio"),
    ],
)
def test_samplers(otel: dict[str, str], description: str) -> None:
    assert description in build_sampler(otel).get_description()


@pytest.mark.parametrize(
    ("otel", "message"),
    [
        ({"OTEL_TRACES_SAMPLER": "sometimes"}, r"^OTEL_TRACES_SAMPLER: 'sometimes' is not one of"),
        ({"OTEL_TRACES_SAMPLER": "sometimes"}, r"nor an installed sampler"),
        (
            {"OTEL_TRACES_SAMPLER": "traceidratio", "OTEL_TRACES_SAMPLER_ARG": "2"},
            r"^OTEL_TRACES_SAMPLER_ARG: '2' is not a ratio",
        ),
        ({"OTEL_TRACES_EXPORTER": "zipkin"}, r"^OTEL_TRACES_EXPORTER: 'zipkin' is not one of"),
    ],
)
def test_bad_otel_values(otel: dict[str, str], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        build_tracer_provider(True, otel)


# --- health: liveness, readiness reasons, metrics ---------------------------------------------


def test_readiness_reasons() -> None:
    r = Readiness()
    assert r.reason() == "starting"
    r.started = True
    assert r.reason() == "waiting for peers"
    r.peers_known = True
    assert r.reason() is None
    r.draining = True
    assert r.reason() == "draining"


async def test_health_app_answers_liveness_readiness_and_metrics() -> None:
    registry = CollectorRegistry()
    Counter("demo_things", "Things.", registry=registry).inc()
    readiness = Readiness()
    app = build_app(
        readiness, health_path="/h", ready_path="/r", metrics_path="/m", registry=registry
    )
    server = AppServer(app)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    await server.start("127.0.0.1", port)
    try:
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}") as client:
            assert (await client.get("/h")).text == "ok\n"
            not_ready = await client.get("/r")
            assert (not_ready.status_code, not_ready.text) == (503, "not ready: starting\n")
            readiness.started = readiness.peers_known = True
            assert (await client.get("/r")).status_code == 200
            metrics = await client.get("/m")
            assert "demo_things_total 1.0" in metrics.text
            assert metrics.headers["content-type"].startswith("text/plain")
    finally:
        await server.close()


# --- the service wiring, in one process: readiness follows discovery, drain leaves the ring ----


class FakePeerSource:
    """Stands in for KubernetesPeerSource: the test delivers peer lists through `on_peers`."""

    def __init__(self, on_peers: Callable[[list[str]], None]) -> None:
        self.on_peers = on_peers
        self.started = self.stopped = 0

    async def start(self) -> None:
        self.started += 1

    async def stop(self) -> None:
        self.stopped += 1


async def test_service_readiness_follows_discovery_and_drain_leaves_the_ring() -> None:
    from aiohttp import web

    from tests.support.demo_backend import build_app as backend_app
    from tokencache.proxy._service import ProxyService

    runner = web.AppRunner(backend_app(), access_log=None)
    await runner.setup()
    backend_port = free_port()
    await web.TCPSite(runner, "127.0.0.1", backend_port).start()
    listen, peer, health = free_port(), free_port(), free_port()
    self_url = f"http://127.0.0.1:{peer}"
    settings = Settings.from_env(
        {
            "BACKEND_URL": f"http://127.0.0.1:{backend_port}",
            "LISTEN_ADDR": f"127.0.0.1:{listen}",
            "GROUPCACHE_PORT": f"127.0.0.1:{peer}",
            "GROUPCACHE_PEER_SECRET": "in-process-secret",
            "HEALTH_ADDR": f"127.0.0.1:{health}",
            "METRICS_ADDR": f"127.0.0.1:{health}",  # shared with health
            "PEER_DISCOVERY": "kubernetes",
            "TRACE": "false",
        },
        resolver=FakeResolver({}),
    )
    sources: list[FakePeerSource] = []

    def factory(on_peers: Callable[[list[str]], None]) -> FakePeerSource:
        sources.append(FakePeerSource(on_peers))
        return sources[-1]

    service = ProxyService(settings, install_tracer=False, peer_source=factory)
    collector_before = gc.get_threshold()
    await service.start()
    try:
        async with httpx.AsyncClient(timeout=10) as client:
            ready = f"http://127.0.0.1:{health}/ready"
            not_yet = await client.get(ready)
            assert (not_yet.status_code, not_yet.text) == (503, "not ready: waiting for peers\n")
            [source] = sources
            assert source.started == 1
            source.on_peers([self_url, "http://127.0.0.1:1"])
            assert (await client.get(ready)).status_code == 200
            assert set(service.workspace.peers) == {self_url, "http://127.0.0.1:1"}
            # Whoever owns /solo (maybe the dead peer), the request is answered.
            r = await client.get(f"http://127.0.0.1:{listen}/solo")
            assert r.status_code == 200
            metrics = (await client.get(f"http://127.0.0.1:{health}/metrics")).text
            assert "requests_seconds_bucket{" in metrics
            assert 'group="path"' in metrics
            assert "in-process-secret" not in metrics
            assert await service.shutdown() is True
            # The collector's settings (proxy._gc) are the process's: a stopped in-process
            # service gives them back.
            assert gc.get_threshold() == collector_before
            assert gc.get_freeze_count() == 0
    finally:
        await runner.cleanup()
    assert service.readiness.reason() == "draining"
    assert source.stopped >= 1
    assert self_url not in service.workspace.peers
    # A late discovery event does not put the leaving node back into its ring.
    source.on_peers([self_url])
    assert self_url not in service.workspace.peers


# --- the peer port: secret, liveness, TLS -----------------------------------------------------


def test_peer_settings_defaults_and_rules() -> None:
    s = Settings.from_env(BASE)
    assert s.groupcache_liveness_timeout == 3.0
    assert (s.groupcache_tls_cert, s.groupcache_tls_key, s.groupcache_tls_ca) == ("", "", "")
    alone = {**BASE, "PEER_DISCOVERY": "static", "GROUPCACHE_PEERS": "http://me:5000"}
    alone["PROXY_WORKERS"] = "1"  # more workers are more peers on this address
    assert Settings.from_env({**alone, "GROUPCACHE_SELF_URL": "http://me:5000"})  # one peer: ok
    two = {**alone, "GROUPCACHE_PEERS": "http://me:5000,http://you:5000"}
    two["GROUPCACHE_SELF_URL"] = "http://me:5000"
    with pytest.raises(ConfigError, match=r"^GROUPCACHE_PEER_SECRET: required"):
        Settings.from_env(two)
    assert Settings.from_env({**two, "GROUPCACHE_PEER_SECRET": "x"}).peer_discovery == "static"
    with pytest.raises(ConfigError, match=r"^GROUPCACHE_LIVENESS_TIMEOUT"):
        Settings.from_env({**BASE, "GROUPCACHE_LIVENESS_TIMEOUT": "0s"})
    with pytest.raises(ConfigError, match=r"^GROUPCACHE_TLS_CERT: .* go together"):
        Settings.from_env({**BASE, "GROUPCACHE_TLS_CERT": "/tls/tls.crt"})
    tls = {"GROUPCACHE_TLS_CERT": "/c", "GROUPCACHE_TLS_KEY": "/k", "GROUPCACHE_TLS_CA": "/ca"}
    assert Settings.from_env({**BASE, **tls}).groupcache_tls_ca == "/ca"


async def test_an_oauth2_key_the_plugin_cannot_read_stops_the_start() -> None:
    import tokencache
    from tokencache.proxy._service import build_backend_auth

    env = {
        **BASE,
        **_OAUTH,
        "OAUTH2_AUTH_METHOD": "private_key_jwt",
        "OAUTH2_CLIENT_SECRET": "",
        "OAUTH2_PRIVATE_KEY": _PEM,  # shaped like a PEM key, but not one
    }
    s = Settings.from_env(env)
    ws = tokencache.Workspace(self_url="")
    try:
        with pytest.raises(ConfigError, match=r"^OAUTH2_AUTH_METHOD=private_key_jwt: ") as info:
            build_backend_auth(s, ws)
    finally:
        await ws.close()
    assert "MC4CAQ" not in str(info.value)
