"""`vpnctl run` and `vpnctl status`: flags in, the controller (or the tables) out.

Kept apart from vpnctl/cli.py, which only parses and dispatches, so the lab's command
does not import the controller and this module can be tested by calling it. Imports of
the Kubernetes client and the controller happen inside the commands.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import datetime as dt
import logging
import os
import random
import signal
import socket
import sys
from ipaddress import IPv4Network
from typing import TYPE_CHECKING, Any, Literal, TextIO, cast

from vpnctl.controller.budgets import DEFAULT_TENANT_SIDE_TIMEOUT, Budgets
from vpnctl.reconcile.container_resources import (
    DEFAULT_AGENT_RESOURCES,
    DEFAULT_SERVER_RESOURCES,
    DEFAULT_SIDECAR_RESOURCES,
    ContainerResources,
    flag_text,
    resources_from_flag,
)

if TYPE_CHECKING:  # the parser is built for every command, `vpnctl lab` too: stay light
    from vpnctl.controller.operator import ControllerSettings
    from vpnctl.kube import Kube

_log = logging.getLogger(__name__)

SERVICE_TYPES = ("LoadBalancer", "NodePort", "ClusterIP")


def add_run_arguments(p: argparse.ArgumentParser) -> None:
    """`vpnctl run`'s own flags (--kubeconfig and --context are global: vpnctl/cli.py)."""
    where = p.add_argument_group("connection")
    where.add_argument(
        "--in-cluster", action="store_true",
        help="use the pod's service account even where a kubeconfig is set",
    )  # fmt: skip
    lead = p.add_argument_group("leader election")
    lead.add_argument(
        "--leader-elect", action="store_true",
        help="hold a Lease while reconciling, so replicas take over from each other",
    )  # fmt: skip
    lead.add_argument(
        "--identity",
        default=None,
        help="lease holder name (default: $POD_NAME, else the host name)",
    )
    lead.add_argument(
        "--lease-namespace", default=None, metavar="NS",
        help="namespace of the Lease (default: $POD_NAMESPACE, else vpnctl-system)",
    )  # fmt: skip
    lead.add_argument("--lease-name", default="vpnctl-controller", help="name of the Lease")
    ctl = p.add_argument_group("controller")
    ctl.add_argument(
        "--namespace", default=None, metavar="NS",
        help="watch only this namespace (default: all namespaces)",
    )  # fmt: skip
    ctl.add_argument(
        "--health-address",
        default="0.0.0.0:8081",
        metavar="[HOST]:PORT",
        help="where /healthz and /readyz answer (and /metrics, unless --metrics-address "
        "is given); an empty host means 0.0.0.0 (default: %(default)s)",
    )
    ctl.add_argument(
        "--metrics-address",
        default=None,
        metavar="[HOST]:PORT",
        help="where /metrics answers, on a port of its own (default: on --health-address)",
    )
    ctl.add_argument("--workers", type=int, default=8, help="tenants reconciled in parallel")
    ctl.add_argument(
        "--service-route-grace",
        type=float,
        default=20.0,
        metavar="SECONDS",
        help="a newly elected service-route holder keeps the role this long while it "
        "reconnects from the kick its election causes",
    )
    ctl.add_argument(
        "--resync-period", type=float, default=300.0, metavar="SECONDS",
        help="every Tunnel is reconciled at least this often, with or without events",
    )  # fmt: skip
    ctl.add_argument(
        "--observe-interval", type=float, default=5.0, metavar="SECONDS",
        help="how often each tenant's server pods are asked which nodes are connected",
    )  # fmt: skip
    ctl.add_argument(
        "--no-auto-tunnel", action="store_true",
        help="don't create a Tunnel for every Cluster (by default every Cluster gets one)",
    )  # fmt: skip
    ctl.add_argument(
        "--default-service-type",
        choices=SERVICE_TYPES,
        default=None,
        help="spec.expose.serviceType of automatically created Tunnels (default: the CRD's)",
    )
    ctl.add_argument(
        "--node-cert-lifetime", default="720h", metavar="DURATION",
        help="lifetime of node certificates signed from CSRs (a Go duration)",
    )  # fmt: skip
    ctl.add_argument(
        "--node-revocation-max-delay",
        default="10m",
        metavar="DURATION",
        help="a deleted Machine's node keeps its tunnel until drained, at most this long "
        "after its deletionTimestamp (Tunnels may set spec.nodeRevocation.maxDelay; 0s: "
        "revoke when deletion starts)",
    )
    budget = p.add_argument_group(
        "per-tenant budgets",
        "what one tenant cluster may cost the controller; a tenant over budget gets the "
        "Degraded condition and its tenant-side work pauses, with backoff",
    )
    b = Budgets()
    budget.add_argument(
        "--tenant-side-timeout",
        type=float,
        default=DEFAULT_TENANT_SIDE_TIMEOUT,
        metavar="SECONDS",
        help="upper bound of one reconcile's calls into a tenant cluster",
    )
    budget.add_argument(
        "--tenant-max-objects", type=int, default=b.max_objects, metavar="N",
        help="objects the controller may cache from one tenant cluster",
    )  # fmt: skip
    budget.add_argument(
        "--tenant-max-cache-bytes", type=int, default=b.max_bytes, metavar="BYTES",
        help="bytes the controller may cache from one tenant cluster",
    )  # fmt: skip
    budget.add_argument(
        "--tenant-csr-decisions-per-minute", type=int, default=b.csr_decisions_per_minute,
        metavar="N", help="node CSRs one tenant may have decided per minute",
    )  # fmt: skip
    budget.add_argument(
        "--tenant-repairs-per-minute", type=int, default=b.repairs_per_minute, metavar="N",
        help="drift repairs (re-applied objects) per tenant per minute",
    )  # fmt: skip
    budget.add_argument(
        "--tenant-max-csr-request-bytes",
        type=int,
        default=b.max_csr_request_bytes,
        metavar="BYTES",
        help="node CSRs with a bigger spec.request are denied (RequestTooLarge)",
    )
    budget.add_argument(
        "--tenant-max-call-seconds",
        type=float,
        default=b.max_call_seconds,
        metavar="SECONDS",
        help="an install in a tenant cluster taking longer is cut, and counts as slow",
    )
    budget.add_argument(
        "--tenant-slow-calls-per-minute", type=int, default=b.slow_calls_per_minute,
        metavar="N", help="slow calls into one tenant cluster per minute before it pauses",
    )  # fmt: skip
    budget.add_argument(
        "--tenant-pause",
        type=float,
        default=b.pause_base,
        metavar="SECONDS",
        help="first pause of a tenant over budget (doubles while it stays over)",
    )
    budget.add_argument(
        "--tenant-max-pause", type=float, default=b.pause_cap, metavar="SECONDS",
        help="longest pause of a tenant over budget",
    )  # fmt: skip
    build = p.add_argument_group("what the tenants get")
    build.add_argument(
        "--agent-image", required=True, metavar="IMAGE",
        help="image of the agent, all roles (required)",
    )  # fmt: skip
    build.add_argument(
        "--image-rollout-max-rolling", type=int, default=1, metavar="N",
        help="a new --agent-image reaches at most N tenants at a time: a tenant is rolling "
        "from its move until its server Deployment has rolled out with the image and its "
        "Tunnel is Ready (tenants with spec.agent.image are not rolled)",
    )  # fmt: skip
    build.add_argument(
        "--image-rollout-deadline", default="10m", metavar="DURATION",
        help="a rolling tenant not Ready with the new image this long after its move halts "
        "the rollout: no other tenant gets the image until it is Ready, pinned, or "
        "--agent-image changes again (a Go duration)",
    )  # fmt: skip
    build.add_argument(
        "--image-pull-policy", default="IfNotPresent",
        choices=("Always", "IfNotPresent", "Never"), help="of the agent's containers",
    )  # fmt: skip
    build.add_argument(
        "--image-pull-secret", action="append", default=[], metavar="NAME",
        help="a Secret the agent's pods pull with (repeat)",
    )  # fmt: skip
    build.add_argument(
        "--tenant-namespace", default="vpnctl-system", metavar="NS",
        help="namespace of the agent's objects in each tenant cluster",
    )  # fmt: skip
    build.add_argument(
        "--tun-resource", default=None, metavar="NAME",
        help="a device plugin resource that gives pods /dev/net/tun (default: none)",
    )  # fmt: skip
    build.add_argument(
        "--tun-host-path",
        action="store_true",
        help="mount the host's /dev/net/tun (hostPath) instead of the agent making it (MKNOD)",
    )
    build.add_argument(
        "--metrics-allow-namespace",
        action="append",
        default=[],
        metavar="NS",
        help="a namespace (monitoring) allowed to scrape the server pods (repeat)",
    )
    build.add_argument(
        "--reserved-cidr",
        action="append",
        default=[],
        metavar="CIDR",
        help="a network of the service cluster itself (repeat); no tenant may overlap it",
    )
    build.add_argument(
        "--no-detect-reserved-cidrs",
        dest="detect_reserved_cidrs",
        action="store_false",
        help="reserve only what --reserved-cidr names; by default the service cluster's "
        "node, pod and Service networks are detected at start and reserved too",
    )
    for component, what, default in (
        ("server", "the openvpn server pods", DEFAULT_SERVER_RESOURCES),
        ("sidecar", "the apiserver sidecar", DEFAULT_SIDECAR_RESOURCES),
        ("agent", "the node agent DaemonSet", DEFAULT_AGENT_RESOURCES),
    ):
        build.add_argument(
            f"--{component}-resources",
            default=flag_text(default),
            metavar="KIND.NAME=QTY,...",
            help=f"requests and limits of {what}, e.g. requests.cpu=50m,limits.memory=256Mi; "
            f"a Tunnel's spec.resources.{component} replaces them (default: %(default)s)",
        )
    build.add_argument(
        "--node-port-address",
        action="append",
        default=[],
        metavar="ADDRESS",
        help="an address of the service cluster's nodes, for NodePort servers (repeat)",
    )


