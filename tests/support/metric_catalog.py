"""Every metric the controller and the agent register, read from real registries.

Built the way the binaries build them (``vpnctl run``: ControllerMetrics and the tenant
side on one registry; the agent: one role on one registry), with no I/O: constructing
the objects registers their metrics. The README's metrics table and the Grafana
dashboard are checked against this, so neither can name a metric that does not exist
or miss one that does.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from ipaddress import IPv4Address, IPv4Network
from pathlib import Path
from typing import cast

from prometheus_client import CollectorRegistry
from prometheus_client.metrics import MetricWrapperBase

from agent.netlink import Kernel
from agent.openvpn.config import ClientConfig, ServerConfig
from agent.role_config import ClientRoleConfig, Common, ProbeSettings, ServerRoleConfig
from agent.roles.apiserver import ApiserverRole
from agent.roles.node import NodeRole
from agent.roles.server import ServerRole
from agent.route_keeper import RouteKeeper
from vpnctl.controller.interfaces import TenantRef
from vpnctl.controller.metrics import ControllerMetrics
from vpnctl.controller.tenant_side import KubeTenantSide
from vpnctl.kube.clock import ManualClock

ROLES = ("server", "node", "apiserver")
# Label names added by the exposition, not by us.
_EXPOSITION_LABELS = frozenset({"le", "quantile"})


@dataclass(frozen=True)
class Family:
    """One metric as a scraper sees it: ``name`` as exposed (counters with ``_total``)."""

    name: str
    type: str
    labels: tuple[str, ...]
    help: str
    binary: str  # controller, agent, "agent (server, ...)" when not every role, both

    def series_names(self) -> frozenset[str]:
        """The sample names a query can use."""
        if self.type == "histogram":
            base = self.name
            return frozenset({f"{base}_bucket", f"{base}_sum", f"{base}_count"})
        return frozenset({self.name})


def _touch_labelled(registry: CollectorRegistry) -> None:
    """Give every labelled metric without a child one, so collect() shows its labels."""
    # prometheus_client has no public way to list a registry's collectors or a metric's
    # label names; test support may read them.
    for collector in list(registry._collector_to_names):
        if (
            isinstance(collector, MetricWrapperBase)
            and collector._labelnames
            and not collector._metrics
        ):
            collector.labels(*("x" for _ in collector._labelnames))


def families(registry: CollectorRegistry, *, binary: str) -> dict[str, Family]:
    _touch_labelled(registry)
    found: dict[str, Family] = {}
    for metric in registry.collect():
        labels: set[str] = set()
        for sample in metric.samples:
            labels |= set(sample.labels) - _EXPOSITION_LABELS
        name = f"{metric.name}_total" if metric.type == "counter" else metric.name
        found[name] = Family(name, metric.type, tuple(sorted(labels)), metric.documentation, binary)
    return found


async def _no_kernel() -> Kernel:
    raise AssertionError("the catalog constructs roles; it never runs them")


def controller_registry() -> CollectorRegistry:
    """What ``vpnctl run`` registers, with one tenant so the scrape-time families show."""
    registry = CollectorRegistry()
    clock = ManualClock(wall=datetime(2026, 1, 1, tzinfo=UTC))
    metrics = ControllerMetrics(registry=registry)
    KubeTenantSide(
        registry=registry,
        clock=clock,
        rng=random.Random(1),
        node_cert_lifetime=timedelta(days=1),
        watch_metrics=metrics.watch,
    )
    tenant = TenantRef("tenant-a", "a")
    metrics.set_conditions(tenant, {"Ready": "True"})
    metrics.set_expiry(tenant, "server", clock.now() + timedelta(days=30))
    metrics.set_image_rollout({"current": 1})
    return registry


def agent_registries(base: Path) -> dict[str, CollectorRegistry]:
    """What the agent registers, per role (each role runs in a process of its own)."""
    common = Common(state_dir=str(base / "state"))
    client = ClientConfig(
        remotes=[("198.18.0.1", 1194)],
        ca="/ca.pem",
        cert="/c.pem",
        key="/c.key",
        tls_crypt_v2="/tc.key",
        management=str(base / "m.sock"),
    )
    probe = ProbeSettings(target=(IPv4Address("198.18.8.1"), 7947))
    server_cfg = ServerRoleConfig(
        common=common,
        openvpn=ServerConfig(
            tunnel_cidr=IPv4Network("198.18.8.0/24"),
            ca="/ca.pem",
            cert="/s.pem",
            key="/s.key",
            crl=str(base / "crl-installed.pem"),
            tls_crypt_v2="/tc.key",
            ccd_dir=str(base / "ccd"),
            management=str(base / "ms.sock"),
        ),
        desired_path=str(base / "desired.json"),
        crl_source=str(base / "crl.pem"),
    )
    registries = {role: CollectorRegistry() for role in ROLES}
    clock, rng = ManualClock(), random.Random(1)
    ServerRole(
        cfg=server_cfg,
        registry=registries["server"],
        clock=clock,
        rng=rng,
        kernel_factory=_no_kernel,
    )
    node = NodeRole(
        cfg=ClientRoleConfig(role="node", common=common, openvpn=client, probe=probe),
        registry=registries["node"],
        clock=clock,
        rng=rng,
        kernel_factory=_no_kernel,
    )
    ApiserverRole(
        cfg=ClientRoleConfig(role="apiserver", common=common, openvpn=client, probe=probe),
        registry=registries["apiserver"],
        clock=clock,
        rng=rng,
        kernel_factory=_no_kernel,
        config_path=str(base / "apiserver.json"),
    )
    # setup() adds what needs the kernel or the node's own /proc/sys; as it does:
    node.keep_forwarding_sysctls()
    for role in ("server", "apiserver"):
        RouteKeeper(kernel=cast(Kernel, None), registry=registries[role], role=role)
    return registries


def catalog(base: Path) -> dict[str, Family]:
    """Every metric of both binaries by exposed name; the agent's, over all its roles."""
    found = families(controller_registry(), binary="controller")
    roles: dict[str, list[str]] = {}
    agent: dict[str, Family] = {}
    for role, registry in agent_registries(base).items():
        for name, family in families(registry, binary="agent").items():
            roles.setdefault(name, []).append(role)
            agent[name] = family
    for name, family in agent.items():
        if name in found:  # process_*, python_*, vpnctl_build_info
            binary = "both"
        elif len(roles[name]) == len(ROLES):
            binary = "agent"
        else:
            binary = f"agent ({', '.join(roles[name])})"
        found[name] = Family(name, family.type, family.labels, family.help, binary)
    return found


