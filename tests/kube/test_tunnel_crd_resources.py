"""The Tunnel CRD's spec.resources against the real apiserver: quantities as Kubernetes
writes them are stored, what is not a quantity is refused at the door (issue 15, item 5;
the controller's own check of the same values: tests/unit/test_container_resources.py)."""

from __future__ import annotations

from typing import Any

import pytest

from vpnctl.kube import TUNNEL, Invalid, Kube
from vpnctl.reconcile.tunnel_spec import parse_tunnel_spec

from .kubefix import kube  # noqa: F401

pytestmark = pytest.mark.kube


def tunnel(namespace: str, name: str, resources: dict[str, Any]) -> dict[str, Any]:
    return {
        "apiVersion": "vpnctl.io/v1alpha1",
        "kind": "Tunnel",
        "metadata": {"name": name, "namespace": namespace},
        "spec": {"clusterName": name, "resources": resources},
    }


async def test_spec_resources_are_stored_and_bad_quantities_refused(
    kube: Kube,  # noqa: F811
    namespace: str,
) -> None:
    resources = {
        "server": {"requests": {"cpu": "50m", "memory": "128Mi"}, "limits": {"memory": "1Gi"}},
        "sidecar": {"requests": {"cpu": 1}},
        "agent": {"limits": {"memory": "256Mi"}},
    }
    created = await kube.create(TUNNEL, tunnel(namespace, "good", resources))
    assert created["spec"]["resources"] == resources
    parsed = parse_tunnel_spec(created)  # type: ignore[arg-type]
    assert parsed.resources.sidecar is not None
    assert parsed.resources.sidecar.body() == {"requests": {"cpu": "1"}}

    with pytest.raises(Invalid, match=r"spec\.resources\.agent\.limits\.memory"):
        await kube.create(
            TUNNEL, tunnel(namespace, "bad", {"agent": {"limits": {"memory": "lots"}}})
        )


async def test_spec_agent_image_is_stored_and_a_malformed_one_refused(
    kube: Kube,  # noqa: F811
    namespace: str,
) -> None:
    """spec.agent.image (issue 15, item 4) as the real apiserver takes it: the CRD's
    pattern compiles in the apiserver's RE2 and refuses what the parser would."""
    image = "registry.example/vpnctl@sha256:" + "cd" * 32
    body = tunnel(namespace, "pinned", {})
    body["spec"]["agent"] = {"image": image}
    created = await kube.create(TUNNEL, body)
    assert created["spec"]["agent"] == {"image": image, "install": True}
    assert parse_tunnel_spec(created).agent_image == image  # type: ignore[arg-type]
    for bad in ("", "registry.example/vpnctl 1.0"):
        body = tunnel(namespace, "bad-image", {})
        body["spec"]["agent"] = {"image": bad}
        with pytest.raises(Invalid, match=r"spec\.agent\.image"):
            await kube.create(TUNNEL, body)
