"""The node agent installed with its Helm chart (`charts/agent`) instead of by vpnctl.

A lab of its own (the module's `lab_run`): the user sets the Tunnel's spec.agent.install
to false, reads the chart's values from the service cluster the way the chart's
values.yaml tells them to, and `helm install`s the chart into the tenant cluster, taking
over the objects vpnctl had installed. Every node stays reachable through the tunnel,
and a node that joins afterwards gets its certificate and its own tls-crypt-v2 key
through the CSR flow, with no agent object of vpnctl's left in the tenant.
"""

from __future__ import annotations

import asyncio
import base64
import ipaddress
import json
import re
import subprocess
from pathlib import Path
from typing import Any

import pytest

from vpnctl.lab import lab_objects as lo
from vpnctl.lab.lab_state import IMAGES_RECORD, Lab
from vpnctl.lab.system import add_machine, replace_node
from vpnctl.reconcile.names import NODE_AGENT_NAME
from vpnctl.testenv import ensure_binaries
from vpnctl.testenv.procs import netns_argv

from .conftest import LabRun, kubelet_ok
from .test_lab import AGENT_NAMESPACE, agent_pods, kubectl, until

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(300)]

CHART = Path(__file__).resolve().parents[2] / "charts" / "agent"
RELEASE = "vpnctl-agent"


def _service_json(lab: Lab, *args: str) -> dict[str, Any]:
    got = kubectl(lab, "get", *args, "-n", lo.CLUSTER_NAMESPACE, "-o", "json", cluster="service")
    assert got.returncode == 0, got.stderr
    result: dict[str, Any] = json.loads(got.stdout)
    return result


def chart_values(lab: Lab) -> dict[str, Any]:
    """The chart's required values, read from the service cluster as charts/agent's
    values.yaml says: the CA Secret, CAPI's kubeconfig Secret, the server's Service and
    the Tunnel; the image is the controller's agent image."""
    name = lo.CLUSTER_NAME
    ca = _service_json(lab, "secret", f"{name}-vpn-ca")["data"]["tls.crt"]  # not tls.key
    kubeconfig = base64.b64decode(
        _service_json(lab, "secret", f"{name}-kubeconfig")["data"]["value"]
    )
    server = re.search(rb"server:\s*(\S+)", kubeconfig)
    assert server is not None, "CAPI's kubeconfig names the apiserver"
    service = _service_json(lab, "service", f"{name}-vpn")
    port = service["spec"]["ports"][0]
    # The lab exposes the server as a NodePort on the service node, the address the lab
    # gives vpnctl as --node-port-address; a LoadBalancer would name its ingress.
    assert service["spec"]["type"] == "NodePort", service["spec"]
    remotes = [{"host": str(lab.plan.server_ip), "port": port["nodePort"]}]
    tunnel = _service_json(lab, "tunnel", name)["spec"]
    first_host = next(ipaddress.ip_network(tunnel["tunnelCIDR"]).hosts())
    image = str(json.loads((lab.state / IMAGES_RECORD).read_text())["vpnctl"]["ref"])
    repository, tag = image.rsplit(":", 1)
    return {
        "clusterName": name,
        "image": {"repository": repository, "tag": tag, "pullPolicy": "Never"},
        "caCert": base64.b64decode(ca).decode(),
        "apiServer": server.group(1).decode(),
        "server": {
            "protocol": port["protocol"].lower(),
            "remotes": remotes,
            "tunnelIP": str(first_host),
            "renegotiateSeconds": tunnel["transport"]["renegotiateSeconds"],
        },
    }


def helm(lab: Lab, *args: str) -> subprocess.CompletedProcess[str]:
    """helm against the tenant cluster, as its admin, from inside the lab."""
    binary = ensure_binaries().helm
    argv = netns_argv(
        lab.plan.api_ns, [str(binary), "--kubeconfig", str(lab.tenant_kubeconfig), *args]
    )
    return subprocess.run(argv, capture_output=True, text=True, timeout=180, check=False)


