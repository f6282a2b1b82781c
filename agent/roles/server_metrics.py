"""The server role's metrics: per-node connection, connect time, kubelet reachability,
round-trip time and bytes, kicks, firewall repairs and the installed CRL, all labelled
with `role`.

Round-trip time comes in two forms on purpose. ``vpnctl_agent_kubelet_probe_seconds``
is a histogram, for dashboards (quantiles over time); ``vpnctl_agent_node_rtt_seconds``
is a gauge of the last successful probe, because a reader of one scrape (the controller,
for `vpnctl status`) cannot get "the current RTT" out of a histogram's cumulative
buckets. Both measure the same thing: the TCP handshake with the node's kubelet through
its tunnel, one SYN/SYN-ACK round trip answered by the node's kernel.

The per-connection gauges (connect time, RTT) exist only while there is something to
report: they are removed when the node disconnects, when its probe fails, and when it
leaves the desired state, so a stale value never looks current.
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

# The values of the ``direction`` label of the byte counters.
DIRECTIONS = ("received", "sent")
KUBELET_BUCKETS = (0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0, 2.0)


class ServerMetrics:
    def __init__(self, *, registry: CollectorRegistry) -> None:
        self.node_connected = Gauge(
            "vpnctl_agent_node_connected",
            "1 while the node's openvpn client is connected to this server.",
            ["role", "node"],
            registry=registry,
        )
        self.apiserver_connected = Gauge(
            "vpnctl_agent_apiserver_connected",
            "How many of the apiserver's openvpn clients (one per hosted apiserver replica) "
            "are connected to this server.",
            ["role"],
            registry=registry,
        )
        self.node_connected_since = Gauge(
            "vpnctl_agent_node_connected_since_timestamp_seconds",
            "When the node's current openvpn connection to this server was established "
            "(openvpn's connected-since), as a Unix timestamp; absent while disconnected.",
            ["role", "node"],
            registry=registry,
        )
        self.node_rtt = Gauge(
            "vpnctl_agent_node_rtt_seconds",
            "Round-trip time to the node through its tunnel: the last successful kubelet "
            "probe's TCP handshake; absent while disconnected or while the probe fails.",
            ["role", "node"],
            registry=registry,
        )
        self.kubelet_reachable = Gauge(
            "vpnctl_agent_kubelet_reachable",
            "1 if the last TCP connect to the node's kubelet through the tunnel succeeded.",
            ["role", "node"],
            registry=registry,
        )
        self.kubelet_probe = Histogram(
            "vpnctl_agent_kubelet_probe_seconds",
            "Time to open a TCP connection to the node's kubelet through the tunnel.",
            ["role", "node"],
            buckets=KUBELET_BUCKETS,
            registry=registry,
        )
        self.node_bytes = Counter(
            "vpnctl_agent_node_bytes",
            "Bytes between the server and the node's openvpn client, by direction "
            "(received: from the node; sent: to it).",
            ["role", "node", "direction"],
            registry=registry,
        )
        self.kicked = Counter(
            "vpnctl_agent_clients_kicked",
            "Clients disconnected by the agent, by reason (revoked, ccd_changed, removed).",
            ["role", "reason"],
            registry=registry,
        )
        self.clients_connected = Gauge(
            "vpnctl_agent_clients_connected",
            "Clients connected to this server (nodes and apiserver).",
            ["role"],
            registry=registry,
        )
        self.firewall_repairs = Counter(
            "vpnctl_agent_firewall_repairs",
            "Times the firewall table was found missing and re-applied.",
            ["role"],
            registry=registry,
        )
        self.crl_installs = Counter(
            "vpnctl_agent_crl_installs",
            "CRLs installed for openvpn's crl-verify.",
            ["role"],
            registry=registry,
        )
        self.crl_expiry = Gauge(
            "vpnctl_agent_crl_expiry_timestamp_seconds",
            "nextUpdate of the installed CRL, as a Unix timestamp: after it openvpn refuses "
            'every client ("CRL has expired"), so the controller must have installed a '
            "newer one before.",
            ["role"],
            registry=registry,
        )
        self.revoked = Gauge(
            "vpnctl_agent_crl_revoked_serials",
            "Serials in the installed CRL.",
            ["role"],
            registry=registry,
        )
