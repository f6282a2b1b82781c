"""Where "connected / since / RTT / kubelet reachable" per node comes from: the tenant's
server pods.

The server role already exports what it sees on its ``/metrics`` (agent/roles/server.py,
agent/roles/server_metrics.py), per node:

- ``vpnctl_agent_node_connected`` (1 while the node's client is connected);
- ``vpnctl_agent_node_connected_since_timestamp_seconds`` (openvpn's connect time of
  the current connection);
- ``vpnctl_agent_node_rtt_seconds`` (the last kubelet probe's TCP handshake through the
  tunnel);
- ``vpnctl_agent_kubelet_reachable`` (whether that probe succeeded).

Scraping that, rather than inventing a second status endpoint, keeps one source of
truth for dashboards and for the controller alike.

The controller runs in the service cluster, so it reaches the server pods directly by
pod IP on the server's health port (the Service only exposes the VPN port). With more
than one replica a node counts as connected when any replica has it; its connect time
and RTT come from the replica holding its newest connection (an older one on another
replica is a session the node has left and that replica has not timed out yet).

Failure is a ``TemporaryError`` (reason ``ServerNotRunning`` or ``ServerNotAnswering``):
the reconciler turns it into ServerReady=False and keeps the last known observations.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime

import aiohttp
from prometheus_client.parser import text_string_to_metric_families

from vpnctl.controller.interfaces import TenantRef
from vpnctl.kube import POD, Kube
from vpnctl.reconcile.errors import TemporaryError
from vpnctl.reconcile.names import COMPONENT_SERVER, selector_labels
from vpnctl.reconcile.status import NodeObservation

_log = logging.getLogger(__name__)

NODE_CONNECTED = "vpnctl_agent_node_connected"
NODE_CONNECTED_SINCE = "vpnctl_agent_node_connected_since_timestamp_seconds"
NODE_RTT = "vpnctl_agent_node_rtt_seconds"
KUBELET_REACHABLE = "vpnctl_agent_kubelet_reachable"
_READ = (NODE_CONNECTED, NODE_CONNECTED_SINCE, NODE_RTT, KUBELET_REACHABLE)


def parse_server_metrics(text: str) -> dict[str, NodeObservation]:
    """Node name -> observation, from one server role's /metrics text.

    Connect time and RTT count only for a node this server has connected: the server
    removes them on disconnect, and this does not trust that alone."""
    values: dict[str, dict[str, float]] = {name: {} for name in _READ}
    for family in text_string_to_metric_families(text):
        if family.name not in values:
            continue
        for sample in family.samples:
            node = sample.labels.get("node")
            if node and sample.name == family.name:
                values[family.name][node] = sample.value
    out: dict[str, NodeObservation] = {}
    for node in sorted(set(values[NODE_CONNECTED]) | set(values[KUBELET_REACHABLE])):
        connected = values[NODE_CONNECTED].get(node, 0.0) >= 1
        since = values[NODE_CONNECTED_SINCE].get(node) if connected else None
        rtt = values[NODE_RTT].get(node) if connected else None
        kubelet = values[KUBELET_REACHABLE].get(node)
        out[node] = NodeObservation(
            node=node,
            connected=connected,
            connected_since=None if since is None else datetime.fromtimestamp(since, tz=UTC),
            rtt_seconds=rtt if rtt is not None and rtt >= 0 else None,
            kubelet_reachable=None if kubelet is None else kubelet >= 1,
        )
    return out


def _newest_connection(seen: NodeObservation) -> tuple[bool, datetime]:
    """Sort key: connected views first, then the latest connect time (unknown: oldest)."""
    return (seen.connected, seen.connected_since or datetime.min.replace(tzinfo=UTC))


def merge_observations(
    views: Sequence[Mapping[str, NodeObservation]],
) -> dict[str, NodeObservation]:
    """Several replicas' views: connected if any replica has the node, kubelet reachable
    if any replica reaches it (else what is known); connect time and RTT from the
    replica with the node's newest connection."""
    merged: dict[str, NodeObservation] = {}
    for node in sorted({node for view in views for node in view}):
        seen = [view[node] for view in views if node in view]
        newest = max(seen, key=_newest_connection)
        known = [s.kubelet_reachable for s in seen if s.kubelet_reachable is not None]
        merged[node] = NodeObservation(
            node=node,
            connected=newest.connected,
            connected_since=newest.connected_since,
            rtt_seconds=newest.rtt_seconds,
            kubelet_reachable=any(known) if known else None,
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
