"""The proxy's settings: the one module that reads the environment.

Theory of operation: every setting is a field of the frozen dataclass `Settings`; the field's
metadata names its environment variable, its default as the user would type it, a one-line help
text and the parser that turns the text into a value. `Settings.from_env(env)` walks the fields in
order, resolves secret references (``aws-secretsmanager:…``, ``aws-parameterstore:…``, ``file:…``)
for the fields where that makes sense, parses, and then checks the few rules that involve several
settings. `--help` is generated from the same metadata, so the two can never disagree.

House rules: a bad value raises `ConfigError` with one line that names the variable and what is
wrong; a secret's value (or any value that came from a secret reference) is never echoed.
"""

from __future__ import annotations

import dataclasses
import itertools
import json
import os
import re
import socket
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
SECRET_REF_PREFIXES = ("aws-secretsmanager:", "aws-parameterstore:", "file:")

_DISCOVERY = ("auto", "static", "kubernetes", "none")
_AUTH_METHODS = ("client_secret_basic", "client_secret_post")


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
) -> Any:
    """Declare one setting: variable, textual default, parser, help; `ref` allows secret refs."""
    meta = {"env": env, "default": default, "parse": parse, "help": help, "secret": secret}
    meta["ref"] = ref or secret
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


def _non_negative_int(text: str) -> int:
    return parse_int(text, minimum=0)


def _positive_int(text: str) -> int:
    return parse_int(text, minimum=1)


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


