"""The helm chart and the Dockerfile, checked without a cluster or a Docker engine.

Every rendered object goes through `helm lint --strict` and the Kubernetes 1.33 schemas
(kubernetes-validate, strict: unknown fields, kinds and apiVersions fail). Then the
invariants no schema can see: selectors agree with pod labels and stay inside one
release, the ports the proxy is told to listen on are the ports the pod declares, probes
and Prometheus annotations point at them, secrets arrive through secretKeyRef, and the
grace period covers preStop plus the drain.

helm comes from scripts/tools.d/30-helm.sh, which this module runs when .tools/ lacks it.
"""

from __future__ import annotations

import json
import re
import shlex
import subprocess
import tomllib
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

ROOT = Path(__file__).resolve().parent.parent
CHART = ROOT / "helm" / "tokencache"
FULL_VALUES = ROOT / "helm" / "examples" / "full-values.yaml"
HELM = ROOT / ".tools" / "helm" / "helm"
TOOLS_SCRIPT = ROOT / "scripts" / "tools.d" / "30-helm.sh"
K8S_VERSION = "1.33.0"
NAMESPACE = "shop"

Doc = dict[str, Any]

# The proxy's address variables and the container port name each one must match.
ADDR_PORTS = {
    "LISTEN_ADDR": "http",
    "GROUPCACHE_PORT": "peer",
    "HEALTH_ADDR": "health",
    "METRICS_ADDR": "metrics",
}

# A values file shaped like udhos/kubecache's chart: it must install here unchanged.
KUBECACHE_VALUES = """
replicaCount: 1
image: {repository: example/kubecache, pullPolicy: IfNotPresent, tag: ""}
redeploy: always
podAnnotations:
  "sidecar.istio.io/inject": "true"
  "prometheus.io/scrape": "true"
  "prometheus.io/path": /metrics
  "prometheus.io/port": "3000"
ingress: {enabled: false, className: "", annotations: {}, hosts: [], tls: []}
customLabels: {app: kubecache}
resources: {requests: {cpu: 300m, memory: 200Mi}, limits: {cpu: 2000m, memory: 400Mi}}
autoscaling:
  {enabled: true, minReplicas: 1, maxReplicas: 100, targetCPUUtilizationPercentage: 80,
   apiVersion: autoscaling/v2}
service: {type: ClusterIP, port: 9000, targetPort: 8080}
podHealthCheck: {port: 8888, path: /health}
configMapProperties:
  AUTOMEMLIMIT_DEBUG: "true"
  OTEL_TRACES_SAMPLER: parentbased_traceidratio
  OTEL_TRACES_SAMPLER_ARG: "0.01"
"""


@pytest.fixture(scope="module")
def helm() -> Path:
    if not HELM.exists():
        subprocess.run(["bash", str(TOOLS_SCRIPT)], cwd=ROOT, check=True, timeout=900)
    assert HELM.exists(), f"{TOOLS_SCRIPT} did not install {HELM}"
    return HELM


def _run_helm(helm: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(helm), *args], cwd=ROOT, capture_output=True, text=True, timeout=120, check=False
    )


def _render(helm: Path, release: str, *args: str) -> list[Doc]:
    proc = _run_helm(helm, "template", release, str(CHART), "--namespace", NAMESPACE, *args)
    assert proc.returncode == 0, proc.stderr
    return [doc for doc in yaml.safe_load_all(proc.stdout) if doc]


@pytest.fixture(scope="module")
def render(helm: Path) -> Callable[..., list[Doc]]:
    return lambda release, *args: _render(helm, release, *args)


@pytest.fixture(scope="module", params=["defaults", "full"])
def docs(request: pytest.FixtureRequest, helm: Path) -> list[Doc]:
    args = ["-f", str(FULL_VALUES)] if request.param == "full" else []
    return _render(helm, "edge", *args)


def one(docs: list[Doc], kind: str, *, hook: bool = False) -> Doc:
    found = [
        d
        for d in docs
        if d["kind"] == kind and ("helm.sh/hook" in d["metadata"].get("annotations", {})) == hook
    ]
    assert len(found) == 1, f"expected one {kind}, found {len(found)}"
    return found[0]