# --- the README's metrics table ----------------------------------------------------------------

README = Path(__file__).resolve().parents[2] / "README.md"
TABLE_BEGIN = "<!-- metrics table: generated by `python -m tests.support.metric_catalog` -->"
TABLE_END = "<!-- end of metrics table -->"


def _order(family: Family) -> tuple[int, str]:
    rank = {"controller": 0, "both": 2}.get(family.binary, 1)
    return rank, family.name


def metrics_table(found: dict[str, Family]) -> str:
    """The README's table: one row per metric, the controller's first."""
    rows = [
        "| metric | type | labels | exposed by | meaning |",
        "|---|---|---|---|---|",
    ]
    for family in sorted(found.values(), key=_order):
        labels = ", ".join(f"`{label}`" for label in family.labels) or "none"
        meaning = " ".join(family.help.split()).replace("|", "\\|")
        rows.append(f"| `{family.name}` | {family.type} | {labels} | {family.binary} | {meaning} |")
    return "\n".join(rows)


def readme_with_table(readme: str, table: str) -> str:
    begin, end = readme.index(TABLE_BEGIN), readme.index(TABLE_END)
    return f"{readme[: begin + len(TABLE_BEGIN)]}\n{table}\n{readme[end:]}"


def main() -> None:
    import tempfile

    with tempfile.TemporaryDirectory(prefix="vpnctl-metrics-") as tmp:
        table = metrics_table(catalog(Path(tmp)))
    README.write_text(readme_with_table(README.read_text(), table))
    print(f"wrote the metrics table to {README}")


if __name__ == "__main__":
    main()
