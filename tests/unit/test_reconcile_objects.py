"""Desired Kubernetes objects and the write decision (objects, tenant_objects, names, diff)."""

from __future__ import annotations

import base64
import copy
import json
from typing import Any

import pytest

from tests.support import capi
from vpnctl.reconcile.agent_objects import agent_daemon_set, tenant_objects
from vpnctl.reconcile.agentdocs import (
    ServerPaths,
    apiserver_role_config,
    node_role_config,
    server_desired_state,
    server_role_config,
)
from vpnctl.reconcile.diff import contains, needs_update, owned_fields, stamp
from vpnctl.reconcile.names import (
    CLUSTER_LABEL,
    CONFIG_HASH_ANNOTATION,
    DESIRED_HASH_ANNOTATION,
    MANAGED_BY_LABEL,
    NODE_AGENT_NAME,
    TenantNames,
    bounded_name,
    tunnel_owner_reference,
)
from vpnctl.reconcile.pod_security import OPENVPN_DROP_PRIVILEGES as DROP
from vpnctl.reconcile.service_objects import (
    apiserver_client_secret,
    apiserver_config_map,
    ca_secret,
    server_config_map,
    server_deployment,
    server_secret,
    server_service,
    tls_crypt_secret,
)
from vpnctl.reconcile.settings import Settings
from vpnctl.reconcile.sidecar_objects import (
    apiserver_sidecar,
    attach_sidecar,
)
from vpnctl.reconcile.tenant_spec import TenantSpec, parse_tenant

SETTINGS = Settings(agent_image="registry.example/vpnctl:1")
KEY = b"-----BEGIN PRIVATE KEY-----\nnot-a-real-key\n-----END PRIVATE KEY-----\n"
CERT = b"-----BEGIN CERTIFICATE-----\nnot-a-real-cert\n-----END CERTIFICATE-----\n"
CRL = b"-----BEGIN X509 CRL-----\nnot-a-real-crl\n-----END X509 CRL-----\n"


def lab(**spec: Any) -> TenantSpec:
    return capi.parsed_lab_tenant(spec)


def all_service_side(t: TenantSpec, settings: Settings = SETTINGS) -> list[dict[str, Any]]:
    role = server_role_config(tenant=t, settings=settings)
    return [
        ca_secret(tenant=t, cert_pem=CERT, key_pem=KEY),
        server_secret(tenant=t, cert_pem=CERT, key_pem=KEY, ca_pem=CERT, tls_crypt_v2_key=KEY),
        tls_crypt_secret(tenant=t, server_key=KEY),
        apiserver_client_secret(
            tenant=t, cert_pem=CERT, key_pem=KEY, ca_pem=CERT, tls_crypt_v2_client_key=KEY
        ),
        server_config_map(
            tenant=t,
            role_config=role,
            desired=server_desired_state(clients=(), apiserver_serial=None),
            crl_pem=CRL,
        ),
        apiserver_config_map(
            tenant=t,
            role_config=apiserver_role_config(
                tenant=t,
                settings=settings,
                service_name=TenantNames.for_cluster("tenant-a").service,
            ),
        ),
        server_deployment(tenant=t, settings=settings, role_config=role),
        server_service(tenant=t),
    ]


def all_tenant_side(t: TenantSpec, settings: Settings = SETTINGS) -> list[dict[str, Any]]:
    role = node_role_config(tenant=t, settings=settings, remotes=[("203.0.113.7", 1194)])
    return list(
        tenant_objects(cluster_name="tenant-a", settings=settings, role_config=role, ca_pem=CERT)
    )


# --- common metadata ---------------------------------------------------------------------------


def test_service_side_objects_are_labelled_owned_and_stamped() -> None:
    t = lab()
    for obj in all_service_side(t):
        meta = obj["metadata"]
        assert meta["namespace"] == "tenant-a", obj["kind"]
        assert meta["labels"][MANAGED_BY_LABEL] == "vpnctl"
        assert meta["labels"][CLUSTER_LABEL] == "tenant-a"
        assert meta["ownerReferences"] == [
            {
                "apiVersion": "vpnctl.io/v1alpha1",
                "kind": "Tunnel",
                "name": "tenant-a",
                "uid": "uid-tunnel-tenant-a-tenant-a",
                "controller": True,
                "blockOwnerDeletion": True,
            }
        ]
        assert DESIRED_HASH_ANNOTATION in meta["annotations"]