def container(docs: list[Doc]) -> Doc:
    containers = one(docs, "Deployment")["spec"]["template"]["spec"]["containers"]
    assert len(containers) == 1
    result: Doc = containers[0]
    return result


def pod_labels(docs: list[Doc]) -> dict[str, str]:
    labels: dict[str, str] = one(docs, "Deployment")["spec"]["template"]["metadata"]["labels"]
    return labels


def selector(docs: list[Doc]) -> dict[str, str]:
    match: dict[str, str] = one(docs, "Deployment")["spec"]["selector"]["matchLabels"]
    return match


def effective_env(docs: list[Doc]) -> dict[str, Any]:
    """What the process sees: envFrom ConfigMap, then `env` (which wins)."""
    c = container(docs)
    env: dict[str, Any] = {}
    by_name = {d["metadata"]["name"]: d for d in docs if d["kind"] == "ConfigMap"}
    for source in c.get("envFrom", []):
        env.update(by_name[source["configMapRef"]["name"]]["data"])
    for var in c.get("env", []):
        env[var["name"]] = var.get("value", var.get("valueFrom"))
    return env


def container_ports(docs: list[Doc]) -> dict[str, int]:
    ports = container(docs)["ports"]
    assert all("name" in p for p in ports), "every containerPort is named"
    return {p["name"]: p["containerPort"] for p in ports}


def resolve_port(docs: list[Doc], port: int | str) -> int:
    return container_ports(docs)[port] if isinstance(port, str) else port


def addr_port(addr: str) -> int:
    match = re.fullmatch(r"[^:]*:(\d+)", addr)
    assert match, f"not host:port: {addr!r}"
    return int(match.group(1))


def seconds(duration: str) -> float:
    match = re.fullmatch(r"(\d+(?:\.\d+)?)(ms|s|m|h)?", duration.strip())
    assert match, f"not a duration: {duration!r}"
    scale = {"ms": 0.001, "s": 1, "m": 60, "h": 3600, None: 1}[match.group(2)]
    return float(match.group(1)) * scale


def parse_selector(text: str) -> dict[str, str]:
    pairs = [item.split("=", 1) for item in text.split(",")]
    assert all(len(p) == 2 for p in pairs), text
    return {k.strip(): v.strip() for k, v in pairs}


def matches(sel: dict[str, str], labels: dict[str, str]) -> bool:
    return all(labels.get(k) == v for k, v in sel.items())


# --- lint and schema validation -------------------------------------------------------


def assert_lints_clean(helm: Path, *values: Path) -> None:
    args = ["lint", "--strict", str(CHART)] + [a for v in values for a in ("-f", str(v))]
    proc = _run_helm(helm, *args)
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out
    # lint downgrades template `fail` calls to INFO lines; they are failures all the same.
    assert "Fail:" not in out, out
    assert "[ERROR]" not in out, out
    assert "[WARNING]" not in out, out


@pytest.mark.parametrize("values", [(), (FULL_VALUES,)], ids=["defaults", "full"])
def test_helm_lint_strict(helm: Path, values: tuple[Path, ...]) -> None:
    assert_lints_clean(helm, *values)


def test_every_rendered_object_is_valid_kubernetes(docs: list[Doc]) -> None:
    import kubernetes_validate

    kinds = set()
    for doc in docs:
        # Raises on schema errors, unknown fields, and kinds/apiVersions 1.33 lacks.
        kubernetes_validate.validate(doc, K8S_VERSION, strict=True)
        kinds.add(doc["kind"])
    assert {
        "ConfigMap",
        "Deployment",
        "NetworkPolicy",
        "PodDisruptionBudget",
        "Role",
        "RoleBinding",
        "Service",
        "ServiceAccount",
    } <= kinds


