"""Secret references (proxy._secrets): parsing without a server, then lookups against a real
moto_server on 127.0.0.1 (a plain one, and one that enforces IAM for the access-denied cases).

Every secret value below contains MARKER, so one check proves no value reached an error message,
a chained cause or a log record of ours.
"""

from __future__ import annotations

import json
import logging
import sys
import traceback
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import boto3
import boto3.session
import pytest

from tests.support.moto_server import MotoServer, running_moto_server
from tests.support.moto_server import moto_server as moto_server  # the module-scoped fixture
from tokencache.proxy._errors import ConfigError, ProxyError
from tokencache.proxy._secrets import (
    SecretReference,
    SecretReferenceError,
    SecretResolver,
    parse_reference,
)

MARKER = "mk-7f1c9e-do-not-leak"
REGION = "eu-west-1"
ACCOUNT = "123456789012"  # moto's default account
PLAIN = f"plain-{MARKER}"
JSON_SECRET = {"password": f"pw-{MARKER}", "port": 5432, "nested": {"a": MARKER}}
NOT_JSON = f"not json {MARKER}"
PARAM_VALUE = f"param-{MARKER}"
GUARDED = f"guarded-{MARKER}"

SessionFactory = Callable[[], boto3.session.Session]


@pytest.fixture(autouse=True)
def _no_ambient_aws(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """Only the explicit values passed in the tests may reach boto3: no AWS_* or config files."""
    import os

    for name in list(os.environ):
        if name.startswith("AWS_"):
            monkeypatch.delenv(name)
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "no-config"))
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "no-credentials"))
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")


def _factory(*keys: str) -> SessionFactory:
    """Sessions with explicit keys (dummy ones unless given) and nothing from the environment."""
    key_id, key = keys or ("testing", "testing")

    def make() -> boto3.session.Session:
        return boto3.session.Session(
            aws_access_key_id=key_id, aws_secret_access_key=key, region_name="us-east-1"
        )

    return make


def _counting_factory(event: str, calls: list[str], base: SessionFactory) -> SessionFactory:
    """A session factory whose session records every ``event`` (e.g. an API call) it makes."""

    def make() -> boto3.session.Session:
        session = base()
        session.events.register(event, lambda **kw: calls.append(event))
        return session

    return make


def _client(server: MotoServer, service: str) -> Any:
    return _factory()().client(service, region_name=REGION, endpoint_url=server.endpoint_url)


def _leaks(exc: BaseException) -> bool:
    return MARKER in "".join(traceback.format_exception(exc))


@pytest.fixture(scope="module")
def seeded(moto_server: MotoServer) -> dict[str, str]:
    """Secrets and parameters in the plain server; returns the ARNs it made."""
    sm = _client(moto_server, "secretsmanager")
    arns = {
        "plain": sm.create_secret(Name="tc/plain", SecretString=PLAIN)["ARN"],
        "json": sm.create_secret(Name="tc/json", SecretString=json.dumps(JSON_SECRET))["ARN"],
    }
    sm.create_secret(Name="tc/not-json", SecretString=NOT_JSON)
    ssm = _client(moto_server, "ssm")
    ssm.put_parameter(Name="/tc/param", Value=PARAM_VALUE, Type="SecureString")
    ssm.put_parameter(Name="/tc/json", Value=json.dumps(JSON_SECRET), Type="SecureString")
    return arns


def _resolver(server: MotoServer, **kw: Any) -> SecretResolver:
    kw.setdefault("session_factory", _factory())
    return SecretResolver(endpoint_url=server.endpoint_url, **kw)


