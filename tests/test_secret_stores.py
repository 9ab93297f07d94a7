"""kubecache's other secret references: aws-s3, aws-dynamodb, aws-lambda on a real moto_server,
#http against a local HTTP server, vault refused with the reason; and all of them on any setting.
"""

from __future__ import annotations

import base64
import json
import threading
import urllib.request
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import boto3
import pytest

from tests.support.moto_server import MotoServer
from tests.support.moto_server import moto_server as moto_server  # the module-scoped fixture
from tokencache.proxy._config import Settings
from tokencache.proxy._errors import ConfigError
from tokencache.proxy._secret_stores import StoreError, parse_store_reference
from tokencache.proxy._secrets import SecretReferenceError, SecretResolver

REGION = "us-east-1"
MARKER = "s3cr3t-marker-value"


@pytest.fixture(autouse=True)
def _no_ambient_aws(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    import os

    for name in list(os.environ):
        if name.startswith("AWS_"):
            monkeypatch.delenv(name)
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "no-config"))
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "no-credentials"))
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    monkeypatch.setenv("AWS_DEFAULT_REGION", REGION)


def _session() -> boto3.session.Session:
    return boto3.session.Session(
        aws_access_key_id="testing", aws_secret_access_key="testing", region_name=REGION
    )


def _client(server: MotoServer, service: str) -> Any:
    return _session().client(service, region_name=REGION, endpoint_url=server.endpoint_url)


def _resolver(server: MotoServer) -> SecretResolver:
    return SecretResolver(session_factory=_session, endpoint_url=server.endpoint_url)


@pytest.fixture(scope="module")
def stores(moto_server: MotoServer) -> MotoServer:
    s3 = _client(moto_server, "s3")
    s3.create_bucket(Bucket="params")
    s3.put_object(Bucket="params", Key="app7/backend.url", Body=b"http://10.0.0.7:8080")
    s3.put_object(Bucket="params", Key="app7/doc.json", Body=json.dumps({"uri": MARKER}).encode())
    ddb = _client(moto_server, "dynamodb")
    ddb.create_table(
        TableName="parameters",
        KeySchema=[{"AttributeName": "parameter", "KeyType": "HASH"}],
        AttributeDefinitions=[{"AttributeName": "parameter", "AttributeType": "S"}],
        BillingMode="PAY_PER_REQUEST",
    )
    ddb.put_item(
        TableName="parameters",
        Item={"parameter": {"S": "backend"}, "value": {"S": json.dumps({"uri": MARKER})}},
    )
    ddb.put_item(TableName="parameters", Item={"parameter": {"S": "size"}, "value": {"N": "42"}})
    # Lambda without Docker: moto answers invocations from a queue of canned results.
    iam = _client(moto_server, "iam")
    role = iam.create_role(
        RoleName="lambda-role",
        AssumeRolePolicyDocument=json.dumps({"Version": "2012-10-17", "Statement": []}),
    )["Role"]["Arn"]
    _moto_api(moto_server, "/moto-api/config", {"lambda": {"use_docker": False}})
    _client(moto_server, "lambda").create_function(
        FunctionName="parameters",
        Runtime="python3.11",
        Role=role,
        Handler="index.handler",
        Code={"ZipFile": _zip()},
    )
    return moto_server


def _moto_api(server: MotoServer, path: str, body: dict[str, Any]) -> None:
    request = urllib.request.Request(
        server.endpoint_url + path,
        data=json.dumps(body).encode(),
        headers={"Content-Type": "application/json"},
        method="POST",
    )
    with urllib.request.urlopen(request, timeout=10) as reply:
        assert reply.status in (200, 201)


def _zip() -> bytes:
    import io
    import zipfile

    out = io.BytesIO()
    with zipfile.ZipFile(out, "w") as z:
        z.writestr("index.py", "def handler(event, context):\n    return event\n")
    return out.getvalue()


def test_s3_object_and_json_field(stores: MotoServer) -> None:
    r = _resolver(stores)
    assert r.resolve("BACKEND_URL", "aws-s3:us-east-1:params,app7/backend.url") == (
        "http://10.0.0.7:8080"
    )
    assert r.resolve("X", "aws-s3:us-east-1:params,app7/doc.json:uri") == MARKER
    # kubecache allowed an empty region: the SDK's default region applies
    assert r.resolve("X", "aws-s3::params,app7/backend.url") == "http://10.0.0.7:8080"


def test_dynamodb_item_attribute(stores: MotoServer) -> None:
    r = _resolver(stores)
    ref = "aws-dynamodb:us-east-1:parameters,parameter,backend,value:uri"
    assert r.resolve("BACKEND_URL", ref) == MARKER
    assert r.resolve("GROUPCACHE_SIZE_BYTES", "aws-dynamodb::parameters,parameter,size,value") == (
        "42"
    )


def test_lambda_response_field(stores: MotoServer) -> None:
    body = json.dumps({"uri": MARKER})
    _moto_api(
        stores,
        "/moto-api/static/lambda-simple/response",
        {"results": [json.dumps({"statusCode": 200, "body": body})], "region": REGION},
    )
    r = _resolver(stores)
    assert r.resolve("BACKEND_URL", "aws-lambda:us-east-1:parameters,parameter,x,body:uri") == (
        MARKER
    )


