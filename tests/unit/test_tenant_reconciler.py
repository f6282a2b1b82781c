"""The reconcile pass (``TenantReconciler``) against an in-memory ``TenantApi``: the
order-of-writes promises of ``vpnctl/controller/tenant_reconciler.py``'s docstring.

Real planner, real ``certs``, the real revocation book; fakes only of our own seams
(``TenantApi``, ``TenantSide``, ``ObservationSource``). Each test reads the fake's write
journal, so "before" and "after" are positions in it.
"""

from __future__ import annotations

import base64
import json
import random
from collections.abc import Mapping, Sequence
from datetime import timedelta
from typing import Any

import pytest
from prometheus_client import CollectorRegistry

import certs
from tests.kube.controllerfix import (
    FakeObservations,
    FakeTenantSide,
    all_connected,
)
from tests.support.capi import kubeconfig_text
from tests.support.fake_tenant_api import FakeTenantApi, as_tenant_api
from vpnctl.api import CAPI_CLUSTER_NAME_LABEL
from vpnctl.cli import _parser
from vpnctl.controller import pki_decisions as pki
from vpnctl.controller.cli import settings_from_args
from vpnctl.controller.interfaces import TenantRef
from vpnctl.controller.metrics import ControllerMetrics
from vpnctl.controller.tenant_lifecycle import PAUSED_ANNOTATION
from vpnctl.controller.tenant_reconciler import TenantReconciler, TenantSettings
from vpnctl.controller.tenant_settings import (
    APISERVER_CONFIG_ANNOTATION,
    AUTO_TUNNEL_ANNOTATION,
    FINALIZER,
    SERVER_CONFIG_ANNOTATION,
)
from vpnctl.kube import (
    CLUSTER,
    CONFIG_MAP,
    DEPLOYMENT,
    EVENT,
    MACHINE,
    POD,
    SECRET,
    TUNNEL,
    ManualClock,
)
from vpnctl.reconcile.names import (
    COMPONENT_SERVER,
    DESIRED_HASH_ANNOTATION,
    TenantNames,
    selector_labels,
)
from vpnctl.reconcile.service_objects import (
    TLS_CRYPT_V2_SERVER,
)
from vpnctl.reconcile.settings import Settings
from vpnctl.reconcile.sidecar_objects import (
    ATTACH_SIDECAR_LABEL,
)

NS = "tenants"
NAME = "acme"
KEY = TenantRef(NS, NAME)
NAMES = TenantNames.for_cluster(NAME)
TUNNELS = TUNNEL.label
CONFIGMAPS = CONFIG_MAP.label
PODS = POD.label


def cluster(*, annotations: Mapping[str, str] | None = None,
            labels: Mapping[str, str] | None = None) -> dict[str, Any]:  # fmt: skip
    return {
        "apiVersion": CLUSTER.api_version,
        "kind": CLUSTER.kind,
        "metadata": {
            "name": NAME,
            "namespace": NS,
            "annotations": dict(annotations or {}),
            "labels": dict(labels or {}),
        },
        "spec": {
            "controlPlaneEndpoint": {"host": "198.18.0.2", "port": 6443},
            "clusterNetwork": {
                "pods": {"cidrBlocks": ["198.19.64.0/18"]},
                "services": {"cidrBlocks": ["198.19.192.0/20"]},
            },
        },
    }


def machine(i: int) -> dict[str, Any]:
    return {
        "apiVersion": MACHINE.api_version,
        "kind": MACHINE.kind,
        "metadata": {
            "name": f"{NAME}-md-{i}",
            "namespace": NS,
            "labels": {CAPI_CLUSTER_NAME_LABEL: NAME},
        },
        "spec": {"clusterName": NAME},
        "status": {
            "nodeRef": {"apiVersion": "v1", "kind": "Node", "name": node(i)},
            "addresses": [{"type": "InternalIP", "address": f"198.19.0.{10 + i}"}],
        },
    }


def node(i: int) -> str:
    return f"{NAME}-node-{i}"


def hand_made_tunnel() -> dict[str, Any]:
    """A Tunnel someone wrote: no finalizer, no owner reference yet."""
    return {
        "metadata": {"name": NAME, "namespace": NS},
        "spec": {"clusterName": NAME, "expose": {"serviceType": "ClusterIP"}},
    }


