"""How long the controller takes to converge many tenants, and how much memory it holds.

The service cluster is real (kube-apiserver, etcd, kube-controller-manager from the test
harness); the tenant side and the servers' observations are stand-ins, because the
question is the controller's own cost: its watches, queue, PKI, object building and
API writes for N tenants x M Machines, all created at once. The tenant side is the
tests' ``FakeTenantSide`` (tests/support/fake_tenant_side.py): every agent is installed
at once; it keeps a small record of each ensure() call, part of the RSS measured.

Used by `python -m bench` (standalone, its own service cluster) and by
tests/kube/test_controller_scale.py (the session's service cluster). RSS is the whole
process's: the controller plus the small driver that creates the objects.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import os
import platform
import random
import resource
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from prometheus_client import CollectorRegistry

from tests.support.capi import create_tenant
from tests.support.fake_tenant_side import FakeTenantSide
from vpnctl.controller.interfaces import TenantRef
from vpnctl.controller.operator import Controller, ControllerSettings
from vpnctl.controller.tenant_reconciler import TenantSettings
from vpnctl.kube import TUNNEL, Kube, SystemClock
from vpnctl.reconcile.settings import Settings
from vpnctl.reconcile.status import NodeObservation

RESULTS = Path(__file__).resolve().parent / "results-controller.txt"


class AllConnected:
    """Every node of every tenant is connected (nodes are named <cluster>-node-<i>)."""

    def __init__(self, machines: int) -> None:
        self._machines = machines

    async def observe(self, tenant: TenantRef) -> Mapping[str, NodeObservation]:
        nodes = [f"{tenant.cluster}-node-{i}" for i in range(1, self._machines + 1)]
        return {
            n: NodeObservation(node=n, connected=True, rtt_seconds=0.002, kubelet_reachable=True)
            for n in nodes
        }


@dataclass(frozen=True, kw_only=True)
class ScaleResult:
    tenants: int
    machines_per_tenant: int
    create_seconds: float
    ready_seconds: float  # from the first object created to the last Tunnel Ready
    reconciles: int
    writes: int
    rss_before_mib: float
    rss_after_mib: float
    peak_rss_mib: float
    when: str
    machine: str
    # 1-minute load average at the start and the end: other work on the machine slows it.
    load: tuple[float, float] = (0.0, 0.0)

    def table(self) -> str:
        rows = [
            ("tenants x machines", f"{self.tenants} x {self.machines_per_tenant}"),
            ("objects created in", f"{self.create_seconds:.1f} s"),
            ("all Tunnels Ready after", f"{self.ready_seconds:.1f} s"),
            ("reconciles", str(self.reconciles)),
            ("writes by the controller", str(self.writes)),
            (
                "process RSS before / after",
                f"{self.rss_before_mib:.0f} / {self.rss_after_mib:.0f} MiB",
            ),
            ("process peak RSS", f"{self.peak_rss_mib:.0f} MiB"),
            ("load average (1 min) start / end", f"{self.load[0]:.1f} / {self.load[1]:.1f}"),
            ("date", self.when),
            ("machine", self.machine),
        ]
        width = max(len(k) for k, _ in rows)
        return "\n".join(f"{k.ljust(width)}   {v}" for k, v in rows) + "\n"


def rss_mib() -> float:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return 0.0


def peak_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def machine_description() -> str:
    cpus = os.cpu_count() or 0
    model = ""
    try:
        with open("/proc/cpuinfo") as f:
            model = next(
                (ln.split(":", 1)[1].strip() for ln in f if ln.startswith("model name")), ""
            )
    except OSError:
        pass
    return f"{platform.system()} {platform.release()}, {cpus} CPUs{', ' + model if model else ''}"


async def _ready_count(kube: Kube, namespace: str, machines: int) -> int:
    tunnels, _ = await kube.list(TUNNEL, namespace)
    count = 0
    for tunnel in tunnels:
        status = tunnel.get("status") or {}
        ready = any(
            c.get("type") == "Ready" and c.get("status") == "True"
            for c in status.get("conditions") or []
        )
        if ready and status.get("nodeCount") == machines:
            count += 1
    return count


def _total(registry: CollectorRegistry, family_name: str, sample_name: str) -> int:
    return int(
        sum(
            s.value
            for f in registry.collect()
            if f.name == family_name
            for s in f.samples
            if s.name == sample_name
        )
    )


async def run_controller_scale(
    *,
    kube: Kube,
    namespace: str,
    tenants: int = 100,
    machines: int = 3,
    workers: int = 8,
    timeout: float = 600.0,
    progress: bool = False,
) -> ScaleResult:
    """Start a controller (watching ``namespace``), create the tenants at once, wait until
    every Tunnel is Ready with all its nodes, stop the controller; the figures."""
    registry = CollectorRegistry()
    settings = ControllerSettings(
        tenant=TenantSettings(
            build=Settings(agent_image="vpnctl:bench"),
            instance="bench",
            tunnel_defaults={"expose": {"serviceType": "ClusterIP"}},
        ),
        identity="bench",
        namespace=namespace,
        leader_elect=False,
        workers=workers,
        health_host="127.0.0.1",
        health_port=0,
        observe_interval=5.0,
    )
    controller = Controller(
        settings=settings,
        kube=kube,
        registry=registry,
        clock=SystemClock(),
        tenant_side=FakeTenantSide(),
        observations=AllConnected(machines),
        rng=random.Random(1),
    )
    rss_before = rss_mib()
    load_before = os.getloadavg()[0]
    stop = asyncio.Event()
    task = asyncio.create_task(controller.run(stop=stop))
    try:
        started = time.monotonic()
        limit = asyncio.Semaphore(16)

        async def create(i: int) -> None:
            async with limit:
                await create_tenant(kube, namespace, f"bench-{i:03d}", nodes=machines)

        await asyncio.gather(*(create(i) for i in range(tenants)))
        created = time.monotonic() - started
        deadline = started + timeout
        ready = 0
        while True:
            if task.done():
                task.result()
                raise RuntimeError("the controller stopped before the tenants were Ready")
            ready = await _ready_count(kube, namespace, machines)
            if ready >= tenants:
                break
            if time.monotonic() > deadline:
                raise TimeoutError(f"only {ready}/{tenants} Tunnels Ready after {timeout:g}s")
            if progress:
                print(
                    f"  {ready}/{tenants} Ready after {time.monotonic() - started:.0f}s", flush=True
                )
            await asyncio.sleep(0.5)
        ready_seconds = time.monotonic() - started
        rss_after = rss_mib()
    finally:
        stop.set()
        await asyncio.wait_for(task, 60)
    return ScaleResult(
        tenants=tenants,
        machines_per_tenant=machines,
        create_seconds=created,
        ready_seconds=ready_seconds,
        reconciles=_total(registry, "vpnctl_reconciles", "vpnctl_reconciles_total"),
        writes=_total(registry, "vpnctl_writes", "vpnctl_writes_total"),
        rss_before_mib=rss_before,
        rss_after_mib=rss_after,
        peak_rss_mib=peak_rss_mib(),
        when=dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M UTC"),
        machine=machine_description(),
        load=(load_before, os.getloadavg()[0]),
    )


def record(result: ScaleResult, *, source: str, path: Path = RESULTS) -> None:
    """Write the figures to bench/results-controller.txt (replacing the last run's)."""
    path.write_text(f"# controller scale benchmark ({source})\n" + result.table())
