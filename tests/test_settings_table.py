"""The settings table of docs/proxy.md is the code's, and every kubecache setting in it holds.

Each row that names a kubecache default is checked against the code: that default is accepted
(or refused with one line naming the variable, where the table says it is), and a default or
meaning that differs from kubecache's is marked as a difference with its reason.
"""

from __future__ import annotations

import re

import pytest

from scripts import settings_table
from tokencache.proxy import ConfigError, Settings

BASE = {"BACKEND_URL": "http://backend:9000"}
KUBE_ROWS = [row for row in Settings.kubecache_rows() if row[3] is not None]
SETTING_NAMES = {name for name, *_ in Settings.help_rows()}
# Values kubecache accepted that the proxy refuses at start (the table says so and why).
REFUSED = {"EMF_SEND_LOGS": "true", "BACKEND_TIMEOUT": "0"}


def test_doc_table_is_generated_from_the_code() -> None:
    doc = settings_table.DOC.read_text()
    assert settings_table.render(doc) == doc, "run python -m scripts.settings_table"


def test_every_setting_has_a_row() -> None:
    names = [name for name, *_ in Settings.kubecache_rows()]
    assert set(names) >= SETTING_NAMES
    assert len(names) == len(set(names))


def _normal(text: str) -> str:
    return re.sub(r"[\s\"']", "", text)


@pytest.mark.parametrize("row", KUBE_ROWS, ids=[r[0] for r in KUBE_ROWS])
def test_kubecache_row_holds(row: tuple[str, str, str, str | None, str | None]) -> None:
    name, default, _, kube_default, diff = row
    assert kube_default is not None
    if name not in SETTING_NAMES:  # OTEL_* rows: read by the tracing set-up, tested there
        return
    differs = _normal(default) != _normal(kube_default)
    if differs and "..." not in kube_default:
        assert diff, f"{name}: default {default!r} differs from kubecache's {kube_default!r}"
    if kube_default and "..." not in kube_default and name != "BACKEND_URL":
        # kubecache's own default is accepted as a value here
        Settings.from_env({**BASE, name: kube_default})
    if name in REFUSED:
        assert diff
        with pytest.raises(ConfigError) as info:
            Settings.from_env({**BASE, name: REFUSED[name]})
        assert str(info.value).startswith(f"{name}: ") and "\n" not in str(info.value)


def test_table_marks_differences() -> None:
    text = settings_table.table()
    assert "| `DEBUG_LOG` | `false` |" in text and "**differs**" in text
    assert "| `READY_PATH` |" in text and "tokencache only" in text


def test_backend_url_row_says_its_path_now_counts() -> None:
    # kubecache's parseKey kept only BACKEND_URL's scheme and host; here a path is a prefix
    # (proxy._target.backend_url), so a kubecache BACKEND_URL with a path changes every URL.
    row = next(r for r in Settings.kubecache_rows() if r[0] == "BACKEND_URL")
    assert row[4] and "path" in row[4] and "scheme and host" in row[4]