def server_pod(i: int) -> dict[str, Any]:
    return {
        "metadata": {
            "name": f"{NAMES.deployment}-{i}",
            "namespace": NS,
            "labels": selector_labels(cluster_name=NAME, component=COMPONENT_SERVER),
        },
        "spec": {"containers": [{"name": "server", "image": "vpnctl:test"}]},
    }


class World:
    """One tenant in the fake service cluster, and a reconciler for it."""

    def __init__(
        self,
        *,
        machines: int = 2,
        tunnel: bool = True,
        settings: TenantSettings | None = None,
        annotations: Mapping[str, str] | None = None,
        labels: Mapping[str, str] | None = None,
    ) -> None:
        self.api = FakeTenantApi()
        self.api.seed(CLUSTER, cluster(annotations=annotations, labels=labels))
        text = kubeconfig_text(NAME)
        self.api.seed(SECRET, {
            "metadata": {"name": f"{NAME}-kubeconfig", "namespace": NS,
                         "labels": {CAPI_CLUSTER_NAME_LABEL: NAME}},
            "type": "cluster.x-k8s.io/secret",
            "data": {"value": base64.b64encode(text.encode()).decode()},
        })  # fmt: skip
        for i in range(1, machines + 1):
            self.api.seed(MACHINE, machine(i))
        for i in (1, 2):
            self.api.seed(POD, server_pod(i))
        if tunnel:
            self.api.seed(TUNNEL, hand_made_tunnel())
        self.side = FakeTenantSide()
        self.observations = FakeObservations(
            default=all_connected([node(i) for i in range(1, machines + 1)])
        )
        self.clock = ManualClock(autoadvance=True)
        self.reconciler = TenantReconciler(
            api=as_tenant_api(self.api),
            settings=settings
            or TenantSettings(build=Settings(agent_image="vpnctl:test"), instance="test"),
            clock=self.clock,
            rng=random.Random(7),
            tenant_side=self.side,
            observations=self.observations,
            metrics=ControllerMetrics(registry=CollectorRegistry()),
        )

    async def reconcile(self) -> None:
        outcome = await self.reconciler.reconcile_tenant(KEY)
        assert not outcome.retry, "the pass asked for a retry"

    def tunnel(self) -> dict[str, Any]:
        obj = self.api.peek(TUNNEL, NAME, NS)
        assert obj is not None
        return obj

    def server_config(self) -> dict[str, Any]:
        obj = self.api.peek(CONFIG_MAP, NAMES.server_config, NS)
        assert obj is not None
        return obj

    def ca_pem(self) -> bytes:
        secret = self.api.peek(SECRET, NAMES.ca_secret, NS)
        assert secret is not None
        return base64.b64decode(secret["data"]["tls.crt"])

    def pod_versions(self) -> list[str | None]:
        return [
            (pod["metadata"].get("annotations") or {}).get(SERVER_CONFIG_ANNOTATION)
            for pod in (self.api.peek(POD, server_pod(i)["metadata"]["name"], NS) for i in (1, 2))
            if pod is not None
        ]


def index(journal: Sequence[tuple[str, str, str]], verb: str, resource: str, name: str) -> int:
    assert (verb, resource, name) in journal, f"no {verb} of {resource} {name} in {journal}"
    return journal.index((verb, resource, name))


def last_index(journal: Sequence[tuple[str, str, str]], verb: str, resource: str, name: str) -> int:
    index(journal, verb, resource, name)
    return len(journal) - 1 - journal[::-1].index((verb, resource, name))


def desired_clients(config_map: Mapping[str, Any]) -> set[str]:
    doc = json.loads(config_map["data"]["desired.json"])
    return {str(c["common_name"]) for c in doc["clients"]}


# --- 1. the finalizer first ------------------------------------------------------------------


async def test_finalizer_and_owner_reference_are_the_first_write() -> None:
    world = World()
    await world.reconcile()
    journal = world.api.journal()
    assert journal[0] == ("patch", TUNNELS, NAME), journal
    sent = world.api.writes[0].body["metadata"]
    assert sent["finalizers"] == [FINALIZER]
    assert [(r["kind"], r["name"]) for r in sent["ownerReferences"]] == [("Cluster", NAME)]
    # The patch was conditional on what was read.
    assert sent["resourceVersion"]
    # ... and everything else came after it, the PKI and the status included.
    assert index(journal, "create", SECRET.label, NAMES.ca_secret) > 0
    assert index(journal, "status", TUNNELS, NAME) > 0
    assert FINALIZER in world.tunnel()["metadata"]["finalizers"]