def test_tenant_side_objects_are_labelled_without_owner_references() -> None:
    objs = all_tenant_side(lab())
    assert [o["kind"] for o in objs] == [
        "Namespace",
        "ServiceAccount",
        "ConfigMap",
        "DaemonSet",
    ]
    for obj in objs:
        meta = obj["metadata"]
        assert meta["labels"][MANAGED_BY_LABEL] == "vpnctl"
        assert meta["labels"][CLUSTER_LABEL] == "tenant-a"
        assert "ownerReferences" not in meta
        if obj["kind"] != "Namespace":
            assert meta["namespace"] == "vpnctl-system"


def test_owner_reference_needs_a_uid() -> None:
    with pytest.raises(ValueError, match=r"no metadata\.uid"):
        tunnel_owner_reference(tunnel_name="t", tunnel_uid="")


def test_names_are_bounded_and_distinct() -> None:
    names = TenantNames.for_cluster("tenant-a")
    assert names.service == "tenant-a-vpn"
    assert names.deployment == "tenant-a-vpn-server"
    long_a, long_b = "a" * 60 + "x", "a" * 60 + "y"
    assert len(bounded_name(long_a, "vpn-apiserver-tls")) <= 63
    assert bounded_name(long_a, "vpn") != bounded_name(long_b, "vpn")
    assert bounded_name(long_a, "vpn").endswith("-vpn")
    values = [v for v in vars(TenantNames.for_cluster(long_a)).values()]
    assert all(len(v) <= 63 for v in values)


# --- determinism and the write decision -----------------------------------------------------


def test_builders_are_deterministic() -> None:
    a = json.dumps(all_service_side(lab()) + all_tenant_side(lab()), sort_keys=False)
    b = json.dumps(all_service_side(lab()) + all_tenant_side(lab()), sort_keys=False)
    assert a == b


def as_read_back(obj: dict[str, Any]) -> dict[str, Any]:
    """What the apiserver returns: our object plus defaults, server metadata and status."""
    live = copy.deepcopy(obj)
    live["metadata"].update(
        {"uid": "x", "resourceVersion": "42", "creationTimestamp": "2024-01-01T00:00:00Z"}
    )
    live["metadata"]["labels"]["someone-else"] = "theirs"
    live["status"] = {"observedGeneration": 1}
    spec = live.get("spec", {})
    template = spec.get("template", {}).get("spec")
    if template:
        template["restartPolicy"] = "Always"
        template["schedulerName"] = "default-scheduler"
        for c in template["containers"]:
            c["terminationMessagePath"] = "/dev/termination-log"
    if live["kind"] == "Service":
        spec["clusterIP"] = "10.96.0.10"
        spec["ports"][0]["nodePort"] = 31194
    if live["kind"] == "Namespace":
        live["metadata"]["labels"]["kubernetes.io/metadata.name"] = "vpnctl-system"
    return live


def test_no_update_when_nothing_changed() -> None:
    for obj in all_service_side(lab()) + all_tenant_side(lab()):
        assert not needs_update(as_read_back(obj), obj), obj["kind"]


def test_update_when_missing() -> None:
    assert needs_update(None, all_service_side(lab())[0])


def test_update_on_drift() -> None:
    ds = agent_daemon_set(
        cluster_name="tenant-a",
        settings=SETTINGS,
        role_config=node_role_config(tenant=lab(), settings=SETTINGS, remotes=[("h", 1)]),
    )
    live = as_read_back(ds)
    live["spec"]["template"]["spec"]["containers"][0]["image"] = "evil:latest"
    assert needs_update(live, ds)
    live = as_read_back(ds)
    del live["spec"]["template"]["spec"]["hostNetwork"]
    assert needs_update(live, ds)
    live = as_read_back(ds)
    live["spec"]["template"]["spec"]["volumes"].pop()
    assert needs_update(live, ds)


def test_update_when_a_field_we_set_is_removed_from_the_spec() -> None:
    """A subset check of the other fields cannot see this; the desired-hash annotation,
    compared like every field we set, does."""
    with_annotation = server_service(tenant=lab(expose={"annotations": {"lb/kind": "nlb"}}))
    without = server_service(tenant=lab())
    live = as_read_back(with_annotation)
    # Every field of the new desire but its hash is already in the live object...
    unhashed = copy.deepcopy(without)
    del unhashed["metadata"]["annotations"][DESIRED_HASH_ANNOTATION]
    assert contains(live, owned_fields(unhashed))
    assert not needs_update(live, unhashed)
    # ...so it is the hash, one of the fields compared, that asks for the update,
    assert needs_update(live, without)
    # and once the live object carries the new hash, nothing more is asked.
    live["metadata"]["annotations"][DESIRED_HASH_ANNOTATION] = without["metadata"]["annotations"][
        DESIRED_HASH_ANNOTATION
    ]
    assert not needs_update(live, without)