# ---- parsing, no server -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (
            "aws-secretsmanager:us-east-1:db/pass",
            ("aws-secretsmanager", "db/pass", "us-east-1", None),
        ),
        ("aws-secretsmanager:us-east-1:db:user", ("aws-secretsmanager", "db", "us-east-1", "user")),
        ("aws-secretsmanager:us-east-1:db:a:b", ("aws-secretsmanager", "db", "us-east-1", "a:b")),
        (
            "aws-secretsmanager:us-east-1:arn:aws:secretsmanager:us-east-1:1234:secret:db-AbC",
            (
                "aws-secretsmanager",
                "arn:aws:secretsmanager:us-east-1:1234:secret:db-AbC",
                "us-east-1",
                None,
            ),
        ),
        (
            "aws-secretsmanager:us-east-1:arn:aws:secretsmanager:us-east-1:1234:secret:db-AbC:pw",
            (
                "aws-secretsmanager",
                "arn:aws:secretsmanager:us-east-1:1234:secret:db-AbC",
                "us-east-1",
                "pw",
            ),
        ),
        (
            "aws-parameterstore:sa-east-1:/app/key",
            ("aws-parameterstore", "/app/key", "sa-east-1", None),
        ),
        (
            "aws-parameterstore:sa-east-1:/app/j:f",
            ("aws-parameterstore", "/app/j", "sa-east-1", "f"),
        ),
        (
            "aws-parameterstore:sa-east-1:arn:aws:ssm:sa-east-1:1234:parameter/app/k:f",
            ("aws-parameterstore", "arn:aws:ssm:sa-east-1:1234:parameter/app/k", "sa-east-1", "f"),
        ),
        ("aws-parameterstore:us-gov-west-1:k", ("aws-parameterstore", "k", "us-gov-west-1", None)),
        ("file:/etc/secret/a:b", ("file", "/etc/secret/a:b", None, None)),
    ],
)
def test_parse_reference(value: str, expected: tuple[str, str, str | None, str | None]) -> None:
    ref = parse_reference("VAR", value)
    assert ref is not None
    assert (ref.kind, ref.locator, ref.region, ref.field) == expected


@pytest.mark.parametrize(
    "value",
    ["", "plain text", "https://x/y", "aws-secretsmanager", "AWS-SECRETSMANAGER:r:n", "files:x"],
)
def test_literals_are_not_references(value: str) -> None:
    assert parse_reference("VAR", value) is None


@pytest.mark.parametrize(
    ("value", "why"),
    [
        ("aws-secretsmanager:", "no valid region"),
        ("aws-secretsmanager:us-east-1", "no valid region"),
        ("aws-secretsmanager:US East:x", "no valid region"),
        ("aws-secretsmanager:db:password", "no valid region"),
        ("aws-parameterstore:local:/x", "no valid region"),
        ("aws-secretsmanager:us-east-1:", "no name"),
        ("aws-secretsmanager:us-east-1:name:", "empty json field"),
        ("aws-secretsmanager:us-east-1:arn:aws:secretsmanager:us-east-1:1234", "incomplete ARN"),
        ("aws-secretsmanager:us-east-1:arn:aws:secretsmanager:eu-west-1:1:secret:x", "differs"),
        ("aws-parameterstore:us-east-1:arn:aws:ssm:us-east-1::parameter/x", "incomplete ARN"),
        ("file:", "expected file:<path>"),
    ],
)
def test_malformed_references_fail_loudly(value: str, why: str) -> None:
    with pytest.raises(SecretReferenceError) as info:
        parse_reference("MY_VAR", value)
    assert str(info.value).startswith("MY_VAR: cannot resolve ")
    assert why in info.value.reason
    assert info.value.variable == "MY_VAR"
    assert value.split(":")[0] == info.value.kind


def test_error_hierarchy() -> None:
    err = SecretReferenceError("V", "file", "file missing: /x")
    assert isinstance(err, ConfigError)
    assert isinstance(err, ProxyError)
    assert (err.variable, err.kind, err.reason) == ("V", "file", "file missing: /x")
    assert str(err) == "V: cannot resolve file reference: file missing: /x"


def test_reference_describe_names_place_not_value() -> None:
    ref = SecretReference("aws-secretsmanager", "db", "us-east-1", "pw")
    assert ref.describe() == "us-east-1:db field 'pw'"


def test_literal_needs_no_aws() -> None:
    def no_session() -> boto3.session.Session:
        raise AssertionError("a literal must not touch AWS")

    resolver = SecretResolver("arn:aws:iam::1:role/r", session_factory=no_session)
    assert resolver.resolve("V", "just a value") == "just a value"
    assert resolver.resolve_all({"A": "1", "B": "x:y"}, ["A", "B", "C"]) == {"A": "1", "B": "x:y"}


def test_missing_boto3_is_a_clear_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "boto3", None)  # makes `import boto3` raise ImportError
    with pytest.raises(SecretReferenceError) as info:
        SecretResolver().resolve("DB_PASS", "aws-secretsmanager:us-east-1:db")
    assert info.value.kind == "aws-secretsmanager"
    assert "boto3 is not installed" in str(info.value)
    assert "tokencache[aws]" in str(info.value)


