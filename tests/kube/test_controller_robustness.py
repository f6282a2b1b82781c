"""Robustness against the real apiserver: leader failover, 410 relist and /healthz,
and bad input that becomes a condition and an Event, never a crash loop."""

from __future__ import annotations

import asyncio
import base64
import time

import aiohttp
import pytest

from tests.support.capi import (
    create_kubeconfig_secret,
    create_machine,
    create_tenant,
    set_machine_status,
)
from tests.support.polling import aeventually
from vpnctl.controller.interfaces import TenantRef
from vpnctl.controller.operator import ControllerSettings
from vpnctl.kube import (
    MACHINE,
    SECRET,
    TUNNEL,
    Kube,
    KubeObject,
    Resource,
)

from .controllerfix import (
    FakeObservations,
    FakeTenantSide,
    all_connected,
    condition,
    controller_settings,
    events_for,
    running_controller,
    wait_condition,
    wait_ready,
)
from .kubefix import PassThroughSource, kube  # noqa: F401

pytestmark = pytest.mark.kube


async def _get(url: str) -> tuple[int, str]:
    async with aiohttp.ClientSession() as session, session.get(url) as response:
        return response.status, await response.text()


# --- leader election ------------------------------------------------------------------------


async def test_leader_failover_after_a_crash_and_handover_on_shutdown(
    kube: Kube,  # noqa: F811
    namespace: str,
) -> None:
    observations = FakeObservations(default=all_connected(["lead-node-1"]))
    observations.per_tenant[TenantRef(namespace, "after")] = all_connected(["after-node-1"])
    observations.per_tenant[TenantRef(namespace, "later")] = all_connected(["later-node-1"])

    def settings(identity: str, *, release: bool) -> ControllerSettings:
        return controller_settings(
            namespace,
            identity=identity,
            leader_elect=True,
            release_lease_on_shutdown=release,
        )

    side_a, side_b = FakeTenantSide(), FakeTenantSide()
    async with running_controller(
        kube,
        settings("replica-a", release=False),
        side=side_a,
        observations=observations,
    ) as a:
        await aeventually(lambda: a.controller.is_leader, what="replica-a leading", timeout=20)
        await create_tenant(kube, namespace, "lead", nodes=1)
        await wait_ready(kube, namespace, "lead", nodes=1)
        async with running_controller(
            kube,
            settings("replica-b", release=True),
            side=side_b,
            observations=observations,
        ) as b:
            # A standby staying standby shows nothing to wait for (its elector is internal
            # to the controller): 2.5 s is more than the 2 s retry period, so b has tried.
            await asyncio.sleep(2.5)
            assert not b.controller.is_leader
            assert side_b.calls == []  # a standby reconciles nothing
            status, _ = await _get(b.controller.health.url + "/healthz")
            assert status == 200

            # replica-a crashes: cancelled, the lease is not handed back.
            crashed = time.monotonic()
            a.task.cancel()
            await asyncio.gather(a.task, return_exceptions=True)
            await aeventually(
                lambda: b.controller.is_leader, timeout=20, interval=0.05, what="replica-b leading"
            )
            failover = time.monotonic() - crashed
            await create_tenant(kube, namespace, "after", nodes=1)
            await wait_ready(kube, namespace, "after", nodes=1)
            print(f"\nleader failover after a crash: {failover:.2f}s (lease 10s, retry 2s)")
            assert failover < 15.0

            # Graceful shutdown hands the lease over: a new standby takes over fast.
            side_c = FakeTenantSide()
            async with running_controller(
                kube,
                settings("replica-c", release=True),
                side=side_c,
                observations=observations,
            ) as c:
                await asyncio.sleep(0.5)  # as above: c starts, and does not take over
                assert not c.controller.is_leader
                stopped = time.monotonic()
                await b.shutdown()
                await aeventually(
                    lambda: c.controller.is_leader,
                    timeout=10,
                    interval=0.05,
                    what="replica-c leading",
                )
                handover = time.monotonic() - stopped
                await create_tenant(kube, namespace, "later", nodes=1)
                await wait_ready(kube, namespace, "later", nodes=1)
                print(f"leader handover on graceful shutdown: {handover:.2f}s")
                assert handover < 5.0
                # Losing leadership stopped b's tenant-side watches.
                assert TenantRef(namespace, "after") in side_b.forgotten