def test_update_when_secret_data_differs_but_no_digest_of_it_is_published() -> None:
    a = ca_secret(tenant=lab(), cert_pem=CERT, key_pem=KEY)
    b = ca_secret(tenant=lab(), cert_pem=CERT, key_pem=KEY + b"x")
    assert (
        a["metadata"]["annotations"][DESIRED_HASH_ANNOTATION]
        == b["metadata"]["annotations"][DESIRED_HASH_ANNOTATION]
    )
    assert needs_update(as_read_back(a), b)


def test_contains() -> None:
    assert contains({"a": 1, "b": 2}, {"a": 1})
    assert not contains({"a": 1}, {"a": 2})
    assert contains(None, {})
    assert contains(None, [])
    assert not contains(None, {"a": 1})
    assert not contains([1, 2], [1])
    assert contains([{"a": 1, "x": 0}], [{"a": 1}])
    assert not contains("x", {"a": 1})


def test_stamp_is_stable() -> None:
    obj = {"kind": "ConfigMap", "metadata": {"name": "x"}, "data": {"a": "1"}}
    first = stamp(copy.deepcopy(obj))
    assert stamp(copy.deepcopy(first)) == first


# --- PKI Secrets ------------------------------------------------------------------------------


def decoded(secret: dict[str, Any]) -> dict[str, bytes]:
    return {k: base64.b64decode(v) for k, v in secret["data"].items()}


def test_secrets_types_and_keys() -> None:
    t = lab()
    ca = ca_secret(tenant=t, cert_pem=CERT, key_pem=KEY)
    assert ca["type"] == "kubernetes.io/tls"
    assert decoded(ca) == {"tls.crt": CERT, "tls.key": KEY}
    server = server_secret(tenant=t, cert_pem=CERT, key_pem=KEY, ca_pem=CERT, tls_crypt_v2_key=KEY)
    assert server["type"] == "kubernetes.io/tls"
    assert set(server["data"]) == {"ca.crt", "tls.crt", "tls.key", "tls-crypt-v2-server.key"}
    tc = tls_crypt_secret(tenant=t, server_key=KEY)
    assert tc["type"] == "Opaque"
    assert list(tc["data"]) == ["tls-crypt-v2-server.key"]
    api = apiserver_client_secret(
        tenant=t, cert_pem=CERT, key_pem=KEY, ca_pem=CERT, tls_crypt_v2_client_key=KEY
    )
    assert api["type"] == "kubernetes.io/tls"
    assert set(api["data"]) == {"ca.crt", "tls.crt", "tls.key", "tls-crypt-v2-client.key"}
    assert api["metadata"]["name"] != server["metadata"]["name"]


def test_no_key_material_outside_secret_data() -> None:
    t = lab()
    for obj in all_service_side(t) + all_tenant_side(t):
        body = copy.deepcopy(obj)
        if body["kind"] == "Secret":
            body.pop("data")
        assert b"PRIVATE KEY" not in json.dumps(body).encode()
        assert base64.b64encode(KEY).decode() not in json.dumps(body)


# --- the server -------------------------------------------------------------------------------


def server_parts(
    t: TenantSpec, settings: Settings = SETTINGS
) -> tuple[dict[str, Any], dict[str, Any]]:
    deploy = server_deployment(
        tenant=t, settings=settings, role_config=server_role_config(tenant=t, settings=settings)
    )
    pod = deploy["spec"]["template"]["spec"]
    return deploy, pod


def test_server_deployment() -> None:
    deploy, pod = server_parts(lab(replicas=2))
    assert deploy["spec"]["replicas"] == 2
    assert deploy["spec"]["selector"]["matchLabels"] == {
        "app.kubernetes.io/component": "server",
        CLUSTER_LABEL: "tenant-a",
    }
    labels = deploy["spec"]["template"]["metadata"]["labels"]
    assert deploy["spec"]["selector"]["matchLabels"].items() <= labels.items()
    (c,) = pod["containers"]
    assert c["name"] == "openvpn-server"
    assert c["image"] == "registry.example/vpnctl:1"
    assert c["command"] == [
        "python",
        "-m",
        "agent",
        "server",
        "--config",
        "/etc/vpnctl/server.json",
    ]
    assert c["securityContext"]["capabilities"] == {
        "add": sorted(["MKNOD", "NET_ADMIN", *DROP]),
        "drop": ["ALL"],
    }
    assert c["livenessProbe"]["httpGet"]["path"] == "/healthz"
    assert c["readinessProbe"]["httpGet"]["path"] == "/readyz"
    ports = {p["name"]: p for p in c["ports"]}
    assert ports["vpn"] == {"containerPort": 1194, "name": "vpn", "protocol": "UDP"}
    assert ports["http-metrics"]["containerPort"] == SETTINGS.server_health_port
    # No hostPath: the agent makes /dev/net/tun itself (MKNOD), see test_pod_security.py.
    assert "dev-net-tun" not in {v["name"] for v in pod["volumes"]}
    assert pod["automountServiceAccountToken"] is False
    assert pod["securityContext"] == {"seccompProfile": {"type": "RuntimeDefault"}}


