"""Secret references to AWS Secrets Manager, Parameter Store and files: parsing and the error.

The forms and the parse rule for the optional JSON field are described in `proxy._secrets`; this
module holds the pure part (no I/O), so the resolver module stays about fetching.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Literal

from tokencache.proxy._errors import ConfigError

__all__ = ["ReferenceKind", "SecretReference", "SecretReferenceError", "parse_reference"]

ReferenceKind = Literal["aws-secretsmanager", "aws-parameterstore", "file"]

_SECRETS_MANAGER: ReferenceKind = "aws-secretsmanager"
_PARAMETER_STORE: ReferenceKind = "aws-parameterstore"
_FILE: ReferenceKind = "file"
# Colon-separated segments of an ARN: arn:aws:secretsmanager:region:account:secret:name-AbCdEf
# and arn:aws:ssm:region:account:parameter/name.
_ARN_SEGMENTS = {_SECRETS_MANAGER: 7, _PARAMETER_STORE: 6}
# us-east-1, eu-central-2, us-gov-west-1, cn-north-1: strict, so a forgotten region
# ("aws-secretsmanager:db:password") is a loud parse error rather than a lookup in region "db".
_REGION = re.compile(r"[a-z]{2}(-[a-z]+)+-[0-9]+")


class SecretReferenceError(ConfigError):
    """A configuration value is a secret reference that could not be resolved.

    The message names the variable, the reference kind and why; never the secret's value.
    """

    def __init__(self, variable: str, kind: str, reason: str) -> None:
        super().__init__(f"{variable}: cannot resolve {kind} reference: {reason}")
        self.variable = variable
        self.kind = kind
        self.reason = reason


@dataclass(frozen=True, slots=True)
class SecretReference:
    """A parsed reference: where the secret lives, and which JSON field of it to take (if any)."""

    kind: ReferenceKind
    locator: str  # secret name/ARN, parameter name/ARN, or file path
    region: str | None = None
    field: str | None = None

    def describe(self) -> str:
        """The reference in words for error messages (names where the secret is, not what it is)."""
        where = self.locator if self.region is None else f"{self.region}:{self.locator}"
        return where if self.field is None else f"{where} field {self.field!r}"


def parse_reference(variable: str, value: str) -> SecretReference | None:
    """Parse ``value``; None when it is a literal. Raises SecretReferenceError when malformed."""
    if value.startswith("file:"):
        path = value[len("file:") :]
        if not path:
            raise SecretReferenceError(variable, _FILE, "malformed reference: expected file:<path>")
        return SecretReference(_FILE, path)
    for kind in (_SECRETS_MANAGER, _PARAMETER_STORE):
        if value.startswith(kind + ":"):
            return _parse_aws(variable, kind, value[len(kind) + 1 :])
    return None


def _parse_aws(variable: str, kind: ReferenceKind, rest: str) -> SecretReference:
    def malformed(why: str) -> SecretReferenceError:
        usage = f"{kind}:<region>:<name or ARN>[:<json field>]"
        return SecretReferenceError(
            variable, kind, f"malformed reference ({why}): expected {usage}"
        )

    region, sep, rest = rest.partition(":")
    if not sep or not _REGION.fullmatch(region):
        raise malformed("no valid region")
    parts = rest.split(":")
    n = _ARN_SEGMENTS[kind] if parts[0] == "arn" else 1
    if len(parts) < n or not all(parts[:n]):
        raise malformed("incomplete ARN" if n > 1 else "no name")
    locator = ":".join(parts[:n])
    field = ":".join(parts[n:]) if len(parts) > n else None
    if field == "":
        raise malformed("empty json field")
    if n > 1 and parts[3] != region:
        raise malformed(f"ARN region {parts[3]} differs from {region}")
    return SecretReference(kind, locator, region, field)
