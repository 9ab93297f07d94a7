"""The built wheel, installed into a fresh virtualenv as a user would: import names under
``tokencache`` only (no top-level ``plugin`` or ``proxy`` to collide with other packages), and a
plugin-only install pulls no server stack.

Needs PyPI (pip fetches the build backend and the plugin's dependencies), like ``make install``.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import venv
import zipfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SERVER_STACK = ("aiohttp", "kubernetes", "opentelemetry-sdk", "uvloop", "httptools", "boto3")

pytestmark = pytest.mark.slow


def _run(*args: str | Path, cwd: Path | None = None) -> str:
    # Without PYTHONPATH: set to a checkout (as when the tests run from a worktree), it made the
    # fresh venv import the checkout's top-level plugin/ and proxy/ folders.
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME")}
    done = subprocess.run(
        [str(a) for a in args],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
        stdin=subprocess.DEVNULL,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    return done.stdout


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    # Build from a copy, so the checkout gets no build/ or egg-info droppings.
    src = tmp_path_factory.mktemp("src")
    for name in ("pyproject.toml", "README.md"):
        shutil.copy2(REPO / name, src / name)
    for name in ("tokencache", "plugin", "proxy"):
        shutil.copytree(
            REPO / name, src / name, symlinks=True, ignore=shutil.ignore_patterns("__pycache__")
        )
    out = tmp_path_factory.mktemp("dist")
    _run(sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps", "-w", out, src)
    (built,) = out.glob("tokencache-*.whl")
    return built


def test_the_wheel_installs_only_the_tokencache_package(wheel: Path) -> None:
    names = zipfile.ZipFile(wheel).namelist()
    top = {n.split("/", 1)[0] for n in names}
    assert top == {"tokencache", next(t for t in top if t.endswith(".dist-info"))}, top
    assert "tokencache/plugin/__init__.py" in names
    assert "tokencache/proxy/__main__.py" in names
    assert "tokencache/proxy/demo.py" in names
    assert not any(n.startswith("tests/") or "/tests/" in n for n in names)
    entry_points = next(n for n in names if n.endswith("entry_points.txt"))
    text = zipfile.ZipFile(wheel).read(entry_points).decode()
    assert "tokencache-proxy = tokencache.proxy.__main__:main" in text


def test_a_plugin_only_install_pulls_no_server_stack(wheel: Path, tmp_path: Path) -> None:
    env_dir = tmp_path / "venv"
    venv.create(env_dir, with_pip=True)
    py = env_dir / "bin" / "python"
    _run(py, "-m", "pip", "install", "--quiet", "--disable-pip-version-check", f"{wheel}[plugin]")
    listing = json.loads(_run(py, "-m", "pip", "list", "--format=json"))
    installed = {package["name"].lower() for package in listing}
    assert not installed & set(SERVER_STACK), installed & set(SERVER_STACK)
    assert {"authlib", "httpx", "tokencache"} <= installed
    site = _run(py, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])").strip()
    assert not (Path(site) / "plugin").exists()
    assert not (Path(site) / "proxy").exists()
    # Outside the checkout: the installed names are the only ones.
    script = (
        "import tokencache, tokencache.plugin\n"
        "assert tokencache.plugin.ClientCredentialsAuth\n"
        "for name in ('plugin', 'proxy'):\n"
        "    try:\n"
        "        __import__(name)\n"
        "    except ModuleNotFoundError:\n"
        "        pass\n"
        "    else:\n"
        "        raise SystemExit(f'top-level {name} importable')\n"
        "print('ok')\n"
    )
    assert _run(py, "-c", script, cwd=tmp_path).strip() == "ok"
