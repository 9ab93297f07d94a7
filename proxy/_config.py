"""The proxy's settings: the one module that reads the environment.

Theory of operation: every setting is a field of the frozen dataclass `Settings`; the field's
metadata names its environment variable, its default as the user would type it, a one-line help
text and the parser that turns the text into a value. `Settings.from_env(env)` walks the fields in
order, resolves secret references (``aws-secretsmanager:…``, ``aws-parameterstore:…``, ``file:…``,
``aws-s3:…``, ``aws-dynamodb:…``, ``aws-lambda:…``, ``#http:…``; ``vault:…`` and ``proxy||…``
are refused) on every field, as kubecache did, parses, and then checks the few rules that involve
several settings. `--help` is generated from the same metadata, so the two can never disagree.

House rules: a bad value raises `ConfigError` with one line that names the variable and what is
wrong; a secret's value (or any value that came from a secret reference) is never echoed.
"""

from __future__ import annotations

import dataclasses
import importlib
import importlib.metadata
import itertools
import json
import os
import re
import socket
import sys
import urllib.parse
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol

from ._errors import ConfigError
from ._workers import (
    CGROUP_CPU_MAX,
    MAX_WORKERS,
    WORKER_CONTROL_ENV,
    WORKER_INDEX_ENV,
    cpus_from_cgroup,
    expand_peers,
    local_peers,
    with_port_offset,
)

# Values that begin with one of these are references the SecretResolver looks up at start-up.
SECRET_REF_PREFIXES = (
    "aws-secretsmanager:",
    "aws-parameterstore:",
    "file:",
    "aws-s3:",
    "aws-dynamodb:",
    "aws-lambda:",
    "#http:",
    "vault:",
    "proxy|",
)

_DISCOVERY = ("auto", "static", "kubernetes", "ecs", "none")

# Variables read by the tracing set-up (and the OpenTelemetry SDK), not Settings fields:
# (variable, default, help, kubecache's default, difference) for the generated table.
OTEL_ROWS: tuple[tuple[str, str, str, str | None, str | None], ...] = (
    (
        "OTELCONFIG_EXPORTER",
        "",
        "grpc | http: the OTLP transport; stdout; jaeger (retired: one warning line)",
        "grpc",
        "empty exports nothing unless an OTLP endpoint is set; jaeger logs one line and "
        "exports nothing (use OTLP)",
    ),
    (
        "OTEL_TRACES_EXPORTER",
        "otlp with an endpoint, else none",
        "otlp | console | none; jaeger as OTELCONFIG_EXPORTER=jaeger",
        "(ignored)",
        "read here (kubecache ignored it); other values than these stop the start",
    ),
    (
        "OTEL_PROPAGATORS",
        "tracecontext,baggage",
        "tracecontext, baggage, b3, b3multi, jaeger, xray, ottrace, none",
        "tracecontext",
        "unknown names: one warning line, ignored",
    ),
    (
        "OTEL_TRACES_SAMPLER",
        "parentbased_always_on",
        "the standard sampler names (OTEL_TRACES_SAMPLER_ARG for ratios)",
        "parentbased_always_on",
        "strict: an unknown sampler stops the start",
    ),
    (
        "OTEL_SERVICE_NAME",
        "tokencache-proxy",
        "service.name of the spans (or OTEL_RESOURCE_ATTRIBUTES)",
        "kubecache",
        "the default names this program",
    ),
    (
        "OTEL_EXPORTER_OTLP_ENDPOINT",
        "",
        "collector URL; the other OTEL_EXPORTER_OTLP_* are read by the SDK exporters",
        "",
        "",
    ),
)
# The plugin's client authentication methods at the token endpoint (plugin.AUTH_METHODS; kept
# literal here so that reading the settings imports no HTTP or JOSE library).
_AUTH_METHODS = (
    "client_secret_basic",
    "client_secret_post",
    "client_secret_jwt",
    "private_key_jwt",
    "tls_client_auth",
    "self_signed_tls_client_auth",
)
_SECRET_METHODS = frozenset({"client_secret_basic", "client_secret_post", "client_secret_jwt"})
_TLS_METHODS = frozenset({"tls_client_auth", "self_signed_tls_client_auth"})
_JWT_ALGS = (
    "HS256",
    "HS384",
    "HS512",
    "RS256",
    "RS384",
    "RS512",
    "PS256",
    "PS384",
    "PS512",
    "ES256",
    "ES384",
    "ES512",
    "EdDSA",
    "Ed25519",
)


