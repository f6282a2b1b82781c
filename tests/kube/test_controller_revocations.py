"""Revocations are complete and durable (issue 9, item 4), against the real apiserver.

Each test breaks one promise the old controller broke: a deleted server ConfigMap
un-revoked everything, a certificate signed just before its Machine went was never
revoked, an invalid spec stopped revocation, a vanished CA Secret was silently replaced.
"""

from __future__ import annotations

import base64
import contextlib
import json
import random
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

import certs
from tests.support import capi
from tests.support.capi import LAB_PODS_CIDR, create_tenant
from tests.support.polling import aeventually
from vpnctl.controller import pki_decisions as pki
from vpnctl.controller.interfaces import TenantRef
from vpnctl.controller.revocation_store import RevocationStore, TunnelOwner, revoke_and_plan_crl
from vpnctl.kube import CONFIG_MAP, MACHINE, SECRET, TUNNEL, Kube, KubeObject, ManualClock
from vpnctl.reconcile.revocation_book import IssuedCert

from .controllerfix import (
    FakeObservations,
    FakeTenantSide,
    all_connected,
    controller_settings,
    events_for,
    running_controller,
    wait_condition,
    wait_ready,
)
from .kubefix import kube  # noqa: F401

pytestmark = pytest.mark.kube

DAY = timedelta(days=1)


async def _ca_pem(kube: Kube, namespace: str, name: str) -> bytes:  # noqa: F811
    secret = await kube.get(SECRET, f"{name}-vpn-ca", namespace)
    assert secret is not None
    return base64.b64decode(secret["data"]["tls.crt"])


async def _crl(kube: Kube, namespace: str, name: str, ca_pem: bytes) -> frozenset[int] | None:  # noqa: F811
    cm = await kube.get(CONFIG_MAP, f"{name}-vpn-server", namespace)
    if cm is None:
        return None
    return certs.crl_serials(cm["data"]["crl.pem"].encode(), ca_pem=ca_pem)


def _clients(cm: KubeObject | None) -> list[str]:
    assert cm is not None
    return [c["common_name"] for c in json.loads(cm["data"]["desired.json"])["clients"]]


@dataclass
class ReadyTenant:
    """Tenant NAME of three nodes, Ready under a running controller whose fake tenant
    side reports one serial per node (``serials``)."""

    ref: TenantRef
    nodes: list[str]
    serials: dict[str, str]
    side: FakeTenantSide
    ca_pem: bytes

    async def remove_node_2(self, kube: Kube, what: str) -> int:  # noqa: F811
        """Delete node-2's Machine; its serial, once in the CRL."""
        namespace, name = self.ref.namespace, self.ref.cluster
        await kube.delete(MACHINE, f"{name}-md-2", namespace)
        serial = int(self.serials[f"{name}-node-2"], 16)
        await _revoked(kube, namespace, name, self.ca_pem, {serial}, what)
        return serial


@contextlib.asynccontextmanager
async def _ready_tenant(
    kube: Kube,  # noqa: F811
    namespace: str,
    name: str,
) -> AsyncIterator[ReadyTenant]:
    ref = TenantRef(namespace, name)
    nodes = [f"{name}-node-{i}" for i in (1, 2, 3)]
    serials = {n: f"c0de{i:04x}" for i, n in enumerate(nodes, 1)}
    side = FakeTenantSide(signed={ref: tuple(serials.items())})
    async with running_controller(
        kube,
        controller_settings(namespace),
        side=side,
        observations=FakeObservations(default=all_connected(nodes)),
    ):
        await create_tenant(kube, namespace, name)
        await wait_ready(kube, namespace, name, nodes=3)
        ca_pem = await _ca_pem(kube, namespace, name)
        yield ReadyTenant(ref=ref, nodes=nodes, serials=serials, side=side, ca_pem=ca_pem)


async def _poke(kube: Kube, namespace: str, name: str) -> None:  # noqa: F811
    """Make the controller reconcile Tunnel NAME now."""
    await kube.patch_merge(
        TUNNEL, name, {"metadata": {"annotations": {"test/poke": "1"}}}, namespace=namespace
    )


async def _event_seen(kube: Kube, namespace: str, name: str, reason: str) -> None:  # noqa: F811
    async def seen() -> bool:
        events = await events_for(kube, namespace, name=name)
        return any(e.get("reason") == reason for e in events)

    await aeventually(seen, timeout=10, what=f"{reason} Event")