OUTPUTS = ("table", "wide", "json", "yaml")


def add_status_arguments(p: argparse.ArgumentParser) -> None:
    """`vpnctl status`'s own flags (--kubeconfig and --context are global)."""
    p.add_argument("cluster", nargs="?", help="only this Cluster's Tunnel (default: all)")
    p.add_argument(
        "-n", "--namespace", default=None, metavar="NS",
        help="only this namespace (default: all namespaces)",
    )  # fmt: skip
    p.add_argument(
        "-o", "--output", choices=OUTPUTS, default="table",
        help="tables (wide: with more columns), or the Tunnel objects as JSON or YAML",
    )  # fmt: skip


def _host_port(text: str, *, flag: str) -> tuple[str, int]:
    """``HOST:PORT`` or ``:PORT`` (every address: what the chart passes)."""
    host, sep, port = text.rpartition(":")
    if not sep or not port.isdigit() or not 0 <= int(port) <= 65535:
        raise SystemExit(
            f"vpnctl run: {flag} {text!r} is not [host]:port (e.g. 0.0.0.0:8081 or :8081)"
        )
    return host or "0.0.0.0", int(port)


async def _connect(args: argparse.Namespace) -> Kube:
    from vpnctl.kube import connect

    in_cluster = bool(getattr(args, "in_cluster", False)) or (
        args.kubeconfig is None
        and not os.environ.get("KUBECONFIG")
        and bool(os.environ.get("KUBERNETES_SERVICE_HOST"))
    )
    return await connect(
        kubeconfig=args.kubeconfig, context=getattr(args, "context", None), in_cluster=in_cluster
    )


