"""A small fake Kubernetes API server for discovery tests, speaking the real wire format.

It serves only what peer discovery uses, but serves it the way kube-apiserver does, so the
unmodified ``kubernetes`` client runs against it exactly as in a pod:

- https with a certificate from a test CA (trustme) and a bearer token (401 Status otherwise);
- ``GET /api/v1/namespaces/{ns}/pods?labelSelector=…`` → a PodList with
  ``metadata.resourceVersion``;
- ``…&watch=true&resourceVersion=…&timeoutSeconds=…&allowWatchBookmarks=true`` → a chunked stream
  of newline-delimited ``{"type": …, "object": …}`` events, ending after ``timeoutSeconds``;
  BOOKMARKs every ``bookmark_interval`` when asked for; an ERROR event carrying a Status of code 410
  when the requested resourceVersion is older than the kept history (bounded, compactable);
- a pod that starts or stops matching a watcher's selector is ADDED or DELETED for that watcher.

Label selectors: ``k=v``, ``k==v``, ``k!=v``, ``k in (a,b)``, ``k notin (a,b)``, ``k``, ``!k``,
joined by commas.

Test controls (thread-safe, each returns once applied): add/modify/delete pods, readiness, IPs,
deletionTimestamp, :meth:`FakeKube.compact`, :meth:`FakeKube.force_410`,
:meth:`FakeKube.stall_watches` (active watches go silent, connection kept open),
:meth:`FakeKube.go_down` / :meth:`FakeKube.come_back` (refuse connections, then serve again on the
same port), and request counters.

The server runs on its own event loop in a daemon thread, bound to 127.0.0.1 on a free port.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import re
import secrets
import ssl
import threading
from collections import Counter, deque
from collections.abc import Callable, Coroutine, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import trustme
from aiohttp import web
from kubernetes import client as k8s_client

T = TypeVar("T")
_TIMESTAMP = "2024-01-01T00:00:00Z"


# -- label selectors ------------------------------------------------------------------------


def parse_selector(text: str) -> Callable[[Mapping[str, str]], bool]:
    """Compile a label selector into a predicate over a label dict."""
    terms: list[Callable[[Mapping[str, str]], bool]] = []
    for raw in re.split(r",(?![^()]*\))", text.strip()) if text.strip() else []:
        term = raw.strip()
        if m := re.fullmatch(r"([\w./-]+)\s+(in|notin)\s+\(([^)]*)\)", term):
            key, op, values = m[1], m[2], {v.strip() for v in m[3].split(",")}
            if op == "in":
                terms.append(lambda labels, k=key, vs=values: labels.get(k) in vs)
            else:
                terms.append(lambda labels, k=key, vs=values: labels.get(k) not in vs)
        elif m := re.fullmatch(r"([\w./-]+)\s*(!=|==|=)\s*([\w./-]*)", term):
            key, op, value = m[1], m[2], m[3]
            if op == "!=":
                terms.append(lambda labels, k=key, v=value: labels.get(k) != v)
            else:
                terms.append(lambda labels, k=key, v=value: labels.get(k) == v)
        elif m := re.fullmatch(r"!([\w./-]+)", term):
            terms.append(lambda labels, k=m[1]: k not in labels)
        elif re.fullmatch(r"[\w./-]+", term):
            terms.append(lambda labels, k=term: k in labels)
        else:
            raise ValueError(f"unsupported label selector term {term!r}")
    return lambda labels: all(t(labels) for t in terms)


def _labels(pod: Mapping[str, Any] | None) -> dict[str, str]:
    return dict((pod or {}).get("metadata", {}).get("labels") or {})


# -- state ------------------------------------------------------------------------------------


@dataclass
class _Event:
    rv: int
    type: str
    obj: dict[str, Any]
    old: dict[str, Any] | None  # the pod before a MODIFIED, to see selector transitions


@dataclass
class _Watch:
    transport: Any
    stalled: bool = False
    epoch: int = 0


@dataclass
class _State:
    history_limit: int
    pods: dict[tuple[str, str], dict[str, Any]] = field(default_factory=dict)
    rv: int = 1000
    floor: int = 1000  # a watch from a resourceVersion below this gets 410
    epoch: int = 0  # force_410 bumps it: every active watch gets 410
    history: deque[_Event] = field(default_factory=deque)
    requests: Counter[str] = field(default_factory=Counter)
    watch_versions: list[str] = field(default_factory=list)
    active: list[_Watch] = field(default_factory=list)
    stall_new: bool = False


class FakeKube:
    """The fake API server. Use as a context manager, or call start()/stop()."""

    def __init__(
        self,
        tmp_dir: Path,
        *,
        token: str | None = None,
        namespace: str = "default",
        history_limit: int = 1000,
        bookmark_interval: float | None = 0.2,
    ) -> None:
        self.token = token if token is not None else secrets.token_urlsafe(16)
        self.namespace = namespace
        self.bookmark_interval = bookmark_interval
        self.ca_path = tmp_dir / "fake-kube-ca.pem"
        self.port = 0
        self._state = _State(history_limit=history_limit)
        self._changed: asyncio.Event | None = None
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)
        self._runner: web.AppRunner | None = None
        ca = trustme.CA()
        ca.cert_pem.write_to_path(str(self.ca_path))
        self._ssl = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        ca.issue_cert("127.0.0.1").configure_cert(self._ssl)

    # -- lifecycle ------------------------------------------------------------------------

    @property
    def url(self) -> str:
        return f"https://127.0.0.1:{self.port}"

    def start(self) -> FakeKube:
        self._thread.start()
        self._call(self._init_loop_state)
        self._run(self._up())
        return self

    def stop(self) -> None:
        if not self._thread.is_alive():
            return
        try:
            self._run(self._down())
            self._run(self._cancel_leftovers())
        finally:
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(10)
            self._loop.close()

    def __enter__(self) -> FakeKube:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def api_client(self, token: str | None = None) -> k8s_client.ApiClient:
        """A client configured like a pod's: https, the CA file, a bearer token."""
        configuration = k8s_client.Configuration(
            host=self.url,
            api_key={"authorization": f"Bearer {token if token is not None else self.token}"},
            ssl_ca_cert=str(self.ca_path),
        )
        return k8s_client.ApiClient(configuration)

    def go_down(self) -> None:
        """Close the listener and cut every connection: clients get refused until come_back."""
        self._run(self._down())

    def come_back(self) -> None:
        """Serve again on the same port."""
        self._run(self._up())

    # -- pods ---------------------------------------------------------------------------------

    def add_pod(
        self,
        name: str,
        *,
        ip: str | None,
        labels: Mapping[str, str],
        ready: bool = True,
        namespace: str | None = None,
        annotations: Mapping[str, str] | None = None,
    ) -> None:
        ns = namespace or self.namespace

        def add() -> None:
            pod = {
                "kind": "Pod",
                "apiVersion": "v1",
                "metadata": {
                    "name": name,
                    "namespace": ns,
                    "uid": f"uid-{ns}-{name}",
                    "labels": dict(labels),
                    "creationTimestamp": _TIMESTAMP,
                    **({"annotations": dict(annotations)} if annotations else {}),
                },
                "spec": {"containers": [{"name": "app", "image": "example.invalid/app:1"}]},
                "status": {"phase": "Running" if ip else "Pending"},
            }
            _set_ip(pod, ip)
            _set_ready(pod, ready)
            self._record("ADDED", pod, None)

        self._call(add)

    def set_ready(self, name: str, ready: bool, namespace: str | None = None) -> None:
        self._modify(name, namespace, lambda pod: _set_ready(pod, ready))

    def set_ip(self, name: str, ip: str | None, namespace: str | None = None) -> None:
        self._modify(name, namespace, lambda pod: _set_ip(pod, ip))

    def set_labels(
        self, name: str, labels: Mapping[str, str], namespace: str | None = None
    ) -> None:
        self._modify(name, namespace, lambda pod: pod["metadata"].update(labels=dict(labels)))

    def mark_deleting(self, name: str, namespace: str | None = None) -> None:
        """Set metadata.deletionTimestamp, as the API does when a pod starts terminating."""

        def mark(pod: dict[str, Any]) -> None:
            pod["metadata"]["deletionTimestamp"] = _TIMESTAMP
            pod["metadata"]["deletionGracePeriodSeconds"] = 30

        self._modify(name, namespace, mark)

    def delete_pod(self, name: str, namespace: str | None = None) -> None:
        key = (namespace or self.namespace, name)
        self._call(lambda: self._record("DELETED", self._state.pods[key], None))

    # -- watch faults -----------------------------------------------------------------------

    def compact(self) -> None:
        """Forget the event history: a watch from any earlier resourceVersion gets 410."""

        def compact() -> None:
            self._state.history.clear()
            self._state.floor = self._state.rv
            self._notify()

        self._call(compact)

    def force_410(self) -> None:
        """Send ERROR 410 to every active watch and expire every earlier resourceVersion."""

        def force() -> None:
            self._state.rv += 1
            self._state.history.clear()
            self._state.floor = self._state.rv
            self._state.epoch += 1
            self._notify()

        self._call(force)

    def stall_watches(self, *, new_too: bool = False) -> int:
        """Make the active watches (and with new_too, later ones) send nothing; return how many."""

        def stall() -> int:
            for watch in self._state.active:
                watch.stalled = True
            self._state.stall_new = new_too
            return len(self._state.active)

        return self._call(stall)

    def unstall(self) -> None:
        """Let every watch stream again."""

        def unstall() -> None:
            self._state.stall_new = False
            for watch in self._state.active:
                watch.stalled = False
            self._notify()

        self._call(unstall)

    # -- counters -----------------------------------------------------------------------------

    def requests(self) -> dict[str, int]:
        """Requests served by kind: list, watch, unauthorized, not_found."""
        return self._call(lambda: dict(self._state.requests))

    def watch_versions(self) -> list[str]:
        """The resourceVersion of every watch request, in order."""
        return self._call(lambda: list(self._state.watch_versions))

    def active_watches(self) -> int:
        return self._call(lambda: len(self._state.active))

    # -- internals: run on the server loop ---------------------------------------------------

    def _call(self, fn: Callable[[], T]) -> T:
        async def wrapper() -> T:
            return fn()

        return self._run(wrapper())

    def _run(self, coro: Coroutine[Any, Any, T]) -> T:
        return asyncio.run_coroutine_threadsafe(coro, self._loop).result(timeout=15)

    def _init_loop_state(self) -> None:
        self._changed = asyncio.Event()

    def _notify(self) -> None:
        assert self._changed is not None
        self._changed.set()
        self._changed = asyncio.Event()

    def _modify(
        self, name: str, namespace: str | None, change: Callable[[dict[str, Any]], None]
    ) -> None:
        key = (namespace or self.namespace, name)

        def modify() -> None:
            old = self._state.pods[key]
            pod = json.loads(json.dumps(old))
            change(pod)
            self._record("MODIFIED", pod, old)

        self._call(modify)

    def _record(self, kind: str, pod: dict[str, Any], old: dict[str, Any] | None) -> None:
        state = self._state
        state.rv += 1
        pod = json.loads(json.dumps(pod))
        pod["metadata"]["resourceVersion"] = str(state.rv)
        key = (pod["metadata"]["namespace"], pod["metadata"]["name"])
        if kind == "DELETED":
            state.pods.pop(key, None)
        else:
            state.pods[key] = pod
        state.history.append(_Event(state.rv, kind, pod, old))
        while len(state.history) > state.history_limit:
            state.floor = state.history.popleft().rv
        self._notify()

    async def _up(self) -> None:
        app = web.Application(middlewares=[self._auth])
        app.router.add_get("/api/v1/namespaces/{ns}/pods", self._pods)
        runner = web.AppRunner(app, access_log=None, shutdown_timeout=0.5)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", self.port, ssl_context=self._ssl)
        await site.start()
        if not self.port:
            self.port = runner.addresses[0][1]
        self._runner = runner

    async def _down(self) -> None:
        runner, self._runner = self._runner, None
        for watch in self._state.active:
            watch.transport.abort()  # a crash, not a clean end of stream
        self._state.active.clear()
        self._notify()
        if runner is not None:
            await runner.cleanup()

    async def _cancel_leftovers(self) -> None:
        tasks = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    @web.middleware
    async def _auth(self, request: web.Request, handler: Any) -> web.StreamResponse:
        # The scheme is case-insensitive (RFC 9110; kube-apiserver agrees): the in-cluster config
        # of the kubernetes client sends "bearer". The token itself must match exactly.
        scheme, _, token = request.headers.get("Authorization", "").partition(" ")
        if scheme.lower() != "bearer" or not secrets.compare_digest(token, self.token):
            self._state.requests["unauthorized"] += 1
            return _status(401, "Unauthorized", "Unauthorized")
        response: web.StreamResponse = await handler(request)
        return response

    async def _pods(self, request: web.Request) -> web.StreamResponse:
        namespace = request.match_info["ns"]
        try:
            selector = parse_selector(request.query.get("labelSelector", ""))
        except ValueError as exc:
            return _status(400, "BadRequest", str(exc))
        if request.query.get("watch") in ("true", "1"):
            return await self._watch(request, namespace, selector)
        self._state.requests["list"] += 1
        items = [
            pod
            for (ns, _), pod in sorted(self._state.pods.items())
            if ns == namespace and selector(_labels(pod))
        ]
        body = {
            "kind": "PodList",
            "apiVersion": "v1",
            "metadata": {"resourceVersion": str(self._state.rv)},
            "items": [
                {k: v for k, v in pod.items() if k not in ("kind", "apiVersion")} for pod in items
            ],
        }
        return web.json_response(body)

    async def _watch(
        self, request: web.Request, namespace: str, selector: Callable[[Mapping[str, str]], bool]
    ) -> web.StreamResponse:
        state = self._state
        state.requests["watch"] += 1
        version = request.query.get("resourceVersion", "")
        state.watch_versions.append(version)
        timeout = int(request.query.get("timeoutSeconds", "0") or 0)
        bookmarks = request.query.get("allowWatchBookmarks") == "true"
        response = web.StreamResponse(headers={"Content-Type": "application/json"})
        response.enable_chunked_encoding()
        await response.prepare(request)
        watch = _Watch(request.transport, stalled=state.stall_new, epoch=state.epoch)
        state.active.append(watch)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout if timeout else None
        next_bookmark = loop.time() + (self.bookmark_interval or 0)

        async def send(kind: str, obj: dict[str, Any]) -> None:
            await response.write(json.dumps({"type": kind, "object": obj}).encode() + b"\n")

        try:
            if version in ("", "0"):
                cursor = state.rv
                for (ns, _), pod in sorted(state.pods.items()):
                    if ns == namespace and selector(_labels(pod)):
                        await send("ADDED", pod)
            else:
                cursor = int(version)
            while self._runner is not None:
                changed = self._changed
                assert changed is not None
                if not watch.stalled:
                    if watch.epoch != state.epoch or cursor < state.floor:
                        await send("ERROR", _gone(cursor))
                        break
                    for event in [e for e in state.history if e.rv > cursor]:
                        translated = _translate(event, namespace, selector)
                        if translated is not None:
                            await send(*translated)
                        cursor = event.rv
                    now = loop.time()
                    if deadline is not None and now >= deadline:
                        break
                    if bookmarks and self.bookmark_interval and now >= next_bookmark:
                        meta = {"resourceVersion": str(cursor)}
                        await send(
                            "BOOKMARK", {"kind": "Pod", "apiVersion": "v1", "metadata": meta}
                        )
                        next_bookmark = now + self.bookmark_interval
                waits = [d - loop.time() for d in (deadline, next_bookmark) if d is not None]
                wait = None if watch.stalled or not waits else max(0.01, min(waits))
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(changed.wait(), wait)
            if self._runner is not None:
                await response.write_eof()  # a normal end of the watch
        except (ConnectionError, RuntimeError):
            pass  # the client went away (or go_down cut it)
        finally:
            if watch in state.active:
                state.active.remove(watch)
        return response


