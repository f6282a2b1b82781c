"""Requests and limits of what vpnctl runs for each tenant (issue 15, item 5): defaults
from the controller's flags, replaced per Tunnel by spec.resources.{server,sidecar,agent},
checked before anything is built."""

from __future__ import annotations

from decimal import Decimal
from typing import Any

import pytest

from tests.support import capi
from vpnctl.reconcile.agent_objects import tenant_objects
from vpnctl.reconcile.agentdocs import (
    apiserver_role_config,
    node_role_config,
    server_role_config,
)
from vpnctl.reconcile.container_resources import (
    DEFAULT_AGENT_RESOURCES,
    DEFAULT_SERVER_RESOURCES,
    DEFAULT_SIDECAR_RESOURCES,
    ContainerResources,
    ResourceOverrides,
    flag_text,
    parse_quantity,
    resources_from_body,
    resources_from_flag,
)
from vpnctl.reconcile.errors import PermanentError
from vpnctl.reconcile.service_objects import (
    server_deployment,
)
from vpnctl.reconcile.settings import Settings
from vpnctl.reconcile.sidecar_objects import (
    apiserver_sidecar,
)
from vpnctl.reconcile.tenant_spec import TenantSpec


@pytest.mark.parametrize(
    ("text", "value"),
    [
        ("100m", Decimal("0.1")),
        ("0.5", Decimal("0.5")),
        ("2", Decimal(2)),
        ("64Mi", Decimal(64 * 2**20)),
        ("1G", Decimal(10**9)),
        ("1.5Gi", Decimal(3 * 2**29)),
        ("128974848", Decimal(128974848)),
        ("129e6", Decimal(129 * 10**6)),
        (".5k", Decimal(500)),
    ],
)
def test_quantities_are_read_as_kubernetes_does(text: str, value: Decimal) -> None:
    assert parse_quantity(text) == value


@pytest.mark.parametrize("text", ["", "64MB", "-1", "1.2.3", "Mi", "64 Mi", "1x"])
def test_what_is_not_a_quantity_is_named(text: str) -> None:
    with pytest.raises(ValueError, match="is not a quantity"):
        parse_quantity(text)