@dataclass(frozen=True)
class Address:
    """A listen address: `host` ("" = every interface) and `port` (0 = any free port)."""

    host: str
    port: int

    def __str__(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{host}:{self.port}"

    @property
    def bind_host(self) -> str:
        """The host to bind: every interface when none was given."""
        return self.host or "0.0.0.0"


_DURATION_PART = re.compile(r"(\d+(?:\.\d*)?|\.\d+)(ns|us|µs|ms|s|m|h)")
_UNIT = {"ns": 1e-9, "us": 1e-6, "µs": 1e-6, "ms": 1e-3, "s": 1.0, "m": 60.0, "h": 3600.0}
_TRUE = frozenset({"1", "true", "yes", "on", "t", "y"})
_FALSE = frozenset({"0", "false", "no", "off", "f", "n", ""})


def parse_duration(text: str) -> float:
    """`300s`, `5m`, `1h30m`, `250ms` or plain seconds (`1.5`) → seconds (never negative)."""
    t = text.strip()
    if not t:
        raise ValueError("empty duration")
    try:
        seconds = float(t)
    except ValueError:
        pos, seconds = 0, 0.0
        for m in _DURATION_PART.finditer(t):
            if m.start() != pos:
                break
            seconds += float(m.group(1)) * _UNIT[m.group(2)]
            pos = m.end()
        if pos != len(t) or pos == 0:
            raise ValueError(f"{t!r} is not a duration (e.g. 300s, 5m, 1h, 250ms, 2.5)") from None
    if seconds < 0 or seconds != seconds or seconds == float("inf"):
        raise ValueError(f"{t!r} is not a non-negative finite duration")
    return seconds


def parse_list(text: str) -> tuple[str, ...]:
    """A JSON array of strings (`["GET","HEAD"]`) or comma-separated text; blanks are dropped."""
    t = text.strip()
    if t.startswith("["):
        try:
            items = json.loads(t)
        except json.JSONDecodeError as exc:
            raise ValueError(f"invalid JSON list: {exc.msg} at column {exc.colno}") from None
        if not isinstance(items, list) or not all(isinstance(i, str) for i in items):
            raise ValueError("the JSON list must hold only strings")
        parts = items
    else:
        parts = t.split(",")
    return tuple(p.strip() for p in parts if p.strip())


def parse_bool(text: str) -> bool:
    """true/false, 1/0, yes/no, on/off (any case)."""
    t = text.strip().lower()
    if t in _TRUE:
        return True
    if t in _FALSE:
        return False
    raise ValueError(f"{text.strip()!r} is not a boolean (true or false)")


def parse_int(text: str, *, minimum: int | None = None) -> int:
    """A decimal integer (`_` allowed as separator), at least `minimum`."""
    t = text.strip()
    if not re.fullmatch(r"[+-]?\d[\d_]*", t):
        raise ValueError(f"{t!r} is not an integer")
    value = int(t)
    if minimum is not None and value < minimum:
        raise ValueError(f"{value} is below the minimum {minimum}")
    return value


def parse_address(text: str) -> Address:
    """`:8080`, `127.0.0.1:8080`, `[::1]:8080`, `localhost:8080` or a bare port `8080`."""
    t = text.strip()
    if re.fullmatch(r"\d+", t):
        host, port_text = "", t
    else:
        m = re.fullmatch(r"(\[[0-9a-fA-F:.]+\]|[^\s:/\[\]]*):(\d+)", t)
        if not m:
            raise ValueError(f"{t!r} is not an address (host:port or :port)")
        host, port_text = m.group(1).strip("[]"), m.group(2)
    port = int(port_text)
    if port > 65535:
        raise ValueError(f"port {port} is out of range (0-65535)")
    return Address(host, port)


def parse_url(text: str) -> str:
    """An absolute http(s) URL with a host; a trailing slash is removed."""
    t = text.strip()
    if not t:
        raise ValueError("required")
    parts = urllib.parse.urlsplit(t)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError("not an http(s) URL with a host")
    try:
        parts.port  # noqa: B018 - raises on a bad port
    except ValueError:
        raise ValueError("the URL has an invalid port") from None
    return t.rstrip("/")


def parse_peer_urls(text: str) -> tuple[str, ...]:
    """A list of peer URLs (JSON or comma-separated); duplicates are an error."""
    urls = tuple(parse_url(u) for u in parse_list(text))
    if len(set(urls)) != len(urls):
        raise ValueError("a peer URL is listed twice")
    return urls


def parse_regexp(text: str) -> tuple[re.Pattern[str], ...]:
    """Regular expressions (JSON list, or comma-separated when they hold no comma)."""
    out = []
    for item in parse_list(text):
        try:
            out.append(re.compile(item))
        except re.error as exc:
            raise ValueError(f"bad regexp {item!r}: {exc}") from None
    return tuple(out)


def parse_buckets(text: str) -> tuple[float, ...]:
    """Histogram bucket upper bounds in seconds: numbers, strictly increasing."""
    out = []
    for item in parse_list(text):
        try:
            out.append(float(item))
        except ValueError:
            raise ValueError(f"bucket {item!r} is not a number") from None
    if any(b <= a for a, b in itertools.pairwise(out)):
        raise ValueError("buckets must be strictly increasing")
    return tuple(out)


def parse_path(text: str) -> str:
    """A URL path beginning with `/`."""
    t = text.strip()
    if not t.startswith("/") or any(c in t for c in " ?#"):
        raise ValueError(f"{t!r} is not a path (must start with /, no spaces, ? or #)")
    return t


def parse_choice(text: str, choices: tuple[str, ...]) -> str:
    """One of `choices` (case-insensitive)."""
    t = text.strip().lower()
    if t not in choices:
        raise ValueError(f"{text.strip()!r} is not one of {', '.join(choices)}")
    return t


def parse_text(text: str) -> str:
    """Any text, surrounding whitespace removed."""
    return text.strip()


class Resolver(Protocol):
    """What `from_env` needs from `proxy.SecretResolver` (tests pass a fake)."""

    def resolve(self, name: str, value: str) -> str:
        """Return the value `value` refers to; raise `SecretReferenceError` when it cannot."""


def _setting(
    env: str,
    default: str,
    parse: Callable[[str], Any],
    help: str,
    *,
    secret: bool = False,
    ref: bool = False,
    value: Any = dataclasses.MISSING,
    kube: tuple[str, str] | None = None,
) -> Any:
    """Declare one setting: variable, textual default, parser, help; `ref` allows secret refs.

    `kube` is (kubecache's default, how this setting differs from kubecache's; "" = same) for the
    settings kubecache had, None for the project's own: docs/proxy.md's table is made from it.
    Every setting accepts a secret reference (kubecache resolved one on every variable); `ref`
    is kept for the settings where a reference is the usual form.
    """
    meta = {"env": env, "default": default, "parse": parse, "help": help, "secret": secret}
    meta["ref"] = ref or secret
    meta["kube"] = kube
    if value is dataclasses.MISSING:
        value = parse(default) if default else None
    if isinstance(value, list | dict):
        raise TypeError("mutable default")  # pragma: no cover - a programming error
    return field(default=value, metadata=meta)


def _methods(text: str) -> tuple[str, ...]:
    methods = tuple(m.upper() for m in parse_list(text))
    for m in methods:
        if not re.fullmatch(r"[A-Z]+", m):
            raise ValueError(f"{m!r} is not an HTTP method")
    return methods


def _field_name(text: str) -> str:
    name = text.strip()
    if not re.fullmatch(r"[!#$%&'*+.^_`|~0-9A-Za-z-]+", name):
        raise ValueError(f"not a header field name: {name!r}")
    return name


def _request_directives(text: str) -> str:
    return parse_choice(text, ("revalidate", "ignore"))


def _non_negative_int(text: str) -> int:
    return parse_int(text, minimum=0)


def _positive_int(text: str) -> int:
    return parse_int(text, minimum=1)


def _positive_duration(text: str) -> float:
    seconds = parse_duration(text)
    if seconds <= 0:
        raise ValueError("must be longer than 0s")
    return seconds


def _backend_timeout(text: str) -> float:
    seconds = parse_duration(text)
    if seconds <= 0:
        raise ValueError(
            "0 (kubecache: no timeout) is not supported; a peer waits BACKEND_TIMEOUT + 1s for a "
            "key's owner, so set a duration, e.g. 300s"
        )
    return seconds


def _zero_is_a_minute(text: str) -> float:
    """A duration where 0 means one minute: kubecache's DogStatsD libraries (groupcache_datadog's
    ExportInterval, dogstatsdclient's TTL) replaced a zero with their one-minute default."""
    seconds = parse_duration(text)
    return seconds if seconds > 0 else 60.0


def _groupcache_version(text: str) -> int:
    version = parse_int(text)
    if version not in (2, 3):
        raise ValueError(f"{version} is not 2 or 3")
    return version


def _port(text: str) -> int:
    port = parse_int(text, minimum=1)
    if port > 65535:
        raise ValueError(f"port {port} is out of range (1-65535)")
    return port


def _workers(text: str) -> int:
    value = parse_int(text, minimum=1)
    if value > MAX_WORKERS:
        raise ValueError(f"{value} is above the maximum {MAX_WORKERS}")
    return value


def parse_fraction(text: str) -> float:
    """A number from 0 to 1 (`0.5`)."""
    t = text.strip()
    try:
        value = float(t)
    except ValueError:
        raise ValueError(f"{t!r} is not a number from 0 to 1") from None
    if not 0 <= value <= 1:  # also refuses nan
        raise ValueError(f"{t!r} is not a number from 0 to 1")
    return value


def _optional_url(text: str) -> str:
    return parse_url(text) if text else ""


def _jwt_alg(text: str) -> str:
    alg = text.strip()
    if alg not in _JWT_ALGS:
        raise ValueError(f"{alg!r} is not one of {', '.join(_JWT_ALGS)}")
    return alg


def _pem_private_key(text: str) -> str:
    # The value (a secret) is never echoed: the caller reports "invalid value (not shown)".
    pem = text.strip()
    if not pem.startswith("-----BEGIN ") or "PRIVATE KEY-----" not in pem:
        raise ValueError("not a PEM private key")
    return pem + "\n"


def _file_path(text: str) -> str:
    path = text.strip()
    if not path:
        return ""
    if not os.path.isfile(path):
        raise ValueError(f"{path!r} is not a file")
    return path


@dataclass(frozen=True)
class Settings:
    """Every setting of `tokencache-proxy`, parsed; build with `Settings.from_env(os.environ)`."""

    listen_addr: Address = _setting(  # noqa: RUF009 - a dataclasses.field; Address is frozen
        "LISTEN_ADDR",
        ":8080",
        parse_address,
        "public listener, host:port (empty host = all)",
        kube=(":8080", ""),
    )
    backend_url: str = _setting(
        "BACKEND_URL",
        "",
        parse_url,
        "the backend every request goes to (required)",
        ref=True,
        value="",
        kube=(
            "http://config-server:9000",
            "required: no built-in backend; a path in it prefixes every request (kubecache used "
            "only its scheme and host: drop the path to keep that)",
        ),
    )
    backend_timeout: float = _setting(
        "BACKEND_TIMEOUT",
        "300s",
        _backend_timeout,
        "backend request timeout (then 504)",
        kube=("300s", "a timeout answers 504, not 500; 0 (kubecache: no timeout) is refused"),
    )
    cache_ttl: float = _setting(
        "CACHE_TTL",
        "300s",
        parse_duration,
        "how long 2xx without freshness information live",
        kube=("300s", "a response's own Cache-Control/Expires wins unless CACHE_TTL_OVERRIDE"),
    )
    cache_error_ttl: float = _setting(
        "CACHE_ERROR_TTL",
        "60s",
        parse_duration,
        "how long 404/410/301... without freshness information live",
        kube=("60s", "backend faults (502/504) are never cached"),
    )
    cache_ttl_override: bool = _setting(
        "CACHE_TTL_OVERRIDE",
        "false",
        parse_bool,
        "true = kubecache: every storable response lives CACHE_TTL/CACHE_ERROR_TTL",
    )
    cache_targeted_field: str = _setting(
        "CACHE_TARGETED_FIELD",
        "CDN-Cache-Control",
        _field_name,
        "targeted Cache-Control field this cache obeys first (RFC 9213)",
    )
    cache_request_directives: str = _setting(
        "CACHE_REQUEST_DIRECTIVES",
        "revalidate",
        _request_directives,
        "clients' Cache-Control: revalidate (one revalidation per cluster) or ignore",
    )
    cache_purge_token: str = _setting(
        "CACHE_PURGE_TOKEN",
        "",
        parse_text,
        "bearer token of PURGE requests (empty = PURGE is forwarded)",
        secret=True,
        value="",
    )
    restrict_method: tuple[str, ...] = _setting(
        "RESTRICT_METHOD",
        "GET,HEAD",
        _methods,
        "cacheable methods (JSON list or comma-separated)",
        kube=('["GET", "HEAD"]', "also takes comma-separated text"),
    )
    restrict_route_regexp: tuple[re.Pattern[str], ...] = _setting(
        "RESTRICT_ROUTE_REGEXP",
        "",
        parse_regexp,
        "cacheable routes: regexps, any match (empty = every route)",
        value=(),
        kube=(
            '["^/develop", "^/homolog", "^/prod", "/develop/?$", "/homolog/?$", "/prod/?$"]',
            "default: every route (kubecache's six config-server routes fit one backend only; set them to keep its behaviour); matching on path and query is the same",
        ),
    )
    groupcache_port: Address = _setting(  # noqa: RUF009 - a dataclasses.field; Address is frozen
        "GROUPCACHE_PORT",
        ":5000",
        parse_address,
        "peer protocol listener, host:port",
        kube=(
            ":5000",
            "peer protocol is tokencache's own (never mix Go and Python pods in one ring)",
        ),
    )
    groupcache_size_bytes: int = _setting(
        "GROUPCACHE_SIZE_BYTES",
        "100000000",
        _positive_int,
        "bytes of the http cache group",
        kube=(
            "100000000",
            "strict: `1e+08` is refused (the chart renders numbers unquoted correctly)",
        ),
    )
    # Hot copies up to half the owned keys' bytes, a third of a full group (the engine's default
    # is groupcache's 1/8 of main): behind a
    # Service every pod is asked for every key, so with N pods (N-1)/N of requests are for keys
    # another pod owns; a pod that can keep the popular part of the whole working set as hot
    # copies serves it without a peer hop, and still has half its budget for the keys it owns.
    groupcache_hot_fraction: float = _setting(
        "GROUPCACHE_HOT_FRACTION",
        "0.5",
        parse_fraction,
        "hot copies of keys other pods own, as a share of the owned keys' bytes once the cache is "
        "full (0-1; 0.5: a third of GROUPCACHE_SIZE_BYTES); they also use what the owned keys "
        "leave free, and give it back first",
    )
    health_addr: Address = _setting(  # noqa: RUF009 - a dataclasses.field; Address is frozen
        "HEALTH_ADDR", ":8888", parse_address, "liveness/readiness listener", kube=(":8888", "")
    )
    health_path: str = _setting(
        "HEALTH_PATH",
        "/health",
        parse_path,
        "liveness path",
        kube=("/health", "a real liveness check; readiness is READY_PATH"),
    )
    ready_path: str = _setting("READY_PATH", "/ready", parse_path, "readiness path")
    metrics_addr: Address = _setting(  # noqa: RUF009 - a dataclasses.field; Address is frozen
        "METRICS_ADDR",
        ":3000",
        parse_address,
        "Prometheus listener (may equal HEALTH_ADDR)",
        kube=(":3000", ""),
    )
    metrics_path: str = _setting(
        "METRICS_PATH", "/metrics", parse_path, "Prometheus path", kube=("/metrics", "")
    )
    metrics_namespace: str = _setting(
        "METRICS_NAMESPACE",
        "",
        parse_text,
        "prefix of every metric name",
        value="",
        kube=(
            "",
            "prefixes requests_seconds and groupcache_* as in Go, and the project's own metrics; not process_* or kubegroup_*",
        ),
    )
    metrics_buckets_latency_http: tuple[float, ...] = _setting(
        "METRICS_BUCKETS_LATENCY_HTTP",
        "",
        parse_buckets,
        "requests_seconds buckets in seconds (empty = kubecache's)",
        value=(),
        kube=("0.00001, ..., 1000", ""),
    )
    debug_log: bool = _setting(
        "DEBUG_LOG",
        "false",
        parse_bool,
        "log at debug level",
        kube=(
            "true",
            "default false: a debug line per request costs throughput; logs are JSON lines",
        ),
    )
    trace: bool = _setting(
        "TRACE", "true", parse_bool, "OpenTelemetry tracing (OTEL_* variables)", kube=("true", "")
    )
    trace_client_sampled_hits: bool = _setting(
        "TRACE_CLIENT_SAMPLED_HITS",
        "false",
        parse_bool,
        "a client's sampled traceparent makes a span for a cache hit too",
    )
    secret_role_arn: str = _setting(
        "SECRET_ROLE_ARN",
        "",
        parse_text,
        "IAM role assumed to read aws-* references",
        value="",
        kube=(
            "",
            "a reference that cannot be resolved stops the start (kubecache used the reference text)",
        ),
    )
    aws_endpoint_url: str = _setting(
        "AWS_ENDPOINT_URL",
        "",
        _optional_url,
        "AWS endpoint override (tests, VPC endpoints)",
        value="",
    )
    groupcache_peers: tuple[str, ...] = _setting(
        "GROUPCACHE_PEERS",
        "",
        parse_peer_urls,
        "static peer URLs, self included (empty = single node or kubernetes)",
        ref=True,
        value=(),
    )
    groupcache_self_url: str = _setting(
        "GROUPCACHE_SELF_URL",
        "",
        _optional_url,
        "this node's peer URL (default http://POD_IP or hostname:GROUPCACHE_PORT)",
        ref=True,
        value="",
    )
    groupcache_peer_secret: str = _setting(
        "GROUPCACHE_PEER_SECRET",
        "",
        parse_text,
        "shared secret of the peer protocol (required with more than one peer; "
        "without it the peer port listens on loopback only)",
        secret=True,
        value="",
    )
    groupcache_liveness_timeout: float = _setting(
        "GROUPCACHE_LIVENESS_TIMEOUT",
        "3s",
        _positive_duration,
        "a peer silent this long (no answer, no heartbeat) counts as gone",
    )
    groupcache_tls_cert: str = _setting(
        "GROUPCACHE_TLS_CERT", "", parse_text, "peer port TLS certificate file (PEM)", value=""
    )
    groupcache_tls_key: str = _setting(
        "GROUPCACHE_TLS_KEY", "", parse_text, "peer port TLS private key file (PEM)", value=""
    )
    groupcache_tls_ca: str = _setting(
        "GROUPCACHE_TLS_CA",
        "",
        parse_text,
        "CA file peers' certificates must chain to (mutual TLS)",
        value="",
    )
    cache_max_body_bytes: int = _setting(
        "CACHE_MAX_BODY_BYTES", "1048576", _non_negative_int, "larger bodies pass uncached"
    )
    cache_stale_if_error: float = _setting(
        "CACHE_STALE_IF_ERROR",
        "0",
        parse_duration,
        "serve entries expired this long when backend fails",
    )
    cache_allow_authorized: bool = _setting(
        "CACHE_ALLOW_AUTHORIZED",
        "false",
        parse_bool,
        "let requests with Authorization/Cookie use the shared cache",
    )
    max_request_body_bytes: int = _setting(
        "MAX_REQUEST_BODY_BYTES",
        "10485760",
        _positive_int,
        "larger request bodies are refused with 413",
    )
    write_timeout: float = _setting(
        "WRITE_TIMEOUT",
        "60s",
        _positive_duration,
        "a client that reads none of its answer this long is disconnected",
    )
    max_client_connections: int = _setting(
        "MAX_CLIENT_CONNECTIONS",
        "0",
        _non_negative_int,
        "open public connections at most; idle keep-alive ones make room first "
        "(0 = three quarters of the file-descriptor limit)",
    )
    oauth2_token_url: str = _setting(
        "OAUTH2_TOKEN_URL",
        "",
        _optional_url,
        "token endpoint; set = backend calls use OAuth2",
        ref=True,
        value="",
    )
    oauth2_client_id: str = _setting(
        "OAUTH2_CLIENT_ID", "", parse_text, "OAuth2 client id", ref=True, value=""
    )
    oauth2_client_secret: str = _setting(
        "OAUTH2_CLIENT_SECRET", "", parse_text, "OAuth2 client secret", secret=True, value=""
    )
    oauth2_scope: str = _setting(
        "OAUTH2_SCOPE", "", parse_text, "OAuth2 scope (space-separated)", ref=True, value=""
    )
    oauth2_auth_method: str = _setting(
        "OAUTH2_AUTH_METHOD",
        "client_secret_basic",
        lambda t: parse_choice(t, _AUTH_METHODS),
        "client_secret_basic | client_secret_post | client_secret_jwt | private_key_jwt | "
        "tls_client_auth | self_signed_tls_client_auth",
    )
    oauth2_private_key: str = _setting(
        "OAUTH2_PRIVATE_KEY",
        "",
        _pem_private_key,
        "private_key_jwt: the PEM private key (RSA, EC, Ed25519), usually a reference "
        "(file:/path/key.pem, aws-secretsmanager:...)",
        secret=True,
        value="",
    )
    oauth2_signing_alg: str = _setting(
        "OAUTH2_SIGNING_ALG",
        "",
        _jwt_alg,
        "JWT methods: the assertion's alg (empty = HS256, or the key type's default)",
        value="",
    )
    oauth2_key_id: str = _setting(
        "OAUTH2_KEY_ID",
        "",
        parse_text,
        "JWT methods: the kid in the assertion's header (empty = none)",
        value="",
    )
    oauth2_client_cert: str = _setting(
        "OAUTH2_CLIENT_CERT",
        "",
        _file_path,
        "PEM client certificate (file) presented to the token endpoint: RFC 8705 methods",
        value="",
    )
    oauth2_client_key: str = _setting(
        "OAUTH2_CLIENT_KEY",
        "",
        _file_path,
        "PEM private key (file) of OAUTH2_CLIENT_CERT (empty = in the certificate file)",
        value="",
    )
    oauth2_ca_file: str = _setting(
        "OAUTH2_CA_FILE",
        "",
        _file_path,
        "PEM CA certificates (file) trusted for the token endpoint (empty = system store)",
        value="",
    )
    oauth2_check_at_start: bool = _setting(
        "OAUTH2_CHECK_AT_START",
        "false",
        parse_bool,
        "fetch a token at start-up; refuse to start (exit 2) when none can be had",
    )
    peer_discovery: str = _setting(
        "PEER_DISCOVERY",
        "auto",
        lambda t: parse_choice(t, _DISCOVERY),
        "auto | static | kubernetes | ecs | none (auto: static if peers, ecs with COMPUTE=ecs, "
        "kubernetes in a pod)",
    )
    kubegroup_label_selector: str = _setting(
        "KUBEGROUP_LABEL_SELECTOR",
        "app=tokencache-proxy",
        parse_text,
        "label selector of the peer pods",
        kube=(
            "app=kubecache",
            "default app=tokencache-proxy: kubecache pods carry app=kubecache and speak another peer protocol; the chart sets the release's own selector",
        ),
    )
    kubegroup_debounce: float = _setting(
        "KUBEGROUP_DEBOUNCE", "1s", parse_duration, "wait this long for pod changes to settle"
    )
    pod_ip: str = _setting("POD_IP", "", parse_text, "this pod's IP (downward API)", value="")
    shutdown_timeout: float = _setting(
        "SHUTDOWN_TIMEOUT", "20s", parse_duration, "SIGTERM: time in-flight requests get to finish"
    )
    # --- kubecache's remaining settings: honoured, or refused with the reason ----------------
    groupcache_group_name: str = _setting(
        "GROUPCACHE_GROUP_NAME",
        "path",
        parse_text,
        "name of the HTTP cache group (the group label of groupcache_*)",
    )
    metrics_uri_limit: int = _setting(
        "METRICS_URI_LIMIT",
        "100",
        _non_negative_int,
        "distinct paths answered below 400 with their own requests_seconds uri label (later: OTHER)",
    )
    prometheus_enable: bool = _setting(
        "PROMETHEUS_ENABLE",
        "true",
        parse_bool,
        "serve Prometheus metrics on METRICS_ADDR/METRICS_PATH",
        kube=("true", ""),
    )
    groupcache_version: int = _setting(
        "GROUPCACHE_VERSION",
        "2",
        _groupcache_version,
        "2 or 3: accepted; the peer protocol is tokencache's own either way",
        kube=("2", "no effect: chose kubecache's Go groupcache library"),
    )
    groupcache_disable_purge_expired: bool = _setting(
        "GROUPCACHE_DISABLE_PURGE_EXPIRED",
        "false",
        parse_bool,
        "do not purge expired entries in the background",
        kube=("false", ""),
    )
    groupcache_expired_keys_eviction_interval: float = _setting(
        "GROUPCACHE_EXPIRED_KEYS_EVICTION_INTERVAL",
        "30m",
        parse_duration,
        "how often expired entries are purged",
        kube=("30m", ""),
    )
    kubegroup_metrics_namespace: str = _setting(
        "KUBEGROUP_METRICS_NAMESPACE",
        "",
        parse_text,
        "prefix of the kubegroup_* metrics",
        value="",
        kube=("", ""),
    )
    kubegroup_debug: bool = _setting(
        "KUBEGROUP_DEBUG",
        "true",
        parse_bool,
        "discovery logs at debug level (seen with DEBUG_LOG=true)",
        kube=("true", ""),
    )
    kubegroup_force_namespace_default: bool = _setting(
        "KUBEGROUP_FORCE_NAMESPACE_DEFAULT",
        "false",
        parse_bool,
        "watch pods of namespace default instead of the pod's own",
        kube=("false", ""),
    )
    compute: str = _setting(
        "COMPUTE",
        "kubernetes",
        lambda t: parse_choice(t, ("kubernetes", "ecs")),
        "kubernetes | ecs: where peers are discovered (with PEER_DISCOVERY=auto)",
        kube=("kubernetes", ""),
    )
    ecs_task_discovery_service: str = _setting(
        "ECS_TASK_DISCOVERY_SERVICE",
        "kubecache",
        parse_text,
        "COMPUTE=ecs: the ECS service whose tasks are the peers",
        kube=("kubecache", "only the ECS API is asked (kubecache asked its discovery agent first)"),
    )
    force_single_task: bool = _setting(
        "FORCE_SINGLE_TASK",
        "false",
        parse_bool,
        "COMPUTE=ecs: this task is the only peer (no ECS API calls)",
        kube=("false", ""),
    )
    ecs_container_metadata_uri_v4: str = _setting(
        "ECS_CONTAINER_METADATA_URI_V4",
        "",
        parse_text,
        "COMPUTE=ecs: task metadata endpoint, set by the ECS agent (names the cluster)",
        value="",
    )
    dogstatsd_enable: bool = _setting(
        "DOGSTATSD_ENABLE",
        "true",
        parse_bool,
        "send groupcache/kubegroup metrics to DogStatsD (DD_AGENT_HOST:DD_AGENT_PORT, UDP)",
        kube=("true", ""),
    )
    dogstatsd_export_interval: float = _setting(
        "DOGSTATSD_EXPORT_INTERVAL",
        "30s",
        _zero_is_a_minute,
        "DogStatsD export interval (0 = 1m, as kubecache)",
        kube=("30s", ""),
    )
    dogstatsd_debug: bool = _setting(
        "DOGSTATSD_DEBUG", "false", parse_bool, "log every DogStatsD datagram", kube=("false", "")
    )
    dogstatsd_client_ttl: float = _setting(
        "DOGSTATSD_CLIENT_TTL",
        "1m",
        _zero_is_a_minute,
        "re-resolve the agent address this often (0 = 1m, as kubecache)",
        kube=("1m", ""),
    )
    dd_agent_host: str = _setting(
        "DD_AGENT_HOST", "localhost", parse_text, "DogStatsD agent host", kube=("localhost", "")
    )
    dd_agent_port: int = _setting(
        "DD_AGENT_PORT", "8125", _port, "DogStatsD agent UDP port", kube=("8125", "")
    )
    dd_tags: str = _setting(
        "DD_TAGS", "", parse_text, "extra DogStatsD tags, space-separated", value="", kube=("", "")
    )
    emf_enable: bool = _setting(
        "EMF_ENABLE",
        "false",
        parse_bool,
        "CloudWatch EMF metrics as JSON lines on stdout (every 20s)",
        kube=("false", ""),
    )
    emf_send_logs: bool = _setting(
        "EMF_SEND_LOGS",
        "false",
        parse_bool,
        "send EMF straight to CloudWatch Logs (refused: use stdout and the log agent)",
        kube=("false", "true is refused: ship stdout with the CloudWatch agent or Fluent Bit"),
    )
    automemlimit_debug: str = _setting(
        "AUTOMEMLIMIT_DEBUG",
        "",
        parse_text,
        "accepted and ignored (a Go runtime setting of kubecache)",
        value="",
        kube=("", "no effect: Go runtime memory limit tuning"),
    )
    proxy_workers: int = _setting(
        "PROXY_WORKERS",
        "",
        _workers,
        "worker processes sharing LISTEN_ADDR, each a peer on GROUPCACHE_PORT+i "
        "(empty = the CPUs the container may use)",
        value=0,
    )
    # Not settings of their own: the OTEL_*/OTELCONFIG_* variables and whether we run in Kubernetes.
    otel: Mapping[str, str] = field(default_factory=dict, metadata={})
    in_kubernetes: bool = field(default=False, metadata={})
    # Set by the supervisor in the environment of each worker it starts (see _workers.py):
    # which worker this process is (-1: not a worker) and the Unix socket it serves health on.
    worker_index: int = field(default=-1, metadata={})
    worker_control: str = field(default="", metadata={})

    @classmethod
    def from_env(
        cls, env: Mapping[str, str] | None = None, *, resolver: Resolver | None = None
    ) -> Settings:
        """Parse `env` (default: the process environment); raise `ConfigError` naming the first
        bad variable.

        `resolver` looks up secret references; by default a `SecretResolver` is built (only when a
        reference is present) with SECRET_ROLE_ARN and AWS_ENDPOINT_URL.
        """
        if env is None:
            env = os.environ  # the one place the proxy reads its environment
        values: dict[str, Any] = {}
        for f in dataclasses.fields(cls):
            meta = f.metadata
            if not meta:
                continue
            name = meta["env"]
            raw = env.get(name, meta["default"]).strip()
            from_ref = raw.startswith(SECRET_REF_PREFIXES)
            if from_ref:
                resolver = resolver or _default_resolver(env)
                raw = _resolve(resolver, name, raw)
            if not raw and f.default is not dataclasses.MISSING and f.default is not None:
                values[f.name] = f.default
                continue
            try:
                values[f.name] = meta["parse"](raw)
            except (ValueError, re.error) as exc:
                if meta["secret"] or from_ref:
                    raise ConfigError(f"{name}: invalid value (not shown: secret)") from None
                raise ConfigError(f"{name}: {exc}") from None
        # OTEL_* for the SDK, and kubecache's OTELCONFIG_EXPORTER (the OTLP transport).
        values["otel"] = {k: v for k, v in env.items() if k.startswith(("OTEL_", "OTELCONFIG_"))}
        values["in_kubernetes"] = bool(env.get("KUBERNETES_SERVICE_HOST"))
        index = env.get(WORKER_INDEX_ENV, "").strip()
        if index:
            try:
                values["worker_index"] = parse_int(index, minimum=0)
            except ValueError as exc:
                raise ConfigError(f"{WORKER_INDEX_ENV}: {exc}") from None
        values["worker_control"] = env.get(WORKER_CONTROL_ENV, "").strip()
        return _finish(cls(**values))

    def worker_environment(self, index: int, control: str) -> dict[str, str]:
        """The environment of worker ``index``: this process's, plus which worker it is."""
        return {**os.environ, WORKER_INDEX_ENV: str(index), WORKER_CONTROL_ENV: control}

    @classmethod
    def help_rows(cls) -> list[tuple[str, str, str]]:
        """(variable, default as typed, help) for every setting, in declaration order."""
        return [
            (f.metadata["env"], f.metadata["default"], f.metadata["help"])
            for f in dataclasses.fields(cls)
            if f.metadata
        ]

    @classmethod
    def kubecache_rows(cls) -> list[tuple[str, str, str, str | None, str | None]]:
        """(variable, default, help, kubecache's default or None, difference or None) per
        setting, plus the OpenTelemetry variables handed to the SDK; docs/proxy.md's table."""
        rows: list[tuple[str, str, str, str | None, str | None]] = []
        for f in dataclasses.fields(cls):
            if not f.metadata:
                continue
            kube = f.metadata.get("kube")
            rows.append(
                (
                    f.metadata["env"],
                    f.metadata["default"],
                    f.metadata["help"],
                    None if kube is None else kube[0],
                    None if kube is None else kube[1],
                )
            )
        rows.extend(OTEL_ROWS)
        return rows

    def secret_values(self) -> tuple[str, ...]:
        """Every secret value this configuration holds (for the log redaction filter)."""
        out = [self.groupcache_peer_secret, self.oauth2_client_secret, self.oauth2_private_key]
        out.extend(_url_password(u) for u in (self.backend_url, self.oauth2_token_url))
        return tuple(s for s in out if s)


_PROPAGATOR_GROUP = "opentelemetry_propagator"


def installed_propagators() -> frozenset[str]:
    """Names of the propagators installed as entry points (their modules are not imported)."""
    return frozenset(ep.name for ep in importlib.metadata.entry_points(group=_PROPAGATOR_GROUP))


def propagator_names(value: str | None) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """(usable, unknown) names of an OTEL_PROPAGATORS value (None: the SDK default).

    ``none`` means no propagation. When nothing usable is left, ``tracecontext`` is used
    (kubecache's autoprop fell back to its default the same way).
    """
    text = "tracecontext,baggage" if value is None else value
    names = [n.strip() for n in text.split(",") if n.strip()]
    known = installed_propagators()
    usable = tuple(n for n in names if n in known or n.lower() == "none")
    unknown = tuple(n for n in names if n not in usable)
    return usable or ("tracecontext",), unknown


def guard_otel_import() -> None:
    """Import ``opentelemetry.propagate`` so that no OTEL_PROPAGATORS value can crash it.

    The OpenTelemetry API reads OTEL_PROPAGATORS when that module is first imported and raises on
    a name it cannot load, before `main` could print a configuration error (`--help` too). Here
    the import happens with the value reduced to the installed names (``none`` with TRACE=false,
    so no propagator module is loaded); the variable is restored at once. The proxy installs the
    propagator the settings name at start-up (`proxy._tracing.build_propagator`), with one
    warning line for an unknown name. The package's ``__init__`` calls this before anything
    imports OpenTelemetry.
    """
    if "opentelemetry.propagate" in sys.modules:
        return
    env = os.environ
    try:
        tracing = parse_bool(env.get("TRACE", "true"))
    except ValueError:
        tracing = True  # Settings.from_env reports the bad value; here only the import matters
    original = env.get("OTEL_PROPAGATORS")
    if not tracing:
        safe: str | None = "none"
    elif original is None:
        safe = None
    else:
        safe = ",".join(propagator_names(original)[0])
    if safe is None or safe == original:
        importlib.import_module("opentelemetry.propagate")
        return
    env["OTEL_PROPAGATORS"] = safe
    try:
        importlib.import_module("opentelemetry.propagate")
    finally:
        if original is None:
            del env["OTEL_PROPAGATORS"]
        else:
            env["OTEL_PROPAGATORS"] = original


def _default_resolver(env: Mapping[str, str]) -> Resolver:
    from ._secrets import SecretResolver  # boto3 is optional: import only when a reference is used

    role = env.get("SECRET_ROLE_ARN", "").strip() or None
    endpoint = env.get("AWS_ENDPOINT_URL", "").strip() or None
    resolver: Resolver = SecretResolver(role_arn=role, endpoint_url=endpoint)
    return resolver


def _resolve(resolver: Resolver, name: str, raw: str) -> str:
    from ._errors import ProxyError

    try:
        return resolver.resolve(name, raw).strip()
    except ProxyError as exc:
        # The resolver's messages name the reference, never the value it found.
        text = str(exc)
        raise ConfigError(text if text.startswith(name) else f"{name}: {text}") from None


def _url_password(url: str) -> str:
    m = re.match(r"^[a-zA-Z][a-zA-Z0-9+.-]*://[^/@]*:([^/@]*)@", url)
    return m.group(1) if m else ""


def _finish(s: Settings) -> Settings:
    """Checks and defaults that involve more than one setting."""
    if s.emf_send_logs:
        raise ConfigError(
            "EMF_SEND_LOGS: sending EMF straight to CloudWatch Logs is not supported; set "
            "EMF_ENABLE=true and ship stdout with the CloudWatch agent or Fluent Bit"
        )
    if not s.backend_url:
        raise ConfigError("BACKEND_URL: required (the URL of the backend to cache)")
    mode = s.peer_discovery
    if mode == "auto":
        if s.groupcache_peers:
            mode = "static"
        elif s.compute == "ecs":
            mode = "ecs"  # kubecache's COMPUTE=ecs: the ECS service's tasks are the peers
        else:
            mode = "kubernetes" if s.in_kubernetes else "none"
    if mode == "static" and not s.groupcache_peers:
        raise ConfigError("GROUPCACHE_PEERS: required when PEER_DISCOVERY=static")
    self_url = s.groupcache_self_url.rstrip("/")
    if not self_url and mode == "ecs" and not s.pod_ip:
        # An ECS task's peer address is its awsvpc interface's (Go's FindMyAddr).
        self_url = f"http://{_bracket(_primary_address())}:{s.groupcache_port.port}"
    if not self_url:
        host = s.pod_ip or s.groupcache_port.host or socket.gethostname()
        if host in ("0.0.0.0", "::"):
            host = socket.gethostname()
        self_url = f"http://{_bracket(host)}:{s.groupcache_port.port}"
    if mode == "static" and self_url not in s.groupcache_peers:
        raise ConfigError(
            f"GROUPCACHE_SELF_URL: {self_url} is not one of GROUPCACHE_PEERS "
            "(each node must list itself)"
        )
    # Workers of one pod are peers too: on loopback when the pod is alone (no secret needed),
    # on the pod's address with static peers.
    workers = _worker_count(s)
    several = (
        mode == "kubernetes"
        or (mode == "ecs" and not s.force_single_task)
        or (mode == "static" and len(s.groupcache_peers) * workers > 1)
    )
    if several and not s.groupcache_peer_secret:
        # Without a secret anyone who reaches the peer port could ask for cached values (and
        # make the loader call the backend with this proxy's credentials) or answer for a peer.
        raise ConfigError(
            "GROUPCACHE_PEER_SECRET: required when the cluster has more than one peer "
            f"(PEER_DISCOVERY={mode})"
        )
    tls = (s.groupcache_tls_cert, s.groupcache_tls_key, s.groupcache_tls_ca)
    if any(tls) and not all(tls):
        raise ConfigError(
            "GROUPCACHE_TLS_CERT: GROUPCACHE_TLS_CERT, GROUPCACHE_TLS_KEY and GROUPCACHE_TLS_CA "
            "go together (mutual TLS on the peer port)"
        )
    _check_oauth2(s)
    s = dataclasses.replace(s, peer_discovery=mode, groupcache_self_url=self_url)
    return _finish_workers(s)


def _available_cpus() -> int:
    try:
        with open(CGROUP_CPU_MAX, encoding="ascii") as f:
            cpu_max: str | None = f.read()
    except (OSError, ValueError):
        cpu_max = None  # no cgroup v2 (or not Linux): the affinity mask decides
    try:
        affinity = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):  # pragma: no cover - not Linux
        affinity = os.cpu_count() or 1
    return cpus_from_cgroup(cpu_max, affinity)