@pytest.mark.parametrize(
    ("ref", "reason"),
    [
        ("aws-s3:us-east-1:params,missing", "not found (NoSuchKey)"),
        ("aws-s3:us-east-1:nobucket,k", "not found (NoSuchBucket)"),
        ("aws-dynamodb:us-east-1:parameters,parameter,nothing,value", "item not found"),
        ("aws-dynamodb:us-east-1:parameters,parameter,backend,other", "no attribute 'other'"),
        ("aws-s3:us-east-1:params,app7/backend.url:uri", "value is not JSON"),
    ],
)
def test_store_errors_name_the_place_never_the_value(
    stores: MotoServer, ref: str, reason: str
) -> None:
    with pytest.raises(SecretReferenceError) as info:
        _resolver(stores).resolve("BACKEND_URL", ref)
    assert str(info.value).startswith("BACKEND_URL: cannot resolve ")
    assert reason in str(info.value)
    assert MARKER not in str(info.value) and "10.0.0.7" not in str(info.value)


# --- #http ------------------------------------------------------------------------------------


@pytest.fixture
def http_store() -> Iterator[tuple[str, list[dict[str, Any]]]]:
    seen: list[dict[str, Any]] = []

    class Handler(BaseHTTPRequestHandler):
        def _answer(self) -> None:
            length = int(self.headers.get("Content-Length") or 0)
            body = self.rfile.read(length)
            seen.append(
                {
                    "method": self.command,
                    "path": self.path,
                    "auth": self.headers.get("Authorization"),
                    "type": self.headers.get("Content-Type"),
                    "body": body,
                }
            )
            ok = self.headers.get("Authorization") == "Bearer t0ken"
            answer = json.dumps({"uri": MARKER}).encode() if ok else b"denied"
            self.send_response(200 if ok else 403)
            self.send_header("Content-Length", str(len(answer)))
            self.end_headers()
            self.wfile.write(answer)

        do_GET = _answer
        do_POST = _answer

        def log_message(self, *args: Any) -> None:
            return

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield str(server.server_address[1]), seen
    finally:
        server.shutdown()
        server.server_close()
        thread.join(5)


def test_http_reference(http_store: tuple[str, list[dict[str, Any]]]) -> None:
    port, seen = http_store
    body = base64.b64encode(b'{"parameter":"mongodb"}').decode()
    ref = f"#http::POST,http,127.0.0.1,{port},/secrets,application/json,{body},Bearer t0ken:uri"
    assert SecretResolver().resolve("OAUTH2_CLIENT_SECRET", ref) == MARKER
    [request] = seen
    assert request["method"] == "POST" and request["path"] == "/secrets"
    assert request["auth"] == "Bearer t0ken" and request["type"] == "application/json"
    assert request["body"] == b'{"parameter":"mongodb"}'


def test_http_reference_failure_hides_token_and_body(
    http_store: tuple[str, list[dict[str, Any]]],
) -> None:
    port, _ = http_store
    body = base64.b64encode(b"private-body").decode()
    ref = f"#http::GET,http,127.0.0.1,{port},/s,text/plain,{body},Bearer wrong-token"
    with pytest.raises(SecretReferenceError) as info:
        SecretResolver().resolve("BACKEND_URL", ref)
    text = str(info.value)
    assert "answered 403" in text and f"127.0.0.1:{port}/s" in text
    assert "wrong-token" not in text and body not in text


# --- parsing, vault, every setting --------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "why"),
    [
        ("aws-s3:us-east-1:only-bucket", "2 comma fields"),
        ("aws-dynamodb:us-east-1:t,k,v", "4 comma fields"),
        ("aws-lambda:us-east-1", "expected aws-lambda:"),
        ("#http::GET,ftp,h,1,/,t,,", "scheme http or https"),
        ("aws-s3:us-east-1:b,k:", "empty json field"),
        ("vault::token,dev-only-token,http,localhost,8200,secret/myapp1/mongodb:uri", "Vault"),
    ],
)
def test_malformed_and_refused(value: str, why: str) -> None:
    with pytest.raises(StoreError, match=why):
        parse_store_reference(value)


def test_vault_is_refused_at_start_with_one_line_and_never_used_literally() -> None:
    env = {
        "BACKEND_URL": "http://b:1",
        "OAUTH2_CLIENT_SECRET": "vault::token,dev-only-token,http,127.0.0.1,8200,secret/x:y",
    }
    with pytest.raises(ConfigError) as info:
        Settings.from_env(env, resolver=SecretResolver())
    text = str(info.value)
    assert text.startswith("OAUTH2_CLIENT_SECRET: cannot resolve vault reference: ")
    assert "file:" in text and "\n" not in text
    assert "dev-only-token" not in text


def test_any_setting_takes_a_store_reference(stores: MotoServer) -> None:
    env = {
        "BACKEND_URL": "aws-s3:us-east-1:params,app7/backend.url",
        "GROUPCACHE_SIZE_BYTES": "aws-dynamodb:us-east-1:parameters,parameter,size,value",
    }
    s = Settings.from_env(env, resolver=_resolver(stores))
    assert s.backend_url == "http://10.0.0.7:8080"
    assert s.groupcache_size_bytes == 42


def test_secret_proxy_reference_is_refused_not_used_literally() -> None:
    # kubecache's boilerplate (v1.6.10) also resolved "proxy||<scheme>,<host>,<port>,<name>"
    # through its secret proxy; taken literally it would become e.g. a label selector or a tag.
    env = {
        "BACKEND_URL": "http://b:1",
        "DD_TAGS": "proxy||http,localhost,8080,aws-secretsmanager:us-east-1:dd|tags",
    }
    with pytest.raises(ConfigError) as info:
        Settings.from_env(env, resolver=SecretResolver())
    text = str(info.value)
    assert text.startswith("DD_TAGS: cannot resolve proxy reference: ")
    assert "file:" in text and "\n" not in text