# ---- file: references ---------------------------------------------------------------------------


def test_file_reference_strips_one_newline(tmp_path: Path) -> None:
    (tmp_path / "pw").write_text(f"{MARKER}\n\n")
    (tmp_path / "crlf").write_bytes(b"a\r\nb\r\n")
    (tmp_path / "none").write_bytes(b"x\ry")
    resolver = SecretResolver()
    assert resolver.resolve("PW", f"file:{tmp_path / 'pw'}") == f"{MARKER}\n"
    assert resolver.resolve("PW2", f"file:{tmp_path / 'crlf'}") == "a\r\nb"
    assert resolver.resolve("PW3", f"file:{tmp_path / 'none'}") == "x\ry"


def test_file_reference_is_read_once(tmp_path: Path) -> None:
    path = tmp_path / "pw"
    path.write_text("first\n")
    resolver = SecretResolver()
    assert resolver.resolve("A", f"file:{path}") == "first"
    path.write_text("second\n")
    assert resolver.resolve("B", f"file:{path}") == "first"  # cached for this start-up


@pytest.mark.parametrize(
    ("make", "reason"), [("missing", "file missing"), ("dir", "not a regular")]
)
def test_file_reference_errors(tmp_path: Path, make: str, reason: str) -> None:
    path = tmp_path / "pw"
    if make == "dir":
        path.mkdir()
    with pytest.raises(SecretReferenceError) as info:
        SecretResolver().resolve("OAUTH2_CLIENT_SECRET", f"file:{path}")
    assert info.value.variable == "OAUTH2_CLIENT_SECRET"
    assert info.value.kind == "file"
    assert reason in info.value.reason
    assert str(path) in info.value.reason


# ---- against a plain moto_server ---------------------------------------------------------------


def test_secret_as_plain_string(moto_server: MotoServer, seeded: dict[str, str]) -> None:
    resolver = _resolver(moto_server)
    assert resolver.resolve("DB_PASS", f"aws-secretsmanager:{REGION}:tc/plain") == PLAIN


def test_secret_json_field(moto_server: MotoServer, seeded: dict[str, str]) -> None:
    resolver = _resolver(moto_server)
    ref = f"aws-secretsmanager:{REGION}:tc/json"
    assert resolver.resolve("DB_PASS", f"{ref}:password") == JSON_SECRET["password"]
    assert resolver.resolve("DB_PORT", f"{ref}:port") == "5432"


def test_secret_by_arn(moto_server: MotoServer, seeded: dict[str, str]) -> None:
    resolver = _resolver(moto_server)
    assert resolver.resolve("A", f"aws-secretsmanager:{REGION}:{seeded['plain']}") == PLAIN
    with_field = f"aws-secretsmanager:{REGION}:{seeded['json']}:password"
    assert resolver.resolve("B", with_field) == JSON_SECRET["password"]


def test_one_call_per_secret(moto_server: MotoServer, seeded: dict[str, str]) -> None:
    calls: list[str] = []
    event = "before-call.secrets-manager.GetSecretValue"
    resolver = _resolver(moto_server, session_factory=_counting_factory(event, calls, _factory()))
    ref = f"aws-secretsmanager:{REGION}:tc/json"
    env = {"A": f"{ref}:password", "B": f"{ref}:password", "C": f"{ref}:port", "D": "literal"}
    resolved = resolver.resolve_all(env, ["A", "B", "C", "D", "E"])
    assert resolved == {
        "A": JSON_SECRET["password"],
        "B": JSON_SECRET["password"],
        "C": "5432",
        "D": "literal",
    }
    assert calls == [event]


@pytest.mark.parametrize(
    ("suffix", "reason"),
    [
        ("tc/json:missing", "no such json field"),
        ("tc/json:nested", "not a scalar"),
        ("tc/not-json:password", "not JSON"),
        ("tc/plain:password", "not JSON"),
        ("tc/absent", "not found"),
    ],
)
def test_secret_errors(
    moto_server: MotoServer, seeded: dict[str, str], suffix: str, reason: str
) -> None:
    with pytest.raises(SecretReferenceError) as info:
        _resolver(moto_server).resolve("DB_PASS", f"aws-secretsmanager:{REGION}:{suffix}")
    assert info.value.variable == "DB_PASS"
    assert info.value.kind == "aws-secretsmanager"
    assert reason in info.value.reason
    assert f"{REGION}:{suffix.split(':')[0]}" in str(info.value)  # the reference is named
    assert not _leaks(info.value)


