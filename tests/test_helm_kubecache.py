"""kubecache's own values.yaml (chart 0.13.1, kept in tests/fixtures) through this chart.

Changed only in ``BACKEND_URL`` and the image, it must render, lint, validate against the
Kubernetes schemas, and its rendered environment must start a real proxy process that serves.
Then the value forms kubecache's chart accepted (unquoted numbers, ``tpl`` in
configMapProperties and customLabels, any ``redeploy`` string, ``autoscaling/v1``, quoted
ports), the upgrade guards (kept Service name, a ring label Go pods cannot carry) and a peer
secret that `helm template` renders the same every time.
"""

from __future__ import annotations

import subprocess
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from tests.support.net import free_port
from tests.support.proxy_cluster import BackendProcess, ProxyNode, base_env
from tests.test_helm_chart import (
    CHART,
    K8S_VERSION,
    Doc,
    assert_lints_clean,
    effective_env,
    matches,
    one,
    parse_selector,
    pod_labels,
)
from tests.test_helm_chart import helm as helm  # the module fixture, shared

FIXTURE = Path(__file__).parent / "fixtures" / "kubecache-0.13.1-values.yaml"
OVERRIDE = """
image: {repository: registry.example.com/tokencache-proxy, tag: "0.1.0"}
configMapProperties:
  BACKEND_URL: http://config-server:9000
"""
# The labels kubecache 0.13.1's chart puts on its pods (templates/_helpers.tpl selectorLabels
# plus customLabels from its values.yaml), for a release named r1.
GO_POD_LABELS = {
    "app.kubernetes.io/name": "kubecache",
    "app.kubernetes.io/instance": "r1",
    "app": "kubecache",
}


def _helm(helm: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(helm), *args], capture_output=True, text=True, timeout=120, check=False
    )


def render(helm: Path, tmp_path: Path, *extra: str, values: str = "") -> list[Doc]:
    over = tmp_path / "override.yaml"
    over.write_text(OVERRIDE)
    args = ["template", "r1", str(CHART), "-n", "shop", "-f", str(FIXTURE), "-f", str(over)]
    if values:
        more = tmp_path / "more.yaml"
        more.write_text(values)
        args += ["-f", str(more)]
    proc = _helm(helm, *args, *extra)
    assert proc.returncode == 0, proc.stderr
    return [d for d in yaml.safe_load_all(proc.stdout) if d]


def test_fixture_is_kubecaches_file_with_its_source() -> None:
    text = FIXTURE.read_text()
    assert "udhos/kubecache" in text.splitlines()[1] and "0.13.1" in text.splitlines()[1]
    values = yaml.safe_load(text)
    # kubecache's OTel defaults, the ones that used to stop the pod, are in the fixture.
    props = values["configMapProperties"]
    assert props["OTEL_PROPAGATORS"] == "b3multi"
    assert props["OTEL_TRACES_EXPORTER"] == "jaeger"
    assert props["OTELCONFIG_EXPORTER"] == "jaeger"


def test_kubecache_values_lint_and_validate(helm: Path, tmp_path: Path) -> None:
    import kubernetes_validate

    over = tmp_path / "override.yaml"
    over.write_text(OVERRIDE)
    assert_lints_clean(helm, FIXTURE, over)
    docs = render(helm, tmp_path)
    for doc in docs:
        kubernetes_validate.validate(doc, K8S_VERSION, strict=True)
    env = effective_env(docs)
    assert env["OTEL_PROPAGATORS"] == "b3multi"
    assert pod_labels(docs)["app"] == "kubecache"


def _local_env(docs: list[Doc], backend_url: str) -> tuple[dict[str, str], dict[str, int]]:
    env = {k: str(v) for k, v in effective_env(docs).items() if isinstance(v, str)}
    ports = {name: free_port() for name in ("http", "peer", "health", "metrics")}
    env.update(
        {
            "BACKEND_URL": backend_url,
            # loopback ports instead of the pod's; no Kubernetes API here: a single node
            "LISTEN_ADDR": f"127.0.0.1:{ports['http']}",
            "GROUPCACHE_PORT": f"127.0.0.1:{ports['peer']}",
            "HEALTH_ADDR": f"127.0.0.1:{ports['health']}",
            "METRICS_ADDR": f"127.0.0.1:{ports['metrics']}",
            "PEER_DISCOVERY": "none",
            "GROUPCACHE_PEER_SECRET": "fixture-peer-secret-0123456789",
        }
    )
    env.pop("POD_IP", None)
    return env, ports


@pytest.mark.slow
def test_rendered_kubecache_environment_starts_a_proxy_that_serves(
    helm: Path, tmp_path: Path
) -> None:
    docs = render(helm, tmp_path)
    with BackendProcess(tmp_path) as backend:
        env, ports = _local_env(docs, backend.url)
        node = ProxyNode(
            0,
            ports["http"],
            ports["peer"],
            ports["health"],
            ports["metrics"],
            tmp_path / "proxy.log",
            base_env(env),
        )
        node.start()
        try:
            node.wait_ready()
            first = httpx.get(node.url + "/develop/app.yml", timeout=10)
            second = httpx.get(node.url + "/develop/app.yml", timeout=10)
            metrics = httpx.get(node.metrics_url, timeout=10).text
            backend_requests = backend.stats()["requests"]
        finally:
            node.stop()
        log = node.log_text()
    assert first.status_code == second.status_code == 200
    assert "hit" in second.headers["cache-status"]
    assert backend_requests == 1
    assert 'requests_seconds_count{method="GET",outcome="SUCCESS",status="200"' in metrics
    assert "Traceback" not in log
    assert log.count("Jaeger exporter is retired") == 1


