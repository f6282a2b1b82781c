"""The tenant workloads' objects hang together: every reference (selector, Service,
Secret, ConfigMap, ServiceAccount, caBundle) points at an object of the set, the serving
certificates fit the names the apiserver checks, and the lab's checks see the same names
and shapes as with the stand-ins."""

from __future__ import annotations

import base64
import datetime
import json
import shutil
import subprocess
from collections import Counter
from pathlib import Path
from typing import Any

import pytest
import yaml
from cryptography import x509

from certs import new_ca
from vpnctl.lab import lab_objects
from vpnctl.lab.address_plan import make_plan
from vpnctl.lab.probe import check_lines
from vpnctl.lab.realnode import metrics_server_objects as ms
from vpnctl.lab.realnode import workloads as wl

NOW = datetime.datetime(2026, 1, 1, tzinfo=datetime.UTC)
NODES = ["node-1", "node-2"]
IMAGES = wl.WorkloadImages(
    busybox="localhost/vpnctl-busybox:1",
    metrics_server="localhost/vpnctl-metrics-server:1",
    vpnctl="localhost/vpnctl:1",
)
CA = new_ca(common_name="tenant-workloads-ca", now=NOW, lifetime=datetime.timedelta(days=365))
TLS = wl.issue_serving_tls(NODES, ca=CA, now=NOW)


def _objects(**kwargs: Any) -> list[dict[str, Any]]:
    return wl.workload_objects(NODES, images=IMAGES, tls=TLS, **kwargs)


def _key(obj: dict[str, Any]) -> tuple[str, str, str]:
    meta = obj["metadata"]
    return obj["kind"], meta.get("namespace", ""), meta["name"]


def _index() -> dict[tuple[str, str, str], dict[str, Any]]:
    return {_key(o): o for o in _objects()}


def _pods() -> list[tuple[str, dict[str, Any]]]:
    """(namespace, pod template or pod) for every pod the set makes."""
    out = []
    for obj in _objects():
        if obj["kind"] == "Pod":
            out.append((obj["metadata"]["namespace"], obj))
        elif obj["kind"] == "Deployment":
            out.append((obj["metadata"]["namespace"], obj["spec"]["template"]))
    return out


def test_every_object_is_plain_data_with_a_unique_name() -> None:
    objects = _objects()
    # JSON and YAML round trips: only dicts, lists, str, int, bool.
    assert json.loads(json.dumps(objects)) == objects
    assert yaml.safe_load(yaml.safe_dump(wl.as_list(objects)))["items"] == objects
    keys = [_key(o) for o in objects]
    assert len(keys) == len(set(keys))
    for obj in objects:
        assert obj["apiVersion"], obj
        assert obj["kind"], obj
    assert objects[0] == {
        "apiVersion": "v1",
        "kind": "Namespace",
        "metadata": {"name": lab_objects.WORKLOAD_NAMESPACE},
    }
    kinds = Counter(o["kind"] for o in objects)
    assert kinds["Pod"] == 3 * len(NODES)  # logs, web and webhook per node
    assert kinds["ValidatingWebhookConfiguration"] == len(NODES)
    assert kinds["APIService"] == kinds["Deployment"] == 1


def test_services_select_exactly_their_pods_on_a_named_port() -> None:
    pods = _pods()
    for obj in _objects():
        if obj["kind"] != "Service":
            continue
        ns, selector = obj["metadata"]["namespace"], obj["spec"]["selector"]
        chosen = [
            p
            for pns, p in pods
            if pns == ns and selector.items() <= p["metadata"]["labels"].items()
        ]
        assert len(chosen) == 1, obj["metadata"]["name"]
        port_names = {
            port["name"] for c in chosen[0]["spec"]["containers"] for port in c.get("ports", [])
        }
        for port in obj["spec"]["ports"]:
            assert port["targetPort"] in port_names


def test_deployment_selector_matches_its_template() -> None:
    (deployment,) = [o for o in _objects() if o["kind"] == "Deployment"]
    selector = deployment["spec"]["selector"]["matchLabels"]
    assert selector.items() <= deployment["spec"]["template"]["metadata"]["labels"].items()
    assert deployment["spec"]["replicas"] == 1
    spec = deployment["spec"]["template"]["spec"]
    assert not spec.get("hostNetwork")
    sa = ("ServiceAccount", deployment["metadata"]["namespace"], spec["serviceAccountName"])
    assert sa in _index()


