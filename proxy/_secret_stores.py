"""The secret stores kubecache's references reached besides Secrets Manager and Parameter Store.

Formats (udhos/boilerplate's, which kubecache resolved on every variable; ``region`` may be empty,
then the AWS SDK's default region applies; ``[:field]`` takes one field of a JSON object)::

    aws-s3:<region>:<bucket>,<object key>[:field]
    aws-dynamodb:<region>:<table>,<key name>,<key value>,<value attribute>[:field]
    aws-lambda:<region>:<function>,<key name>,<key value>,<response field>[:field]
        (invoked with the payload {"<key name>": "<key value>"}; the answer is a JSON object
        whose <response field> holds the value)
    #http::<method>,<scheme>,<host>,<port>,<path>,<content type>,<body base64>,<authorization>[:field]
    vault::...   refused: no Vault server can run in this project's tests, so the proxy does not
                 claim to speak to one (use the Vault Agent injector and a file: reference)
    proxy||...   refused too: boilerplate's secret-proxy form (proxy||<scheme>,<host>,<port>,
                 <secret name>[|field]) asked a kubecache-specific proxy service

Pure parsing lives here; the fetches take the boto3 client or the HTTP function they need, so
the resolver keeps one client per service and region. Nothing here puts a fetched value, the
body or the authorization of an ``#http`` reference into an error message.
"""

from __future__ import annotations

import base64
import binascii
import json
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

__all__ = [
    "STORE_KINDS",
    "StoreError",
    "StoreReference",
    "fetch_dynamodb",
    "fetch_http",
    "fetch_lambda",
    "fetch_s3",
    "parse_store_reference",
]

STORE_KINDS = ("aws-s3", "aws-dynamodb", "aws-lambda", "#http", "vault")
_FIELDS = {"aws-s3": 2, "aws-dynamodb": 4, "aws-lambda": 4, "#http": 8}
_USAGE = {
    "aws-s3": "aws-s3:<region>:<bucket>,<key>[:field]",
    "aws-dynamodb": "aws-dynamodb:<region>:<table>,<key name>,<key value>,<attribute>[:field]",
    "aws-lambda": "aws-lambda:<region>:<function>,<key name>,<key value>,<response field>[:field]",
    "#http": "#http::<method>,<scheme>,<host>,<port>,<path>,<content type>,<body base64>,"
    "<authorization>[:field]",
}
PROXY_PREFIX = "proxy|"
PROXY_REFUSED = (
    "secret-proxy references (proxy||<scheme>,<host>,<port>,<secret name>) are not supported; "
    "reference the store the secret proxy read (aws-secretsmanager:, aws-parameterstore:, "
    "aws-s3:, aws-dynamodb:, aws-lambda:, #http:) or mount it and use file:<path>"
)
VAULT_REFUSED = (
    "vault references are not supported (no Vault server runs in this project's tests); "
    "let the Vault Agent injector write the secret to a file and use file:<path>"
)


class StoreError(Exception):
    """A reference that is malformed or whose store said no; the message holds no secret."""


@dataclass(frozen=True, slots=True)
class StoreReference:
    """A parsed store reference: kind, region ("" = SDK default), the comma fields, JSON field."""

    kind: str
    region: str
    parts: tuple[str, ...]
    field: str | None

    def describe(self) -> str:
        """Where the secret is, for error messages; never the #http body or authorization."""
        if self.kind == "#http":
            method, scheme, host, port, path = self.parts[:5]
            where = f"{method} {scheme}://{host}{':' + port if port else ''}{path}"
        elif self.kind == "aws-s3":
            where = f"s3://{self.parts[0]}/{self.parts[1]}"
        else:
            where = f"{self.parts[0]} ({self.parts[1]}={self.parts[2]}, {self.parts[3]})"
        region = f"{self.region}:" if self.region else ""
        field = f" field {self.field!r}" if self.field is not None else ""
        return f"{region}{where}{field}"


def parse_store_reference(value: str) -> StoreReference | None:
    """Parse a store reference; None when `value` is none of these kinds.

    Raises StoreError (naming the expected form) when it is one, malformed.
    """
    if value.startswith(PROXY_PREFIX):
        raise StoreError(PROXY_REFUSED)
    kind = next((k for k in STORE_KINDS if value.startswith(k + ":")), None)
    if kind is None:
        return None
    if kind == "vault":
        raise StoreError(VAULT_REFUSED)
    # boilerplate's rule: <kind>:<region>:<name>[:<field>], the field is everything after.
    pieces = value.split(":", 3)
    if len(pieces) < 3 or not pieces[2]:
        raise StoreError(f"malformed reference: expected {_USAGE[kind]}")
    region, name = pieces[1].strip(), pieces[2]
    field = pieces[3] if len(pieces) == 4 else None
    if field == "":
        raise StoreError(f"malformed reference (empty json field): expected {_USAGE[kind]}")
    n = _FIELDS[kind]
    parts = tuple(p.strip() for p in name.split(",", n - 1))
    if len(parts) < n or not parts[0]:
        raise StoreError(f"malformed reference ({n} comma fields): expected {_USAGE[kind]}")
    if kind == "#http" and (parts[1] not in ("http", "https") or not parts[2]):
        raise StoreError(f"malformed reference (scheme http or https, a host): {_USAGE[kind]}")
    return StoreReference(kind, region, parts, field)


