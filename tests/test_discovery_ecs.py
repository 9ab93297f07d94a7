"""ECS discovery (kubecache's COMPUTE=ecs) against a real moto_server: tasks of a service in
awsvpc mode, their privateIPv4Address, the cluster from the task metadata endpoint; and a real
proxy process with COMPUTE=ecs and with FORCE_SINGLE_TASK=true.

moto's ListTasks ignores ``serviceName`` (it does not start tasks for services), so the cluster
holds only the service's tasks here.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import boto3
import httpx
import pytest
from prometheus_client import CollectorRegistry, generate_latest

from tests.support.moto_server import MotoServer
from tests.support.moto_server import moto_server as moto_server  # the module-scoped fixture
from tests.support.proxy_cluster import BackendProcess, ProxyCluster, http_get
from tokencache.discovery import (
    DiscoveryConfigError,
    EcsPeerSource,
    cluster_from_metadata,
    task_addresses,
)

REGION = "us-east-1"
CLUSTER = "kc-cluster"
CLUSTER_ARN = f"arn:aws:ecs:{REGION}:123456789012:cluster/{CLUSTER}"


def _client(server: MotoServer, service: str) -> Any:
    return boto3.session.Session(
        aws_access_key_id="testing", aws_secret_access_key="testing", region_name=REGION
    ).client(service, region_name=REGION, endpoint_url=server.endpoint_url)


@pytest.fixture(scope="module")
def ecs(moto_server: MotoServer) -> tuple[MotoServer, list[str]]:
    """A cluster running three awsvpc tasks of the service; returns their addresses."""
    ec2 = _client(moto_server, "ec2")
    vpc = ec2.create_vpc(CidrBlock="10.20.0.0/16")["Vpc"]["VpcId"]
    # moto fills the task's network attachment only when the VPC has DNS hostnames on.
    ec2.modify_vpc_attribute(VpcId=vpc, EnableDnsHostnames={"Value": True})
    subnet = ec2.create_subnet(VpcId=vpc, CidrBlock="10.20.1.0/24")["Subnet"]["SubnetId"]
    group = ec2.create_security_group(GroupName="kc", Description="kc", VpcId=vpc)["GroupId"]
    client = _client(moto_server, "ecs")
    client.create_cluster(clusterName=CLUSTER)
    client.register_task_definition(
        family="kubecache",
        networkMode="awsvpc",
        requiresCompatibilities=["FARGATE"],
        cpu="256",
        memory="512",
        containerDefinitions=[
            {
                "name": "proxy",
                "image": "tokencache-proxy",
                "essential": True,
                "cpu": 256,
                "memory": 512,
            }
        ],
    )
    run = client.run_task(
        cluster=CLUSTER,
        taskDefinition="kubecache",
        count=3,
        launchType="FARGATE",
        startedBy="kubecache",
        networkConfiguration={
            "awsvpcConfiguration": {"subnets": [subnet], "securityGroups": [group]}
        },
    )
    described = client.describe_tasks(cluster=CLUSTER, tasks=[t["taskArn"] for t in run["tasks"]])
    addresses = task_addresses(described["tasks"])
    assert len(addresses) == 3
    return moto_server, addresses


@pytest.fixture(scope="module")
def metadata() -> Iterator[str]:
    """A task metadata endpoint (v4) naming the cluster, like the ECS agent's."""

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            body = json.dumps({"Cluster": CLUSTER_ARN, "TaskARN": "t"}).encode()
            self.send_response(200 if self.path == "/v4/meta/task" else 404)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: Any) -> None:
            return

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/v4/meta"
    finally:
        server.shutdown()
        server.server_close()
        thread.join(5)


def test_cluster_name_from_task_metadata(metadata: str) -> None:
    assert cluster_from_metadata(metadata) == CLUSTER
    with pytest.raises(DiscoveryConfigError, match="not running as an ECS task"):
        cluster_from_metadata("")


def test_task_without_attachment_is_skipped() -> None:
    tasks = [
        {"taskArn": "a", "attachments": []},
        {
            "taskArn": "b",
            "attachments": [{"details": [{"name": "privateIPv4Address", "value": "10.0.0.9"}]}],
        },
    ]
    assert task_addresses(tasks) == ["10.0.0.9"]


async def test_service_tasks_become_peers(ecs: tuple[MotoServer, list[str]], metadata: str) -> None:
    server, addresses = ecs
    got: list[list[str]] = []
    registry = CollectorRegistry()
    source = EcsPeerSource(
        got.append,
        service="kubecache",
        peer_port=":5000",
        metadata_uri=metadata,
        client_factory=lambda: _client(server, "ecs"),
        registry=registry,
        metrics_namespace="kc",
    )
    await source.start()
    try:
        assert got == [sorted(f"http://{a}:5000" for a in addresses)]
        await source.poll_once()  # unchanged: not delivered again
        assert len(got) == 1
    finally:
        await source.stop()
    text = generate_latest(registry).decode()
    assert "kc_peers 3.0" in text and "kc_events 1.0" in text


async def test_api_failure_keeps_the_last_peers(ecs: tuple[MotoServer, list[str]]) -> None:
    server, _ = ecs
    got: list[list[str]] = []
    source = EcsPeerSource(
        got.append,
        service="kubecache",
        peer_port=5000,
        cluster="no-such-cluster",
        client=_client(server, "ecs"),
    )
    assert await source.poll_once() == []
    assert got == [] and source.errors == 1


async def test_force_single_task_needs_no_api() -> None:
    got: list[list[str]] = []
    source = EcsPeerSource(got.append, service="", peer_port=5000, force_single_task="10.1.1.1")
    await source.start()
    await source.stop()
    assert got == [["http://10.1.1.1:5000"]]


@pytest.mark.slow
def test_proxy_with_compute_ecs_finds_the_service_tasks(
    ecs: tuple[MotoServer, list[str]], metadata: str, tmp_path: Path
) -> None:
    server, _ = ecs
    env = {
        "COMPUTE": "ecs",
        "PEER_DISCOVERY": "auto",
        "GROUPCACHE_PEERS": "",
        "ECS_CONTAINER_METADATA_URI_V4": metadata,
        "ECS_TASK_DISCOVERY_SERVICE": "kubecache",
        "AWS_ENDPOINT_URL": server.endpoint_url,
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
        "AWS_DEFAULT_REGION": REGION,
    }
    with BackendProcess(tmp_path) as backend:
        cluster = ProxyCluster(1, backend.url, tmp_path, env=env)
        with cluster:
            node = cluster.nodes[0]
            text = http_get(node.metrics_url)[1].decode()
    assert "\npeers 3.0" in text and "\nevents 1.0" in text


@pytest.mark.slow
def test_proxy_with_force_single_task_serves(tmp_path: Path) -> None:
    env = {
        "COMPUTE": "ecs",
        "FORCE_SINGLE_TASK": "true",
        "GROUPCACHE_PEERS": "",
        "PEER_DISCOVERY": "auto",
    }
    with BackendProcess(tmp_path) as backend:
        cluster = ProxyCluster(1, backend.url, tmp_path, env=env)
        with cluster:
            node = cluster.nodes[0]
            assert httpx.get(node.url + "/ecs/one", timeout=10).status_code == 200
            assert "hit" in httpx.get(node.url + "/ecs/one", timeout=10).headers["cache-status"]
            text = http_get(node.metrics_url)[1].decode()
    assert "\npeers 1.0" in text