def test_validation_rejects_unknown_fields_and_kinds(docs: list[Doc]) -> None:
    import kubernetes_validate

    broken = json.loads(json.dumps(one(docs, "Deployment")))
    broken["spec"]["template"]["spec"]["containers"][0]["livenesProbe"] = {}
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(broken, K8S_VERSION, strict=True)
    monitor = {"apiVersion": "monitoring.coreos.com/v1", "kind": "ServiceMonitor", "metadata": {}}
    with pytest.raises(kubernetes_validate.SchemaNotFoundError):
        kubernetes_validate.validate(monitor, K8S_VERSION, strict=True)


def test_kubecache_values_file_installs(helm: Path, tmp_path: Path) -> None:
    values = tmp_path / "kubecache-values.yaml"
    values.write_text(KUBECACHE_VALUES)
    assert_lints_clean(helm, values)
    docs = _render(helm, "legacy", "-f", str(values))
    assert pod_labels(docs)["app"] == "kubecache"
    assert "rollme" in one(docs, "Deployment")["spec"]["template"]["metadata"]["annotations"]
    assert one(docs, "HorizontalPodAutoscaler")["apiVersion"] == "autoscaling/v2"
    assert effective_env(docs)["AUTOMEMLIMIT_DEBUG"] == "true"


# --- selectors ------------------------------------------------------------------------


def test_deployment_selector_is_within_pod_labels(docs: list[Doc]) -> None:
    assert selector(docs)
    assert matches(selector(docs), pod_labels(docs))


def test_service_pdb_and_networkpolicy_select_the_pods(docs: list[Doc]) -> None:
    pods = pod_labels(docs)
    sels = {
        "Service": one(docs, "Service")["spec"]["selector"],
        "PodDisruptionBudget": one(docs, "PodDisruptionBudget")["spec"]["selector"]["matchLabels"],
        "NetworkPolicy": one(docs, "NetworkPolicy")["spec"]["podSelector"]["matchLabels"],
    }
    ring = {**selector(docs), "tokencache.io/peer-protocol": "tokencache-v1"}
    for kind, sel in sels.items():
        # The Service selects the ring label too: a kept kubecache Service never reaches Go pods.
        assert sel == (ring if kind == "Service" else selector(docs)), kind
        assert matches(sel, pods), kind


def test_kubegroup_selector_selects_exactly_this_release(docs: list[Doc]) -> None:
    env = effective_env(docs)
    assert env["PEER_DISCOVERY"] == "kubernetes"
    sel = parse_selector(env["KUBEGROUP_LABEL_SELECTOR"])
    # the release's selector plus the ring label kubecache's Go pods cannot carry
    assert sel == {**selector(docs), "tokencache.io/peer-protocol": "tokencache-v1"}
    assert matches(sel, pod_labels(docs))
    assert sel["app.kubernetes.io/instance"] == "edge"
    test_pod = one(docs, "Pod", hook=True)
    assert not matches(sel, test_pod["metadata"]["labels"]), "the helm test pod is no peer"


def test_two_releases_have_disjoint_selectors(render: Callable[..., list[Doc]]) -> None:
    a, b = render("alpha"), render("beta")
    a_sels = [selector(a), parse_selector(effective_env(a)["KUBEGROUP_LABEL_SELECTOR"])]
    b_sels = [selector(b), parse_selector(effective_env(b)["KUBEGROUP_LABEL_SELECTOR"])]
    for docs, sels in ((a, a_sels), (b, b_sels)):
        sels.append(one(docs, "Service")["spec"]["selector"])
        sels.append(one(docs, "PodDisruptionBudget")["spec"]["selector"]["matchLabels"])
        sels.append(one(docs, "NetworkPolicy")["spec"]["podSelector"]["matchLabels"])
    for sel in a_sels:
        assert matches(sel, pod_labels(a))
        assert not matches(sel, pod_labels(b))
    for sel in b_sels:
        assert matches(sel, pod_labels(b))
        assert not matches(sel, pod_labels(a))
    names_a = {(d["kind"], d["metadata"]["name"]) for d in a}
    names_b = {(d["kind"], d["metadata"]["name"]) for d in b}
    assert not names_a & names_b


# --- ports, probes, metrics -----------------------------------------------------------