async def _revoked(
    kube: Kube,  # noqa: F811
    namespace: str,
    name: str,
    ca_pem: bytes,
    serials: set[int],
    what: str,
) -> frozenset[int]:
    async def listed() -> frozenset[int] | None:
        crl = await _crl(kube, namespace, name, ca_pem)
        return crl if crl is not None and serials <= crl else None

    found: frozenset[int] = await aeventually(listed, timeout=10, interval=0.05, what=what)
    return found


async def test_a_deleted_server_configmap_never_unrevokes(
    kube: Kube,  # noqa: F811
    namespace: str,
) -> None:
    async with _ready_tenant(kube, namespace, "dur") as t:
        revoked = await t.remove_node_2(kube, "node-2 revoked")
        old = await kube.get(CONFIG_MAP, "dur-vpn-server", namespace)
        assert old is not None
        number = pki.read_crl(old["data"]["crl.pem"].encode(), ca_pem=t.ca_pem).number

        # Someone deletes the server ConfigMap; the next pass puts it back with the CRL.
        await kube.delete(CONFIG_MAP, "dur-vpn-server", namespace)
        await _poke(kube, namespace, "dur")

        async def back() -> KubeObject | None:
            cm = await kube.get(CONFIG_MAP, "dur-vpn-server", namespace)
            fresh = cm is not None and cm["metadata"]["uid"] != old["metadata"]["uid"]
            return cm if fresh else None

        cm = await aeventually(back, timeout=10, what="server ConfigMap re-created")
        crl = pki.read_crl(cm["data"]["crl.pem"].encode(), ca_pem=t.ca_pem)
        assert set(crl.revoked) == {revoked}
        # Numbers never go back: the pass that re-creates the ConfigMap either re-publishes
        # the same CRL (its read still saw the old ConfigMap in the watch cache) or issues a
        # new one numbered above the book's last number.
        assert crl.number >= number
        assert _clients(cm) == ["dur-node-1", "dur-node-3"]


async def test_a_certificate_signed_just_before_its_machine_goes_is_revoked(
    kube: Kube,  # noqa: F811
    namespace: str,
) -> None:
    async with _ready_tenant(kube, namespace, "late") as t:
        # node-2 renews (a new certificate, reported from the next ensure() on) and its
        # Machine is deleted before any reconcile saw the new serial; and many renewals
        # before that must all stay revocable (no cut by count).
        renewals = [f"beef{i:04x}" for i in range(12)]
        t.side.signed[t.ref] = (*t.side.signed[t.ref], *(("late-node-2", s) for s in renewals))
        await kube.delete(MACHINE, "late-md-2", namespace)
        wanted = {int(t.serials["late-node-2"], 16), *(int(s, 16) for s in renewals)}
        crl = await _revoked(kube, namespace, "late", t.ca_pem, wanted, "every node-2 serial")
        assert crl == wanted  # and nothing of the other nodes


async def test_a_node_replaced_under_its_name_is_admitted_only_with_its_new_serial(
    kube: Kube,  # noqa: F811
    namespace: str,
) -> None:
    """node-2's Machine goes (its serial revoked) and a new Machine brings a node of the
    same name, whose agent gets a new certificate. The tenant side still reports the old
    node's serial under node-2 (its CSR outlives the node): the server's desired state
    must admit node-2 with the new serial only, never the revoked one."""
    async with _ready_tenant(kube, namespace, "again") as t:
        old = await t.remove_node_2(kube, "the old node-2 revoked")
        await capi.create_machine(kube, namespace, "again-md-2b", cluster="again",
                                  node="again-node-2", internal_ip="198.19.0.12")  # fmt: skip

        async def allocated() -> bool:
            cm = await kube.get(CONFIG_MAP, "again-vpn-server", namespace)
            return cm is not None and "again-node-2" in _clients(cm)

        await aeventually(allocated, timeout=10, what="the new Machine's node in desired.json")
        # Its agent's CSR is signed for the new Machine; the tenant side reports it.
        t.side.signed[t.ref] = (*t.side.signed[t.ref], ("again-node-2", "feed0002"))
        await _poke(kube, namespace, "again")
        seen: list[Any] = []

        async def node_2_serials() -> list[str] | None:
            cm = await kube.get(CONFIG_MAP, "again-vpn-server", namespace)
            if cm is None:
                return None
            doc = json.loads(cm["data"]["desired.json"])
            seen[:] = doc["clients"]
            for client in doc["clients"]:
                if client["common_name"] == "again-node-2" and "feed0002" in client["serials"]:
                    return list(client["serials"])
            return None

        serials = await aeventually(node_2_serials, timeout=10, what="the new node-2 admitted",
                                    diag=lambda: json.dumps(seen))  # fmt: skip
        assert serials == ["feed0002"], f"revoked {old:x} must not be admitted again"

        async def recorded() -> list[Any] | None:
            # The status is written after the ConfigMap, in the same pass.
            tunnel = await kube.get(TUNNEL, "again", namespace)
            allocations = ((tunnel or {}).get("status") or {}).get("allocations") or []
            mine = [a.get("serials") for a in allocations if a["node"] == "again-node-2"]
            return mine if any(mine) else None

        assert await aeventually(recorded, timeout=10, what="status.allocations") == [
            ["feed0002"]
        ]