def test_volumes_refer_to_objects_of_the_set() -> None:
    index = _index()
    for ns, pod in _pods():
        mounts = {m["name"] for c in pod["spec"]["containers"] for m in c.get("volumeMounts", [])}
        volumes = {v["name"]: v for v in pod["spec"].get("volumes", [])}
        assert mounts == set(volumes), pod["metadata"]
        for volume in volumes.values():
            if "secret" in volume:
                assert ("Secret", ns, volume["secret"]["secretName"]) in index
            if "configMap" in volume:
                cm = index["ConfigMap", ns, volume["configMap"]["name"]]
                assert cm["data"][wl.WEBHOOK_SCRIPT] == wl.admission_server_source()


def test_every_pod_runs_a_local_image_pinned_where_asked() -> None:
    local = {IMAGES.busybox, IMAGES.metrics_server, IMAGES.vpnctl}
    for _, pod in _pods():
        for c in pod["spec"]["containers"]:
            assert c["image"] in local
            assert c["imagePullPolicy"] == "Never"
    by_node = Counter(
        p["spec"]["nodeSelector"]["kubernetes.io/hostname"]
        for _, p in _pods()
        if "nodeSelector" in p["spec"]
    )
    assert by_node == dict.fromkeys(NODES, 3)


def test_webhook_pod_runs_the_shipped_program_with_its_certificate() -> None:
    index = _index()
    ns = lab_objects.WORKLOAD_NAMESPACE
    for node in NODES:
        pod = index["Pod", ns, wl.webhook_name(node)]
        (c,) = pod["spec"]["containers"]
        assert c["image"] == IMAGES.vpnctl
        assert c["command"][:2] == ["python3", f"/webhook/{wl.WEBHOOK_SCRIPT}"]
        assert c["securityContext"]["runAsUser"] == wl.VPNCTL_UID
        secret = index["Secret", ns, f"{wl.webhook_name(node)}-tls"]
        cert = x509.load_pem_x509_certificate(base64.b64decode(secret["data"]["tls.crt"]))
        names = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        assert wl.webhook_dns_name(node) in names.get_values_for_type(x509.DNSName)
        issuer = x509.load_pem_x509_certificate(CA.cert_pem)
        cert.verify_directly_issued_by(issuer)


def test_webhook_configuration_targets_its_service_and_reviews_only_its_node() -> None:
    index = _index()
    plan = make_plan(prefix="vt1", nodes=2)
    for node_plan in plan.nodes:
        node = node_plan.name
        vwc = wl.validating_webhook(node, ca_pem=TLS.ca_pem)
        assert index["ValidatingWebhookConfiguration", "", vwc["metadata"]["name"]] == vwc
        review = wl.review_object(node, name="cm", deny=True)
        assert review["metadata"]["labels"] == {
            lab_objects.WEBHOOK_LABEL: node,
            "vpnctl.io/deny": "true",
        }
        assert wl.webhook_dns_name(node) == f"webhook-{node}.lab.svc"
        (hook,) = vwc["webhooks"]
        assert hook["objectSelector"] == {"matchLabels": {lab_objects.WEBHOOK_LABEL: node}}
        assert hook["failurePolicy"] == "Fail"
        ref = hook["clientConfig"]["service"]
        service = index["Service", ref["namespace"], ref["name"]]
        assert ref["port"] in [p["port"] for p in service["spec"]["ports"]]
        assert base64.b64decode(hook["clientConfig"]["caBundle"]) == CA.cert_pem