def settings_from_args(args: argparse.Namespace) -> ControllerSettings:
    """The ControllerSettings the flags describe (SystemExit naming a bad flag)."""
    from vpnctl.controller.operator import ControllerSettings
    from vpnctl.controller.tenant_reconciler import TenantSettings
    from vpnctl.reconcile.durations import parse_duration
    from vpnctl.reconcile.image_rollout import RolloutPolicy
    from vpnctl.reconcile.settings import Settings

    try:
        reserved = tuple(IPv4Network(c, strict=False) for c in args.reserved_cidr)
    except ValueError as exc:
        raise SystemExit(f"vpnctl run: --reserved-cidr: {exc}") from None
    identity = args.identity or os.environ.get("POD_NAME") or socket.gethostname()
    host, port = _host_port(args.health_address, flag="--health-address")
    metrics: tuple[str, int] | None = None
    if args.metrics_address is not None:
        metrics = _host_port(args.metrics_address, flag="--metrics-address")
        if metrics[1] == port and port != 0:
            raise SystemExit(
                f"vpnctl run: --metrics-address {args.metrics_address!r} and --health-address "
                f"{args.health_address!r} name the same port; give them different ports, or "
                "leave --metrics-address out to serve /metrics on the health port"
            )
    resources: dict[str, ContainerResources] = {}
    for component in ("server", "sidecar", "agent"):
        try:
            resources[component] = resources_from_flag(getattr(args, f"{component}_resources"))
        except ValueError as exc:
            raise SystemExit(f"vpnctl run: --{component}-resources: {exc}") from None
    defaults: dict[str, Any] = {}
    if args.default_service_type:
        defaults["expose"] = {"serviceType": args.default_service_type}
    try:
        revocation_delay = parse_duration(args.node_revocation_max_delay)
    except ValueError as exc:
        raise SystemExit(f"vpnctl run: --node-revocation-max-delay: {exc}") from None
    try:
        rollout = RolloutPolicy(
            max_rolling=args.image_rollout_max_rolling,
            deadline=parse_duration(args.image_rollout_deadline),
        )
    except ValueError as exc:
        raise SystemExit(
            f"vpnctl run: --image-rollout-max-rolling {args.image_rollout_max_rolling} "
            f"--image-rollout-deadline {args.image_rollout_deadline!r}: {exc}"
        ) from None
    build = Settings(
        node_revocation_max_delay=revocation_delay,
        service_route_grace=dt.timedelta(seconds=args.service_route_grace),
        agent_image=args.agent_image,
        image_pull_policy=args.image_pull_policy,
        image_pull_secrets=tuple(args.image_pull_secret),
        tenant_namespace=args.tenant_namespace,
        tun_resource=args.tun_resource,
        tun_host_path=args.tun_host_path,
        controller_namespace=os.environ.get("POD_NAMESPACE") or args.lease_namespace,
        metrics_namespaces=tuple(args.metrics_allow_namespace),
        reserved_cidrs=reserved,
        node_port_addresses=tuple(args.node_port_address),
        server_resources=resources["server"],
        sidecar_resources=resources["sidecar"],
        agent_resources=resources["agent"],
    )
    return ControllerSettings(
        tenant=TenantSettings(
            build=build,
            instance=identity,
            auto_tunnel=not args.no_auto_tunnel,
            tunnel_defaults=defaults,
            tenant_side_timeout=args.tenant_side_timeout,
            image_rollout=rollout,
        ),
        identity=identity,
        namespace=args.namespace,
        leader_elect=args.leader_elect,
        lease_namespace=args.lease_namespace or os.environ.get("POD_NAMESPACE") or "vpnctl-system",
        lease_name=args.lease_name,
        resync_period=args.resync_period,
        observe_interval=args.observe_interval,
        workers=args.workers,
        health_host=host,
        health_port=port,
        metrics_host=metrics[0] if metrics else None,
        metrics_port=metrics[1] if metrics else None,
    )