async def test_with_the_agent_installed_by_its_chart_nodes_certificates_are_still_signed(
    kube: Kube,  # noqa: F811
    namespace: str,
) -> None:
    """spec.agent.install false (charts/agent installs the agent, as its values.yaml says):
    vpnctl installs nothing in the tenant cluster, but its tenant side keeps running, so
    the nodes' CSRs are signed and what it signs is admitted and revocable. (It used to
    skip the tenant side altogether: a chart-installed agent never got a certificate.)"""
    async with _ready_tenant(kube, namespace, "bychart") as t:
        await kube.patch_merge(
            TUNNEL, "bychart", {"spec": {"agent": {"install": False}}}, namespace=namespace
        )

        async def disabled() -> dict[str, Any] | None:
            tunnel = await kube.get(TUNNEL, "bychart", namespace)
            for c in ((tunnel or {}).get("status") or {}).get("conditions") or []:
                if c["type"] == "AgentInstalled" and c["reason"] == "Disabled":
                    return dict(c)
            return None

        condition = await aeventually(disabled, timeout=10, what="AgentInstalled Disabled")
        assert condition["status"] == "True"
        assert "signed" in condition["message"]
        calls_before = len(t.side.calls)
        # node-1 renews its certificate through the tenant side, agent or no agent.
        t.side.signed[t.ref] = (*t.side.signed[t.ref], ("bychart-node-1", "abcd0001"))
        await _poke(kube, namespace, "bychart")

        async def admitted() -> bool:
            cm = await kube.get(CONFIG_MAP, "bychart-vpn-server", namespace)
            doc = json.loads(cm["data"]["desired.json"]) if cm is not None else {"clients": []}
            return any("abcd0001" in c["serials"] for c in doc["clients"])

        await aeventually(admitted, timeout=10, what="the renewed serial admitted")
        later = t.side.calls[calls_before:]
        assert later, "the tenant side is still asked"
        assert all(call.kinds == () for call in later), "nothing is installed"


async def test_revocation_goes_on_while_the_spec_is_invalid(
    kube: Kube,  # noqa: F811
    namespace: str,
) -> None:
    async with _ready_tenant(kube, namespace, "inval") as t:

        async def all_three_listed() -> bool:
            cm = await kube.get(CONFIG_MAP, "inval-vpn-server", namespace)
            return cm is not None and _clients(cm) == t.nodes

        # Ready can come a pass before the last node's client reaches desired.json.
        await aeventually(all_three_listed, timeout=10, what="every node in desired.json")
        # A tenant-wide validation error: the tunnel CIDR overlaps the pod CIDR.
        overlapping = LAB_PODS_CIDR.split("/")[0] + "/24"
        await kube.patch_merge(
            TUNNEL, "inval", {"spec": {"tunnelCIDR": overlapping}}, namespace=namespace
        )
        await wait_condition(kube, namespace, "inval", "Ready", status="False")
        await t.remove_node_2(kube, "revoked while invalid")

        async def ccd_gone() -> list[str] | None:
            clients = _clients(await kube.get(CONFIG_MAP, "inval-vpn-server", namespace))
            return clients if clients == ["inval-node-1", "inval-node-3"] else None

        await aeventually(ccd_gone, timeout=10, what="node-2 out of desired.json")
        # The CSR signer was told the Machines of now, without ensure().
        latest = [names for ref, names in t.side.machine_lists if ref == t.ref][-1]
        assert latest == ("inval-md-1", "inval-md-3")
        still = await kube.get(TUNNEL, "inval", namespace)
        assert (still or {}).get("status", {}).get("conditions")
        ready: Any = next(c for c in still["status"]["conditions"] if c["type"] == "Ready")  # type: ignore[index]
        assert ready["status"] == "False"