def test_server_pod_files_are_where_the_role_config_says() -> None:
    t = lab()
    _, pod = server_parts(t)
    (projected,) = [v for v in pod["volumes"] if v["name"] == "config"]
    files = {
        f"{ServerPaths.config_dir}/{item['path']}": (source, item)
        for source in projected["projected"]["sources"]
        for kind, ref in source.items()
        for item in ref["items"]
    }
    role = server_role_config(tenant=t, settings=SETTINGS)
    wanted = [
        ServerPaths.role_config,
        role["desired_path"],
        role["crl_source"],
        role["openvpn"]["ca"],
        role["openvpn"]["cert"],
        role["openvpn"]["key"],
        role["openvpn"]["tls_crypt_v2"],
    ]
    assert sorted(files) == sorted(wanted)
    # Keys are readable by the owner only; the CA key is not there at all.
    assert files[ServerPaths.key][1]["mode"] == 0o400
    names = TenantNames.for_cluster("tenant-a")
    refs = {ref["name"] for s in projected["projected"]["sources"] for ref in s.values()}
    assert names.ca_secret not in refs


def test_server_deployment_tcp_low_port_device_plugin_and_sysctls() -> None:
    settings = Settings(
        agent_image="i",
        tun_resource="squat.ai/tun",
        server_pod_sysctls=(("net.ipv4.ip_forward", "1"),),
        image_pull_secrets=("pull",),
    )
    _, pod = server_parts(lab(transport={"protocol": "tcp", "port": 443}), settings)
    (c,) = pod["containers"]
    assert c["ports"][0] == {"containerPort": 443, "name": "vpn", "protocol": "TCP"}
    assert "NET_BIND_SERVICE" in c["securityContext"]["capabilities"]["add"]
    assert c["resources"] == {
        "requests": {"cpu": "50m", "memory": "128Mi"},
        "limits": {"memory": "512Mi", "squat.ai/tun": "1"},
    }
    assert "dev-net-tun" not in {v["name"] for v in pod["volumes"]}
    assert pod["securityContext"]["sysctls"] == [{"name": "net.ipv4.ip_forward", "value": "1"}]
    assert pod["imagePullSecrets"] == [{"name": "pull"}]


def test_role_config_change_rolls_the_pods_desired_state_does_not() -> None:
    a, _ = server_parts(lab())
    b, _ = server_parts(lab(transport={"port": 1195}))
    key = CONFIG_HASH_ANNOTATION
    assert (
        a["spec"]["template"]["metadata"]["annotations"][key]
        != (b["spec"]["template"]["metadata"]["annotations"][key])
    )
    # Nodes joining change only desired.json (in the ConfigMap), not the Deployment.
    t2 = parse_tenant(
        tunnel=capi.lab_tenant(nodes=2).tunnel,
        cluster=capi.lab_tenant(nodes=2).cluster,
        machines=capi.lab_tenant(nodes=2).machines,
    )
    c, _ = server_parts(t2)
    assert c == a


@pytest.mark.parametrize("kind", ["ClusterIP", "NodePort", "LoadBalancer"])
def test_server_service(kind: str) -> None:
    svc = server_service(
        tenant=lab(expose={"serviceType": kind, "annotations": {"b": "2", "a": "1"}})
    )
    assert svc["spec"]["type"] == kind
    assert svc["spec"]["ports"] == [
        {"name": "vpn", "port": 1194, "protocol": "UDP", "targetPort": "vpn"}
    ]
    assert svc["spec"]["sessionAffinity"] == "ClientIP"
    assert svc["metadata"]["annotations"]["a"] == "1"
    assert list(svc["metadata"]["annotations"])[:2] == ["a", "b"]
    deploy, _ = server_parts(lab())
    assert svc["spec"]["selector"] == deploy["spec"]["selector"]["matchLabels"]


def test_server_config_map_holds_the_three_files() -> None:
    t = lab()
    cm = all_service_side(t)[4]
    assert sorted(cm["data"]) == ["crl.pem", "desired.json", "server.json"]
    assert json.loads(cm["data"]["server.json"]) == server_role_config(tenant=t, settings=SETTINGS)
    assert cm["data"]["crl.pem"] == CRL.decode()