async def test_auto_created_tunnel_carries_the_finalizer_from_birth() -> None:
    world = World(tunnel=False)
    await world.reconcile()
    assert world.api.journal()[0] == ("create", TUNNELS, NAME)
    meta = world.api.writes[0].body["metadata"]
    assert meta["finalizers"] == [FINALIZER]
    assert meta["ownerReferences"][0]["kind"] == "Cluster"
    events = [e for e in (await world.api.list(EVENT, NS))[0] if e["reason"] == "TunnelCreated"]
    assert len(events) == 1
    assert AUTO_TUNNEL_ANNOTATION in events[0]["message"]


async def test_finalizer_removed_only_once_the_tenant_side_is_clean() -> None:
    world = World()
    await world.reconcile()
    await world.api.delete(TUNNEL, NAME, NS)
    world.side.cleanup_answers = False
    world.api.clear_journal()
    outcome = await world.reconciler.reconcile_tenant(KEY)
    assert outcome.retry
    assert world.side.cleaned == [(KEY, True)]
    assert world.api.journal() == []  # the finalizer stays while the tenant side is not clean
    assert FINALIZER in world.tunnel()["metadata"]["finalizers"]

    world.side.cleanup_answers = True
    await world.reconcile()
    assert world.api.journal() == [("patch", TUNNELS, NAME)]
    assert world.api.peek(TUNNEL, NAME, NS) is None  # the last finalizer gone: the Tunnel goes


# --- 1b. Cluster API's pause (what `clusterctl move` sets) ------------------------------------


def pause(world: World, *, how: str) -> None:
    """Pause the tenant HOW: Cluster.spec.paused, or the paused annotation on the Cluster
    or on the Tunnel (CAPI's `annotations.IsPaused` reads both)."""
    res, name = (TUNNEL, NAME) if how == "tunnel-annotation" else (CLUSTER, NAME)
    obj = world.api.peek(res, name, NS)
    assert obj is not None
    if how == "spec":
        obj["spec"]["paused"] = True
    else:
        obj["metadata"].setdefault("annotations", {})[PAUSED_ANNOTATION] = ""
    world.api.seed(res, obj)


PAUSES = ["spec", "cluster-annotation", "tunnel-annotation"]


@pytest.mark.parametrize("how", PAUSES)
async def test_a_paused_tenant_gets_no_write_at_all(how: str) -> None:
    world = World()
    pause(world, how=how)
    await world.reconcile()
    assert world.api.journal() == []
    assert "finalizers" not in world.tunnel()["metadata"]
    assert world.api.peek(SECRET, NAMES.ca_secret, NS) is None

    # Unpaused (the Cluster's watch brings the key back): the pass does it all.
    obj = world.api.peek(TUNNEL if how == "tunnel-annotation" else CLUSTER, NAME, NS)
    assert obj is not None
    obj["spec"].pop("paused", None)
    obj["metadata"].get("annotations", {}).pop(PAUSED_ANNOTATION, None)
    world.api.seed(TUNNEL if how == "tunnel-annotation" else CLUSTER, obj)
    await world.reconcile()
    assert FINALIZER in world.tunnel()["metadata"]["finalizers"]
    assert world.api.peek(SECRET, NAMES.ca_secret, NS) is not None


async def test_a_paused_cluster_gets_no_automatic_tunnel() -> None:
    world = World(tunnel=False)
    pause(world, how="spec")
    await world.reconcile()
    assert world.api.peek(TUNNEL, NAME, NS) is None
    assert world.api.journal() == []


async def test_move_deleting_a_paused_tunnel_never_cleans_the_tenant_side() -> None:
    """clusterctl move on the source: the Cluster is paused, the Tunnel then deleted. The
    tenant lives on in the target management cluster; its agent must stay installed."""
    world = World()
    await world.reconcile()
    pause(world, how="spec")
    await world.api.delete(TUNNEL, NAME, NS)
    world.api.clear_journal()
    await world.reconcile()
    assert world.side.cleaned == []
    assert world.api.journal() == []


# --- 2. the auto-tunnel opt-out ------------------------------------------------------------