async def test_a_vanished_ca_secret_is_an_alarm_not_a_new_ca(
    kube: Kube,  # noqa: F811
    namespace: str,
) -> None:
    async with _ready_tenant(kube, namespace, "lostca"):
        server_tls = await kube.get(SECRET, "lostca-vpn-server-tls", namespace)
        assert server_tls is not None
        await kube.delete(SECRET, "lostca-vpn-ca", namespace)
        await _poke(kube, namespace, "lostca")
        tunnel = await wait_condition(
            kube, namespace, "lostca", "PKIReady", status="False", reason="CASecretMissing"
        )
        pki_ready: Any = next(c for c in tunnel["status"]["conditions"] if c["type"] == "PKIReady")
        assert "lostca-vpn-ca" in pki_ready["message"]
        assert "Restore the Secret" in pki_ready["message"]

        await _event_seen(kube, namespace, "lostca", "CASecretMissing")
        # No new CA, and the server certificate of the old one is left alone.
        assert await kube.get(SECRET, "lostca-vpn-ca", namespace) is None
        again = await kube.get(SECRET, "lostca-vpn-server-tls", namespace)
        assert again is not None
        assert again["data"] == server_tls["data"]


async def test_a_deleted_revocation_book_is_recreated_from_the_crl_and_reported(
    kube: Kube,  # noqa: F811
    namespace: str,
) -> None:
    async with _ready_tenant(kube, namespace, "book") as t:
        revoked = await t.remove_node_2(kube, "node-2 revoked")
        old = await kube.get(CONFIG_MAP, "book-vpn-revocations", namespace)
        assert old is not None
        assert format(revoked, "x") in old["data"]["revocations.json"]

        await kube.delete(CONFIG_MAP, "book-vpn-revocations", namespace)
        await _poke(kube, namespace, "book")

        async def recreated() -> KubeObject | None:
            cm = await kube.get(CONFIG_MAP, "book-vpn-revocations", namespace)
            return (
                cm if cm is not None and cm["metadata"]["uid"] != old["metadata"]["uid"] else None
            )

        book = await aeventually(recreated, timeout=10, what="revocation book re-created")
        doc = json.loads(book["data"]["revocations.json"])
        assert [r["serial"] for r in doc["revoked"]] == [format(revoked, "x")]
        assert await _crl(kube, namespace, "book", t.ca_pem) == frozenset({revoked})

        await _event_seen(kube, namespace, "book", "RevocationsRecreated")


async def test_a_revoked_serial_stays_in_the_crl_until_its_own_certificate_expires(
    kube: Kube,  # noqa: F811
    namespace: str,
) -> None:
    """Node certificates live --node-cert-lifetime (30 days) while a Tunnel's
    clientLifetime may be a day: the old CRL dropped the serial after the latter. The
    controller's revocation step, on the real apiserver, with a clock that jumps."""
    clock = ManualClock(wall=datetime(2030, 1, 1, tzinfo=UTC))
    start = clock.now()
    ca = certs.new_ca(common_name="keep-vpn-ca", now=start, lifetime=timedelta(days=365))
    tunnel = await kube.create(
        TUNNEL,
        {"metadata": {"name": "keep", "namespace": namespace}, "spec": {"clusterName": "keep"}},
    )
    ref = TenantRef(namespace, "keep")
    owner = TunnelOwner(namespace=namespace, cluster="keep", tunnel_uid=tunnel["metadata"]["uid"])
    store = RevocationStore(kube=kube, clock=clock, rng=random.Random(3))
    machines = [
        capi.machine(name=f"m-{i}", node=f"node-{i}", internal_ip=f"198.19.0.{10 + i}")
        for i in (1, 2)
    ]
    cert = IssuedCert(serial=0x7E57, node="node-2", machine="m-2", not_after=start + 30 * DAY)
    crl_pem: bytes | None = None

    async def step(at: timedelta, live: list[Any]) -> frozenset[int]:
        nonlocal crl_pem
        result = await revoke_and_plan_crl(
            store,
            tenant=ref,
            owner=owner,
            ca=ca,
            current_crl_pem=crl_pem,
            machines=live,
            reported=[cert],
            now=start + at,
            crl_lifetime=timedelta(days=7),
        )
        crl_pem = result.crl.pem
        return certs.crl_serials(crl_pem, ca_pem=ca.cert_pem)

    assert await step(timedelta(0), machines) == frozenset()
    assert await step(timedelta(hours=1), machines[:1]) == {0x7E57}  # Machine m-2 gone
    assert await step(2 * DAY, machines[:1]) == {0x7E57}  # past a 1-day clientLifetime
    assert await step(29 * DAY, machines[:1]) == {0x7E57}
    book = await store.read(ref)
    assert book is not None
    assert set(book.revoked) == {0x7E57}
    assert book.revoked[0x7E57].not_after == start + 30 * DAY
    # Only once the certificate itself has expired does the serial leave.
    after = 30 * DAY + certs.CLOCK_SKEW + timedelta(seconds=1)
    assert await step(after, machines[:1]) == frozenset()


