"""A hostile ``<cluster>-kubeconfig`` Secret against the running controller, with the real
tenant side (``KubeTenantSide``) and real tenant apiservers: refused with a condition and
an Event naming the field, its ``exec`` command never run, the other tenant unaffected,
and nothing of anyone's keys in the controller's logs, Events or status.
"""

from __future__ import annotations

import asyncio
import base64
import json
import logging
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.support import kubeconfigs
from tests.support.capi import create_kubeconfig_secret, create_tenant
from tests.support.polling import aeventually
from tests.support.secrets_scan import scan
from vpnctl.kube import SECRET, TUNNEL, Kube

from .conftest import TenantFactory
from .controllerfix import (
    FakeObservations,
    all_connected,
    condition,
    controller_settings,
    events_for,
    running_controller,
    wait_condition,
    wait_ready,
)
from .kubefix import kube  # noqa: F401
from .tenantsidefix import real_tenant_side

pytestmark = pytest.mark.kube


def _message(event: dict[str, Any]) -> str:
    return str(event.get("message") or event.get("note") or "")


async def _secret_values(client: Kube, namespace: str) -> dict[str, str | bytes]:
    """Every key and kubeconfig held in the namespace's Secrets (ours and CAPI's)."""
    items, _ = await client.list(SECRET, namespace)
    found: dict[str, str | bytes] = {}
    for secret in items:
        name = secret["metadata"]["name"]
        for key, value in (secret.get("data") or {}).items():
            if key == "value" or key.endswith(".key"):
                found[f"{name}/{key}"] = base64.b64decode(value)
    return found


async def test_exec_kubeconfig_is_refused_never_runs_and_nothing_leaks(
    kube: Kube,  # noqa: F811
    namespace: str,
    tenant_cluster_factory: TenantFactory,
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.DEBUG)
    cluster, evil_cluster = await asyncio.gather(tenant_cluster_factory(), tenant_cluster_factory())
    good = kubeconfigs.inlined(cluster.kubeconfig_path)
    evil_fixed = kubeconfigs.inlined(evil_cluster.kubeconfig_path)
    # Valid credentials for its own cluster, plus an exec plugin that leaves a marker.
    marker = tmp_path / "exec-ran"
    doc = yaml.safe_load(evil_fixed)
    doc["users"][0]["user"]["exec"] = kubeconfigs.exec_user(str(marker))
    hostile = yaml.safe_dump(doc)

    observations = FakeObservations(default=all_connected(["kc-good-node-1", "kc-evil-node-1"]))
    settings = controller_settings(namespace)
    async with (
        real_tenant_side() as side,
        running_controller(kube, settings, side=side, observations=observations),
    ):
        await create_tenant(kube, namespace, "kc-evil", nodes=1, kubeconfig=False)
        await create_kubeconfig_secret(kube, namespace, "kc-evil", text=hostile)
        await create_tenant(kube, namespace, "kc-good", nodes=1, kubeconfig=False)
        await create_kubeconfig_secret(kube, namespace, "kc-good", text=good)

        evil = await wait_condition(
            kube, namespace, "kc-evil", "AgentInstalled", status="False",
            reason="InvalidKubeconfig",
        )  # fmt: skip
        agent = condition(evil, "AgentInstalled")
        assert agent is not None
        assert "users[0].user.exec" in agent["message"]
        assert f"Secret {namespace}/kc-evil-kubeconfig" in agent["message"]
        assert condition(evil, "Ready")["status"] == "False"  # type: ignore[index]

        # The other tenant, on the same controller, installs its agent and is Ready.
        await wait_ready(kube, namespace, "kc-good", nodes=1, connected=1, timeout=60)

        async def refusal_events() -> list[dict[str, Any]]:
            events = await events_for(kube, namespace, name="kc-evil")
            return [e for e in events if e.get("reason") == "InvalidKubeconfig"]

        events = await aeventually(refusal_events, what="InvalidKubeconfig Events", timeout=20)
        # One per condition that turned False (AgentInstalled, and Ready with it), not
        # one per retry: the refusal is permanent until the Secret changes.
        messages = sorted(_message(e).split(":")[0] for e in events)
        assert messages == ["AgentInstalled is False", "Ready is False"], messages
        assert all("users[0].user.exec" in _message(e) for e in events)
        assert not marker.exists(), "the kubeconfig's exec command ran inside the controller"

        # Fixing the Secret is enough: nothing was lost meanwhile.
        await create_kubeconfig_secret(kube, namespace, "kc-evil", text=evil_fixed)
        await wait_ready(kube, namespace, "kc-evil", nodes=1, connected=1, timeout=60)

        # Nothing of any key or kubeconfig in what people read.
        secrets = await _secret_values(kube, namespace)
        secrets["hostile kubeconfig"] = hostile
        for name, c in (("good", cluster), ("evil", evil_cluster)):
            user = yaml.safe_load(c.kubeconfig_path.read_text())["users"][0]["user"]
            secrets[f"{name} tenant admin key"] = Path(user["client-key"]).read_bytes()
        assert any(name.endswith("vpn-ca/tls.key") for name in secrets), sorted(secrets)
        all_events = await events_for(kube, namespace)
        tunnels, _ = await kube.list(TUNNEL, namespace)
        blobs = {"controller log": caplog.text}
        blobs |= {f"event {e['metadata']['name']}": json.dumps(e) for e in all_events}
        blobs |= {f"tunnel {t['metadata']['name']}": json.dumps(t) for t in tunnels}
        findings = scan(blobs, secrets)
        assert findings == [], "\n".join(map(str, findings))
        assert "event=" in caplog.text  # the logs were captured: the scan saw them