async def _with_reserved_networks(
    settings: ControllerSettings, kube: Kube, *, detect: bool
) -> ControllerSettings:
    """`settings` with the detected service-cluster networks added to --reserved-cidr
    (vpnctl/controller/networks.py); NetworkDetectionError when that is not enough."""
    from vpnctl.controller.networks import reserved_networks

    build = settings.tenant.build
    reserved = await reserved_networks(kube, flags=build.reserved_cidrs, detect_networks=detect)
    return dataclasses.replace(
        settings,
        tenant=dataclasses.replace(
            settings.tenant, build=dataclasses.replace(build, reserved_cidrs=reserved)
        ),
    )


def budgets_from_args(args: argparse.Namespace) -> Budgets:
    """The per-tenant Budgets the flags describe (SystemExit naming a bad one)."""
    try:
        return Budgets(
            max_objects=args.tenant_max_objects,
            max_bytes=args.tenant_max_cache_bytes,
            csr_decisions_per_minute=args.tenant_csr_decisions_per_minute,
            repairs_per_minute=args.tenant_repairs_per_minute,
            max_csr_request_bytes=args.tenant_max_csr_request_bytes,
            max_call_seconds=args.tenant_max_call_seconds,
            slow_calls_per_minute=args.tenant_slow_calls_per_minute,
            pause_base=args.tenant_pause,
            pause_cap=args.tenant_max_pause,
        )
    except ValueError as exc:
        raise SystemExit(f"vpnctl run: --tenant-*: {exc}") from None


def _exiting(reason: str, exc: BaseException) -> None:
    """The controller's last record: a daemon's errors go where its logs go."""
    _log.error("event=controller_exiting reason=%s error=%s", reason, str(exc))