def test_env_ports_and_container_ports_agree(docs: list[Doc]) -> None:
    env, ports = effective_env(docs), container_ports(docs)
    assert set(ports) == set(ADDR_PORTS.values())
    for var, name in ADDR_PORTS.items():
        assert addr_port(env[var]) == ports[name], var
    assert len(set(ports.values())) == len(ports), "ports are distinct"
    service_ports = {p["name"]: p for p in one(docs, "Service")["spec"]["ports"]}
    assert resolve_port(docs, service_ports["http"]["targetPort"]) == ports["http"]


def test_probes_use_health_port_and_paths(docs: list[Doc]) -> None:
    env, c = effective_env(docs), container(docs)
    health = addr_port(env["HEALTH_ADDR"])
    live, ready = c["livenessProbe"]["httpGet"], c["readinessProbe"]["httpGet"]
    assert live["path"] == env["HEALTH_PATH"]
    assert ready["path"] == env["READY_PATH"]
    assert live["path"] != ready["path"], "liveness and readiness are different questions"
    for probe in (live, ready, c["startupProbe"]["httpGet"]):
        assert resolve_port(docs, probe["port"]) == health


def test_prometheus_annotations_point_at_metrics(docs: list[Doc]) -> None:
    env = effective_env(docs)
    annotations = one(docs, "Deployment")["spec"]["template"]["metadata"]["annotations"]
    assert annotations["prometheus.io/scrape"] == "true"
    assert int(annotations["prometheus.io/port"]) == container_ports(docs)["metrics"]
    assert int(annotations["prometheus.io/port"]) == addr_port(env["METRICS_ADDR"])
    assert annotations["prometheus.io/path"] == env["METRICS_PATH"]


def test_networkpolicy_limits_peer_port_to_the_release(docs: list[Doc]) -> None:
    rules = one(docs, "NetworkPolicy")["spec"]["ingress"]
    peer = container_ports(docs)["peer"]

    def covers_peer(rule: Doc) -> bool:
        return any(resolve_port(docs, p["port"]) == peer for p in rule.get("ports", []))

    peer_rules = [r for r in rules if covers_peer(r)]
    assert len(peer_rules) == 1
    assert peer_rules[0]["from"] == [{"podSelector": {"matchLabels": selector(docs)}}]
    # No rule without ports (that would open every port, the peer port included).
    assert all(r.get("ports") for r in rules)
    opened = {resolve_port(docs, p["port"]) for r in rules for p in r["ports"]}
    assert opened == set(container_ports(docs).values())


def test_full_example_restricts_http_and_metrics_sources(helm: Path) -> None:
    docs = _render(helm, "edge", "-f", str(FULL_VALUES))
    rules = one(docs, "NetworkPolicy")["spec"]["ingress"]
    by_port = {resolve_port(docs, r["ports"][0]["port"]): r for r in rules}
    ports = container_ports(docs)
    assert by_port[ports["http"]]["from"][0]["namespaceSelector"]
    assert by_port[ports["metrics"]]["from"][0]["podSelector"]
    assert "from" not in by_port[ports["health"]]


# --- secrets, AWS, RBAC ---------------------------------------------------------------


def test_secret_role_arn_reaches_env(render: Callable[..., list[Doc]]) -> None:
    arn = "arn:aws:iam::210987654321:role/reader"
    assert "SECRET_ROLE_ARN" not in effective_env(render("edge"))
    assert effective_env(render("edge", "--set", f"secretRoleArn={arn}"))["SECRET_ROLE_ARN"] == arn


def test_full_example_irsa_and_oauth2(helm: Path) -> None:
    docs = _render(helm, "edge", "-f", str(FULL_VALUES))
    values = yaml.safe_load(FULL_VALUES.read_text())
    env = effective_env(docs)
    assert env["SECRET_ROLE_ARN"] == values["secretRoleArn"]
    sa = one(docs, "ServiceAccount")
    assert sa["metadata"]["annotations"]["eks.amazonaws.com/role-arn"].startswith("arn:aws:iam::")
    assert (
        one(docs, "Deployment")["spec"]["template"]["spec"]["serviceAccountName"]
        == (sa["metadata"]["name"])
    )
    assert env["OAUTH2_TOKEN_URL"] == values["oauth2"]["tokenUrl"]
    assert env["OAUTH2_CLIENT_ID"] == values["oauth2"]["clientId"]
    assert env["OAUTH2_SCOPE"] == values["oauth2"]["scope"]
    assert env["OAUTH2_AUTH_METHOD"] == values["oauth2"]["authMethod"]


