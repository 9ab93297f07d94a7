"""A pod that runs several worker processes yields one peer URL per worker (pure logic, no I/O)."""

from __future__ import annotations

from typing import Any

import pytest

from tokencache.discovery import (
    WORKERS_ANNOTATION,
    DiscoveryConfigError,
    KubernetesPeerSource,
    PodTable,
    pod_peers,
    pod_workers,
)


def pod(name: str, ip: str, *, workers: Any = None, ready: bool = True) -> dict[str, Any]:
    metadata: dict[str, Any] = {"name": name, "namespace": "ns"}
    if workers is not None:
        metadata["annotations"] = {WORKERS_ANNOTATION: workers}
    status = {"podIP": ip, "conditions": [{"type": "Ready", "status": str(ready)}]}
    return {"metadata": metadata, "status": status}


def test_each_worker_gets_the_next_port() -> None:
    assert pod_peers(pod("a", "10.0.0.1"), port=5000, workers=3) == (
        "http://10.0.0.1:5000",
        "http://10.0.0.1:5001",
        "http://10.0.0.1:5002",
    )
    assert pod_peers(pod("a", "fd00::1"), port=5000, workers=2) == (
        "http://[fd00::1]:5000",
        "http://[fd00::1]:5001",
    )
    assert pod_peers(pod("a", "10.0.0.1", ready=False), port=5000, workers=3) == ()


@pytest.mark.parametrize(
    ("annotation", "expected"),
    [("4", 4), (" 2 ", 2), ("0", 1), ("-3", 1), ("257", 1), ("many", 1), ("", 1), (7, 1)],
)
def test_a_pods_annotation_overrides_the_default_when_it_is_sane(
    annotation: Any, expected: int
) -> None:
    # Annotations are text written by whoever can edit the pod: anything else falls back.
    assert pod_workers(pod("a", "10.0.0.1", workers=annotation), default=1) == expected


def test_ports_never_run_past_65535() -> None:
    urls = pod_peers(pod("a", "10.0.0.1", workers="8"), port=65533, workers=1)
    assert urls == ("http://10.0.0.1:65533", "http://10.0.0.1:65534", "http://10.0.0.1:65535")


def test_pod_table_lists_every_worker_and_forgets_them_together() -> None:
    table = PodTable(port=5000, workers=2)
    assert table.replace([pod("a", "10.0.0.1"), pod("b", "10.0.0.2", workers="1")])
    assert table.peers() == [
        "http://10.0.0.1:5000",
        "http://10.0.0.1:5001",
        "http://10.0.0.2:5000",
    ]
    assert table.apply("MODIFIED", pod("a", "10.0.0.1", ready=False))
    assert table.peers() == ["http://10.0.0.2:5000"]
    assert table.apply("DELETED", pod("b", "10.0.0.2"))
    assert table.peers() == []


def test_source_refuses_a_nonsense_worker_count() -> None:
    for workers in (0, 257):
        with pytest.raises(DiscoveryConfigError, match="workers must be"):
            KubernetesPeerSource(
                lambda _: None,
                namespace="ns",
                label_selector="app=x",
                peer_port=5000,
                workers=workers,
            )
