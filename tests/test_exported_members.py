"""Every public package exports exactly its documented names, sorted, each with a docstring."""

from __future__ import annotations

import importlib

import pytest


@pytest.mark.parametrize(
    "name", ["tokencache", "tokencache.plugin", "tokencache.proxy", "tokencache.discovery"]
)
def test_all_is_sorted_and_complete(name: str) -> None:
    module = importlib.import_module(name)
    exported = module.__all__
    assert exported == sorted(exported)
    public = {n for n in vars(module) if not n.startswith("_")}
    for member in exported:
        assert member in public, member
        obj = getattr(module, member)
        if callable(obj) or isinstance(obj, type):
            assert (obj.__doc__ or "").strip(), f"{name}.{member} has no docstring"
