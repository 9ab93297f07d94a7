"""plugin's public surface: sorted ``__all__``, every name exported exists and has a docstring."""

from __future__ import annotations

import importlib
import re

import pytest

_PUBLIC_MODULES = [
    "tokencache.plugin",
    "tokencache.plugin.aiohttp",
    "tokencache.plugin.httpx2",
    "tokencache.plugin.requests",
]


@pytest.mark.parametrize("module_name", _PUBLIC_MODULES)
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


# A reference in a docstring (``x.y``, :mod:`x.y`, :class:`x.y`) to the plugin's own names.
_REFERENCE = re.compile(r"(?::\w+:`|``)((?:tokencache\.)?plugin(?:\.\w+)*)(?:`|``)")


@pytest.mark.parametrize("module_name", _PUBLIC_MODULES)
def test_public_docstrings_name_installed_public_objects(module_name: str) -> None:
    # The package docstring named plugin.httpx2 and plugin._errors: import names the install
    # does not have (tokencache.plugin.*), one of them private.
    doc = importlib.import_module(module_name).__doc__ or ""
    names = _REFERENCE.findall(doc)
    assert names, "no reference found: the pattern is stale"
    for name in names:
        assert name.startswith("tokencache.plugin"), f"{name} is not an installed import name"
        assert not any(part.startswith("_") for part in name.split(".")), f"{name} is private"
        parts = name.split(".")
        obj: object = None
        for i in range(len(parts), 0, -1):  # the longest importable prefix, then attributes
            try:
                obj = importlib.import_module(".".join(parts[:i]))
            except ImportError:
                continue
            for attr in parts[i:]:
                obj = getattr(obj, attr)
            break
        assert obj is not None, f"{name} does not resolve"
