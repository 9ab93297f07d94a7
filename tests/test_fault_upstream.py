"""Scenario 4: backend and token-server faults against a real proxy, backend and OAuth2 server."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.support.chaos_upstream import backend_faults, token_faults

pytestmark = pytest.mark.slow


async def test_backend_faults_give_stale_or_clear_gateway_errors(tmp_path: Path) -> None:
    report = await backend_faults(tmp_path, stale_requests=10)
    assert not report.failed(), str(report)


async def test_token_server_faults_are_bounded_by_cooldown_not_request_rate(
    tmp_path: Path,
) -> None:
    report = await token_faults(tmp_path, duration=3.0, max_requests=300)
    assert not report.failed(), str(report)
    assert report.value("503: client requests") > 30, str(report)
