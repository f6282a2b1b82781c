"""spec.agent.image pins one tenant's agent image over the controller's --agent-image
(issue 15, item 4): the server pods, the apiserver sidecar and the node agent all run
it, so a new default image does not roll a pinned tenant. The reconcile pass's own
wiring is in tests/unit/test_tenant_reconciler.py.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.support import capi
from vpnctl.reconcile.agent_objects import tenant_objects
from vpnctl.reconcile.agentdocs import (
    apiserver_role_config,
    node_role_config,
    server_role_config,
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

CRD_FILE = Path(__file__).resolve().parents[2] / "charts/vpnctl/files/crds/tunnels.vpnctl.io.yaml"
DEFAULT = "registry.example/vpnctl:1.0.0"
PINNED = "registry.example/vpnctl@sha256:" + "ab" * 32


def images(settings: Settings, tenant: TenantSpec) -> dict[str, str]:
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
        agent_image=tenant.spec.agent_image,
    )[-1]
    assert agent["kind"] == "DaemonSet"
    return {
        "server": server["spec"]["template"]["spec"]["containers"][0]["image"],
        "sidecar": sidecar.container["image"],
        "agent": agent["spec"]["template"]["spec"]["containers"][0]["image"],
    }


def test_unpinned_tenants_run_the_controllers_image() -> None:
    tenant = capi.parsed_lab_tenant()
    assert tenant.spec.agent_image is None
    assert images(Settings(agent_image=DEFAULT), tenant) == dict.fromkeys(
        ("server", "sidecar", "agent"), DEFAULT
    )


def test_a_pinned_image_wins_everywhere_over_the_default() -> None:
    tenant = capi.parsed_lab_tenant({"agent": {"image": PINNED}})
    assert tenant.spec.agent_image == PINNED
    assert tenant.spec.install_agent is True  # the other agent field keeps its default
    for default in (DEFAULT, "registry.example/vpnctl:2.0.0"):
        assert images(Settings(agent_image=default), tenant) == dict.fromkeys(
            ("server", "sidecar", "agent"), PINNED
        )


@pytest.mark.parametrize("bad", ["", "registry.example/vpnctl 1.0", 7, ["x"]])
def test_a_bad_image_is_an_invalid_spec_that_names_the_field(bad: Any) -> None:
    with pytest.raises(PermanentError) as caught:
        capi.parsed_lab_tenant({"agent": {"image": bad}})
    assert caught.value.reason == "InvalidSpec"
    assert "spec.agent.image" in caught.value.message
    assert "--agent-image" in caught.value.message


def test_the_crd_declares_the_field_without_a_default() -> None:
    crd = yaml.safe_load(CRD_FILE.read_text())
    spec = crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["spec"]
    field = spec["properties"]["agent"]["properties"]["image"]
    assert field["type"] == "string"
    assert "default" not in field  # unset means "the controller's", never a fixed image
    # The apiserver rejects what the parser would (RE2 and Python agree on this pattern).
    pattern = re.compile(field["pattern"])
    assert pattern.search(PINNED)
    assert not pattern.search("registry.example/vpnctl 1.0")
    assert field["minLength"] == 1