def daemonset_rolled_out(lab: Lab) -> bool:
    got = kubectl(lab, "get", "daemonset", "-n", AGENT_NAMESPACE, NODE_AGENT_NAME, "-o", "json")
    if got.returncode != 0:
        return False
    ds = json.loads(got.stdout)
    status, want = ds.get("status") or {}, (ds.get("status") or {}).get("desiredNumberScheduled")
    return (
        bool(want)
        and status.get("observedGeneration") == ds["metadata"]["generation"]
        and status.get("updatedNumberScheduled") == want
        and status.get("numberReady") == want
    )


def test_the_agent_chart_takes_over_and_a_new_node_joins_through_it(
    lab_run: LabRun, tmp_path: Path
) -> None:
    lab = lab_run.lab
    values = tmp_path / "values.yaml"
    values.write_text(json.dumps(chart_values(lab), indent=2))  # JSON is YAML

    # 1. vpnctl stops installing the agent; what it installed stays until the chart
    # takes it over.
    off = kubectl(lab, "patch", "tunnel", lo.CLUSTER_NAME, "-n", lo.CLUSTER_NAMESPACE,
                  "--type=merge", "-p", '{"spec":{"agent":{"install":false}}}',
                  cluster="service")  # fmt: skip
    assert off.returncode == 0, off.stderr

    def disabled() -> bool:
        tunnel = _service_json(lab, "tunnel", lo.CLUSTER_NAME)
        return any(
            c["type"] == "AgentInstalled" and c["reason"] == "Disabled"
            for c in (tunnel.get("status") or {}).get("conditions") or []
        )

    assert until(disabled, timeout=30, every=0.5) is not None

    # 2. helm install into the existing namespace, taking ownership of vpnctl's objects.
    installed = helm(lab, "install", RELEASE, str(CHART), "-n", AGENT_NAMESPACE, "-f",
                     str(values), "--take-ownership", "--wait", "--timeout", "120s")  # fmt: skip
    assert installed.returncode == 0, installed.stderr + installed.stdout
    ds = json.loads(
        kubectl(
            lab, "get", "daemonset", "-n", AGENT_NAMESPACE, NODE_AGENT_NAME, "-o", "json"
        ).stdout
    )
    labels = ds["metadata"]["labels"]
    assert labels.get("app.kubernetes.io/managed-by") == "Helm", labels
    took = until(lambda: daemonset_rolled_out(lab), timeout=120, every=0.5)
    assert took is not None
    back = until(lambda: all(kubelet_ok(lab, n.name) for n in lab.plan.nodes), timeout=60)
    print(f"\nhelm install of charts/agent: rolled out in {took:.1f}s, every node reachable "
          f"{back if back is None else round(back, 1)}s later")  # fmt: skip
    assert back is not None, {n.name: kubelet_ok(lab, n.name) for n in lab.plan.nodes}

    # 3. A new machine for node-3: its disk is new, so the chart's agent pod there makes
    # its own key and gets certificate and tls-crypt-v2 key through vpnctl's CSR flow.
    node = lab.plan.node("node-3")
    gone = kubectl(lab, "delete", "machine", "-n", lo.CLUSTER_NAMESPACE, lo.machine_name(node),
                   "--wait=false", cluster="service")  # fmt: skip
    assert gone.returncode == 0, gone.stderr
    asyncio.run(replace_node(lab, node))
    asyncio.run(add_machine(lab, node, generation=2))
    joined = until(lambda: kubelet_ok(lab, node.name, timeout=1.0), timeout=120, every=0.5)
    print(f"a new node-3 under the chart's agent: reachable {joined and round(joined, 1)}s "
          "after its Machine")  # fmt: skip
    assert joined is not None
    assert (lab.agent_state_dir(node) / "node.key").exists(), "the node made its own key"
    (pod,) = agent_pods(lab, node.name)
    owner = pod["metadata"]["ownerReferences"][0]
    assert owner["uid"] == ds["metadata"]["uid"], "the chart's DaemonSet runs it"
    # vpnctl did not take the DaemonSet back meanwhile.
    now = json.loads(
        kubectl(
            lab, "get", "daemonset", "-n", AGENT_NAMESPACE, NODE_AGENT_NAME, "-o", "json"
        ).stdout
    )
    assert now["metadata"]["labels"].get("app.kubernetes.io/managed-by") == "Helm"
