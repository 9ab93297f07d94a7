"""Black-box tests of the process shell: --help, bad configuration, graceful drain on SIGTERM."""

from __future__ import annotations

import json
import signal
import socket
import subprocess
import sys
import threading
from pathlib import Path

import httpx
import pytest

import tokencache
from tests.support.proxy_cluster import (
    REPO,
    BackendProcess,
    ProxyCluster,
    base_env,
    http_get,
    wait_until,
)
from tokencache.proxy._config import Settings

pytestmark = pytest.mark.slow


def run_proxy(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "tokencache.proxy", *args],
        cwd=REPO,
        env=base_env(env),
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def test_help_lists_every_setting_with_its_default() -> None:
    done = run_proxy({}, "--help")
    assert done.returncode == 0
    for name, default, _ in Settings.help_rows():
        line = next((ln for ln in done.stdout.splitlines() if ln.strip().startswith(name)), None)
        assert line is not None, name
        assert f"(default: {default or chr(34) * 2})" in line


def test_console_script_is_installed() -> None:
    script = Path(sys.executable).parent / "tokencache-proxy"
    done = subprocess.run(
        [str(script), "--help"], capture_output=True, text=True, timeout=60, check=False
    )
    assert done.returncode == 0
    assert "BACKEND_URL" in done.stdout


@pytest.mark.parametrize(
    ("env", "variable"),
    [
        ({"BACKEND_URL": "http://127.0.0.1:1", "CACHE_TTL": "soon"}, "CACHE_TTL"),
        ({}, "BACKEND_URL"),
        ({"BACKEND_URL": "http://127.0.0.1:1", "LISTEN_ADDR": "everywhere"}, "LISTEN_ADDR"),
        (
            {"BACKEND_URL": "http://127.0.0.1:1", "OTEL_TRACES_SAMPLER": "sometimes"},
            "OTEL_TRACES_SAMPLER",
        ),
    ],
)
def test_bad_value_exits_2_naming_the_variable(env: dict[str, str], variable: str) -> None:
    done = run_proxy({"PEER_DISCOVERY": "none", "LISTEN_ADDR": "127.0.0.1:0", **env})
    assert done.returncode == 2, done.stderr
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1
    assert variable in lines[0]


@pytest.mark.parametrize(
    "env",
    [
        {"GROUPCACHE_PEERS": "http://127.0.0.1:15000,http://127.0.0.1:15001"},
        {"PEER_DISCOVERY": "kubernetes", "POD_IP": "127.0.0.1"},
    ],
)
def test_more_than_one_peer_without_a_peer_secret_refuses_to_start(env: dict[str, str]) -> None:
    base = {"BACKEND_URL": "http://127.0.0.1:1", "GROUPCACHE_PORT": "127.0.0.1:15000"}
    done = run_proxy({**base, **env})
    assert done.returncode == 2, done.stderr
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1
    assert "GROUPCACHE_PEER_SECRET" in lines[0] and "required" in lines[0]


def test_unresolvable_secret_reference_exits_2_without_the_value(tmp_path: Path) -> None:
    secret_file = tmp_path / "oauth-secret"
    secret_file.write_text("hunter2-very-secret")
    env = {
        "PEER_DISCOVERY": "none",
        "BACKEND_URL": "http://127.0.0.1:1",
        "OAUTH2_TOKEN_URL": "http://127.0.0.1:2/token",
        "OAUTH2_CLIENT_ID": "svc",
        "OAUTH2_CLIENT_SECRET": f"file:{secret_file}",
        "GROUPCACHE_PEER_SECRET": f"file:{tmp_path / 'missing'}",
    }
    done = run_proxy(env)
    assert done.returncode == 2
    assert "GROUPCACHE_PEER_SECRET" in done.stderr
    assert "hunter2" not in done.stderr + done.stdout


def test_port_in_use_exits_1(tmp_path: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        env = {
            "BACKEND_URL": "http://127.0.0.1:1",
            "PEER_DISCOVERY": "none",
            "LISTEN_ADDR": f"127.0.0.1:{port}",
            "HEALTH_ADDR": "127.0.0.1:0",
            "METRICS_ADDR": "127.0.0.1:0",
        }
        done = run_proxy(env)
    assert done.returncode == 1
    [line] = [json.loads(ln) for ln in done.stdout.splitlines() if "cannot start" in ln]
    assert line["level"] == "error"


def test_sigterm_drains_in_flight_requests_then_exits_0(tmp_path: Path) -> None:
    env = {"SHUTDOWN_TIMEOUT": "20s", "BACKEND_TIMEOUT": "30s"}
    with BackendProcess(tmp_path) as backend:
        cluster = ProxyCluster(2, backend.url, tmp_path, env=env)
        with cluster:
            leaving, staying = cluster.nodes
            result: dict[str, httpx.Response] = {}
            # The hardest case: the staying node owns the key, so the leaving node's request waits
            # on a peer hop (longer than the engine's default 2 s peer timeout) while it drains.
            ring = tokencache.Ring([leaving.peer_url, staying.peer_url])
            target = next(
                t
                for t in (f"/slow-in-flight/{i}?delay=3" for i in range(200))
                if ring.owner(f"GET {t}") == staying.peer_url
            )

            def slow_request() -> None:
                result["r"] = httpx.get(leaving.url + target, timeout=30)

            worker = threading.Thread(target=slow_request)
            worker.start()
            try:
                wait_until(
                    lambda: backend.stats()["by_target"].get(target), 10, "request in flight"
                )
                assert leaving.proc is not None
                leaving.proc.send_signal(signal.SIGTERM)
                wait_until(
                    lambda: http_get(leaving.health_url + "/ready")[0] == 503, 10, "ready → 503"
                )
                _, body, _ = http_get(leaving.health_url + "/ready")
                assert body == b"not ready: draining\n"
                assert http_get(leaving.health_url + "/health")[0] == 200
                # The other node keeps serving while this one drains.
                assert httpx.get(staying.url + "/other", timeout=10).status_code == 200
            finally:
                worker.join(timeout=40)
            assert not worker.is_alive()
            assert result["r"].status_code == 200
            assert result["r"].content == f"{target} #1\n".encode()
            assert leaving.proc.wait(timeout=30) == 0
            assert '"msg": "stopped"' in leaving.log_text()
