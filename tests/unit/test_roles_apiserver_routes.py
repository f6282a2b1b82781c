"""The apiserver role follows `routes` in its config file without a restart or a
reconnect (agent/roles/apiserver.py): the controller's plan puts a joining node's address
there, and the server pushes the apiserver nothing (issue 12 item 2)."""

from __future__ import annotations

import json
import random
from ipaddress import IPv4Network
from pathlib import Path
from typing import Any

from prometheus_client import CollectorRegistry

from agent.netlink import Kernel
from agent.role_config import ClientRoleConfig, load_role_config
from agent.roles.apiserver import ApiserverRole
from tests.unit.test_routes import FakeKernel
from vpnctl.kube.clock import ManualClock

NET = IPv4Network


def role_doc(tmp_path: Path, routes: list[str]) -> dict[str, Any]:
    return {
        "state_dir": str(tmp_path / "state"),
        "openvpn": {
            "proto": "udp",
            "remotes": [["tenant-a-vpn.tenant-a.svc", 1194]],
            "ca": "/pki/ca.crt",
            "cert": "/pki/tls.crt",
            "key": "/pki/tls.key",
            "tls_crypt_v2": "/pki/tc.key",
            "management": str(tmp_path / "m.sock"),
        },
        "probe": {"target": "198.18.8.1:7947"},
        "routes": routes,
    }


async def apiserver_role(path: Path) -> ApiserverRole:
    cfg = load_role_config(str(path), role="apiserver")
    assert isinstance(cfg, ClientRoleConfig)
    kernel = FakeKernel("tun0")

    async def open_kernel() -> Kernel:
        return kernel

    role = ApiserverRole(cfg=cfg, registry=CollectorRegistry(), clock=ManualClock(),
                         rng=random.Random(1), kernel_factory=open_kernel,
                         config_path=str(path))  # fmt: skip
    role.kernel = kernel
    await role.setup()
    return role


def desired(role: ApiserverRole) -> set[IPv4Network]:
    assert role.routes is not None
    return {r.dst for r in role.routes.desired}


async def test_a_node_added_to_the_config_is_routed_without_a_restart(tmp_path: Path) -> None:
    path = tmp_path / "apiserver.json"
    path.write_text(json.dumps(role_doc(tmp_path, ["198.19.0.11/32", "198.19.64.0/18"])))
    role = await apiserver_role(path)
    assert desired(role) == {NET("198.19.0.11/32"), NET("198.19.64.0/18")}
    assert not role.reload_routes()  # unchanged: nothing to do

    path.write_text(json.dumps(role_doc(tmp_path, ["198.19.0.11/32", "198.19.0.14/32",
                                                   "198.19.64.0/18"])))  # fmt: skip
    assert role.reload_routes()
    assert desired(role) == {NET("198.19.0.11/32"), NET("198.19.0.14/32"), NET("198.19.64.0/18")}
    assert all(r.dev == "tun0" for r in (role.routes.desired if role.routes else ()))

    path.write_text(json.dumps(role_doc(tmp_path, ["198.19.64.0/18"])))  # a node left
    assert role.reload_routes()
    assert desired(role) == {NET("198.19.64.0/18")}


async def test_a_config_that_does_not_load_keeps_the_routes(tmp_path: Path) -> None:
    path = tmp_path / "apiserver.json"
    path.write_text(json.dumps(role_doc(tmp_path, ["198.19.64.0/18"])))
    role = await apiserver_role(path)
    path.write_text(json.dumps(role_doc(tmp_path, ["not a network"])))
    assert not role.reload_routes()
    path.write_text("{")
    assert not role.reload_routes()
    path.unlink()
    assert not role.reload_routes()
    assert desired(role) == {NET("198.19.64.0/18")}