# --- 410 Gone and /healthz ----------------------------------------------------------------------


class GoneOnceThenFreezable(PassThroughSource):
    """The real Kube, except: the first Tunnel watch asks for resourceVersion "1", which
    the real apiserver answers with 410 Gone for a CRD installed after it started (see
    tests/kube/test_kube_watch.py), after a Tunnel was created in the gap. ``frozen``
    makes Machine watch streams hang silently, like a half-open connection."""

    def __init__(self, client: Kube, gap: KubeObject) -> None:
        super().__init__(client)
        self.gap = gap
        self.tunnel_watches = 0
        self.frozen = asyncio.Event()
        self.thawed = asyncio.Event()

    async def before_watch(self, res: Resource, resource_version: str) -> str:
        if res == TUNNEL:
            self.tunnel_watches += 1
            if self.tunnel_watches == 1:
                await self.kube.create(TUNNEL, self.gap)
                resource_version = "1"
        await self.after_event(res)  # a frozen Machine watch hangs from its start, too
        return resource_version

    async def after_event(self, res: Resource) -> None:
        if res == MACHINE and self.frozen.is_set():
            await self.thawed.wait()


async def test_a_410_relists_and_watch_liveness_feeds_healthz(
    kube: Kube,  # noqa: F811
    namespace: str,
) -> None:
    # A Cluster that opted out; its Tunnel is made by hand while the watch is "away".
    await create_tenant(
        kube, namespace, "gap", nodes=1, annotations={"vpnctl.io/auto-tunnel": "false"}
    )
    gap = {
        "metadata": {"name": "gap", "namespace": namespace},
        "spec": {"clusterName": "gap", "expose": {"serviceType": "ClusterIP"}},
    }
    source = GoneOnceThenFreezable(kube, gap)
    observations = FakeObservations(default=all_connected(["gap-node-1"]))
    settings = controller_settings(namespace, watch_timeout_seconds=1, watch_max_silence=3.0)
    async with running_controller(
        kube, settings, side=FakeTenantSide(), observations=observations, watch_source=source
    ) as run:
        await wait_ready(kube, namespace, "gap", nodes=1)
        assert source.saw_410
        url = run.controller.health.url
        status, body = await _get(url + "/metrics")
        assert status == 200
        assert 'vpnctl_watch_restarts_total{reason="gone",resource="tunnels.vpnctl.io"} 1.0' in body
        term = run.controller.term
        assert term is not None
        tunnels = next(w for p, w in term.watchers if p.res == TUNNEL)
        assert tunnels.store.get("gap", namespace) is not None  # the relist found it
        assert await _get(url + "/healthz") == (200, "ok\n")

        # A watch that goes silent (no events, no bookmarks, no end of stream) fails
        # /healthz once it has been quiet longer than watch_max_silence...
        source.frozen.set()

        async def unhealthy() -> str | None:
            status, body = await _get(url + "/healthz")
            return body if status == 503 else None

        body = await aeventually(unhealthy, timeout=15, interval=0.2, what="/healthz 503")
        assert "machines.cluster.x-k8s.io" in body
        assert "tunnels" not in body  # the others stream on
        # ...and passes again once it streams.
        source.frozen.clear()
        source.thawed.set()

        async def healthy() -> bool:
            return (await _get(url + "/healthz"))[0] == 200

        await aeventually(healthy, timeout=10, interval=0.2, what="/healthz 200")


# --- bad input ----------------------------------------------------------------------------


async def _event_reasons(kube: Kube, namespace: str, name: str) -> set[str]:  # noqa: F811
    return {str(e.get("reason")) for e in await events_for(kube, namespace, name=name)}


