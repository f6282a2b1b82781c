"""Where "connected / kubelet reachable" per node comes from: the tenant's server pods.

The server role already exports what it sees on its ``/metrics`` (agent/roles/server.py):
``vpnctl_agent_node_connected{node}`` (1 while the node's client is connected) and
``vpnctl_agent_kubelet_reachable{node}`` (the last probe through the tunnel). Scraping
that, rather than inventing a second status endpoint, keeps one source of truth for
dashboards and for the controller alike.

The controller runs in the service cluster, so it reaches the server pods directly by
pod IP on the server's health port (the Service only exposes the VPN port). With more
than one replica a node counts as connected when any replica has it.

Failure is a ``TemporaryError`` (reason ``ServerNotRunning`` or ``ServerNotAnswering``):
the reconciler turns it into ServerReady=False and keeps the last known observations.
RTT and "connected since" are not exported by the server role; they stay unknown.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Mapping, Sequence

import aiohttp
from prometheus_client.parser import text_string_to_metric_families

from vpnctl.controller.interfaces import TenantRef
from vpnctl.kube import POD, Kube
from vpnctl.reconcile.errors import TemporaryError
from vpnctl.reconcile.names import COMPONENT_SERVER, selector_labels
from vpnctl.reconcile.status import NodeObservation

_log = logging.getLogger(__name__)

NODE_CONNECTED = "vpnctl_agent_node_connected"
KUBELET_REACHABLE = "vpnctl_agent_kubelet_reachable"


def parse_server_metrics(text: str) -> dict[str, NodeObservation]:
    """Node name -> observation, from one server role's /metrics text."""
    connected: dict[str, bool] = {}
    kubelet: dict[str, bool] = {}
    for family in text_string_to_metric_families(text):
        if family.name not in (NODE_CONNECTED, KUBELET_REACHABLE):
            continue
        for sample in family.samples:
            node = sample.labels.get("node")
            if not node or sample.name != family.name:
                continue
            target = connected if family.name == NODE_CONNECTED else kubelet
            target[node] = sample.value >= 1
    return {
        node: NodeObservation(
            node=node,
            connected=connected.get(node, False),
            kubelet_reachable=kubelet.get(node),
        )
        for node in sorted(set(connected) | set(kubelet))
    }


def merge_observations(
    views: Sequence[Mapping[str, NodeObservation]],
) -> dict[str, NodeObservation]:
    """Several replicas' views: connected if any replica has the node, kubelet reachable
    if any replica reaches it (else what is known)."""
    merged: dict[str, NodeObservation] = {}
    for view in views:
        for node, seen in view.items():
            before = merged.get(node)
            if before is None:
                merged[node] = seen
                continue
            kubelet = before.kubelet_reachable
            if seen.kubelet_reachable is not None:
                kubelet = bool(kubelet) or seen.kubelet_reachable
            merged[node] = NodeObservation(
                node=node,
                connected=before.connected or seen.connected,
                kubelet_reachable=kubelet,
            )
    return merged


class ServerMetricsObservations:
    """``ObservationSource`` that scrapes each running server pod of a tenant.

    It owns an HTTP session: call ``aclose()`` when done (``contextlib.aclosing``).
    """

    def __init__(self, *, kube: Kube, health_port: int, timeout: float = 2.0) -> None:
        self._kube = kube
        self._port = health_port
        self._timeout = timeout
        self._session: aiohttp.ClientSession | None = None

    async def aclose(self) -> None:
        session, self._session = self._session, None
        if session is not None:
            await session.close()

    async def observe(self, tenant: TenantRef) -> Mapping[str, NodeObservation]:
        addresses = await self._pod_addresses(tenant)
        if not addresses:
            raise TemporaryError(
                reason="ServerNotRunning",
                message=(
                    f"no running server pod of {tenant} has an IP yet; see the server "
                    "Deployment's pods"
                ),
            )
        results = await asyncio.gather(
            *(self._scrape(address) for address in addresses), return_exceptions=True
        )
        views = [r for r in results if isinstance(r, dict)]
        if not views:
            errors = "; ".join(
                f"{a}: {r}"
                for a, r in zip(addresses, results, strict=True)
                if not isinstance(r, dict)
            )
            raise TemporaryError(
                reason="ServerNotAnswering",
                message=(
                    f"no server pod of {tenant} answered on its metrics port {self._port} "
                    f"({errors})"
                ),
            )
        return merge_observations(views)

    async def _pod_addresses(self, tenant: TenantRef) -> list[str]:
        selector = ",".join(
            f"{k}={v}"
            for k, v in selector_labels(
                cluster_name=tenant.cluster, component=COMPONENT_SERVER
            ).items()
        )
        pods, _ = await self._kube.list(POD, tenant.namespace, label_selector=selector)
        out: list[str] = []
        for pod in pods:
            status = pod.get("status") or {}
            ip = status.get("podIP")
            if status.get("phase") == "Running" and isinstance(ip, str) and ip:
                out.append(ip)
        return sorted(out)

    async def _scrape(self, address: str) -> dict[str, NodeObservation]:
        if self._session is None:
            self._session = aiohttp.ClientSession(
                timeout=aiohttp.ClientTimeout(total=self._timeout)
            )
        host = f"[{address}]" if ":" in address else address
        async with self._session.get(f"http://{host}:{self._port}/metrics") as response:
            if response.status != 200:
                raise TemporaryError(
                    reason="ServerNotAnswering",
                    message=f"/metrics answered HTTP {response.status}",
                )
            text = await response.text()
        return parse_server_metrics(text)
