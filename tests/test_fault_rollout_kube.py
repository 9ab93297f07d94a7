"""Issue 12's rollout figure with Kubernetes discovery: three real proxy "pods" that find each
other through the (fake, wire-faithful) Kubernetes API; two are restarted one after the other
under load as a Deployment rollout does it (the pod stops being Ready and gets SIGTERM, starts
again, becomes Ready). At most 1 % of the 300 cached keys may be loaded again, with 0 client
errors.

The pods and the fake API come from tests/test_proxy_e2e_kube.py (mount namespaces, root);
the measurement is tests/support/chaos_rollout.py's, the same as the static-peer figure
(`make chaos` scenario 2k prints it).
"""

from __future__ import annotations

import pytest

from tests.support.chaos_figures import Report
from tests.support.chaos_rollout import measure_kube_rollout
from tests.test_proxy_e2e_kube import KubeCluster, kube_cluster  # noqa: F401 - the fixture

pytestmark = pytest.mark.slow


async def test_kubernetes_rollout_reloads_at_most_one_percent_of_the_keys(
    kube_cluster: KubeCluster,  # noqa: F811 - the imported fixture
) -> None:
    c = kube_cluster
    report = Report("rollout, kubernetes discovery", "keys=300 restarts=2")
    await measure_kube_rollout(c, report, keys=300, restarts=2, gap=1.0)
    assert not report.failed(), f"{report}\n{c.logs()[-4000:]}"
    assert report.value("keys loaded once before the rollout") == 300, str(report)
    assert int(report.value("keys loaded again during the rollout")) <= 3, str(report)
    assert int(report.value("requests sent")) > 300, str(report)
    print(report)