def test_unquoted_numbers_render_as_kubecache_read_them(helm: Path, tmp_path: Path) -> None:
    docs = render(
        helm,
        tmp_path,
        values="configMapProperties: {GROUPCACHE_SIZE_BYTES: 100000000, CACHE_TTL: 300}\n",
    )
    data = one(docs, "ConfigMap")["data"]
    assert data["GROUPCACHE_SIZE_BYTES"] == "100000000"
    assert data["CACHE_TTL"] == "300"


def test_tpl_in_config_map_properties_and_custom_labels(helm: Path, tmp_path: Path) -> None:
    docs = render(
        helm,
        tmp_path,
        values=(
            "configMapProperties:\n"
            '  OTEL_SERVICE_NAME: "{{ .Release.Namespace }}.kubecache"\n'
            "customLabels:\n"
            "  app: kubecache\n"
            '  release: "{{ .Release.Name }}"\n'
        ),
    )
    assert one(docs, "ConfigMap")["data"]["OTEL_SERVICE_NAME"] == "shop.kubecache"
    assert pod_labels(docs)["release"] == "r1"


@pytest.mark.parametrize(
    ("redeploy", "rollme", "checksum"),
    [("always", True, True), ("reconfig", False, True), ("never", False, False)],
)
def test_redeploy_strings_keep_kubecaches_meaning(
    helm: Path, tmp_path: Path, redeploy: str, rollme: bool, checksum: bool
) -> None:
    docs = render(helm, tmp_path, "--set", f"redeploy={redeploy}")
    annotations = one(docs, "Deployment")["spec"]["template"]["metadata"]["annotations"]
    assert ("rollme" in annotations) is rollme
    assert ("checksum/config" in annotations) is checksum


def test_autoscaling_v1_and_quoted_ports(helm: Path, tmp_path: Path) -> None:
    import kubernetes_validate

    docs = render(
        helm,
        tmp_path,
        values=(
            "autoscaling: {apiVersion: autoscaling/v1}\n"
            'service: {targetPort: "8080"}\n'
            'podHealthCheck: {port: "8888"}\n'
        ),
    )
    hpa = one(docs, "HorizontalPodAutoscaler")
    assert hpa["apiVersion"] == "autoscaling/v1"
    assert hpa["spec"]["targetCPUUtilizationPercentage"] == 80
    for doc in docs:
        kubernetes_validate.validate(doc, K8S_VERSION, strict=True)
    env = effective_env(docs)
    assert env["LISTEN_ADDR"] == ":8080" and env["HEALTH_ADDR"] == ":8888"


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--set", "service.targetPort=http"], 'service.targetPort: "http" is not a port number'),
        (
            ["--set", "configMapProperties.LISTEN_ADDR=:8080"],
            "configMapProperties.LISTEN_ADDR is set by the chart: remove it and set "
            "service.targetPort instead",
        ),
        (
            ["--set", "configMapProperties.HEALTH_PATH=/health"],
            "set podHealthCheck.path instead",
        ),
        (
            ["--set", "configMapProperties.KUBEGROUP_LABEL_SELECTOR=app=kubecache"],
            "would select Go pods",
        ),
    ],
)
def test_refused_values_name_the_key_and_the_fix(
    helm: Path, tmp_path: Path, args: list[str], message: str
) -> None:
    over = tmp_path / "override.yaml"
    over.write_text(OVERRIDE)
    proc = _helm(helm, "template", "r1", str(CHART), "-f", str(FIXTURE), "-f", str(over), *args)
    assert proc.returncode != 0
    assert message in proc.stderr


def test_upgrade_keeps_the_service_name_and_never_selects_go_pods(
    helm: Path, tmp_path: Path
) -> None:
    # The worst case: nameOverride=kubecache and kubecache's customLabels, so every label a Go
    # pod of release r1 carries is also on the new pods.
    docs = render(
        helm, tmp_path, "--set", "service.name=r1-kubecache", "--set", "nameOverride=kubecache"
    )
    service = one(docs, "Service")
    assert service["metadata"]["name"] == "r1-kubecache"
    ring = parse_selector(effective_env(docs)["KUBEGROUP_LABEL_SELECTOR"])
    new_pod = pod_labels(docs)
    assert GO_POD_LABELS.items() <= new_pod.items()
    assert matches(ring, new_pod)
    assert not matches(ring, GO_POD_LABELS)
    assert matches(service["spec"]["selector"], new_pod)
    assert not matches(service["spec"]["selector"], GO_POD_LABELS)


def _peer_secret(docs: list[Doc]) -> Any:
    [secret] = [d for d in docs if d["kind"] == "Secret"]
    return secret["data"]


def test_peer_secret_from_a_seed_is_stable_under_helm_template(helm: Path, tmp_path: Path) -> None:
    seed = ["--set", "secrets.peerSecretSeed=gitops-seed-1"]
    first = _peer_secret(render(helm, tmp_path, *seed))
    again = _peer_secret(render(helm, tmp_path, *seed))
    other = _peer_secret(render(helm, tmp_path, "--set", "secrets.peerSecretSeed=other"))
    assert first == again
    assert first != other
    unseeded = _peer_secret(render(helm, tmp_path))
    assert unseeded != _peer_secret(render(helm, tmp_path))  # random without a cluster


def test_container_name_can_keep_kubecaches(helm: Path, tmp_path: Path) -> None:
    default = one(render(helm, tmp_path), "Deployment")["spec"]["template"]["spec"]
    assert [c["name"] for c in default["containers"]] == ["proxy"]
    kept = one(render(helm, tmp_path, "--set", "containerName=r1"), "Deployment")
    assert [c["name"] for c in kept["spec"]["template"]["spec"]["containers"]] == ["r1"]