# --- the apiserver sidecar --------------------------------------------------------------------


def test_apiserver_sidecar_and_attach() -> None:
    t = lab()
    role = apiserver_role_config(tenant=t, settings=SETTINGS, service_name="tenant-a-vpn")
    attachment = apiserver_sidecar(tenant=t, settings=SETTINGS, role_config=role)
    c = attachment.container
    assert c["command"] == [
        "python",
        "-m",
        "agent",
        "apiserver",
        "--config",
        "/etc/vpnctl-apiserver/apiserver.json",
    ]
    assert "readinessProbe" not in c  # a tunnel outage must not take the apiserver out
    assert c["securityContext"]["capabilities"]["add"] == sorted(["MKNOD", "NET_ADMIN", *DROP])
    assert all(v["name"].startswith("vpnctl-") for v in attachment.volumes)
    mounts = {m["name"] for m in c["volumeMounts"]}
    assert mounts <= {v["name"] for v in attachment.volumes}

    apiserver_pod = {
        "containers": [{"name": "kube-apiserver", "image": "k8s"}],
        "volumes": [{"name": "certs", "secret": {"secretName": "x"}}],
    }
    once = attach_sidecar(apiserver_pod, attachment=attachment)
    twice = attach_sidecar(once, attachment=attachment)
    assert once == twice
    assert [x["name"] for x in once["containers"]] == ["kube-apiserver", "vpnctl-apiserver"]
    assert once["volumes"][0]["name"] == "certs"
    assert apiserver_pod["containers"] == [{"name": "kube-apiserver", "image": "k8s"}]
    other = apiserver_sidecar(
        tenant=lab(transport={"port": 1195}),
        settings=SETTINGS,
        role_config=apiserver_role_config(
            tenant=lab(transport={"port": 1195}), settings=SETTINGS, service_name="tenant-a-vpn"
        ),
    )
    assert other.config_hash != attachment.config_hash


def test_node_churn_changes_the_sidecars_routes_but_never_rolls_the_apiserver() -> None:
    """A Machine added or deleted changes the routes (each node address outside the
    cluster's networks) that the sidecar re-reads from its ConfigMap; the pod template's
    hash must stay, or every node churn rolls the hosted kube-apiserver (seen in the lab
    once the controller ran from the chart)."""
    t = lab()
    role = apiserver_role_config(tenant=t, settings=SETTINGS, service_name="tenant-a-vpn")
    churned = {**role, "routes": [*role["routes"], "198.19.0.99/32"]}
    before = apiserver_sidecar(tenant=t, settings=SETTINGS, role_config=role)
    after = apiserver_sidecar(tenant=t, settings=SETTINGS, role_config=churned)
    assert after.config_hash == before.config_hash


# --- the node agent -------------------------------------------------------------------------


def test_node_agent_daemon_set() -> None:
    ds = all_tenant_side(lab())[-1]
    pod = ds["spec"]["template"]["spec"]
    assert pod["hostNetwork"] is True
    assert pod["dnsPolicy"] == "ClusterFirstWithHostNet"
    assert pod["tolerations"] == [{"operator": "Exists"}]
    assert pod["serviceAccountName"] == NODE_AGENT_NAME
    (c,) = pod["containers"]
    assert c["command"] == ["python", "-m", "agent", "node", "--config", "/etc/vpnctl/node.json"]
    assert c["securityContext"]["capabilities"]["add"] == sorted(["MKNOD", "NET_ADMIN", *DROP])
    assert c["env"][0]["valueFrom"]["fieldRef"]["fieldPath"] == "spec.nodeName"
    volumes = {v["name"]: v for v in pod["volumes"]}
    assert volumes["kubelet-pki"]["hostPath"]["path"] == "/var/lib/kubelet/pki"
    mounts = {m["name"]: m for m in c["volumeMounts"]}
    assert mounts["kubelet-pki"]["readOnly"] is True
    assert set(mounts) <= set(volumes)


def test_node_agent_gets_no_rbac_at_all() -> None:
    """The agent never calls the API with its ServiceAccount (its CSR goes as its node)."""
    objs = {o["kind"]: o for o in all_tenant_side(lab())}
    assert not {"Role", "RoleBinding", "ClusterRole", "ClusterRoleBinding"} & set(objs)
    assert objs["Namespace"]["metadata"]["labels"]["pod-security.kubernetes.io/enforce"] == (
        "privileged"
    )
    assert sorted(objs["ConfigMap"]["data"]) == ["ca.crt", "node.json"]