@dataclass(frozen=True)
class Settings:
    """Every setting of `tokencache-proxy`, parsed; build with `Settings.from_env(os.environ)`."""

    listen_addr: Address = _setting(  # noqa: RUF009 - a dataclasses.field; Address is frozen
        "LISTEN_ADDR", ":8080", parse_address, "public listener, host:port (empty host = all)"
    )
    backend_url: str = _setting(
        "BACKEND_URL",
        "",
        parse_url,
        "the backend every request goes to (required)",
        ref=True,
        value="",
    )
    backend_timeout: float = _setting(
        "BACKEND_TIMEOUT", "300s", parse_duration, "backend request timeout (then 504)"
    )
    cache_ttl: float = _setting("CACHE_TTL", "300s", parse_duration, "how long 2xx responses live")
    cache_error_ttl: float = _setting(
        "CACHE_ERROR_TTL", "60s", parse_duration, "how long other statuses live"
    )
    restrict_method: tuple[str, ...] = _setting(
        "RESTRICT_METHOD", "GET,HEAD", _methods, "cacheable methods (JSON list or comma-separated)"
    )
    restrict_route_regexp: tuple[re.Pattern[str], ...] = _setting(
        "RESTRICT_ROUTE_REGEXP",
        "",
        parse_regexp,
        "cacheable routes: regexps, any match (empty = every route)",
        value=(),
    )
    groupcache_port: Address = _setting(  # noqa: RUF009 - a dataclasses.field; Address is frozen
        "GROUPCACHE_PORT", ":5000", parse_address, "peer protocol listener, host:port"
    )
    groupcache_size_bytes: int = _setting(
        "GROUPCACHE_SIZE_BYTES", "100000000", _positive_int, "bytes of the http cache group"
    )
    # Half the group for hot copies (the engine's default is groupcache's 1/8): behind a
    # Service every pod is asked for every key, so with N pods (N-1)/N of requests are for keys
    # another pod owns; a pod that can keep the popular part of the whole working set as hot
    # copies serves it without a peer hop, and still has half its budget for the keys it owns.
    groupcache_hot_fraction: float = _setting(
        "GROUPCACHE_HOT_FRACTION",
        "0.5",
        parse_fraction,
        "share of GROUPCACHE_SIZE_BYTES for hot copies of keys other pods own (0-1)",
    )
    health_addr: Address = _setting(  # noqa: RUF009 - a dataclasses.field; Address is frozen
        "HEALTH_ADDR", ":8888", parse_address, "liveness/readiness listener"
    )
    health_path: str = _setting("HEALTH_PATH", "/health", parse_path, "liveness path")
    ready_path: str = _setting("READY_PATH", "/ready", parse_path, "readiness path")
    metrics_addr: Address = _setting(  # noqa: RUF009 - a dataclasses.field; Address is frozen
        "METRICS_ADDR", ":3000", parse_address, "Prometheus listener (may equal HEALTH_ADDR)"
    )
    metrics_path: str = _setting("METRICS_PATH", "/metrics", parse_path, "Prometheus path")
    metrics_namespace: str = _setting(
        "METRICS_NAMESPACE", "", parse_text, "prefix of every metric name", value=""
    )
    metrics_buckets_latency_http: tuple[float, ...] = _setting(
        "METRICS_BUCKETS_LATENCY_HTTP",
        "",
        parse_buckets,
        "requests_seconds buckets in seconds (empty = kubecache's)",
        value=(),
    )
    debug_log: bool = _setting("DEBUG_LOG", "false", parse_bool, "log at debug level")
    trace: bool = _setting("TRACE", "true", parse_bool, "OpenTelemetry tracing (OTEL_* variables)")
    secret_role_arn: str = _setting(
        "SECRET_ROLE_ARN", "", parse_text, "IAM role assumed to read aws-* references", value=""
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
        "HMAC key for peer requests",
        secret=True,
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
        "client_secret_basic | client_secret_post",
    )
    peer_discovery: str = _setting(
        "PEER_DISCOVERY",
        "auto",
        lambda t: parse_choice(t, _DISCOVERY),
        "auto | static | kubernetes | none (auto: static if peers, kubernetes in a pod)",
    )
    kubegroup_label_selector: str = _setting(
        "KUBEGROUP_LABEL_SELECTOR",
        "app=tokencache-proxy",
        parse_text,
        "label selector of the peer pods",
    )
    kubegroup_debounce: float = _setting(
        "KUBEGROUP_DEBOUNCE", "1s", parse_duration, "wait this long for pod changes to settle"
    )
    pod_ip: str = _setting("POD_IP", "", parse_text, "this pod's IP (downward API)", value="")
    shutdown_timeout: float = _setting(
        "SHUTDOWN_TIMEOUT", "20s", parse_duration, "SIGTERM: time in-flight requests get to finish"
    )
    proxy_workers: int = _setting(
        "PROXY_WORKERS",
        "",
        _workers,
        "worker processes sharing LISTEN_ADDR, each a peer on GROUPCACHE_PORT+i "
        "(empty = the CPUs the container may use)",
        value=0,
    )
    # Not settings of their own: the OTEL_* variables and whether we run in Kubernetes.
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
            from_ref = meta["ref"] and raw.startswith(SECRET_REF_PREFIXES)
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
        values["otel"] = {k: v for k, v in env.items() if k.startswith("OTEL_")}
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

    def secret_values(self) -> tuple[str, ...]:
        """Every secret value this configuration holds (for the log redaction filter)."""
        out = [self.groupcache_peer_secret, self.oauth2_client_secret]
        out.extend(_url_password(u) for u in (self.backend_url, self.oauth2_token_url))
        return tuple(s for s in out if s)


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
    if not s.backend_url:
        raise ConfigError("BACKEND_URL: required (the URL of the backend to cache)")
    mode = s.peer_discovery
    if mode == "auto":
        mode = "static" if s.groupcache_peers else "kubernetes" if s.in_kubernetes else "none"
    if mode == "static" and not s.groupcache_peers:
        raise ConfigError("GROUPCACHE_PEERS: required when PEER_DISCOVERY=static")
    self_url = s.groupcache_self_url.rstrip("/")
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
    if s.oauth2_token_url and not (s.oauth2_client_id and s.oauth2_client_secret):
        raise ConfigError(
            "OAUTH2_CLIENT_ID: OAUTH2_TOKEN_URL is set, so client id and secret are required"
        )
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


def _finish_workers(s: Settings) -> Settings:
    """Worker count, and for worker i of N: its peer port, its self URL and the expanded ring."""
    workers = s.proxy_workers or _available_cpus()
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


def _bracket(host: str) -> str:
    return f"[{host}]" if ":" in host else host