def test_existing_secret_becomes_secret_key_refs(helm: Path) -> None:
    docs = _render(helm, "edge", "-f", str(FULL_VALUES))
    secrets = yaml.safe_load(FULL_VALUES.read_text())["secrets"]
    env = effective_env(docs)
    assert env["OAUTH2_CLIENT_SECRET"] == {
        "secretKeyRef": {"name": secrets["existingSecret"], "key": secrets["oauth2ClientSecretKey"]}
    }
    assert env["GROUPCACHE_PEER_SECRET"] == {
        "secretKeyRef": {"name": secrets["existingSecret"], "key": secrets["peerSecretKey"]}
    }
    assert not [d for d in docs if d["kind"] == "Secret"], "no generated Secret is needed"
    config = one(docs, "ConfigMap")["data"]
    assert "OAUTH2_CLIENT_SECRET" not in config
    assert "GROUPCACHE_PEER_SECRET" not in config


def test_generated_peer_secret_when_none_given(render: Callable[..., list[Doc]]) -> None:
    import base64

    docs = render("edge")
    ref = effective_env(docs)["GROUPCACHE_PEER_SECRET"]["secretKeyRef"]
    secret = one(docs, "Secret")
    assert secret["metadata"]["name"] == ref["name"]
    assert len(base64.b64decode(secret["data"][ref["key"]])) >= 32
    assert "OAUTH2_CLIENT_SECRET" not in effective_env(docs)
    # The generated value is random: two renders without a cluster to look it up in differ.
    again = one(render("edge"), "Secret")["data"][ref["key"]]
    assert again != secret["data"][ref["key"]]


def test_peer_tls_mounts_a_cert_manager_secret(render: Callable[..., list[Doc]]) -> None:
    import kubernetes_validate

    assert "GROUPCACHE_TLS_CERT" not in effective_env(render("edge"))
    docs = render("edge", "--set", "peer.tls.secretName=edge-peer-tls")
    for doc in docs:
        kubernetes_validate.validate(doc, K8S_VERSION, strict=True)
    pod = one(docs, "Deployment")["spec"]["template"]["spec"]
    volume = next(v for v in pod["volumes"] if v.get("secret"))
    assert volume["secret"]["secretName"] == "edge-peer-tls"
    mount = next(m for m in container(docs)["volumeMounts"] if m["name"] == volume["name"])
    assert mount["readOnly"] is True
    env = effective_env(docs)
    # cert-manager's key names, under the mount path
    assert env["GROUPCACHE_TLS_CERT"] == mount["mountPath"] + "/tls.crt"
    assert env["GROUPCACHE_TLS_KEY"] == mount["mountPath"] + "/tls.key"
    assert env["GROUPCACHE_TLS_CA"] == mount["mountPath"] + "/ca.crt"
    assert "GROUPCACHE_PEER_SECRET" in env  # TLS does not replace the peer secret


def test_role_grants_only_pod_reads_to_the_pods_account(docs: list[Doc]) -> None:
    role, binding = one(docs, "Role"), one(docs, "RoleBinding")
    assert role["rules"] == [
        {"apiGroups": [""], "resources": ["pods"], "verbs": ["get", "list", "watch"]}
    ]
    assert binding["roleRef"] == {
        "apiGroup": "rbac.authorization.k8s.io",
        "kind": "Role",
        "name": role["metadata"]["name"],
    }
    account = one(docs, "Deployment")["spec"]["template"]["spec"]["serviceAccountName"]
    assert binding["subjects"] == [
        {"kind": "ServiceAccount", "name": account, "namespace": NAMESPACE}
    ]


# --- pod lifecycle and hardening ------------------------------------------------------