def _worker_count(s: Settings) -> int:
    """PROXY_WORKERS, or when unset the CPUs the container may use; unset with a port chosen by
    the system (port 0) means one worker, since workers need fixed, adjacent ports."""
    if s.proxy_workers:
        return s.proxy_workers
    if s.listen_addr.port == 0 or s.groupcache_port.port == 0:
        return 1
    return _available_cpus()


def _finish_workers(s: Settings) -> Settings:
    """Worker count, and for worker i of N: its peer port, its self URL and the expanded ring."""
    workers = _worker_count(s)
    s = dataclasses.replace(s, proxy_workers=workers)
    if workers == 1 and s.worker_index <= 0:
        return s
    # The supervisor checks what its workers will need (a bad value is exit 2 before any starts)
    # and keeps the settings as given; only a worker derives its own port, URL and ring.
    if s.worker_index >= workers:
        raise ConfigError(f"{WORKER_INDEX_ENV}: {s.worker_index} is not below {workers}")
    if s.listen_addr.port == 0:
        raise ConfigError("PROXY_WORKERS: workers share LISTEN_ADDR, which needs a fixed port")
    base = s.groupcache_port.port
    if base == 0 or base + workers - 1 > 65535:
        raise ConfigError(
            f"GROUPCACHE_PORT: workers use ports {base}..{base + workers - 1}; "
            "give a fixed port that leaves room"
        )
    index = s.worker_index
    if index < 0:
        return s
    if s.peer_discovery == "none":
        # One pod alone: its workers are each other's peers, on loopback only.
        peers = local_peers(base, workers)
        return dataclasses.replace(
            s,
            peer_discovery="static",
            groupcache_peers=peers,
            groupcache_self_url=peers[index],
            groupcache_port=Address("127.0.0.1", base + index),
        )
    peers = s.groupcache_peers
    if s.peer_discovery == "static":
        peers = expand_peers(peers, workers)
    return dataclasses.replace(
        s,
        groupcache_peers=peers,
        groupcache_self_url=with_port_offset(s.groupcache_self_url, index),
        groupcache_port=Address(s.groupcache_port.host, base + index),
    )


