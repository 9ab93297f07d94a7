"""The list+watch loop: runs in one worker thread with the synchronous ``kubernetes`` client.

Theory of operation (the gaps of udhos/kubegroup this closes are marked):

1. **List** the pods of the selector; rebuild the :class:`PodTable` from the items and remember
   the list's ``metadata.resourceVersion``.
2. **Watch** from that version with ``allowWatchBookmarks=true`` and a server-side
   ``timeoutSeconds``. Every event (and every BOOKMARK) moves the version forward.
3. A watch that **ends normally** (the server's timeout) resumes from the last version seen: no
   re-list, no events lost.
4. **410 Gone** (an ``ApiException`` of status 410, or an ERROR event whose Status has code 410):
   the version is older than the server's history, so events were lost. Re-list and rebuild the
   whole set (kubegroup had no answer to expired watches).
5. A watch that **goes silent** (a dead connection behind a NAT, a stuck proxy) is cut by the
   client read timeout (``_request_timeout``) and restarted from the last version (kubegroup
   would wait forever).
6. **API errors and refused connections** are retried with exponential backoff and jitter. The
   table keeps its pods meanwhile and nothing is published, so the ring keeps the last known peers
   instead of shrinking to nothing because the API is away.

Raw JSON (``_preload_content=False``) is parsed here instead of the client's models: the peer
rule needs five fields, and watch lines are parsed the same way as the list.
"""

from __future__ import annotations

import contextlib
import json
import logging
import socket
import threading
from collections.abc import Callable, Iterator
from typing import Any

from kubernetes.client import CoreV1Api
from kubernetes.client.exceptions import ApiException
from urllib3.exceptions import HTTPError, ReadTimeoutError

from tokencache.discovery._backoff import Backoff
from tokencache.discovery._errors import DiscoveryError, WatchExpired
from tokencache.discovery._metrics import Recorder
from tokencache.discovery._peerset import PodTable, resource_version

logger = logging.getLogger("tokencache.discovery")

# publish(peers, from_full_list): hands the current peer list to the event loop side.
Publish = Callable[[list[str], bool], None]

_STATUS_REASONS = {401: "unauthorized", 403: "forbidden", 410: "expired"}


def classify(exc: BaseException) -> tuple[str, str]:
    """Return a bounded error reason and a log-safe detail (no bodies, headers or tokens)."""
    if isinstance(exc, WatchExpired):
        return "expired", "resourceVersion expired (410)"
    if isinstance(exc, ApiException):
        status = int(exc.status or 0)
        if status == 0:
            return "connection", "API unreachable (TLS or transport error)"
        return _STATUS_REASONS.get(status, "api"), f"API answered HTTP {status} {exc.reason or ''}"
    if isinstance(exc, ReadTimeoutError):
        return "timeout", "API read timed out"
    if isinstance(exc, HTTPError | OSError):
        return "connection", f"API unreachable ({type(exc).__name__})"
    return "other", f"unexpected {type(exc).__name__}"


def _lines(resp: Any) -> Iterator[str]:
    # Watch events are newline-delimited JSON; a chunk may hold several lines or half of one.
    buffer = b""
    for chunk in resp.stream(amt=None, decode_content=False):
        buffer += chunk
        *complete, buffer = buffer.split(b"\n")
        for line in complete:
            if line.strip():
                yield line.decode("utf-8")


class PodWatcher:
    """Lists and watches pods until ``stopping`` is set; call :meth:`run` in a worker thread."""

    def __init__(
        self,
        api: CoreV1Api,
        *,
        namespace: str,
        label_selector: str,
        table: PodTable,
        publish: Publish,
        recorder: Recorder,
        watch_timeout: int,
        read_timeout: float,
        backoff: Backoff,
        sleep: Callable[[float], object],
        stopping: threading.Event,
    ) -> None:
        self._api = api
        self._namespace = namespace
        self._selector = label_selector
        self._table = table
        self._publish = publish
        self._recorder = recorder
        self._watch_timeout = watch_timeout
        # (connect, read) for urllib3: a black-holed API address should fail fast; the read
        # timeout is what cuts a silent watch.
        self._timeouts = (min(read_timeout, 10.0), read_timeout)
        self._backoff = backoff
        self._sleep = sleep
        self._stopping = stopping
        self._lock = threading.Lock()  # protects _resp, read by abort() from the loop thread
        self._resp: Any = None

    def run(self) -> None:
        """Loop list/watch until stopped; never raises."""
        version: str | None = None
        while not self._stopping.is_set():
            try:
                if version is None:
                    version = self._list()
                version = self._watch(version)
            except Exception as exc:  # noqa: BLE001 - the watch thread must outlive any failure
                if self._stopping.is_set():
                    break
                if isinstance(exc, ApiException) and exc.status == 410:
                    exc = WatchExpired()
                reason, detail = classify(exc)
                self._recorder.failed(reason, detail)
                logger.warning("kubernetes discovery: %s; keeping last peers, retrying", detail)
                if isinstance(exc, WatchExpired):
                    version = None  # events were lost: only a fresh list is the truth
                self._sleep(self._backoff.next_delay())

    def abort(self) -> None:
        """Unblock a watch read from another thread (used by stop)."""
        with self._lock:
            resp = self._resp
        conn = getattr(resp, "connection", None)
        sock = getattr(conn, "sock", None)
        if sock is not None:
            # Shutting the socket down wakes the thread blocked in recv; close() alone may not.
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)

    def _list(self) -> str:
        resp: Any = self._api.list_namespaced_pod(
            self._namespace,
            label_selector=self._selector,
            _preload_content=False,
            _request_timeout=self._timeouts,
        )
        try:
            body = json.loads(resp.data)
        finally:
            resp.release_conn()
        version = resource_version(body)
        if version is None:
            raise DiscoveryError("pod list without metadata.resourceVersion")
        self._table.replace(body.get("items") or ())
        self._recorder.seen(len(self._table))
        self._recorder.listed()
        self._backoff.reset()
        self._publish(self._table.peers(), True)
        return version

    def _watch(self, version: str) -> str:
        resp: Any = self._api.list_namespaced_pod(
            self._namespace,
            label_selector=self._selector,
            watch=True,
            resource_version=version,
            allow_watch_bookmarks=True,
            timeout_seconds=self._watch_timeout,
            _preload_content=False,
            _request_timeout=self._timeouts,
        )
        self._recorder.watched()
        self._backoff.reset()
        with self._lock:
            self._resp = resp
        clean = False
        try:
            for line in _lines(resp):
                if self._stopping.is_set():
                    return version
                version = self._handle(json.loads(line), version)
            clean = True
        except ReadTimeoutError:
            if not self._stopping.is_set():
                self._recorder.failed("timeout", "watch silent past the read timeout")
                logger.warning("kubernetes discovery: watch went silent; restarting it")
        finally:
            with self._lock:
                self._resp = None
            if not clean:
                resp.close()  # a half-read stream cannot go back to the pool
            resp.release_conn()
        return version

    def _handle(self, event: dict[str, Any], version: str) -> str:
        kind = event.get("type")
        obj = event.get("object") or {}
        if kind == "ERROR":
            status = obj if isinstance(obj, dict) else {}
            if status.get("code") == 410:
                raise WatchExpired()
            raise ApiException(status=status.get("code") or 500, reason=status.get("reason"))
        version = resource_version(obj) or version
        if kind == "BOOKMARK":
            return version
        self._recorder.event()
        changed = self._table.apply(str(kind), obj)
        self._recorder.seen(len(self._table))
        if changed:
            self._publish(self._table.peers(), False)
        return version