def test_a_flag_reads_and_shows_the_same() -> None:
    text = "requests.cpu=50m,requests.memory=128Mi,limits.memory=512Mi"
    assert resources_from_flag(text) == DEFAULT_SERVER_RESOURCES
    assert resources_from_flag(flag_text(DEFAULT_AGENT_RESOURCES)) == DEFAULT_AGENT_RESOURCES
    assert resources_from_flag("") == ContainerResources()
    assert ContainerResources().body() == {}


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("cpu=50m", "is not requests.NAME=QUANTITY"),
        ("requests.cpu", "is not requests.NAME=QUANTITY"),
        ("shares.cpu=1", "is not requests.NAME=QUANTITY"),
        ("requests.gpu=1", "requests.gpu: only cpu and memory"),
        ("requests.memory=lots", "'lots' is not a quantity"),
        ("requests.memory=1Gi,limits.memory=512Mi", "requests.memory 1Gi is more than limits"),
    ],
)
def test_a_bad_flag_says_what_is_wrong(text: str, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        resources_from_flag(text)


def test_a_body_takes_integers_and_refuses_the_rest() -> None:
    got = resources_from_body({"requests": {"cpu": 1, "memory": "1Gi"}, "limits": {"cpu": 2}})
    assert got.body() == {"requests": {"cpu": "1", "memory": "1Gi"}, "limits": {"cpu": "2"}}
    for bad, message in [
        ("64Mi", "must be an object"),
        ({"claims": []}, "claims: only requests and limits"),
        ({"limits": ["memory"]}, "limits must map"),
        ({"limits": {"memory": True}}, "limits.memory must be a quantity"),
    ]:
        with pytest.raises(ValueError, match=message):
            resources_from_body(bad)


# --- the builders ----------------------------------------------------------------------------


def lab(**spec: Any) -> TenantSpec:
    return capi.parsed_lab_tenant(spec)


def containers(settings: Settings, tenant: TenantSpec) -> dict[str, dict[str, Any]]:
    """The container of the server pods, the apiserver sidecar and the node agent."""
    server = server_deployment(
        tenant=tenant,
        settings=settings,
        role_config=server_role_config(tenant=tenant, settings=settings),
    )
    sidecar = apiserver_sidecar(
        tenant=tenant,
        settings=settings,
        role_config=apiserver_role_config(tenant=tenant, settings=settings, service_name="x"),
    )
    agent = tenant_objects(
        cluster_name=tenant.cluster_name,
        settings=settings,
        role_config=node_role_config(tenant=tenant, settings=settings, remotes=[("192.0.2.1", 1)]),
        ca_pem=b"ca",
        agent_resources=tenant.spec.resources.agent,
    )[-1]
    return {
        "server": server["spec"]["template"]["spec"]["containers"][0],
        "sidecar": sidecar.container,
        "agent": agent["spec"]["template"]["spec"]["containers"][0],
    }


def test_every_container_gets_small_requests_and_a_memory_limit_by_default() -> None:
    got = containers(Settings(agent_image="i"), lab())
    assert got["server"]["resources"] == {
        "requests": {"cpu": "50m", "memory": "128Mi"},
        "limits": {"memory": "512Mi"},
    }
    assert got["sidecar"]["resources"] == DEFAULT_SIDECAR_RESOURCES.body()
    assert got["agent"]["resources"] == DEFAULT_AGENT_RESOURCES.body()
    for container in got.values():
        assert container["resources"]["requests"]["cpu"]
        assert container["resources"]["requests"]["memory"]
        assert container["resources"]["limits"]["memory"]


def test_the_flags_set_the_defaults_and_a_tunnel_replaces_one_whole() -> None:
    settings = Settings(
        agent_image="i",
        server_resources=resources_from_flag("requests.cpu=1,limits.memory=2Gi"),
        sidecar_resources=resources_from_flag("requests.memory=50Mi"),
        agent_resources=resources_from_flag("limits.memory=300Mi"),
        tun_resource="squat.ai/tun",
    )
    got = containers(settings, lab())
    assert got["server"]["resources"] == {
        "requests": {"cpu": "1"},
        "limits": {"memory": "2Gi", "squat.ai/tun": "1"},
    }
    assert got["sidecar"]["resources"] == {
        "requests": {"memory": "50Mi"},
        "limits": {"squat.ai/tun": "1"},
    }
    assert got["agent"]["resources"]["limits"] == {"memory": "300Mi", "squat.ai/tun": "1"}

    tenant = lab(resources={"agent": {"requests": {"cpu": "5m"}, "limits": {"memory": "64Mi"}}})
    assert tenant.spec.resources == ResourceOverrides(
        agent=ContainerResources(requests=(("cpu", "5m"),), limits=(("memory", "64Mi"),))
    )
    got_tenant = containers(settings, tenant)
    assert got_tenant["agent"]["resources"] == {
        "requests": {"cpu": "5m"},
        "limits": {"memory": "64Mi", "squat.ai/tun": "1"},
    }
    # The others keep the flags' defaults.
    assert got_tenant["server"]["resources"] == got["server"]["resources"]
    assert got_tenant["sidecar"]["resources"] == got["sidecar"]["resources"]

    tenant = lab(resources={"server": {"limits": {"memory": "1Gi"}}, "sidecar": {}})
    got_tenant = containers(Settings(agent_image="i"), tenant)
    assert got_tenant["server"]["resources"] == {"limits": {"memory": "1Gi"}}
    # An empty one means none at all, as in a container.
    assert "resources" not in got_tenant["sidecar"]
    assert got_tenant["agent"]["resources"] == DEFAULT_AGENT_RESOURCES.body()


def test_a_changed_request_rolls_only_what_it_changes() -> None:
    before = containers(Settings(agent_image="i"), lab())
    after = containers(
        Settings(agent_image="i"), lab(resources={"server": {"requests": {"cpu": "1"}}})
    )
    assert before["server"] != after["server"]
    assert before["sidecar"] == after["sidecar"]
    assert before["agent"] == after["agent"]


@pytest.mark.parametrize(
    ("resources", "message"),
    [
        ({"server": {"limits": {"memory": "lots"}}}, "spec.resources.server of Tunnel"),
        ({"agent": {"requests": {"memory": "1Gi"}, "limits": {"memory": "1Mi"}}}, "is more than"),
        ({"sidecar": "64Mi"}, "spec.resources.sidecar of Tunnel .*: must be an object"),
    ],
)
def test_a_bad_spec_resources_is_invalid_spec(resources: dict[str, Any], message: str) -> None:
    with pytest.raises(PermanentError, match=message) as caught:
        lab(resources=resources)
    assert caught.value.reason == "InvalidSpec"
    assert "fix spec.resources" in caught.value.message
