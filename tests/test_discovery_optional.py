"""`kubernetes` is an optional extra: the engine, discovery's pure parts, the plugin and the proxy
import without it, and asking for Kubernetes discovery says what to install.

A child interpreter whose import system refuses ``kubernetes`` stands in for an install without
the extra (the test environment has it, so it cannot simply be absent here).
"""

from __future__ import annotations

import subprocess
import sys
import textwrap

from tests.support.proxy_cluster import REPO, base_env

_CHILD = textwrap.dedent(
    """
    import importlib.abc, sys

    class NoKubernetes(importlib.abc.MetaPathFinder):
        def find_spec(self, name, path=None, target=None):
            if name == "kubernetes" or name.startswith("kubernetes."):
                raise ImportError(f"No module named {name!r} (blocked by the test)")
            return None

    sys.meta_path.insert(0, NoKubernetes())
    import tokencache, tokencache.discovery, plugin, proxy
    from tokencache.discovery import DiscoveryConfigError, KubernetesPeerSource
    try:
        KubernetesPeerSource(lambda peers: None, label_selector="app=x", peer_port=5000,
                             namespace="default")
    except DiscoveryConfigError as exc:
        print("refused:", exc)
    assert not any(m == "kubernetes" or m.startswith("kubernetes.") for m in sys.modules)
    print("imported without kubernetes")
    """
)


def test_everything_imports_without_the_kubernetes_client() -> None:
    done = subprocess.run(
        [sys.executable, "-c", _CHILD],
        cwd=REPO,
        env=base_env(),
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    assert "imported without kubernetes" in done.stdout
    assert "refused: kubernetes discovery needs the kubernetes client" in done.stdout
    assert "tokencache[kubernetes]" in done.stdout