def test_metrics_server_flags_rbac_and_apiservice() -> None:
    index = _index()
    deployment = index["Deployment", ms.METRICS_NAMESPACE, ms.METRICS_SERVER]
    (c,) = deployment["spec"]["template"]["spec"]["containers"]
    args = c["args"]
    for flag in (
        "--kubelet-preferred-address-types=InternalIP",
        f"--kubelet-certificate-authority={ms.SERVICE_ACCOUNT_CA}",
        "--metric-resolution=15s",
        f"--secure-port={ms.METRICS_PORT}",
    ):
        assert flag in args
    assert c["ports"][0]["containerPort"] == ms.METRICS_PORT

    api = index["APIService", "", ms.METRICS_APISERVICE]
    assert api["metadata"]["name"] == f"{api['spec']['version']}.{api['spec']['group']}"
    ref = api["spec"]["service"]
    service = index["Service", ref["namespace"], ref["name"]]
    assert ref["port"] in [p["port"] for p in service["spec"]["ports"]]
    assert base64.b64decode(api["spec"]["caBundle"]) == CA.cert_pem
    secret = index["Secret", ms.METRICS_NAMESPACE, f"{ms.METRICS_SERVER}-tls"]
    cert = x509.load_pem_x509_certificate(base64.b64decode(secret["data"]["tls.crt"]))
    names = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert "metrics-server.kube-system.svc" in names.get_values_for_type(x509.DNSName)

    roles = {
        o["metadata"]["name"]: o for o in _objects() if o["kind"] in ("ClusterRole", "Role")
    }
    bound = set()
    for obj in _objects():
        if obj["kind"] not in ("ClusterRoleBinding", "RoleBinding"):
            continue
        (subject,) = obj["subjects"]
        assert ("ServiceAccount", subject["namespace"], subject["name"]) in index
        bound.add(obj["roleRef"]["name"])
        if obj["roleRef"]["name"] in roles:
            assert obj["roleRef"]["kind"] == "ClusterRole"
    # ours plus the built-in delegation roles an aggregated API server needs
    assert bound == {
        "vpnctl:metrics-server",
        "system:auth-delegator",
        "extension-apiserver-authentication-reader",
    }
    rules = roles["vpnctl:metrics-server"]["rules"]
    assert {"apiGroups": [""], "resources": ["nodes/metrics"], "verbs": ["get"]} in rules


def test_a_missing_certificate_or_a_bad_node_name_is_refused() -> None:
    with pytest.raises(ValueError, match="no serving certificate"):
        wl.workload_objects([*NODES, "node-3"], images=IMAGES, tls=TLS)
    for bad in (["Node_1"], ["node-1", "node-1"], ["a'b"]):
        with pytest.raises(ValueError, match="node names"):
            wl.workload_objects(bad, images=IMAGES, tls=TLS)
    assert "key" not in repr(TLS)


@pytest.mark.skipif(shutil.which("busybox") is None, reason="busybox-static not installed")
def test_log_pod_prints_log_lines_in_order(tmp_path: Path) -> None:
    pod = wl.log_pod("node-1", image=IMAGES.busybox, lines=1234)
    c, ticker = pod["spec"]["containers"]
    assert ticker["name"] == wl.TICKER_CONTAINER
    assert c["name"] == lab_objects.LOG_CONTAINER
    # the pod's shell command with busybox's sh and awk (as in the image), minus the sleep
    busybox = shutil.which("busybox")
    assert busybox is not None
    (tmp_path / "awk").symlink_to(busybox)
    script = c["command"][2].replace("&& exec sleep 2147483647", "")
    out = subprocess.run(
        [busybox, "sh", "-c", script],
        capture_output=True,
        check=True,
        timeout=30,
        env={"PATH": str(tmp_path)},
    ).stdout
    assert check_lines(out, 1234) is None
    lines = out.decode().splitlines()
    pod_name = wl.log_pod_name("node-1")
    assert lines[0] == wl.log_line("node-1", pod_name, 0)
    assert lines[-1] == wl.log_line("node-1", pod_name, 1233)


@pytest.mark.skipif(shutil.which("busybox") is None, reason="busybox-static not installed")
def test_the_web_pods_attach_container_answers_each_line_of_its_stdin() -> None:
    pod = wl.web_pod("node-1", image=IMAGES.busybox)
    main, echo = pod["spec"]["containers"]
    assert main["name"] == "main"
    assert echo["name"] == wl.ATTACH_CONTAINER
    assert echo["stdin"] is True
    busybox = shutil.which("busybox")
    assert busybox is not None
    out = subprocess.run(
        [busybox, "sh", "-c", echo["command"][2]],
        input=b"hello\nthrough the tunnel\n",
        capture_output=True,
        check=True,
        timeout=30,
    ).stdout
    assert out == b"got hello\ngot through the tunnel\n"


@pytest.mark.skipif(shutil.which("busybox") is None, reason="busybox-static not installed")
def test_the_log_pods_ticker_prints_numbered_lines_for_ever() -> None:
    pod = wl.log_pod("node-2", image=IMAGES.busybox)
    ticker = pod["spec"]["containers"][1]
    busybox = shutil.which("busybox")
    assert busybox is not None
    proc = subprocess.Popen([busybox, "sh", "-c", ticker["command"][2]], stdout=subprocess.PIPE)
    try:
        assert proc.stdout is not None
        got = [proc.stdout.readline().decode().rstrip("\n") for _ in range(2)]
    finally:
        proc.kill()
        proc.wait()
    pod_name = wl.log_pod_name("node-2")
    assert got == [wl.log_line("node-2", pod_name, 0), wl.log_line("node-2", pod_name, 1)]