def test_parameter_with_decryption(moto_server: MotoServer, seeded: dict[str, str]) -> None:
    resolver = _resolver(moto_server)
    assert resolver.resolve("KEY", f"aws-parameterstore:{REGION}:/tc/param") == PARAM_VALUE
    field = f"aws-parameterstore:{REGION}:/tc/json:password"
    assert resolver.resolve("PW", field) == JSON_SECRET["password"]
    arn = f"arn:aws:ssm:{REGION}:{ACCOUNT}:parameter/tc/param"
    assert resolver.resolve("BY_ARN", f"aws-parameterstore:{REGION}:{arn}") == PARAM_VALUE


def test_missing_parameter(moto_server: MotoServer, seeded: dict[str, str]) -> None:
    with pytest.raises(SecretReferenceError) as info:
        _resolver(moto_server).resolve("KEY", f"aws-parameterstore:{REGION}:/tc/absent")
    assert (info.value.variable, info.value.kind) == ("KEY", "aws-parameterstore")
    assert "not found" in info.value.reason


def test_wrong_region_is_not_found(moto_server: MotoServer, seeded: dict[str, str]) -> None:
    with pytest.raises(SecretReferenceError) as info:
        _resolver(moto_server).resolve("DB_PASS", "aws-secretsmanager:us-west-2:tc/plain")
    assert "not found" in info.value.reason


def test_nothing_logged_but_the_variable(
    moto_server: MotoServer,
    seeded: dict[str, str],
    caplog: pytest.LogCaptureFixture,
    tmp_path: Path,
) -> None:
    caplog.set_level(logging.INFO)
    caplog.set_level(logging.DEBUG, logger="proxy")
    (tmp_path / "pw").write_text(MARKER)
    env = {
        "A": f"aws-secretsmanager:{REGION}:tc/plain",
        "B": f"aws-parameterstore:{REGION}:/tc/param",
        "C": f"file:{tmp_path / 'pw'}",
    }
    resolved = _resolver(moto_server).resolve_all(env, env)
    assert all(MARKER in v for v in resolved.values())
    with pytest.raises(SecretReferenceError) as info:
        _resolver(moto_server).resolve("D", f"aws-secretsmanager:{REGION}:tc/json:nope")
    assert not _leaks(info.value)
    messages = [r.getMessage() for r in caplog.records]
    assert "resolved A from aws-secretsmanager" in messages
    assert "resolved B from aws-parameterstore" in messages
    assert "resolved C from file" in messages
    assert MARKER not in caplog.text
    assert all(MARKER not in m for m in messages)


# ---- against a moto_server that enforces IAM ---------------------------------------------------

# The calls _seed_enforcing makes before moto starts checking signatures and policies.
_SETUP_CALLS = 9


def _trust(principal: str) -> str:
    return json.dumps(
        {
            "Version": "2012-10-17",
            "Statement": [
                {"Effect": "Allow", "Principal": {"AWS": principal}, "Action": "sts:AssumeRole"}
            ],
        }
    )


def _allow(*actions: str) -> str:
    return json.dumps(
        {
            "Version": "2012-10-17",
            "Statement": [{"Effect": "Allow", "Action": list(actions), "Resource": "*"}],
        }
    )


def _seed_enforcing(server: MotoServer) -> tuple[str, str]:
    """A user that may only assume roles, a reader role, a role without Secrets Manager rights."""
    iam = _client(server, "iam")
    user_arn = iam.create_user(UserName="app")["User"]["Arn"]  # 1
    key = iam.create_access_key(UserName="app")["AccessKey"]  # 2
    iam.put_user_policy(
        UserName="app", PolicyName="assume", PolicyDocument=_allow("sts:AssumeRole")
    )
    iam.create_role(RoleName="reader", AssumeRolePolicyDocument=_trust(user_arn))  # 4
    iam.put_role_policy(
        RoleName="reader",
        PolicyName="read",
        PolicyDocument=_allow("secretsmanager:GetSecretValue", "ssm:GetParameter", "kms:Decrypt"),
    )
    iam.create_role(RoleName="no-secrets", AssumeRolePolicyDocument=_trust(user_arn))  # 6
    iam.put_role_policy(
        RoleName="no-secrets", PolicyName="ssm", PolicyDocument=_allow("ssm:GetParameter")
    )
    _client(server, "secretsmanager").create_secret(Name="tc/guarded", SecretString=GUARDED)  # 8
    _client(server, "ssm").put_parameter(Name="/tc/guarded", Value=GUARDED, Type="SecureString")
    return key["AccessKeyId"], key["SecretAccessKey"]