def _translate(
    event: _Event, namespace: str, selector: Callable[[Mapping[str, str]], bool]
) -> tuple[str, dict[str, Any]] | None:
    if event.obj["metadata"]["namespace"] != namespace:
        return None
    now = selector(_labels(event.obj))
    if event.type != "MODIFIED":
        return (event.type, event.obj) if now else None
    before = selector(_labels(event.old))
    if now and before:
        return ("MODIFIED", event.obj)
    if now:
        return ("ADDED", event.obj)
    if before:
        return ("DELETED", event.obj)
    return None


def _set_ready(pod: dict[str, Any], ready: bool) -> None:
    flag = "True" if ready else "False"
    pod["status"]["conditions"] = [
        {"type": "Initialized", "status": "True", "lastTransitionTime": _TIMESTAMP},
        {"type": "Ready", "status": flag, "lastTransitionTime": _TIMESTAMP},
        {"type": "ContainersReady", "status": flag, "lastTransitionTime": _TIMESTAMP},
        {"type": "PodScheduled", "status": "True", "lastTransitionTime": _TIMESTAMP},
    ]


def _set_ip(pod: dict[str, Any], ip: str | None) -> None:
    status = pod["status"]
    if ip:
        status.update(podIP=ip, podIPs=[{"ip": ip}], hostIP="10.0.0.1")
    else:
        for key in ("podIP", "podIPs"):
            status.pop(key, None)


def _gone(version: int) -> dict[str, Any]:
    return {
        "kind": "Status",
        "apiVersion": "v1",
        "metadata": {},
        "status": "Failure",
        "message": f"too old resource version: {version}",
        "reason": "Expired",
        "code": 410,
    }


def _status(code: int, reason: str, message: str) -> web.Response:
    body = {
        "kind": "Status",
        "apiVersion": "v1",
        "metadata": {},
        "status": "Failure",
        "message": message,
        "reason": reason,
        "code": code,
    }
    return web.json_response(body, status=code)
