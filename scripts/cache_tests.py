"""Run the public HTTP cache test suite (cache-tests.fyi) against one proxy and score it.

    .venv/bin/python -m scripts.cache_tests [--suite DIR] [--save FILE] [--env NAME=VALUE]

What it does: starts the suite's origin server (``server.mjs``, port via ``npm_config_port``), one
``python -m tokencache.proxy`` in front of it with ``CACHE_TTL=0 CACHE_ERROR_TTL=0`` (a pure RFC 9111 shared
cache: no default freshness, as the suite's published Varnish run), runs the suite's CLI against the
proxy (``npm_config_base``; ``npm_config_id`` and ``npm_package_config_id`` empty = every test),
then scores the results the way the suite's ``lib/results.mjs`` does: a test counts as passed only
when it passed and every test in its ``depends_on`` passed (recursively); ``required`` (the default
kind) and ``optimal`` tests are counted, ``check`` tests are informational and are not. The same
scoring is applied to the published results of other caches shipped with the suite (``results/``),
and a side-by-side table is printed. ``--env`` adds proxy settings to one run (the table's label
names them); the figure docs/http-cache-tests.md quotes is the run without any.

The suite comes from the npm registry (``scripts/tools.d/50-cache-tests.sh`` installs
``http-cache-tests`` into ``.tools/http-cache-tests``); ``--suite`` runs a local checkout of the
suite's repository instead (it may be newer than the registry's package). Both layouts are
understood: ``test-engine/cli.mjs`` (the repository today) and ``cli.mjs`` (npm 0.4.x). Every
process started here is stopped by its PID; only loopback is used.
"""

from __future__ import annotations

import argparse
import json
import os
import secrets
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
DEFAULT_SUITE = REPO / ".tools" / "http-cache-tests" / "node_modules" / "http-cache-tests"
# The published caches compared against (the suite's results/ file names); browsers are private
# caches and are left out.
PUBLISHED = {
    "trafficserver.json": "Traffic Server",
    "varnish.json": "Varnish",
    "nginx.json": "nginx",
    "squid.json": "Squid",
    "apache.json": "Apache httpd",
    "caddy.json": "Caddy",
    "haproxy.json": "HAProxy",
    "fastly.json": "Fastly",
}
RUN_DEADLINE = 900.0
START_DEADLINE = 30.0

# Dumps every test's id, kind and depends_on as JSON (the suite is ES modules: node reads it).
_DUMP_TESTS = """
const suites = (await import(process.argv[1])).default
const out = []
for (const suite of suites) for (const t of suite.tests)
  out.push({id: t.id, kind: t.kind || 'required', depends_on: t.depends_on || []})
console.log(JSON.stringify(out))
"""


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _engine_dir(suite: Path) -> Path:
    """Where cli.mjs and server/ live: ``test-engine/`` today, the top folder in npm 0.4.x."""
    return suite / "test-engine" if (suite / "test-engine" / "cli.mjs").exists() else suite


def load_tests(suite: Path) -> dict[str, dict[str, Any]]:
    """id → {kind, depends_on} of every test in the suite."""
    index = (suite / "tests" / "index.mjs").resolve().as_uri()
    out = subprocess.run(
        ["node", "--input-type=module", "-e", _DUMP_TESTS, index],
        check=True,
        capture_output=True,
        text=True,
        timeout=60,
    ).stdout
    return {t["id"]: t for t in json.loads(out)}


def passed(tests: dict[str, dict[str, Any]], results: dict[str, Any], test_id: str) -> bool:
    """The suite's rule: the result is ``true`` and every dependency passed (recursively)."""
    if results.get(test_id) is not True:
        return False
    test = tests.get(test_id)
    deps = test["depends_on"] if test is not None else []
    return all(passed(tests, results, d) for d in deps)


def score(tests: dict[str, dict[str, Any]], results: dict[str, Any]) -> dict[str, int]:
    """Passed and total counts of required, optimal and both."""
    counts = {"required": 0, "required_total": 0, "optimal": 0, "optimal_total": 0}
    for test_id, test in tests.items():
        kind = test["kind"]
        if kind not in ("required", "optimal"):
            continue
        counts[f"{kind}_total"] += 1
        if passed(tests, results, test_id):
            counts[kind] += 1
    counts["both"] = counts["required"] + counts["optimal"]
    counts["both_total"] = counts["required_total"] + counts["optimal_total"]
    return counts


def _wait_http(url: str, deadline: float) -> None:
    end = time.monotonic() + deadline
    for _ in range(int(deadline / 0.05) + 1):
        try:
            with urllib.request.urlopen(url, timeout=1.0):
                return
        except urllib.error.HTTPError:
            return  # it answers
        except OSError:
            if time.monotonic() > end:
                break
            time.sleep(0.05)
    raise TimeoutError(f"{url} did not answer within {deadline}s")


def _stop(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=20)


