"""The apiserver sidecar's slot: the controller's pod spec and apiserver.json on one side,
the agent's reading of them on the other (agent/apiserver_slot.py)."""

from __future__ import annotations

import asyncio
import dataclasses
import logging
from pathlib import Path

import pytest

from agent.apiserver_slot import SlotFileError, for_slot, read_slot, wait_for_slot
from agent.event_log import EventLog
from agent.role_config import ClientRoleConfig, load_role_config
from tests.support import capi
from vpnctl.kube.clock import ManualClock
from vpnctl.reconcile.agentdocs import ApiserverPaths, apiserver_role_config, canonical_json
from vpnctl.reconcile.apiserver_slots import MAX_APISERVER_SLOTS, SLOT_ANNOTATION
from vpnctl.reconcile.names import TenantNames
from vpnctl.reconcile.settings import Settings
from vpnctl.reconcile.sidecar_objects import (
    apiserver_sidecar,
)
from vpnctl.reconcile.tenant_spec import TenantSpec, parse_tenant

SETTINGS = Settings(agent_image="registry.example/vpnctl:1")
EVENTS = EventLog(logger=logging.getLogger("test"), role="apiserver")


def _tenant() -> TenantSpec:
    t = capi.lab_tenant()
    return parse_tenant(tunnel=t.tunnel, cluster=t.cluster, machines=t.machines, nodes=t.nodes)


def _config(tmp_path: Path) -> ClientRoleConfig:
    doc = apiserver_role_config(tenant=_tenant(), settings=SETTINGS, service_name="tenant-a-vpn")
    path = tmp_path / "apiserver.json"
    path.write_text(canonical_json(doc))
    cfg = load_role_config(str(path), role="apiserver")
    assert isinstance(cfg, ClientRoleConfig)
    return cfg


def test_the_sidecar_mounts_what_the_agent_reads_for_each_slot(tmp_path: Path) -> None:
    t = _tenant()
    cfg = _config(tmp_path)
    assert cfg.slot is not None
    attachment = apiserver_sidecar(tenant=t, settings=SETTINGS, role_config={})
    (volume,) = [v for v in attachment.volumes if v["name"] == "vpnctl-apiserver"]
    (mount,) = [m for m in attachment.container["volumeMounts"] if m["name"] == "vpnctl-apiserver"]
    root = mount["mountPath"]
    files: dict[str, str] = {}  # path in the container -> what fills it
    for source in volume["projected"]["sources"]:
        for kind in ("secret", "configMap"):
            if kind in source:
                for item in source[kind]["items"]:
                    files[f"{root}/{item['path']}"] = f"{source[kind]['name']}:{item['key']}"
        for item in (source.get("downwardAPI") or {}).get("items", []):
            files[f"{root}/{item['path']}"] = item["fieldRef"]["fieldPath"]
    assert files[cfg.slot.file] == f"metadata.annotations['{SLOT_ANNOTATION}']"
    names = TenantNames.for_cluster(t.cluster_name)
    # Slot 0: the paths the role config always had, from the one apiserver Secret.
    assert files[cfg.openvpn.cert] == f"{names.apiserver_secret}:tls.crt"
    for index in range(1, MAX_APISERVER_SLOTS):
        ovpn = for_slot(cfg, index).openvpn
        secret = names.apiserver_slot_secret(index)
        assert files[ovpn.cert] == f"{secret}:tls.crt"
        assert files[ovpn.key] == f"{secret}:tls.key"
        assert files[ovpn.ca] == f"{secret}:ca.crt"
        assert files[ovpn.tls_crypt_v2] == f"{secret}:tls-crypt-v2-client.key"
    optional = [s["secret"]["optional"] for s in volume["projected"]["sources"]
                if "secret" in s and s["secret"]["name"] != names.apiserver_secret]  # fmt: skip
    assert optional == [True] * (MAX_APISERVER_SLOTS - 1)
    assert cfg.slot.file.startswith(ApiserverPaths.config_dir + "/")


def test_the_slot_file_is_read_strictly(tmp_path: Path) -> None:
    path = tmp_path / "slot"
    assert read_slot(str(path)) == -1  # no file: slot 0, as before slots
    path.write_text("")
    assert read_slot(str(path)) is None  # no annotation yet
    path.write_text("2")
    assert read_slot(str(path)) == 2
    for bad in ("two", "-1", "1000"):
        path.write_text(bad)
        with pytest.raises(SlotFileError, match="not a slot number"):
            read_slot(str(path))


async def test_the_sidecar_waits_for_its_slot_and_takes_that_slots_credentials(
    tmp_path: Path,
) -> None:
    cfg = _config(tmp_path)
    assert cfg.slot is not None
    slot_file = tmp_path / "slot"
    cfg = dataclasses.replace(
        cfg, slot=dataclasses.replace(cfg.slot, file=str(slot_file), dir=str(tmp_path / "slots"))
    )
    clock = ManualClock()
    slot_file.write_text("")
    waiting = asyncio.create_task(wait_for_slot(cfg, clock=clock, events=EVENTS))
    await asyncio.sleep(0)
    clock.advance(5.0)
    await asyncio.sleep(0)
    assert not waiting.done(), "an empty slot file means: wait"
    slot_file.write_text("3")
    while not waiting.done():
        clock.advance(1.0)
        await asyncio.sleep(0)
    got = waiting.result()
    assert got is not None
    assert got.openvpn.cert == str(tmp_path / "slots" / "3" / "tls.crt")
    assert got.openvpn.key == str(tmp_path / "slots" / "3" / "tls.key")

    # No slot file at all: slot 0, the config's own paths, at once.
    slot_file.unlink()
    same = await wait_for_slot(cfg, clock=clock, events=EVENTS)
    assert same == cfg
    # Slot 0 named in the file: the same.
    slot_file.write_text("0")
    assert await wait_for_slot(cfg, clock=clock, events=EVENTS) == cfg
    # Stopping while waiting: None.
    slot_file.write_text("")
    assert await wait_for_slot(cfg, clock=clock, events=EVENTS, stopping=lambda: True) is None