def fetch_s3(client: Any, ref: StoreReference) -> str:
    """The object's text."""
    reply = client.get_object(Bucket=ref.parts[0], Key=ref.parts[1])
    return _text(reply["Body"].read(), ref)


def fetch_dynamodb(client: Any, ref: StoreReference) -> str:
    """The item's value attribute (a string or number attribute)."""
    table, key_name, key_value, attribute = ref.parts
    reply = client.get_item(TableName=table, Key={key_name: {"S": key_value}})
    item = reply.get("Item") or {}
    if not item:
        raise StoreError(f"{ref.describe()}: item not found")
    found = item.get(attribute)
    if not isinstance(found, dict):
        raise StoreError(f"{ref.describe()}: item has no attribute {attribute!r}")
    for type_name in ("S", "N"):
        if isinstance(found.get(type_name), str):
            return str(found[type_name])
    raise StoreError(f"{ref.describe()}: attribute {attribute!r} is not a string or number")


def fetch_lambda(client: Any, ref: StoreReference) -> str:
    """Invoke the function with {"<key name>": "<key value>"}; its answer's response field."""
    function, key_name, key_value, response_field = ref.parts
    reply = client.invoke(FunctionName=function, Payload=json.dumps({key_name: key_value}).encode())
    payload = reply["Payload"].read()
    if reply.get("FunctionError"):
        raise StoreError(f"{ref.describe()}: the function failed ({reply['FunctionError']})")
    try:
        answer = json.loads(payload)
    except ValueError:
        raise StoreError(f"{ref.describe()}: the answer is not a JSON object") from None
    if not isinstance(answer, dict) or response_field not in answer:
        raise StoreError(f"{ref.describe()}: the answer has no field {response_field!r}")
    found = answer[response_field]
    return found if isinstance(found, str) else json.dumps(found)


# (method, url, headers, body, timeout) -> (status, body bytes)
HttpCall = Callable[[str, str, dict[str, str], bytes, float], tuple[int, bytes]]


def fetch_http(call: HttpCall, ref: StoreReference, timeout: float = 10.0) -> str:
    """The body of a 200 answer to the request the reference describes."""
    method, scheme, host, port, path, content_type, body64, authorization = ref.parts
    try:
        body = base64.b64decode(body64, validate=True) if body64 else b""
    except (binascii.Error, ValueError):
        raise StoreError(f"{ref.describe()}: the body is not base64") from None
    netloc = f"[{host}]" if ":" in host else host
    url = f"{scheme}://{netloc}{':' + port if port else ''}/{path.lstrip('/')}"
    headers = {}
    if content_type:
        headers["Content-Type"] = content_type
    if authorization:
        headers["Authorization"] = authorization
    status, answer = call(method.upper() or "GET", url, headers, body, timeout)
    if status != 200:
        raise StoreError(f"{ref.describe()}: answered {status}, not 200")
    return _text(answer, ref)


def _text(data: bytes, ref: StoreReference) -> str:
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        raise StoreError(f"{ref.describe()}: not UTF-8 text") from None


# AWS error codes that mean "the credentials may not do this" and "there is no such thing".
_DENIED_CODES = frozenset(
    {"AccessDenied", "AccessDeniedException", "UnrecognizedClientException",
     "InvalidClientTokenId", "ExpiredToken", "ExpiredTokenException", "SignatureDoesNotMatch"}
)  # fmt: skip
_MISSING_CODES = frozenset(
    {"ResourceNotFoundException", "ParameterNotFound", "NoSuchKey", "NoSuchBucket"}
)


def client_error_reason(exc: Any) -> str:
    code = str(exc.response.get("Error", {}).get("Code", "unknown"))
    status = exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode")
    # AWS answers 403 only for authentication and authorisation failures; a body botocore could
    # not parse (some emulators and proxies) leaves "403" as the code, which means the same.
    if code in _DENIED_CODES or status == 403:
        return f"access denied ({code})"
    if code in _MISSING_CODES:
        return f"not found ({code})"
    return f"AWS error {code}"


def http_call(
    method: str, url: str, headers: dict[str, str], body: bytes, timeout: float
) -> tuple[int, bytes]:
    import httpx

    try:
        reply = httpx.request(method, url, headers=headers, content=body, timeout=timeout)
    except httpx.HTTPError as exc:
        raise StoreError(f"{method} {url.split('?', 1)[0]}: {type(exc).__name__}") from None
    return reply.status_code, reply.content