def run_suite(suite: Path, work: Path, extra_env: dict[str, str]) -> dict[str, Any]:
    """Start origin and proxy, run the CLI over every test, return its JSON results."""
    engine = _engine_dir(suite)
    origin_port, proxy_port = _free_port(), _free_port()
    peer, health, metrics = _free_port(), _free_port(), _free_port()
    base = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": str(work)}
    origin_env = {
        **base,
        "npm_config_port": str(origin_port),
        "npm_config_protocol": "http",
        "npm_config_pidfile": str(work / "origin.pid"),
    }
    proxy_env = {
        **base,
        "PYTHONPATH": str(REPO),
        "BACKEND_URL": f"http://127.0.0.1:{origin_port}",
        "LISTEN_ADDR": f"127.0.0.1:{proxy_port}",
        "GROUPCACHE_PORT": f"127.0.0.1:{peer}",
        "HEALTH_ADDR": f"127.0.0.1:{health}",
        "METRICS_ADDR": f"127.0.0.1:{metrics}",
        "PEER_DISCOVERY": "static",
        "GROUPCACHE_PEERS": f"http://127.0.0.1:{peer}",
        # Static peers need a peer secret (the peer port refuses unsigned requests).
        "GROUPCACHE_PEER_SECRET": secrets.token_hex(16),
        "PROXY_WORKERS": "1",  # one process: the suite's one cache (the default is one per CPU)
        "CACHE_TTL": "0",
        "CACHE_ERROR_TTL": "0",
        "TRACE": "false",
        **extra_env,
    }
    procs: list[subprocess.Popen[bytes]] = []
    try:
        with (work / "origin.log").open("ab") as log:
            procs.append(
                subprocess.Popen(
                    ["node", str(engine / "server" / "server.mjs")],
                    cwd=suite,
                    env=origin_env,
                    stdout=log,
                    stderr=subprocess.STDOUT,
                )
            )
        with (work / "proxy.log").open("ab") as log:
            procs.append(
                subprocess.Popen(
                    [sys.executable, "-m", "tokencache.proxy"],
                    cwd=REPO,
                    env=proxy_env,
                    stdout=log,
                    stderr=subprocess.STDOUT,
                )
            )
        _wait_http(f"http://127.0.0.1:{origin_port}/", START_DEADLINE)
        _wait_http(f"http://127.0.0.1:{health}/ready", START_DEADLINE)
        cli_env = {
            **base,
            "npm_config_base": f"http://127.0.0.1:{proxy_port}",
            "npm_config_id": "",
            "npm_package_config_id": "",
        }
        out = subprocess.run(
            ["node", "--no-warnings", str(engine / "cli.mjs")],
            cwd=suite,
            env=cli_env,
            check=True,
            capture_output=True,
            timeout=RUN_DEADLINE,
        ).stdout
        results: dict[str, Any] = json.loads(out)
        return results
    except Exception:
        for name in ("origin.log", "proxy.log"):
            print(
                f"--- {name}\n" + (work / name).read_text(errors="replace")[-4000:], file=sys.stderr
            )
        raise
    finally:
        for proc in reversed(procs):
            _stop(proc)


def table(rows: list[tuple[str, dict[str, int]]]) -> str:
    """A Markdown table, best first."""
    lines = [
        "| cache | required passed | optimal passed | required + optimal |",
        "|---|---:|---:|---:|",
    ]
    for name, c in sorted(rows, key=lambda r: -r[1]["both"]):
        lines.append(
            f"| {name} | {c['required']} / {c['required_total']} | "
            f"{c['optimal']} / {c['optimal_total']} | {c['both']} / {c['both_total']} |"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--suite", type=Path, default=DEFAULT_SUITE, help="the suite's folder")
    parser.add_argument("--save", type=Path, help="write this run's raw results (JSON) here")
    parser.add_argument("--results", type=Path, help="score these saved results, do not run")
    parser.add_argument(
        "--env",
        action="append",
        default=[],
        metavar="NAME=VALUE",
        help="one more proxy setting for this run (repeatable), e.g. CACHE_STALE_IF_ERROR=1h",
    )
    args = parser.parse_args(argv)
    extra = dict(item.partition("=")[::2] for item in args.env)
    suite: Path = args.suite.resolve()
    if not (suite / "tests" / "index.mjs").exists():
        print(f"no suite at {suite}: run `make tools` (or pass --suite)", file=sys.stderr)
        return 2
    tests = load_tests(suite)
    if args.results is not None:
        ours = json.loads(args.results.read_text())
    else:
        with tempfile.TemporaryDirectory(prefix="cache-tests-") as tmp:
            ours = run_suite(suite, Path(tmp), extra)
    if args.save is not None:
        args.save.write_text(json.dumps(ours, indent=1, sort_keys=True))
    label = "tokencache (this run" + "".join(f", {k}={v}" for k, v in extra.items()) + ")"
    rows = [(label, score(tests, ours))]
    for file, name in PUBLISHED.items():
        path = suite / "results" / file
        if path.exists():
            rows.append((name, score(tests, json.loads(path.read_text()))))
    print(table(rows))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
