"""Secret references in configuration values, resolved once at start-up.

Theory of operation: the proxy's config module reads each setting from the environment and hands the
raw string to :meth:`SecretResolver.resolve`. A value in one of these forms is a *reference* and is
replaced by the secret it names; anything else is a literal and comes back unchanged::

    aws-secretsmanager:<region>:<secret name or ARN>[:<json field>]
    aws-parameterstore:<region>:<parameter name or ARN>[:<json field>]   (read with decryption)
    file:<path>                          (a mounted Kubernetes Secret; one trailing newline dropped)

and the stores of `proxy._secret_stores` (``aws-s3:``, ``aws-dynamodb:``, ``aws-lambda:``,
``#http:``; ``vault:`` and ``proxy||`` are refused with the reason).

Parse rule for the optional JSON field: Secrets Manager and Parameter Store names cannot contain
``:``, so after a plain name the first ``:`` starts the field. An ARN does contain colons, so a
value starting with ``arn:`` takes exactly the ARN's own segments (7 for a secret, 6 for a
parameter) and whatever follows the next ``:`` is the field. Parameter versions and labels
(``name:3``) are therefore not supported.

House rules kept here (kubecache got both wrong): a failed lookup raises
:class:`SecretReferenceError` and never falls back to the reference string; resolved values never
reach a log line or an error message (errors name the variable, the reference kind and the
reference, i.e. region and name, which are not secret).

Errors::

    proxy.ConfigError
    └── SecretReferenceError    variable, kind, reason
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from tokencache.proxy._secret_refs import (
    ReferenceKind,
    SecretReference,
    SecretReferenceError,
    parse_reference,
)
from tokencache.proxy._secret_stores import (
    PROXY_PREFIX,
    StoreError,
    StoreReference,
    client_error_reason,
    fetch_dynamodb,
    fetch_http,
    fetch_lambda,
    fetch_s3,
    http_call,
    parse_store_reference,
)

if TYPE_CHECKING:
    import boto3.session

__all__ = [
    "ReferenceKind",
    "SecretReference",
    "SecretReferenceError",
    "SecretResolver",
    "parse_reference",
]

_log = logging.getLogger("proxy.secrets")  # under the "proxy" logger the service configures


_FILE = "file"
_SECRETS_MANAGER = "aws-secretsmanager"
_STORE_SERVICES = {"aws-s3": "s3", "aws-dynamodb": "dynamodb", "aws-lambda": "lambda"}


class SecretResolver:
    """Resolves secret references in configuration values (blocking I/O: use it at start-up).

    ``role_arn``: when set, STS AssumeRole is called once (on the first AWS reference) and the
    temporary credentials read every AWS secret; otherwise the default credential chain of the
    session is used (environment, IRSA web identity, instance profile...). ``session_factory`` makes
    the base boto3 session (default ``boto3.session.Session()``); ``endpoint_url`` points every
    client at another endpoint (tests, VPC endpoints). boto3 is imported only when an AWS reference
    is met. Each secret is fetched at most once per resolver, however many references name it.
    """

    def __init__(
        self,
        role_arn: str | None = None,
        *,
        session_factory: Callable[[], boto3.session.Session] | None = None,
        endpoint_url: str | None = None,
        role_session_name: str = "tokencache",
    ) -> None:
        self._role_arn = role_arn or None
        self._session_factory = session_factory
        self._endpoint_url = endpoint_url
        self._role_session_name = role_session_name
        self._base_session: Any = None  # made on the first AWS reference
        self._role_credentials: dict[str, str] | None = None  # AssumeRole runs once
        self._clients: dict[tuple[str, str], Any] = {}  # (service, region) -> boto3 client
        # (kind, region, locator) -> raw value
        self._fetched: dict[tuple[str, str | None, str], str] = {}

    def resolve(self, name: str, value: str) -> str:
        """The secret ``value`` references, or ``value`` itself when it is a literal.

        ``name`` is the setting's variable name; it is used only in error messages.
        """
        try:
            store = parse_store_reference(value)
        except StoreError as exc:
            kind = "proxy" if value.startswith(PROXY_PREFIX) else value.split(":", 1)[0]
            raise SecretReferenceError(name, kind, str(exc)) from None
        if store is not None:
            return self._resolve_store(name, store)
        ref = parse_reference(name, value)
        if ref is None:
            return value
        key = (ref.kind, ref.region, ref.locator)
        raw = self._fetched.get(key)
        if raw is None:
            raw = self._fetch(name, ref)
            self._fetched[key] = raw
        result = raw if ref.field is None else _json_field(name, ref, raw)
        _log.debug("resolved %s from %s", name, ref.kind)
        return result

    def _resolve_store(self, name: str, store: StoreReference) -> str:
        key = (store.kind, store.region, ",".join(store.parts))
        raw = self._fetched.get(key)
        if raw is None:
            raw = self._fetch_store(name, store)
            self._fetched[key] = raw
        _log.debug("resolved %s from %s", name, store.kind)
        if store.field is None:
            return raw
        return _field_of(name, store.kind, store.describe(), store.field, raw)

    def _fetch_store(self, variable: str, store: StoreReference) -> str:
        try:
            if store.kind == "#http":
                return fetch_http(http_call, store)
            aws = _import_boto3(variable, store.kind)
            service = _STORE_SERVICES[store.kind]
            try:
                client = self._client(variable, store.kind, service, store.region or None)
                if service == "s3":
                    return fetch_s3(client, store)
                if service == "dynamodb":
                    return fetch_dynamodb(client, store)
                return fetch_lambda(client, store)
            except aws.ClientError as exc:
                reason = f"{store.describe()}: {client_error_reason(exc)}"
                raise SecretReferenceError(variable, store.kind, reason) from exc
            except aws.BotoCoreError as exc:
                reason = f"{store.describe()}: AWS call failed ({type(exc).__name__})"
                raise SecretReferenceError(variable, store.kind, reason) from exc
        except StoreError as exc:
            raise SecretReferenceError(variable, store.kind, str(exc)) from None

    def resolve_all(self, env: Mapping[str, str], names: Iterable[str]) -> dict[str, str]:
        """Resolve each of ``names`` that is present in ``env``; absent names are left out."""
        return {name: self.resolve(name, env[name]) for name in names if name in env}

    def _fetch(self, variable: str, ref: SecretReference) -> str:
        if ref.kind == _FILE:
            return _read_file(variable, ref)
        assert ref.region is not None  # parse_reference gives every AWS reference a region
        aws = _import_boto3(variable, ref.kind)
        try:
            return self._fetch_aws(variable, ref, ref.region)
        except aws.ClientError as exc:
            reason = client_error_reason(exc)
            # botocore errors carry codes, ARNs and URLs, never a secret value: keep the chain.
            raise SecretReferenceError(variable, ref.kind, f"{ref.describe()}: {reason}") from exc
        except aws.BotoCoreError as exc:
            reason = f"{ref.describe()}: AWS call failed ({type(exc).__name__})"
            raise SecretReferenceError(variable, ref.kind, reason) from exc

    def _fetch_aws(self, variable: str, ref: SecretReference, region: str) -> str:
        if ref.kind == _SECRETS_MANAGER:
            reply = self._client(variable, ref.kind, "secretsmanager", region).get_secret_value(
                SecretId=ref.locator
            )
            text = reply.get("SecretString")
            if isinstance(text, str):
                return text
            try:
                return bytes(reply["SecretBinary"]).decode("utf-8")
            except (KeyError, TypeError, UnicodeDecodeError):
                reason = f"{ref.describe()}: secret has no UTF-8 text value"
                raise SecretReferenceError(variable, ref.kind, reason) from None
        reply = self._client(variable, ref.kind, "ssm", region).get_parameter(
            Name=ref.locator, WithDecryption=True
        )
        text = reply.get("Parameter", {}).get("Value")
        if not isinstance(text, str):
            reason = f"{ref.describe()}: parameter has no value"
            raise SecretReferenceError(variable, ref.kind, reason)
        return text

    def _client(self, variable: str, kind: str, service: str, region: str | None) -> Any:
        client = self._clients.get((service, region or ""))
        if client is not None:
            return client
        boto3 = _import_boto3(variable, kind).boto3
        if self._base_session is None:
            factory = self._session_factory or boto3.session.Session
            self._base_session = factory()
        session = self._base_session
        if self._role_arn is not None:
            creds = self._assume_role(variable, kind, region)
            session = boto3.session.Session(
                aws_access_key_id=creds["AccessKeyId"],
                aws_secret_access_key=creds["SecretAccessKey"],
                aws_session_token=creds["SessionToken"],
            )
        client = session.client(service, region_name=region, endpoint_url=self._endpoint_url)
        self._clients[(service, region or "")] = client
        return client

    def _assume_role(self, variable: str, kind: str, region: str | None) -> dict[str, str]:
        if self._role_credentials is None:
            # Regional STS in the first referenced region: it is reachable if the secret is.
            sts = self._base_session.client(
                "sts", region_name=region, endpoint_url=self._endpoint_url
            )
            try:
                reply = sts.assume_role(
                    RoleArn=self._role_arn, RoleSessionName=self._role_session_name
                )
            except _import_boto3(variable, kind).ClientError as exc:
                reason = f"assuming role {self._role_arn}: {client_error_reason(exc)}"
                raise SecretReferenceError(variable, kind, reason) from exc
            self._role_credentials = dict(reply["Credentials"])
        return self._role_credentials


class _Aws:
    """boto3 and the botocore error classes, imported on the first AWS reference."""

    def __init__(self) -> None:
        import boto3
        import boto3.session
        from botocore.exceptions import BotoCoreError, ClientError

        self.boto3: Any = boto3
        self.ClientError: type[Exception] = ClientError
        self.BotoCoreError: type[Exception] = BotoCoreError


def _import_boto3(variable: str, kind: str) -> _Aws:
    try:
        return _Aws()
    except ImportError:
        reason = "boto3 is not installed (install the tokencache[aws] extra)"
        raise SecretReferenceError(variable, kind, reason) from None


def _read_file(variable: str, ref: SecretReference) -> str:
    path = Path(ref.locator)
    try:
        # Bytes, not read_text: universal newlines would rewrite a "\r" inside the secret.
        text = path.read_bytes().decode("utf-8")
    except FileNotFoundError:
        reason = f"file missing: {path}"
    except IsADirectoryError:
        reason = f"not a regular file: {path}"
    except PermissionError:
        reason = f"permission denied: {path}"
    except UnicodeDecodeError:
        reason = f"not UTF-8 text: {path}"  # the error object holds the bytes: do not chain it
    except OSError as exc:
        reason = f"cannot read {path} ({type(exc).__name__})"
    else:
        # Secret files often end with the newline an editor added; take off one (LF or CRLF).
        return text.removesuffix("\r\n") if text.endswith("\r\n") else text.removesuffix("\n")
    raise SecretReferenceError(variable, ref.kind, reason) from None


def _json_field(variable: str, ref: SecretReference, raw: str) -> str:
    assert ref.field is not None
    return _field_of(variable, ref.kind, ref.describe(), ref.field, raw)


def _field_of(variable: str, kind: str, where: str, field: str, raw: str) -> str:
    try:
        document = json.loads(raw)
    except ValueError:
        # JSONDecodeError.doc is the whole secret: never chain it.
        raise SecretReferenceError(variable, kind, f"{where}: value is not JSON") from None
    if not isinstance(document, dict):
        raise SecretReferenceError(variable, kind, f"{where}: not a JSON object")
    if field not in document:
        raise SecretReferenceError(variable, kind, f"{where}: no such json field")
    found = document[field]
    if isinstance(found, str):
        return found
    if isinstance(found, bool | int | float):
        return json.dumps(found)  # 5432 -> "5432", true -> "true"
    raise SecretReferenceError(variable, kind, f"{where}: json field is not a scalar")
