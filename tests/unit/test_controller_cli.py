"""`vpnctl run` flags become ControllerSettings; mistakes are named before anything starts."""

from __future__ import annotations

import argparse
import dataclasses
from datetime import timedelta
from ipaddress import IPv4Network

import pytest

from vpnctl.cli import _parser
from vpnctl.controller.budgets import DEFAULT_TENANT_SIDE_TIMEOUT, Budgets
from vpnctl.controller.cli import budgets_from_args, node_cert_lifetime, settings_from_args
from vpnctl.controller.tenant_settings import TenantSettings
from vpnctl.reconcile.container_resources import (
    DEFAULT_AGENT_RESOURCES,
    DEFAULT_SERVER_RESOURCES,
    DEFAULT_SIDECAR_RESOURCES,
)


def parse(*argv: str) -> argparse.Namespace:
    return _parser().parse_args(["run", "--agent-image", "registry.example/vpnctl:1", *argv])


def test_run_flags_become_settings() -> None:
    args = parse(
        "--leader-elect", "--identity", "vpnctl-0", "--lease-namespace", "vpnctl-system",
        "--health-address", "0.0.0.0:8081", "--namespace", "tenants",
        "--reserved-cidr", "10.96.0.0/12", "--reserved-cidr", "10.244.0.0/16",
        "--default-service-type", "NodePort", "--node-port-address", "192.0.2.10",
        "--workers", "4", "--resync-period", "60",
    )  # fmt: skip
    settings = settings_from_args(args)
    assert settings.identity == "vpnctl-0"
    assert settings.leader_elect
    assert (settings.lease_duration, settings.renew_deadline, settings.retry_period) == (10, 7, 2)
    assert settings.lease_namespace == "vpnctl-system"
    assert (settings.health_host, settings.health_port) == ("0.0.0.0", 8081)
    assert settings.namespace == "tenants"
    assert settings.workers == 4
    assert settings.resync_period == 60
    build = settings.tenant.build
    assert build.agent_image == "registry.example/vpnctl:1"
    assert build.reserved_cidrs == (IPv4Network("10.96.0.0/12"), IPv4Network("10.244.0.0/16"))
    assert build.node_port_addresses == ("192.0.2.10",)
    assert settings.tenant.tunnel_defaults == {"expose": {"serviceType": "NodePort"}}
    assert settings.tenant.auto_tunnel
    assert settings.tenant.instance == "vpnctl-0"


def test_metrics_and_health_addresses_are_two_ports() -> None:
    # What the chart passes: ":PORT" means every address.
    settings = settings_from_args(parse("--metrics-address", ":9090", "--health-address", ":9091"))
    assert (settings.health_host, settings.health_port) == ("0.0.0.0", 9091)
    assert (settings.metrics_host, settings.metrics_port) == ("0.0.0.0", 9090)
    # Without --metrics-address, /metrics shares the health port.
    settings = settings_from_args(parse())
    assert (settings.health_host, settings.health_port) == ("0.0.0.0", 8081)
    assert (settings.metrics_host, settings.metrics_port) == (None, None)


def test_drain_and_election_flags() -> None:
    default = settings_from_args(parse()).tenant.build
    assert default.node_revocation_max_delay == timedelta(minutes=10)
    assert default.service_route_grace == timedelta(seconds=20)
    build = settings_from_args(
        parse("--node-revocation-max-delay", "0s", "--service-route-grace", "5")
    ).tenant.build
    assert build.node_revocation_max_delay == timedelta(0)
    assert build.service_route_grace == timedelta(seconds=5)


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (("--health-address", "8081"), "--health-address '8081' is not"),
        (("--metrics-address", "0.0.0.0"), "--metrics-address '0.0.0.0' is not"),
        (("--metrics-address", ":8081"), "name the same port"),
        (("--reserved-cidr", "10.0.0.0/33"), "--reserved-cidr"),
        (("--node-revocation-max-delay", "2d"), "--node-revocation-max-delay"),
    ],
)
def test_bad_flags_are_named(flags: tuple[str, ...], message: str) -> None:
    with pytest.raises(SystemExit, match=message):
        settings_from_args(parse(*flags))


def test_run_needs_an_agent_image_and_status_takes_a_cluster() -> None:
    with pytest.raises(SystemExit):
        _parser().parse_args(["run"])
    args = _parser().parse_args(["status", "-n", "tenant-a", "acme"])
    assert (args.cmd, args.namespace, args.cluster) == ("status", "tenant-a", "acme")
    assert _parser().parse_args(["status"]).namespace is None