@pytest.mark.parametrize("where", ["annotations", "labels"])
@pytest.mark.parametrize("value", ["false", "False"])
async def test_cluster_opts_out_of_an_automatic_tunnel(where: str, value: str) -> None:
    opt_out = {AUTO_TUNNEL_ANNOTATION: value}
    if where == "annotations":
        world = World(tunnel=False, annotations=opt_out)
    else:
        world = World(tunnel=False, labels=opt_out)
    await world.reconcile()
    assert world.api.peek(TUNNEL, NAME, NS) is None
    assert world.api.journal() == []


async def test_no_auto_tunnel_flag_creates_no_tunnel() -> None:
    args = _parser().parse_args(["run", "--agent-image", "vpnctl:test", "--no-auto-tunnel"])
    world = World(tunnel=False, settings=settings_from_args(args).tenant)
    await world.reconcile()
    assert world.api.peek(TUNNEL, NAME, NS) is None
    assert world.api.journal() == []


async def test_an_opted_out_cluster_keeps_a_tunnel_made_by_hand() -> None:
    """The opt-out is about creating one: a Tunnel someone wrote is reconciled."""
    world = World(annotations={AUTO_TUNNEL_ANNOTATION: "false"})
    await world.reconcile()
    assert world.tunnel()["status"]["conditions"]
    assert world.api.peek(CONFIG_MAP, NAMES.server_config, NS) is not None


async def test_other_annotation_values_do_not_opt_out() -> None:
    world = World(tunnel=False, annotations={AUTO_TUNNEL_ANNOTATION: "true"})
    await world.reconcile()
    assert world.api.peek(TUNNEL, NAME, NS) is not None


# --- 3. server pods kicked after a server ConfigMap change, and only then ------------------


async def test_the_tenant_side_gets_the_tenants_tls_crypt_server_key() -> None:
    """The CSR signer makes each node's tls-crypt-v2 client key from it (csr_signer)."""
    world = World()
    await world.reconcile()
    secret = world.api.peek(SECRET, NAMES.tls_crypt_secret, NS)
    assert secret is not None
    server_key = base64.b64decode(secret["data"][TLS_CRYPT_V2_SERVER])
    assert world.side.calls
    assert all(c.tls_crypt_server_key == server_key for c in world.side.calls)


async def test_server_pods_are_kicked_after_the_server_config_changes() -> None:
    world = World()
    await world.reconcile()
    journal = world.api.journal()
    config_write = last_index(journal, "apply", CONFIGMAPS, NAMES.server_config)
    kicks = [i for i, w in enumerate(journal) if w[:2] == ("patch", PODS)]
    assert len(kicks) == 2, journal
    assert all(k > config_write for k in kicks)
    version = world.server_config()["metadata"]["annotations"][DESIRED_HASH_ANNOTATION]
    assert world.pod_versions() == [version, version]


async def test_no_kick_and_no_write_when_nothing_changed() -> None:
    world = World()
    await world.reconcile()
    world.api.clear_journal()
    await world.reconcile()
    assert world.api.journal() == []


async def test_a_config_change_kicks_again_with_the_new_version() -> None:
    world = World()
    await world.reconcile()
    before = world.pod_versions()
    world.api.seed(MACHINE, machine(3))  # a third node joins: desired.json changes
    world.observations.default = all_connected([node(i) for i in (1, 2, 3)])
    world.api.clear_journal()
    await world.reconcile()
    journal = world.api.journal()
    config_write = last_index(journal, "apply", CONFIGMAPS, NAMES.server_config)
    kicks = [i for i, w in enumerate(journal) if w[:2] == ("patch", PODS)]
    assert kicks
    assert min(kicks) > config_write
    after = world.pod_versions()
    assert after[0] != before[0]
    assert after == [after[0]] * 2
    assert node(3) in desired_clients(world.server_config())