def test_grace_period_covers_prestop_and_shutdown(docs: list[Doc]) -> None:
    spec = one(docs, "Deployment")["spec"]["template"]["spec"]
    command = container(docs)["lifecycle"]["preStop"]["exec"]["command"]
    assert command[0] == "sleep"
    pre_stop = seconds(command[1])
    shutdown = seconds(effective_env(docs)["SHUTDOWN_TIMEOUT"])
    assert pre_stop > 0
    assert shutdown > 0
    assert spec["terminationGracePeriodSeconds"] > pre_stop + shutdown


def test_pod_runs_non_root_read_only_without_capabilities(docs: list[Doc]) -> None:
    pod = one(docs, "Deployment")["spec"]["template"]["spec"]
    sc = container(docs)["securityContext"]
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["runAsUser"] != 0
    assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
    assert sc["readOnlyRootFilesystem"] is True
    assert sc["allowPrivilegeEscalation"] is False
    assert sc["capabilities"]["drop"] == ["ALL"]
    env = container(docs)["env"]
    pod_ip = next(v for v in env if v["name"] == "POD_IP")
    assert pod_ip["valueFrom"] == {"fieldRef": {"fieldPath": "status.podIP"}}


def test_topology_spread_over_zones_and_nodes(docs: list[Doc]) -> None:
    constraints = one(docs, "Deployment")["spec"]["template"]["spec"]["topologySpreadConstraints"]
    keys = {c["topologyKey"] for c in constraints}
    assert {"topology.kubernetes.io/zone", "kubernetes.io/hostname"} <= keys
    for c in constraints:
        assert c["labelSelector"]["matchLabels"] == selector(docs)


def test_config_change_rolls_the_pods(render: Callable[..., list[Doc]]) -> None:
    def checksum(*args: str) -> str:
        meta = one(render("edge", *args), "Deployment")["spec"]["template"]["metadata"]
        value: str = meta["annotations"]["checksum/config"]
        return value

    base = checksum()
    assert checksum() == base
    assert checksum("--set", "configMapProperties.CACHE_TTL=10s") != base
    assert checksum("--set", "metrics.port=9100") != base


def test_hpa_owns_replicas_when_enabled(docs: list[Doc]) -> None:
    deployment = one(docs, "Deployment")
    hpas = [d for d in docs if d["kind"] == "HorizontalPodAutoscaler"]
    if not hpas:
        assert deployment["spec"]["replicas"] >= 1
        return
    (hpa,) = hpas
    assert "replicas" not in deployment["spec"]
    assert hpa["spec"]["scaleTargetRef"] == {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "name": deployment["metadata"]["name"],
    }
    assert hpa["spec"]["minReplicas"] <= hpa["spec"]["maxReplicas"]


def test_helm_test_pod_curls_health_through_the_service(docs: list[Doc]) -> None:
    pod = one(docs, "Pod", hook=True)
    assert pod["metadata"]["annotations"]["helm.sh/hook"] == "test"
    service = one(docs, "Service")
    health = next(p for p in service["spec"]["ports"] if p["name"] == "health")
    url = pod["spec"]["containers"][0]["args"][-1]
    env = effective_env(docs)
    assert url == f"http://{service['metadata']['name']}:{health['port']}{env['HEALTH_PATH']}"
    assert resolve_port(docs, health["targetPort"]) == addr_port(env["HEALTH_ADDR"])


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--set", "configMapProperties.LISTEN_ADDR=:9999"], "LISTEN_ADDR"),
        (["--set", "configMapProperties.KUBEGROUP_LABEL_SELECTOR=app=x"], "KUBEGROUP"),
        (["--set", "peer.port=8080"], "must differ"),
        (["--set", "service.port=70000"], "service.port"),
    ],
)
def test_inconsistent_values_are_refused(helm: Path, args: list[str], message: str) -> None:
    proc = _run_helm(helm, "template", "edge", str(CHART), *args)
    assert proc.returncode != 0
    assert message in proc.stderr


# --- Dockerfile -----------------------------------------------------------------------