def test_privilege_flags(monkeypatch: pytest.MonkeyPatch) -> None:
    """Issue 9, items 7 and 8: how tun is provided, who may scrape the server pods, and
    whether the service cluster's networks are detected."""
    monkeypatch.setenv("POD_NAMESPACE", "vpnctl-system")
    args = parse()
    assert args.detect_reserved_cidrs is True
    build = settings_from_args(args).tenant.build
    assert (build.tun_host_path, build.tun_resource) == (False, None)  # MKNOD by default
    assert build.controller_namespace == "vpnctl-system"
    assert build.metrics_namespaces == ()

    args = parse(
        "--tun-host-path", "--no-detect-reserved-cidrs",
        "--metrics-allow-namespace", "monitoring", "--metrics-allow-namespace", "obs",
    )  # fmt: skip
    assert args.detect_reserved_cidrs is False
    build = settings_from_args(args).tenant.build
    assert build.tun_host_path is True
    assert build.metrics_namespaces == ("monitoring", "obs")


def test_tenant_budget_flags_have_sane_defaults_and_are_read() -> None:
    assert budgets_from_args(parse()) == Budgets()
    # One default: the flag's is the settings' own.
    assert settings_from_args(parse()).tenant.tenant_side_timeout == DEFAULT_TENANT_SIDE_TIMEOUT
    defaults = {f.name: f.default for f in dataclasses.fields(TenantSettings)}
    assert defaults["tenant_side_timeout"] == DEFAULT_TENANT_SIDE_TIMEOUT
    args = parse(
        "--tenant-max-objects", "500", "--tenant-max-cache-bytes", "1048576",
        "--tenant-csr-decisions-per-minute", "30", "--tenant-repairs-per-minute", "6",
        "--tenant-max-csr-request-bytes", "4096", "--tenant-pause", "10",
        "--tenant-max-pause", "120", "--tenant-side-timeout", "3",
        "--tenant-max-call-seconds", "2.5", "--tenant-slow-calls-per-minute", "4",
    )  # fmt: skip
    assert budgets_from_args(args) == Budgets(
        max_objects=500,
        max_bytes=1048576,
        csr_decisions_per_minute=30,
        repairs_per_minute=6,
        max_csr_request_bytes=4096,
        max_call_seconds=2.5,
        slow_calls_per_minute=4,
        pause_base=10.0,
        pause_cap=120.0,
    )
    assert settings_from_args(args).tenant.tenant_side_timeout == 3.0
    with pytest.raises(SystemExit, match=r"--tenant-.*max_objects must be at least 1"):
        budgets_from_args(parse("--tenant-max-objects", "0"))


def test_resource_flags_set_the_tenants_defaults() -> None:
    build = settings_from_args(parse()).tenant.build
    assert build.server_resources == DEFAULT_SERVER_RESOURCES
    assert build.sidecar_resources == DEFAULT_SIDECAR_RESOURCES
    assert build.agent_resources == DEFAULT_AGENT_RESOURCES
    build = settings_from_args(
        parse("--agent-resources", "requests.memory=64Mi,limits.memory=128Mi",
              "--server-resources", "")
    ).tenant.build  # fmt: skip
    assert build.agent_resources.body() == {
        "requests": {"memory": "64Mi"},
        "limits": {"memory": "128Mi"},
    }
    assert build.server_resources.body() == {}
    with pytest.raises(SystemExit, match=r"--sidecar-resources: 'x' is not a quantity"):
        settings_from_args(parse("--sidecar-resources", "limits.memory=x"))


@pytest.mark.parametrize(("text", "minutes"), [("5m", 5), ("6m", 6), ("720h", 720 * 60)])
def test_node_cert_lifetime_accepts_what_renewal_can_keep_up_with(text: str, minutes: int) -> None:
    assert node_cert_lifetime(text) == timedelta(minutes=minutes)


@pytest.mark.parametrize("text", ["1m", "4m59s", "30s"])
def test_a_node_cert_lifetime_shorter_than_the_backdating_is_refused(text: str) -> None:
    # Backdated 5 minutes and renewed at 2/3 of notBefore..notAfter: a 1m certificate is
    # due for renewal the moment it is signed.
    with pytest.raises(ValueError, match="renewed as soon as signed"):
        node_cert_lifetime(text)