async def test_the_hosted_apiservers_pods_are_nudged_when_their_routes_change() -> None:
    """A node with an address no tenant network covers gets a /32 route on the apiserver
    side: its ConfigMap changes, and its pods are annotated so kubelet refreshes the
    volume now (not on its next periodic sync, a minute or more later)."""
    world = World()
    match = {"app": "kube-apiserver"}
    world.api.seed(DEPLOYMENT, {
        "metadata": {"name": "kas", "namespace": NS, "labels": {ATTACH_SIDECAR_LABEL: NAME}},
        "spec": {"selector": {"matchLabels": match},
                 "template": {"metadata": {"labels": match},
                              "spec": {"containers": [{"name": "kas", "image": "kas:1"}]}}},
    })  # fmt: skip
    world.api.seed(POD, {"metadata": {"name": "kas-1", "namespace": NS, "labels": match},
                         "spec": {"containers": [{"name": "kas", "image": "kas:1"}]}})  # fmt: skip

    def nudged() -> str | None:
        pod = world.api.peek(POD, "kas-1", NS)
        assert pod is not None
        return (pod["metadata"].get("annotations") or {}).get(APISERVER_CONFIG_ANNOTATION)

    def version() -> str:
        cm = world.api.peek(CONFIG_MAP, NAMES.apiserver_config, NS)
        assert cm is not None
        return str(cm["metadata"]["annotations"][DESIRED_HASH_ANNOTATION])

    await world.reconcile()
    first = version()
    assert nudged() == first
    world.api.clear_journal()
    await world.reconcile()
    assert not [w for w in world.api.journal() if w[:2] == ("patch", PODS)], "no change, no nudge"

    world.api.seed(MACHINE, machine(3))  # a node at 198.19.0.13: a new /32 for the apiserver
    world.observations.default = all_connected([node(i) for i in (1, 2, 3)])
    await world.reconcile()
    assert version() != first
    assert nudged() == version()


# --- 4. revocation on Machine deletion: book and CRL before the status --------------------


async def signed_world() -> tuple[World, dict[str, int]]:
    """A tenant whose two nodes have signed certificates, as the tenant side reports."""
    world = World()
    await world.reconcile()  # the CA exists after this pass
    ca_pem = world.ca_pem()
    ca_key = world.api.peek(SECRET, NAMES.ca_secret, NS)
    assert ca_key is not None
    ca = certs.Issued(cert_pem=ca_pem, key_pem=base64.b64decode(ca_key["data"]["tls.key"]))
    serials: dict[str, int] = {}
    for i in (1, 2):
        leaf = certs.new_client_cert(
            ca, common_name=node(i), now=world.clock.now(), lifetime=timedelta(days=30)
        )
        serials[node(i)] = certs.cert_info(leaf.cert_pem).serial
    world.side.signed[KEY] = tuple((n, format(s, "x")) for n, s in serials.items())
    await world.reconcile()  # recorded in the book, status and desired.json
    # What the tenant side signed is in the status (the pass's memory) and pins the
    # node's identity in desired.json.
    rows = {a["node"]: a for a in world.tunnel()["status"]["allocations"]}
    doc = json.loads(world.server_config()["data"]["desired.json"])
    pinned = {c["common_name"]: c["serials"] for c in doc["clients"]}
    for name, serial in serials.items():
        assert rows[name]["serials"] == [format(serial, "x")]
        assert format(serial, "x") in pinned[name]
    return world, serials


async def test_deleted_machine_is_revoked_in_book_and_crl_before_the_status() -> None:
    world, serials = await signed_world()
    del world.api.objects[(MACHINE.label, NS, f"{NAME}-md-2")]
    world.api.clear_journal()
    await world.reconcile()

    journal = world.api.journal()
    book = index(journal, "replace", CONFIGMAPS, NAMES.revocations)
    crl = index(journal, "apply", CONFIGMAPS, NAMES.server_config)
    status = index(journal, "status", TUNNELS, NAME)
    assert book < crl < status, journal
    kicks = [i for i, w in enumerate(journal) if w[:2] == ("patch", PODS)]
    assert kicks
    assert all(crl < k for k in kicks)

    sent = next(w.body for w in world.api.writes if w.what == ("apply", CONFIGMAPS,
                                                             NAMES.server_config))  # fmt: skip
    state = pki.read_crl(sent["data"]["crl.pem"].encode(), ca_pem=world.ca_pem())
    assert serials[node(2)] in state.revoked
    assert serials[node(1)] not in state.revoked
    assert node(2) not in desired_clients(sent)
    assert node(1) in desired_clients(sent)
    assert node(2) not in {a["node"] for a in world.tunnel()["status"]["allocations"]}