@pytest.fixture(scope="module")
def enforcing() -> Iterator[tuple[MotoServer, SessionFactory]]:
    """A moto_server enforcing IAM after the setup calls, and the limited user's session."""
    with running_moto_server({"INITIAL_NO_AUTH_ACTION_COUNT": str(_SETUP_CALLS)}) as server:
        key_id, secret = _seed_enforcing(server)
        yield server, _factory(key_id, secret)


def _role(name: str) -> str:
    return f"arn:aws:iam::{ACCOUNT}:role/{name}"


def _assumed_sessions(server: MotoServer) -> list[str]:
    """Session names of the roles moto has handed out credentials for (its own records)."""
    with urllib.request.urlopen(f"{server.endpoint_url}/moto-api/data.json", timeout=5) as reply:
        data = json.load(reply)
    return [r["session_name"] for r in data.get("sts", {}).get("AssumedRole", [])]


def test_assume_role_reads_through_the_role(enforcing: tuple[MotoServer, SessionFactory]) -> None:
    server, user = enforcing
    calls: list[str] = []
    event = "before-call.sts.AssumeRole"
    resolver = SecretResolver(
        _role("reader"),
        session_factory=_counting_factory(event, calls, user),
        endpoint_url=server.endpoint_url,
        role_session_name="tc-reader-test",
    )
    ref = f"aws-secretsmanager:{REGION}:tc/guarded"
    assert resolver.resolve("DB_PASS", ref) == GUARDED
    # The user itself may not read the secret (next test), so it was read with the role's
    # credentials; the role was assumed exactly once, and moto recorded that session.
    assert resolver.resolve("API_KEY", f"aws-parameterstore:{REGION}:/tc/guarded") == GUARDED
    assert calls == [event]
    assert "tc-reader-test" in _assumed_sessions(server)


def test_without_role_the_user_is_denied(enforcing: tuple[MotoServer, SessionFactory]) -> None:
    server, user = enforcing
    resolver = SecretResolver(session_factory=user, endpoint_url=server.endpoint_url)
    with pytest.raises(SecretReferenceError) as info:
        resolver.resolve("DB_PASS", f"aws-secretsmanager:{REGION}:tc/guarded")
    assert "access denied" in info.value.reason


def test_role_without_permission_is_access_denied(
    enforcing: tuple[MotoServer, SessionFactory], caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG, logger="proxy")
    server, user = enforcing
    resolver = SecretResolver(
        _role("no-secrets"), session_factory=user, endpoint_url=server.endpoint_url
    )
    with pytest.raises(SecretReferenceError) as info:
        resolver.resolve("DB_PASSWORD", f"aws-secretsmanager:{REGION}:tc/guarded")
    message = str(info.value)
    assert message.startswith("DB_PASSWORD: ")
    assert "aws-secretsmanager" in message
    assert "access denied" in message
    assert f"{REGION}:tc/guarded" in message
    assert (info.value.variable, info.value.kind) == ("DB_PASSWORD", "aws-secretsmanager")
    # The same role may read parameters: the denial is about the permission, not the role.
    assert resolver.resolve("API_KEY", f"aws-parameterstore:{REGION}:/tc/guarded") == GUARDED
    assert not _leaks(info.value)
    assert "resolved DB_PASSWORD" not in caplog.text
    assert MARKER not in caplog.text


def test_unknown_credentials_cannot_assume(enforcing: tuple[MotoServer, SessionFactory]) -> None:
    server, _ = enforcing
    resolver = SecretResolver(
        _role("reader"),
        session_factory=_factory("AKIAUNKNOWN000000000", "nope"),
        endpoint_url=server.endpoint_url,
    )
    with pytest.raises(SecretReferenceError) as info:
        resolver.resolve("DB_PASS", f"aws-secretsmanager:{REGION}:tc/guarded")
    assert "assuming role" in info.value.reason
    assert _role("reader") in info.value.reason
    assert "access denied" in info.value.reason