async def _deleting_with_conditions(
    kube: Kube,  # noqa: F811
    namespace: str,
    machine: str,
    conditions: list[dict[str, Any]],
) -> None:
    """Give MACHINE a finalizer (as CAPI's does) and the v1beta1 CONDITIONS, then delete
    it: it stays, with a deletionTimestamp, until the test removes the finalizer."""
    await kube.patch_merge(
        MACHINE, machine, {"metadata": {"finalizers": ["test/drain"]}}, namespace=namespace
    )
    await _set_conditions(kube, namespace, machine, conditions)
    await kube.delete(MACHINE, machine, namespace)


async def _set_conditions(
    kube: Kube,  # noqa: F811
    namespace: str,
    machine: str,
    conditions: list[dict[str, Any]],
) -> None:
    now = datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    await kube.apply_status(
        MACHINE,
        {
            "metadata": {"name": machine, "namespace": namespace},
            "status": {"conditions": [{**c, "lastTransitionTime": now} for c in conditions]},
        },
        field_manager="capi-fake-drain",
    )


async def _release(kube: Kube, namespace: str, machine: str) -> None:  # noqa: F811
    with contextlib.suppress(Exception):
        await kube.patch_merge(
            MACHINE, machine, {"metadata": {"finalizers": None}}, namespace=namespace
        )


async def test_a_draining_node_keeps_its_tunnel_until_the_drain_succeeds(
    kube: Kube,  # noqa: F811
    namespace: str,
) -> None:
    """Issue 12 item 5: kubectl logs/exec on a draining node work until the drain ends."""
    async with _ready_tenant(kube, namespace, "drain") as t:
        serial = int(t.serials["drain-node-2"], 16)
        try:
            await _deleting_with_conditions(
                kube,
                namespace,
                "drain-md-2",
                [{"type": "DrainingSucceeded", "status": "False", "reason": "Draining"}],
            )
            # The controller has seen the deleted Machine and decided to wait.
            await _event_seen(kube, namespace, "drain", "NodeRevocationDeferred")
            # A pass that ran after it (each ends with ensure()) revoked nothing.
            before = t.side.ensures(t.ref)
            await _poke(kube, namespace, "drain")
            await aeventually(
                lambda: t.side.ensures(t.ref) > before, timeout=10, what="a pass after the poke"
            )
            assert serial not in (await _crl(kube, namespace, "drain", t.ca_pem) or ())
            cm = await kube.get(CONFIG_MAP, "drain-vpn-server", namespace)
            assert "drain-node-2" in _clients(cm)

            # CAPI reports the drain done: revoked, and out of desired.json.
            await _set_conditions(
                kube, namespace, "drain-md-2", [{"type": "DrainingSucceeded", "status": "True"}]
            )
            await _revoked(kube, namespace, "drain", t.ca_pem, {serial}, "node-2 revoked")

            async def ccd_gone() -> bool:
                cm = await kube.get(CONFIG_MAP, "drain-vpn-server", namespace)
                return "drain-node-2" not in _clients(cm)

            await aeventually(ccd_gone, timeout=10, what="node-2 out of desired.json")
            await _event_seen(kube, namespace, "drain", "NodeRevocationDue")
        finally:
            await _release(kube, namespace, "drain-md-2")


async def test_a_drain_that_never_ends_is_cut_at_the_tunnels_bound(
    kube: Kube,  # noqa: F811
    namespace: str,
) -> None:
    async with _ready_tenant(kube, namespace, "bound") as t:
        serial = int(t.serials["bound-node-2"], 16)
        await kube.patch_merge(
            TUNNEL, "bound", {"spec": {"nodeRevocation": {"maxDelay": "3s"}}}, namespace=namespace
        )
        try:
            await _deleting_with_conditions(
                kube,
                namespace,
                "bound-md-2",
                [{"type": "DrainingSucceeded", "status": "False", "reason": "Draining"}],
            )
            await _event_seen(kube, namespace, "bound", "NodeRevocationDeferred")
            # Nothing changes on the Machine: the pass the controller scheduled for the
            # bound revokes it.
            await _revoked(kube, namespace, "bound", t.ca_pem, {serial}, "node-2 revoked")
        finally:
            await _release(kube, namespace, "bound-md-2")