def _check_oauth2(s: Settings) -> None:
    """The OAuth2 settings a client authentication method needs (the plugin checks the rest:
    that the key parses, fits the alg, that certificate and key match)."""
    if not s.oauth2_token_url:
        return
    method = s.oauth2_auth_method
    if not s.oauth2_client_id:
        raise ConfigError("OAUTH2_CLIENT_ID: required when OAUTH2_TOKEN_URL is set")
    if method in _SECRET_METHODS and not s.oauth2_client_secret:
        raise ConfigError(
            f"OAUTH2_CLIENT_SECRET: required with OAUTH2_AUTH_METHOD={method} "
            "(OAUTH2_TOKEN_URL is set)"
        )
    if method == "private_key_jwt" and not s.oauth2_private_key:
        raise ConfigError("OAUTH2_PRIVATE_KEY: required with OAUTH2_AUTH_METHOD=private_key_jwt")
    if method != "private_key_jwt" and s.oauth2_private_key:
        raise ConfigError(f"OAUTH2_PRIVATE_KEY: used by private_key_jwt only, not by {method}")
    if method in _TLS_METHODS and not s.oauth2_client_cert:
        raise ConfigError(f"OAUTH2_CLIENT_CERT: required with OAUTH2_AUTH_METHOD={method}")
    if s.oauth2_client_key and not s.oauth2_client_cert:
        raise ConfigError("OAUTH2_CLIENT_KEY: needs OAUTH2_CLIENT_CERT")
    jwt = ("client_secret_jwt", "private_key_jwt")
    if (s.oauth2_signing_alg or s.oauth2_key_id) and method not in jwt:
        name = "OAUTH2_SIGNING_ALG" if s.oauth2_signing_alg else "OAUTH2_KEY_ID"
        raise ConfigError(f"{name}: applies to client_secret_jwt and private_key_jwt, not {method}")


def _primary_address() -> str:
    """This host's outward IPv4 address (no packet is sent: a UDP connect only picks a route)."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
        try:
            probe.connect(("10.255.255.255", 1))
            return str(probe.getsockname()[0])
        except OSError:
            return "127.0.0.1"


def _bracket(host: str) -> str:
    return f"[{host}]" if ":" in host else host