async def run(args: argparse.Namespace) -> int:
    """`vpnctl run`: the controller until SIGTERM/SIGINT."""
    from prometheus_client import CollectorRegistry

    from vpnctl.controller.metrics import ControllerMetrics
    from vpnctl.controller.networks import NetworkDetectionError
    from vpnctl.controller.observe import ServerMetricsObservations
    from vpnctl.controller.operator import Controller
    from vpnctl.controller.revocation_store import RevocationStore
    from vpnctl.controller.tenant_side import KubeTenantSide
    from vpnctl.kube import KubeconfigError, SystemClock

    settings = settings_from_args(args)
    budgets = budgets_from_args(args)
    try:
        node_lifetime = node_cert_lifetime(args.node_cert_lifetime)
    except ValueError as exc:
        raise SystemExit(f"vpnctl run: --node-cert-lifetime: {exc}") from None
    try:
        kube = await _connect(args)
    except KubeconfigError as exc:
        _exiting("kubeconfig", exc)
        return 1
    try:
        settings = await _with_reserved_networks(settings, kube, detect=args.detect_reserved_cidrs)
    except NetworkDetectionError as exc:
        await kube.close()
        _exiting("reserved_networks", exc)
        return 1
    clock = SystemClock()
    rng = random.Random()
    registry = CollectorRegistry()
    metrics = ControllerMetrics(registry=registry)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    try:
        async with (
            kube,
            KubeTenantSide(
                registry=registry,
                clock=clock,
                rng=rng,
                node_cert_lifetime=node_lifetime,
                watch_metrics=metrics.watch,
                budgets=budgets,
                # Every node certificate is in the tenant's revocation book before it
                # is handed out.
                recorder=RevocationStore(kube=kube, clock=clock, rng=rng),
            ) as tenant_side,
            contextlib.aclosing(
                ServerMetricsObservations(
                    kube=kube, health_port=settings.tenant.build.server_health_port
                )
            ) as observations,
        ):
            controller = Controller(
                settings=dataclasses.replace(
                    settings, extra_liveness={"tenant-side": tenant_side.healthy}
                ),
                kube=kube,
                registry=registry,
                clock=clock,
                tenant_side=tenant_side,
                observations=observations,
                rng=rng,
                metrics=metrics,
            )
            _log.info(
                "event=controller_starting identity=%s namespace=%s leader_elect=%s",
                settings.identity,
                settings.namespace or "*",
                settings.leader_elect,
            )
            await controller.run(stop=stop)
    except OSError as exc:  # the health port is taken, typically
        _exiting("startup", exc)
        return 1
    finally:
        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.remove_signal_handler(signum)
    _log.info("event=controller_stopped identity=%s", settings.identity)
    return 0


async def status(args: argparse.Namespace, *, out: TextIO = sys.stdout) -> int:
    """`vpnctl status`: the Tunnels' tables, as the controller last wrote them, or the
    Tunnels themselves (-o json|yaml). Exit 1 when the named Cluster has no Tunnel."""
    from vpnctl.api import Tunnel
    from vpnctl.kube import TUNNEL, ApiError, KubeconfigError
    from vpnctl.reconcile.status_table import render_objects, render_status

    try:
        kube = await _connect(args)
    except KubeconfigError as exc:
        print(f"vpnctl status: {exc}", file=sys.stderr)
        return 1
    async with kube:
        try:
            tunnels, _ = await kube.list(TUNNEL, args.namespace)
        except ApiError as exc:
            print(f"vpnctl status: listing Tunnels failed: {exc}", file=sys.stderr)
            return 1
    if args.cluster:
        tunnels = [
            t
            for t in tunnels
            if (t.get("spec") or {}).get("clusterName") == args.cluster
            or (t.get("metadata") or {}).get("name") == args.cluster
        ]
    found = cast(list[Tunnel], tunnels)
    output = getattr(args, "output", "table")
    if output in ("json", "yaml"):
        if args.cluster and not found:
            where = f" in namespace {args.namespace}" if args.namespace else ""
            print(f"vpnctl status: no Tunnel for Cluster {args.cluster}{where}", file=sys.stderr)
            return 1
        as_format = cast(Literal["json", "yaml"], output)
        out.write(render_objects(found, output=as_format, single=bool(args.cluster)))
    else:
        out.write(render_status(found, now=dt.datetime.now(dt.UTC), wide=output == "wide"))
    with contextlib.suppress(BrokenPipeError):
        out.flush()
    return 0 if found or not args.cluster else 1


MIN_NODE_CERT_LIFETIME = dt.timedelta(minutes=5)


def node_cert_lifetime(text: str) -> dt.timedelta:
    """--node-cert-lifetime, at least MIN_NODE_CERT_LIFETIME. Certificates are backdated
    by certs.CLOCK_SKEW (5 min) and renewed at 2/3 of notBefore..notAfter, so a lifetime
    much shorter than the backdating is due for renewal the moment it is signed (a node
    would renew in a loop)."""
    from vpnctl.reconcile.durations import parse_duration

    lifetime = parse_duration(text)
    if lifetime < MIN_NODE_CERT_LIFETIME:
        raise ValueError(
            f"{text!r} is shorter than {MIN_NODE_CERT_LIFETIME}: node certificates are "
            "backdated 5 minutes for clock skew and renewed at two thirds of their "
            "lifetime, so they would be renewed as soon as signed"
        )
    return lifetime