async def test_revocation_does_not_wait_for_a_valid_spec() -> None:
    world, serials = await signed_world()
    broken = cluster()
    del broken["spec"]["clusterNetwork"]  # the tenant as a whole is now invalid
    world.api.seed(CLUSTER, broken)
    del world.api.objects[(MACHINE.label, NS, f"{NAME}-md-2")]
    world.api.clear_journal()
    await world.reconcile()

    journal = world.api.journal()
    crl = index(journal, "apply", CONFIGMAPS, NAMES.server_config)
    assert crl < index(journal, "status", TUNNELS, NAME)
    assert any(w[:2] == ("patch", PODS) for w in journal[crl:])
    state = pki.read_crl(world.server_config()["data"]["crl.pem"].encode(), ca_pem=world.ca_pem())
    assert serials[node(2)] in state.revoked
    ready = {c["type"]: c for c in world.tunnel()["status"]["conditions"]}["Ready"]
    assert ready["status"] == "False"


# --- the renegotiation interval -------------------------------------------------------------


def tunnel_with_transport(transport: Mapping[str, Any]) -> dict[str, Any]:
    tunnel = hand_made_tunnel()
    tunnel["spec"]["transport"] = dict(transport)
    return tunnel


async def test_the_renegotiation_interval_reaches_every_role_config_the_pass_writes() -> None:
    world = World()
    world.api.seed(TUNNEL, tunnel_with_transport({"renegotiateSeconds": 120}))
    await world.reconcile()
    server = json.loads(world.server_config()["data"]["server.json"])
    apiserver_cm = world.api.peek(CONFIG_MAP, NAMES.apiserver_config, NS)
    assert apiserver_cm is not None
    apiserver = json.loads(apiserver_cm["data"]["apiserver.json"])
    [node_cm] = [o for o in world.side.calls[-1].objects if o["kind"] == "ConfigMap"]
    node_doc = json.loads(node_cm["data"]["node.json"])
    assert [d["openvpn"]["reneg_sec"] for d in (server, apiserver, node_doc)] == [120] * 3


async def test_a_too_short_renegotiation_interval_is_a_condition_and_an_event() -> None:
    world = World()
    world.api.seed(TUNNEL, tunnel_with_transport({"renegotiateSeconds": 5}))
    await world.reconcile()

    message = (
        f"spec.transport.renegotiateSeconds 5 of Tunnel {NS}/{NAME} is shorter than the "
        "minimum of 10 s: every node would redo its TLS handshake, and the server "
        "re-authorise it, that often; set 10 to 86400 (default 3600)"
    )
    conditions = {c["type"]: c for c in world.tunnel()["status"]["conditions"]}
    server_ready = conditions["ServerReady"]
    assert (server_ready["status"], server_ready["reason"]) == ("False", "InvalidSpec")
    assert server_ready["message"] == message
    assert (conditions["Ready"]["status"], conditions["Ready"]["reason"]) == (
        "False",
        "InvalidSpec",
    )
    events = [e for e in (await world.api.list(EVENT, NS))[0] if e["reason"] == "InvalidSpec"]
    assert sorted((e["type"], e["message"]) for e in events) == [
        ("Warning", f"Ready is False: {message}"),
        ("Warning", f"ServerReady is False: {message}"),
    ]
    # Nothing was built from the invalid spec, and nothing reached the tenant.
    assert not [w for w in world.api.journal() if w[1] == DEPLOYMENT.label]
    assert world.side.calls == []

    # Fixed, the next pass builds everything with it.
    world.api.seed(TUNNEL, {**world.tunnel(), "spec": tunnel_with_transport(
        {"renegotiateSeconds": 10})["spec"]})  # fmt: skip
    await world.reconcile()
    conditions = {c["type"]: c for c in world.tunnel()["status"]["conditions"]}
    assert conditions["ServerReady"]["status"] == "True"
    assert json.loads(world.server_config()["data"]["server.json"])["openvpn"]["reneg_sec"] == 10
    assert [w for w in world.api.journal() if w[1] == DEPLOYMENT.label]


# --- requests and limits (issue 15 item 5) ---------------------------------------------------


def _container(obj: Mapping[str, Any] | None) -> dict[str, Any]:
    assert obj is not None
    return dict(obj["spec"]["template"]["spec"]["containers"][0])


