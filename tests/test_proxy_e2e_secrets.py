"""Black-box test: settings given as AWS secret references, resolved through STS AssumeRole.

A real moto_server plays AWS. The proxy process gets its backend URL from Parameter Store and its
OAuth2 client secret and peer secret from Secrets Manager (a JSON field), with SECRET_ROLE_ARN
set; it must start, reach the backend the reference named, and never log a resolved value.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import boto3
import httpx
import pytest

from tests.support.moto_server import MotoServer, running_moto_server
from tests.support.proxy_cluster import BackendProcess, ProxyCluster

pytestmark = pytest.mark.slow

REGION = "us-east-1"
PEER_SECRET = "peer-secret-from-secrets-manager"
AWS = {
    "AWS_ACCESS_KEY_ID": "testing",
    "AWS_SECRET_ACCESS_KEY": "testing",
    "AWS_DEFAULT_REGION": REGION,
}


@pytest.fixture
def moto() -> Iterator[MotoServer]:
    with running_moto_server() as server:
        yield server


def test_references_resolve_at_start_up(moto: MotoServer, tmp_path: Path) -> None:
    session = boto3.session.Session(
        aws_access_key_id="testing", aws_secret_access_key="testing", region_name=REGION
    )
    iam = session.client("iam", endpoint_url=moto.endpoint_url)
    role = iam.create_role(RoleName="proxy-secrets", AssumeRolePolicyDocument="{}")["Role"]["Arn"]
    sm = session.client("secretsmanager", endpoint_url=moto.endpoint_url)
    sm.create_secret(Name="proxy/peer", SecretString=json.dumps({"hmac": PEER_SECRET}))
    with BackendProcess(tmp_path) as backend:
        ssm = session.client("ssm", endpoint_url=moto.endpoint_url)
        ssm.put_parameter(Name="/proxy/backend", Value=backend.url, Type="SecureString")
        env = {
            **AWS,
            "AWS_ENDPOINT_URL": moto.endpoint_url,
            "SECRET_ROLE_ARN": role,
            "BACKEND_URL": f"aws-parameterstore:{REGION}:/proxy/backend",
            "DEBUG_LOG": "true",
        }
        # The peer secret reference replaces the helper's literal one.
        cluster = ProxyCluster(
            2,
            "unused",
            tmp_path,
            env=env,
            peer_secret=f"aws-secretsmanager:{REGION}:proxy/peer:hmac",
        )
        with cluster:
            responses = [httpx.get(n.url + "/from-ssm", timeout=15) for n in cluster.nodes]
        logs = cluster.logs()
        assert backend.stats()["by_target"] == {"/from-ssm": 1}
    assert [r.status_code for r in responses] == [200, 200]
    assert responses[0].content == responses[1].content == b"/from-ssm #1\n"
    assert PEER_SECRET not in logs