def dockerfile_instructions() -> Iterator[tuple[str, str]]:
    text = (ROOT / "Dockerfile").read_text().replace("\\\n", " ")
    for line in text.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            word, _, rest = line.partition(" ")
            yield word.upper(), rest.strip()


def test_dockerfile_is_multistage_non_root_and_runs_the_console_script() -> None:
    steps = list(dockerfile_instructions())
    froms = [rest for word, rest in steps if word == "FROM"]
    assert len(froms) >= 2
    stages = [f.split()[-1] for f in froms if " AS " in f.upper()]
    assert froms[-1].split()[0] == "python:3.11-slim"
    final = max(i for i, (word, _) in enumerate(steps) if word == "FROM")
    final_steps = steps[final:]
    # The final stage takes the builder's wheels, and installs the aws extra.
    assert any(f"from={stages[0]}" in rest.replace("--from", "from") for _, rest in final_steps), (
        "final stage uses the builder stage"
    )
    installs = [
        extras.split(",")
        for word, rest in final_steps
        if word == "RUN"
        for extras in re.findall(r"tokencache\[([a-z0-9,]+)\]", rest)
    ]
    assert installs, "the final stage installs the project"
    assert all("aws" in extras for extras in installs)
    users = [rest for word, rest in steps if word == "USER"]
    assert users, "USER is set"
    uid = users[-1].split(":")[0]
    assert uid.isdigit()
    assert int(uid) == 10001
    entrypoints = [json.loads(rest) for word, rest in steps if word == "ENTRYPOINT"]
    assert entrypoints[-1] == ["tokencache-proxy"]
    scripts = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["scripts"]
    assert "tokencache-proxy" in scripts
    exposed = {int(p) for word, rest in steps if word == "EXPOSE" for p in rest.split()}
    defaults = yaml.safe_load((CHART / "values.yaml").read_text())
    assert exposed == {
        defaults["service"]["targetPort"],
        defaults["peer"]["port"],
        defaults["podHealthCheck"]["port"],
        defaults["metrics"]["port"],
    }
    # The chart runs as the image's user.
    assert defaults["podSecurityContext"]["runAsUser"] == int(uid)


def test_dockerignore_keeps_the_build_inputs() -> None:
    import fnmatch

    ignored = [
        line.strip()
        for line in (ROOT / ".dockerignore").read_text().splitlines()
        if line.strip() and not line.startswith("#")
    ]
    copied = [
        src
        for word, rest in dockerfile_instructions()
        if word == "COPY" and "--from" not in rest
        for src in shlex.split(rest)[:-1]
    ]
    assert {"pyproject.toml", "README.md", "tokencache", "plugin", "proxy"} <= set(copied)
    for src in copied:
        assert not any(fnmatch.fnmatch(src, pat) for pat in ignored), src
    assert ".venv" in ignored
    assert ".git" in ignored


def test_workers_reach_env_annotation_ports_and_networkpolicy(
    render: Callable[..., list[Doc]],
) -> None:
    docs = render("edge", "--set", "workers=3", "--set", "networkPolicy.enabled=true")
    env, ports = effective_env(docs), container_ports(docs)
    assert env["PROXY_WORKERS"] == "3"
    annotations = one(docs, "Deployment")["spec"]["template"]["metadata"]["annotations"]
    assert annotations["tokencache.io/workers"] == "3"
    peer = addr_port(env["GROUPCACHE_PORT"])
    assert [ports["peer"], ports["peer-1"], ports["peer-2"]] == [peer, peer + 1, peer + 2]
    rules = one(docs, "NetworkPolicy")["spec"]["ingress"]
    peer_rules = [r for r in rules if any(p["port"] == peer for p in r["ports"])]
    assert peer_rules[0]["ports"] == [{"port": peer, "endPort": peer + 2, "protocol": "TCP"}]
    assert peer_rules[0]["from"] == [{"podSelector": {"matchLabels": selector(docs)}}]
    default = render("edge")
    assert effective_env(default)["PROXY_WORKERS"] == "1"
    assert "peer-1" not in container_ports(default)