async def test_bad_input_becomes_conditions_and_events_and_others_carry_on(
    kube: Kube,  # noqa: F811
    namespace: str,
) -> None:
    observations = FakeObservations(
        default=all_connected([f"{c}-node-{i}" for c in ("fine", "unreach", "noaddr", "corrupt",
                                                          "newcomer") for i in (1, 2)])
    )  # fmt: skip
    side = FakeTenantSide(unreachable={TenantRef(namespace, "unreach")})
    settings = controller_settings(namespace)
    async with running_controller(kube, settings, side=side, observations=observations) as run:
        await create_tenant(kube, namespace, "fine", nodes=2)
        # Overlapping CIDRs: the pod CIDR contains the default tunnel CIDR.
        await create_tenant(kube, namespace, "overlap", nodes=1, pods=["100.64.0.0/10"])
        # A Cluster without clusterNetwork.
        await create_tenant(kube, namespace, "nonet", nodes=1, pods=None, services=None)
        # No kubeconfig Secret yet, and one whose Secret is garbage.
        await create_tenant(kube, namespace, "nokc", nodes=1, kubeconfig=False)
        await create_tenant(kube, namespace, "badkc", nodes=1, kubeconfig=False)
        await create_kubeconfig_secret(kube, namespace, "badkc", text="{not: [a kubeconfig")
        # A tenant apiserver that does not answer.
        await create_tenant(kube, namespace, "unreach", nodes=2)
        # A Machine that has joined but has no addresses yet.
        await create_tenant(kube, namespace, "noaddr", nodes=1)
        await create_machine(kube, namespace, "noaddr-md-2", cluster="noaddr",
                             node="noaddr-node-2", internal_ip=None)  # fmt: skip
        await create_tenant(kube, namespace, "corrupt", nodes=2)

        overlap = await wait_condition(kube, namespace, "overlap", "Ready", status="False",
                                       reason="CIDROverlap")  # fmt: skip
        ready = condition(overlap, "Ready")
        assert ready is not None
        assert "100.127.255.0/24 overlaps" in ready["message"]
        assert "spec.tunnelCIDR" in ready["message"]
        fine = await wait_ready(kube, namespace, "fine", nodes=2)  # Ready amid the bad ones
        fine_ready_since = (condition(fine, "Ready") or {}).get("lastTransitionTime")
        assert fine_ready_since
        await wait_condition(kube, namespace, "nonet", "Ready", status="False",
                             reason="MissingClusterNetwork")  # fmt: skip
        await wait_condition(kube, namespace, "nokc", "AgentInstalled", status="False",
                             reason="WaitingForKubeconfig")  # fmt: skip
        await wait_condition(kube, namespace, "badkc", "AgentInstalled", status="False",
                             reason="InvalidKubeconfig")  # fmt: skip
        await wait_condition(kube, namespace, "unreach", "AgentInstalled", status="False",
                             reason="TenantUnreachable")  # fmt: skip
        # The server side of a tenant with a bad kubeconfig is built all the same.
        nokc = await wait_condition(kube, namespace, "nokc", "PKIReady", status="True")
        assert condition(nokc, "ServerReady") is not None
        # The tenant side is never called without a usable kubeconfig.
        called = {c.tenant.cluster for c in side.calls}
        assert "nokc" not in called
        assert "badkc" not in called

        # The unreachable tenant is retried, with backoff (not in a tight loop).
        unreach = TenantRef(namespace, "unreach")
        first = side.ensures(unreach)
        # A rate over a fixed window is the point here (retried, but backed off), so this
        # one waits by the clock.
        await asyncio.sleep(3.0)
        retries = side.ensures(unreach) - first
        assert 1 <= retries <= 8, retries
        assert run.controller.term is not None
        assert run.controller.term.queue.failures(unreach) >= 1

        # The Machine without addresses is pending and reported; its tenant is Ready.
        noaddr = await wait_ready(kube, namespace, "noaddr", nodes=2)
        rows = {r["name"]: r for r in noaddr["status"]["nodes"]}
        assert "tunnelIP" not in rows["noaddr-node-2"]
        assert rows["noaddr-node-2"]["connected"] is False
        assert [a["node"] for a in noaddr["status"]["allocations"]] == ["noaddr-node-1"]
        machine_events = await _event_reasons(kube, namespace, "noaddr-md-2")
        assert "WaitingForAddresses" in machine_events

        # A corrupt CA is reported and never re-issued over.
        await wait_ready(kube, namespace, "corrupt", nodes=2)
        good_ca = await kube.get(SECRET, "corrupt-vpn-ca", namespace)
        assert good_ca is not None
        garbage = base64.b64encode(b"-----BEGIN CERTIFICATE-----\ngarbage\n").decode()
        await kube.patch_merge(
            SECRET, "corrupt-vpn-ca", {"data": {"tls.crt": garbage}}, namespace=namespace
        )
        broken = await wait_condition(kube, namespace, "corrupt", "PKIReady", status="False",
                                      reason="CorruptPKISecret")  # fmt: skip
        pki = condition(broken, "PKIReady")
        assert pki is not None
        assert "restore the Secret" in pki["message"]
        assert "BEGIN" not in pki["message"]  # no key material in status
        # Nothing to observe: a re-issue would be a write that did not happen. The pass
        # that reported the condition has finished; this gives the one its own status
        # write triggers (a Tunnel watch event) time to run too.
        await asyncio.sleep(1.0)
        still = await kube.get(SECRET, "corrupt-vpn-ca", namespace)
        assert still is not None
        assert still["data"]["tls.crt"] != good_ca["data"]["tls.crt"]  # left alone
        assert still["data"]["tls.key"] == good_ca["data"]["tls.key"]

        # Every problem is an Event on its Tunnel.
        assert "CIDROverlap" in await _event_reasons(kube, namespace, "overlap")
        assert "MissingClusterNetwork" in await _event_reasons(kube, namespace, "nonet")
        assert "WaitingForKubeconfig" in await _event_reasons(kube, namespace, "nokc")
        assert "InvalidKubeconfig" in await _event_reasons(kube, namespace, "badkc")
        assert "TenantUnreachable" in await _event_reasons(kube, namespace, "unreach")
        assert "CorruptPKISecret" in await _event_reasons(kube, namespace, "corrupt")

        # The controller keeps going: the healthy tenant stayed Ready, a newcomer converges.
        fine_ready = condition(await kube.get(TUNNEL, "fine", namespace), "Ready")
        assert fine_ready is not None
        assert fine_ready["status"] == "True", fine_ready
        # ...and never left it: the condition has not transitioned since it first was True.
        assert fine_ready["lastTransitionTime"] == fine_ready_since, fine_ready
        assert "Warning" not in {
            str(e.get("type")) for e in await events_for(kube, namespace, name="fine")
        }
        await wait_ready(kube, namespace, "fine", nodes=2)
        await create_tenant(kube, namespace, "newcomer", nodes=2)
        await wait_ready(kube, namespace, "newcomer", nodes=2)
        assert not run.task.done()
        assert (await _get(run.controller.health.url + "/healthz"))[0] == 200

        # And every fix is picked up.
        await create_kubeconfig_secret(kube, namespace, "nokc")
        await create_kubeconfig_secret(kube, namespace, "badkc")
        side.unreachable.clear()
        await set_machine_status(kube, namespace, "noaddr-md-2", node="noaddr-node-2",
                                 internal_ip="198.19.0.99")  # fmt: skip
        await kube.apply(
            SECRET,
            {"metadata": {"name": "corrupt-vpn-ca", "namespace": namespace},
             "data": {"tls.crt": good_ca["data"]["tls.crt"]}},
            field_manager="restore",
        )  # fmt: skip
        for name in ("nokc", "badkc"):
            observations.per_tenant[TenantRef(namespace, name)] = all_connected([f"{name}-node-1"])
        for name in ("nokc", "badkc", "unreach", "corrupt"):
            await wait_ready(kube, namespace, name)
        await wait_ready(kube, namespace, "noaddr", nodes=2)

        async def both_allocated() -> bool:
            tunnel = await kube.get(TUNNEL, "noaddr", namespace)
            allocations = (tunnel or {}).get("status", {}).get("allocations", [])
            return sorted(a["node"] for a in allocations) == ["noaddr-node-1", "noaddr-node-2"]

        await aeventually(
            both_allocated, what="noaddr's second node allocated a tunnel IP", timeout=20
        )
        metrics = (await _get(run.controller.health.url + "/metrics"))[1]
        assert 'vpnctl_tenants{condition="Ready",status="False"} 2.0' in metrics  # overlap, nonet
