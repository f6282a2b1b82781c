"""Fakes of the controller's own two seams, and helpers to run it against the real apiserver.

``FakeTenantSide`` and ``FakeObservations`` stand in for the tenant cluster and the
server pods (our interfaces, so fakes are right); everything in the service cluster is
real: the apiserver, the CRDs, the garbage collector of kube-controller-manager.

``FakeTenantSide`` lives in ``tests/support/fake_tenant_side.py`` (``bench/`` uses it
too) and is re-exported here, where the tests import it from.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import io
import random
import time
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

import pytest_asyncio
from prometheus_client import CollectorRegistry

import certs
from tests.support.capi import (  # re-exported for test_tenant_budgets until its owner switches
    create_cluster as create_cluster,
)
from tests.support.capi import create_kubeconfig_secret as create_kubeconfig_secret
from tests.support.capi import create_machine as create_machine
from tests.support.capi import create_tenant as create_tenant
from tests.support.fake_tenant_side import EnsureCall as EnsureCall
from tests.support.fake_tenant_side import FakeTenantSide as FakeTenantSide
from tests.support.polling import aeventually
from vpnctl.controller.interfaces import TenantRef, TenantSide
from vpnctl.controller.operator import Controller, ControllerSettings
from vpnctl.controller.tenant_reconciler import TenantSettings
from vpnctl.kube import (
    CONFIG_MAP,
    MACHINE,
    SECRET,
    TUNNEL,
    Kube,
    KubeObject,
    SystemClock,
    WatchSource,
    connect,
)
from vpnctl.reconcile.settings import Settings
from vpnctl.reconcile.status import NodeObservation
from vpnctl.testenv import ServiceCluster


@dataclass
class FakeObservations:
    """What the server pods would report. Per tenant, or ``default`` for any tenant; a
    tenant in ``failing`` raises like a server that does not answer."""

    default: dict[str, NodeObservation] = field(default_factory=dict)
    per_tenant: dict[TenantRef, dict[str, NodeObservation]] = field(default_factory=dict)
    failing: set[TenantRef] = field(default_factory=set)
    asked: int = 0

    async def observe(self, tenant: TenantRef) -> Mapping[str, NodeObservation]:
        self.asked += 1
        if tenant in self.failing:
            raise ConnectionRefusedError(f"server of {tenant} refused the connection (fake)")
        return dict(self.per_tenant.get(tenant, self.default))

    def set(self, tenant: TenantRef, connected: Mapping[str, bool]) -> None:
        self.per_tenant[tenant] = {
            node: NodeObservation(node=node, connected=up, rtt_seconds=0.002 if up else None,
                                  kubelet_reachable=up)
            for node, up in connected.items()
        }  # fmt: skip


def all_connected(nodes: Sequence[str]) -> dict[str, NodeObservation]:
    return {
        n: NodeObservation(node=n, connected=True, rtt_seconds=0.002, kubelet_reachable=True)
        for n in nodes
    }


def controller_settings(
    namespace: str | None, *, identity: str = "test-controller", **overrides: Any
) -> ControllerSettings:
    tenant = TenantSettings(
        build=Settings(agent_image="vpnctl:test"),
        instance=identity,
        # No load balancer controller here: the server Service is a ClusterIP, whose
        # address the node config can use at once.
        tunnel_defaults={"expose": {"serviceType": "ClusterIP"}},
        tenant_side_timeout=5.0,
        observe_timeout=2.0,
    )
    base = ControllerSettings(
        tenant=tenant,
        identity=identity,
        namespace=namespace,
        leader_elect=False,
        lease_namespace=namespace or "default",
        resync_period=3600.0,
        observe_interval=0.5,
        workers=4,
        backoff_base=0.2,
        backoff_cap=5.0,
        health_host="127.0.0.1",
        health_port=0,
        watch_timeout_seconds=30,
        shutdown_grace=5.0,
    )
    tenant_overrides = {k: overrides.pop(k) for k in list(overrides) if hasattr(tenant, k)}
    if tenant_overrides:
        base = replace(base, tenant=replace(tenant, **tenant_overrides))
    return replace(base, **overrides)


@dataclass
class Running:
    controller: Controller
    task: asyncio.Task[None]
    stop: asyncio.Event
    registry: CollectorRegistry

    async def shutdown(self, timeout: float = 20.0) -> None:
        self.stop.set()
        await asyncio.wait_for(asyncio.shield(self.task), timeout)

    def metric(self, name: str, labels: Mapping[str, str] | None = None) -> float:
        return self.registry.get_sample_value(name, dict(labels or {})) or 0.0

    def reconciles_ok(self) -> float:
        return self.metric("vpnctl_reconciles_total", {"result": "ok"})

    def writes(self) -> float:
        """Every write to the service cluster the controller counted (all kinds)."""
        return sum(
            sample.value
            for family in self.registry.collect()
            if family.name == "vpnctl_writes"
            for sample in family.samples
            if sample.name == "vpnctl_writes_total"
        )

    async def wait_reconciles(self, count: int, *, timeout: float = 20.0) -> None:
        """Until COUNT more reconciles have finished ok (on a quiet world: resyncs)."""
        target = self.reconciles_ok() + count
        await aeventually(
            lambda: self.reconciles_ok() >= target,
            what=f"{count} more ok reconciles (now {self.reconciles_ok()})",
            timeout=timeout,
            interval=0.05,
        )

    async def wait_settled(self, *, quiet_reconciles: int = 2, timeout: float = 20.0) -> None:
        """Until QUIET_RECONCILES reconciles in a row wrote nothing: the controller's own
        last writes (and the watch events they caused) are behind it."""
        mark = (self.writes(), self.reconciles_ok())

        def settled() -> bool:
            nonlocal mark
            writes, reconciles = self.writes(), self.reconciles_ok()
            if writes != mark[0]:
                mark = (writes, reconciles)
                return False
            return reconciles - mark[1] >= quiet_reconciles

        await aeventually(settled, what="reconciles that write nothing", timeout=timeout)


@contextlib.asynccontextmanager
async def running_controller(
    kube: Kube,
    settings: ControllerSettings,
    *,
    side: TenantSide,
    observations: FakeObservations,
    watch_source: WatchSource | None = None,
    registry: CollectorRegistry | None = None,
) -> AsyncIterator[Running]:
    """The controller as a task on this loop; stopped (gracefully) afterwards."""
    registry = registry or CollectorRegistry()
    controller = Controller(
        settings=settings,
        kube=kube,
        registry=registry,
        clock=SystemClock(),
        tenant_side=side,
        observations=observations,
        rng=random.Random(7),
        watch_source=watch_source,
    )
    stop = asyncio.Event()
    task = asyncio.create_task(controller.run(stop=stop), name=f"controller-{settings.identity}")
    run = Running(controller=controller, task=task, stop=stop, registry=registry)
    try:
        yield run
    finally:
        if not task.done():
            stop.set()
            # Bounded both ways: a graceful stop that takes long is cut short, and a
            # controller that does not end even when cancelled fails here with where it
            # was stuck, instead of hanging the suite until pytest-timeout.
            done, _ = await asyncio.wait({task}, timeout=30)
            if not done:
                task.cancel()
                done, _ = await asyncio.wait({task}, timeout=10)
                if not done:
                    stack = io.StringIO()
                    task.print_stack(file=stack)
                    raise AssertionError(
                        f"the controller did not stop when cancelled:\n{stack.getvalue()}"
                    )
        elif not task.cancelled() and task.exception() is not None:
            raise task.exception()  # type: ignore[misc]


async def tunnel(kube: Kube, namespace: str, name: str) -> KubeObject | None:
    return await kube.get(TUNNEL, name, namespace)


def condition(tunnel_obj: Mapping[str, Any] | None, type_: str) -> Mapping[str, Any] | None:
    for c in ((tunnel_obj or {}).get("status") or {}).get("conditions") or []:
        if c.get("type") == type_:
            return dict(c)
    return None


async def _wait_tunnel(
    kube: Kube,
    namespace: str,
    name: str,
    type_: str,
    *,
    status: str,
    accept: Callable[[Mapping[str, Any], Mapping[str, Any]], bool],
    timeout: float,
    what: str,
) -> KubeObject:
    """Tunnel NAME once its condition TYPE_ has STATUS and ACCEPT(condition, status)."""

    async def probe() -> KubeObject | None:
        obj = await tunnel(kube, namespace, name)
        c = condition(obj, type_)
        if obj is None or c is None or c.get("status") != status:
            return None
        return obj if accept(c, obj.get("status") or {}) else None

    found: KubeObject = await aeventually(probe, timeout=timeout, what=what)
    return found


async def wait_ready(
    kube: Kube,
    namespace: str,
    name: str,
    *,
    nodes: int | None = None,
    connected: int | None = None,
    timeout: float = 30.0,
) -> KubeObject:
    """The Tunnel once Ready (with ``nodes`` rows, ``connected`` of them connected)."""

    def counts(_: Mapping[str, Any], status: Mapping[str, Any]) -> bool:
        return (nodes is None or status.get("nodeCount") == nodes) and (
            connected is None or status.get("connectedCount") == connected
        )

    return await _wait_tunnel(
        kube,
        namespace,
        name,
        "Ready",
        status="True",
        accept=counts,
        timeout=timeout,
        what=f"Tunnel {namespace}/{name} Ready",
    )


async def wait_condition(
    kube: Kube,
    namespace: str,
    name: str,
    type_: str,
    *,
    status: str,
    reason: str | None = None,
    timeout: float = 20.0,
) -> KubeObject:
    return await _wait_tunnel(
        kube,
        namespace,
        name,
        type_,
        status=status,
        accept=lambda c, _: reason is None or c.get("reason") == reason,
        timeout=timeout,
        what=f"{type_}={status} ({reason}) on Tunnel {namespace}/{name}",
    )


@dataclass(frozen=True)
class Revocation:
    config_map: KubeObject  # the server ConfigMap whose CRL first listed the serial
    ca_pem: bytes  # the tenant CA that signed that CRL
    took: float  # seconds from the Machine's deletion to the serial in the CRL


async def delete_machine_until_revoked(
    kube: Kube, namespace: str, *, cluster: str, machine: str, serial: str, interval: float
) -> Revocation:
    """Delete MACHINE of CLUSTER and wait until SERIAL (hex) is in the server's CRL."""
    ca_secret = await kube.get(SECRET, f"{cluster}-vpn-ca", namespace)
    assert ca_secret is not None
    ca_pem = base64.b64decode(ca_secret["data"]["tls.crt"])
    started = time.monotonic()
    await kube.delete(MACHINE, machine, namespace)

    async def revoked() -> KubeObject | None:
        cm = await kube.get(CONFIG_MAP, f"{cluster}-vpn-server", namespace)
        assert cm is not None
        listed = certs.crl_serials(cm["data"]["crl.pem"].encode(), ca_pem=ca_pem)
        return cm if int(serial, 16) in listed else None

    cm = await aeventually(revoked, timeout=10, interval=interval, what="serial in the CRL")
    return Revocation(config_map=cm, ca_pem=ca_pem, took=time.monotonic() - started)