async def test_the_flags_and_the_tunnels_spec_resources_reach_the_pods_the_pass_writes() -> None:
    args = _parser().parse_args([
        "run", "--agent-image", "vpnctl:test",
        "--server-resources", "requests.cpu=70m,limits.memory=300Mi",
        "--agent-resources", "requests.cpu=7m,limits.memory=70Mi",
    ])  # fmt: skip
    world = World(settings=settings_from_args(args).tenant)
    await world.reconcile()
    server = _container(world.api.peek(DEPLOYMENT, NAMES.deployment, NS))
    assert server["resources"] == {"requests": {"cpu": "70m"}, "limits": {"memory": "300Mi"}}
    [agent] = [o for o in world.side.calls[-1].objects if o["kind"] == "DaemonSet"]
    assert _container(agent)["resources"] == {
        "requests": {"cpu": "7m"},
        "limits": {"memory": "70Mi"},
    }

    tunnel = hand_made_tunnel()
    tunnel["spec"]["resources"] = {"agent": {"limits": {"memory": "90Mi"}}}
    world.api.seed(TUNNEL, {**world.tunnel(), "spec": tunnel["spec"]})
    await world.reconcile()
    [agent] = [o for o in world.side.calls[-1].objects if o["kind"] == "DaemonSet"]
    assert _container(agent)["resources"] == {"limits": {"memory": "90Mi"}}
    server = _container(world.api.peek(DEPLOYMENT, NAMES.deployment, NS))
    assert server["resources"] == {"requests": {"cpu": "70m"}, "limits": {"memory": "300Mi"}}


async def test_spec_agent_image_pins_the_server_and_the_node_agent_the_pass_writes() -> None:
    world = World()
    await world.reconcile()
    assert _container(world.api.peek(DEPLOYMENT, NAMES.deployment, NS))["image"] == "vpnctl:test"

    tunnel = hand_made_tunnel()
    tunnel["spec"]["agent"] = {"image": "vpnctl:pinned"}
    world.api.seed(TUNNEL, {**world.tunnel(), "spec": tunnel["spec"]})
    await world.reconcile()
    assert _container(world.api.peek(DEPLOYMENT, NAMES.deployment, NS))["image"] == "vpnctl:pinned"
    [agent] = [o for o in world.side.calls[-1].objects if o["kind"] == "DaemonSet"]
    assert _container(agent)["image"] == "vpnctl:pinned"


async def test_bad_spec_resources_are_a_condition_and_nothing_is_built() -> None:
    world = World()
    tunnel = hand_made_tunnel()
    tunnel["spec"]["resources"] = {"server": {"requests": {"memory": "2Gi"},
                                              "limits": {"memory": "1Gi"}}}  # fmt: skip
    world.api.seed(TUNNEL, tunnel)
    await world.reconcile()
    conditions = {c["type"]: c for c in world.tunnel()["status"]["conditions"]}
    assert (conditions["Ready"]["status"], conditions["Ready"]["reason"]) == (
        "False",
        "InvalidSpec",
    )
    assert "requests.memory 2Gi is more than limits.memory 1Gi" in conditions["Ready"]["message"]
    assert not [w for w in world.api.journal() if w[1] == DEPLOYMENT.label]
    assert world.side.calls == []


# --- the tenant's Nodes feed the plan (issue 12 item 1) ---------------------------------------


def tenant_node(i: int, *, pod_cidr: str | None) -> dict[str, Any]:
    spec = {} if pod_cidr is None else {"podCIDR": pod_cidr, "podCIDRs": [pod_cidr]}
    return {
        "apiVersion": "v1",
        "kind": "Node",
        "metadata": {"name": node(i)},
        "spec": spec,
        "status": {"addresses": [{"type": "InternalIP", "address": f"198.19.0.{10 + i}"}]},
    }


def iroutes_by_node(world: World) -> dict[str, list[str]]:
    doc = json.loads(world.server_config()["data"]["desired.json"])
    return {str(c["common_name"]): list(c["iroutes"]) for c in doc["clients"]}


async def elect(world: World) -> None:
    """Two passes: the first records who is connected, the second elects from it."""
    await world.reconcile()
    await world.reconcile()


async def test_each_node_iroutes_its_own_pod_cidr_once_the_nodes_are_known() -> None:
    world = World(machines=3)
    await elect(world)
    # Nodes not listed yet: the elected node carries the whole pod CIDR.
    before = iroutes_by_node(world)
    holder = world.tunnel()["status"]["serviceRouteNode"]
    assert "198.19.64.0/18" in before[holder]

    world.side.tenant_nodes[KEY] = [
        tenant_node(1, pod_cidr="198.19.65.0/24"),
        tenant_node(2, pod_cidr="198.19.66.0/24"),
        tenant_node(3, pod_cidr=None),  # no podCIDR: its pods fall back to the elected node
    ]
    await world.reconcile()
    after = iroutes_by_node(world)
    assert after[node(1)][:2] == ["198.19.0.11/32", "198.19.65.0/24"]
    assert after[node(2)] == ["198.19.0.12/32", "198.19.66.0/24"] + (
        ["198.19.192.0/20"] if holder == node(2) else []
    )
    # The pod CIDR overlaps the nodes' own podCIDRs, so nobody carries it whole any more.
    assert not any("198.19.64.0/18" in nets for nets in after.values())


