"""plugin's public surface: sorted ``__all__``, every name exported exists and has a docstring."""

from __future__ import annotations

import importlib

import pytest


@pytest.mark.parametrize(
    "module_name",
    [
        "tokencache.plugin",
        "tokencache.plugin.aiohttp",
        "tokencache.plugin.httpx2",
        "tokencache.plugin.requests",
    ],
)
def test_all_is_sorted_and_documented(module_name: str) -> None:
    module = importlib.import_module(module_name)
    names = module.__all__
    assert names == sorted(names)
    for name in names:
        value = getattr(module, name)
        if callable(value):
            assert value.__doc__, f"{module_name}.{name} has no docstring"


def test_httpx_path_does_not_import_httpx2_modules_of_the_plugin() -> None:
    from tokencache.plugin import _auth, _httpx_sender

    for module in (_auth, _httpx_sender):
        assert "httpx2" not in vars(module)