async def events_for(kube: Kube, namespace: str, *, name: str | None = None) -> list[KubeObject]:
    from vpnctl.kube import EVENT

    items, _ = await kube.list(EVENT, namespace)
    return [e for e in items if name is None or (e.get("involvedObject") or {}).get("name") == name]


@pytest_asyncio.fixture(scope="session", loop_scope="session")
async def gc_knows_tunnels(service_cluster: ServiceCluster) -> None:
    """Wait until kube-controller-manager's garbage collector can delete Tunnels.

    The test harness installs the CRDs after kube-controller-manager started, and the
    garbage collector learns about new kinds only by rediscovering every 30 s; until then
    owner references to or from Tunnels are not acted on (a real cluster has its CRDs
    long before). Each try uses fresh objects, so no GC backoff carries over.
    """
    async with await connect(kubeconfig=str(service_cluster.kubeconfig_path)) as client:
        namespace = "default"
        deadline = time.monotonic() + 90
        attempt = 0
        while True:
            attempt += 1
            name = f"gc-probe-{attempt}-{time.time_ns()}"
            owner = await client.create(
                CONFIG_MAP, {"metadata": {"name": name, "namespace": namespace}}
            )
            meta = owner["metadata"]
            probe = await client.create(
                TUNNEL,
                {
                    "metadata": {
                        "name": meta["name"],
                        "namespace": namespace,
                        "ownerReferences": [
                            {"apiVersion": "v1", "kind": "ConfigMap", "name": meta["name"],
                             "uid": meta["uid"]}
                        ],
                    },
                    "spec": {"clusterName": meta["name"]},
                },
            )  # fmt: skip
            await client.delete(CONFIG_MAP, meta["name"], namespace)
            for _ in range(20):
                await asyncio.sleep(0.1)
                if await client.get(TUNNEL, probe["metadata"]["name"], namespace) is None:
                    return
            await client.delete(TUNNEL, probe["metadata"]["name"], namespace)
            if time.monotonic() > deadline:
                raise AssertionError("the garbage collector never learned about Tunnels")