async def test_a_pod_cidr_change_is_re_planned_and_the_apiserver_ccd_stays() -> None:
    world = World(machines=2)
    queued: list[TenantRef] = []
    world.side.follow_nodes(queued.append)
    await elect(world)
    apiserver_before = json.loads(world.server_config()["data"]["desired.json"])["apiserver"]

    world.side.set_nodes(KEY, [tenant_node(1, pod_cidr="198.19.65.0/24"),
                               tenant_node(2, pod_cidr="198.19.66.0/24")])  # fmt: skip
    assert queued == [KEY]  # the controller's queue learns of it
    await world.reconcile()
    assert "198.19.66.0/24" in iroutes_by_node(world)[node(2)]

    world.side.set_nodes(KEY, [tenant_node(1, pod_cidr="198.19.65.0/24"),
                               tenant_node(2, pod_cidr="198.19.70.0/24")])  # fmt: skip
    await world.reconcile()
    assert "198.19.70.0/24" in iroutes_by_node(world)[node(2)]
    assert "198.19.66.0/24" not in iroutes_by_node(world)[node(2)]
    # The apiserver's CCD pushes nothing and does not move with the nodes.
    apiserver_after = json.loads(world.server_config()["data"]["desired.json"])["apiserver"]
    assert apiserver_after == apiserver_before
    assert apiserver_after["push_routes"] == []


async def test_hostile_pod_cidrs_are_not_routed() -> None:
    """A podCIDR outside the cluster's pod CIDRs, or one that overlaps another node's,
    routes nothing (tenant_members' validation); the rest of the tenant carries on."""
    world = World(machines=2)
    await elect(world)
    world.side.tenant_nodes[KEY] = [
        tenant_node(1, pod_cidr="10.0.0.0/8"),
        tenant_node(2, pod_cidr="not a cidr"),
        {"metadata": {"name": 7}, "spec": "junk"},
    ]
    await world.reconcile()
    routes = iroutes_by_node(world)
    assert routes[node(1)][0] == "198.19.0.11/32"
    assert not any("10.0.0.0/8" in nets for nets in routes.values())
    holder = world.tunnel()["status"]["serviceRouteNode"]
    assert "198.19.64.0/18" in routes[holder]  # the pods fall back to the elected node


async def test_the_apiserver_role_config_lists_the_tenant_networks() -> None:
    world = World(machines=2)
    await world.reconcile()
    cm = world.api.peek(CONFIG_MAP, NAMES.apiserver_config, NS)
    assert cm is not None
    routes = json.loads(cm["data"]["apiserver.json"])["routes"]
    assert routes == ["198.19.0.11/32", "198.19.0.12/32", "198.19.64.0/18", "198.19.192.0/20"]


async def test_a_restarted_controller_keeps_the_pod_routes_until_it_has_the_nodes() -> None:
    """The podCIDRs the last plan routed are in status.allocations: a controller that
    restarts (no Nodes listed yet) plans the same CCDs, so no node is kicked for it."""
    world = World(machines=2)
    world.side.tenant_nodes[KEY] = [tenant_node(1, pod_cidr="198.19.65.0/24"),
                                    tenant_node(2, pod_cidr="198.19.66.0/24")]  # fmt: skip
    await elect(world)
    before = iroutes_by_node(world)
    recorded = {a["node"]: a.get("podCIDRs") for a in world.tunnel()["status"]["allocations"]}
    assert recorded == {node(1): ["198.19.65.0/24"], node(2): ["198.19.66.0/24"]}

    del world.side.tenant_nodes[KEY]  # the new process's tenant side has listed nothing
    world.api.clear_journal()
    await world.reconcile()
    assert iroutes_by_node(world) == before
    assert ("apply", CONFIGMAPS, NAMES.server_config) not in world.api.journal()
