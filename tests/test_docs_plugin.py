"""docs/plugin.md and the README stay true to the code: a section per client library and per
client-authentication method, install lines naming only extras pyproject.toml has, and links that
stay inside the repository."""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

from tokencache import plugin

REPO = Path(__file__).resolve().parents[1]
PLUGIN_MD = (REPO / "docs" / "plugin.md").read_text()
README = (REPO / "README.md").read_text()


def _headings(text: str) -> list[str]:
    return [line.lstrip("#").strip() for line in text.splitlines() if line.startswith("#")]


def test_a_section_per_client_library_and_per_client_auth_method() -> None:
    headings = _headings(PLUGIN_MD)
    for library in ("httpx, async", "httpx, sync", "httpx2", "requests", "aiohttp"):
        assert any(h.startswith(library) for h in headings), library
    for method in plugin.AUTH_METHODS:
        section = next(h for h in headings if h.startswith(f"`{method}`"))
        body = PLUGIN_MD.split(f"### {section}\n", 1)[1].split("\n### ", 1)[0]
        assert "```python" in body, f"{method}: no example"
        if method not in ("client_secret_basic",):
            assert f'auth_method="{method}"' in body, method


def test_install_lines_name_only_existing_extras() -> None:
    extras = set(
        tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["optional-dependencies"]
    )
    used: set[str] = set()
    for text in (README, PLUGIN_MD):
        for group in re.findall(r"pip install '\.\[([^\]]+)\]'", text):
            used.update(e.strip() for e in group.split(","))
    assert used, "no install line with an extra"
    assert used <= extras, used - extras
    assert {"requests", "aiohttp", "httpx2"} <= used


def test_plugin_doc_links_stay_inside_the_repository() -> None:
    for path in (REPO / "docs" / "plugin.md",):
        for target in re.findall(r"\]\(([^)]+)\)", path.read_text()):
            assert not re.match(r"[a-z]+:", target), f"{path.name}: external link {target}"
            file_part = target.split("#", 1)[0]
            if file_part:
                assert (path.parent / file_part).exists(), f"{path.name}: {target}"
