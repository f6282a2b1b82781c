"""The server role's pure decisions: CCD diffing, revocation -> kicks, CRL install mtime."""

from __future__ import annotations

from ipaddress import IPv4Network

import pytest

from agent.desired import parse_desired
from agent.roles.server_state import (
    KICK_CCD_CHANGED,
    KICK_REMOVED,
    crl_install_mtime,
    desired_ccd,
    plan_ccd,
    revoked_names,
)

TUNNEL = IPv4Network("198.18.8.0/24")


def test_new_files_are_written_without_kicks() -> None:
    plan = plan_ccd(desired={"node-1": "A", "node-2": "B"}, current={})
    assert plan.write == {"node-1": "A", "node-2": "B"}
    assert plan.remove == frozenset()
    assert plan.kick == {}


def test_unchanged_files_are_left_alone() -> None:
    plan = plan_ccd(desired={"node-1": "A"}, current={"node-1": "A"})
    assert plan.empty


def test_changed_file_is_rewritten_and_its_client_kicked() -> None:
    plan = plan_ccd(desired={"node-1": "A2", "node-2": "B"}, current={"node-1": "A", "node-2": "B"})
    assert plan.write == {"node-1": "A2"}
    assert plan.kick == {"node-1": KICK_CCD_CHANGED}
    assert plan.remove == frozenset()


def test_unwanted_file_is_removed_and_its_client_kicked() -> None:
    plan = plan_ccd(desired={"node-1": "A"}, current={"node-1": "A", "old-node": "X"})
    assert plan.remove == frozenset({"old-node"})
    assert plan.kick == {"old-node": KICK_REMOVED}
    assert plan.write == {}


def test_desired_ccd_renders_every_client() -> None:
    state = parse_desired(
        {
            "apiserver": {"common_name": "apiserver", "ifconfig_ip": "198.18.8.2"},
            "clients": [
                {"common_name": "node-1", "ifconfig_ip": "198.18.8.11",
                 "iroutes": ["198.19.0.11/32", "198.19.65.0/24"]},
            ],
        },
        path="/d.json",
        tunnel_cidr=TUNNEL,
    )  # fmt: skip
    files = desired_ccd(state, tunnel_cidr=TUNNEL)
    assert set(files) == {"apiserver", "node-1"}
    assert "ifconfig-push 198.18.8.2 255.255.255.0\n" in files["apiserver"]
    assert "iroute" not in files["apiserver"]
    assert "iroute 198.19.0.11 255.255.255.255\n" in files["node-1"]
    assert "iroute 198.19.65.0 255.255.255.0\n" in files["node-1"]


def test_ccd_change_of_a_clients_iroutes_kicks_only_that_client() -> None:
    doc = {
        "clients": [
            {"common_name": "node-1", "ifconfig_ip": "198.18.8.11", "iroutes": ["198.19.0.11/32"]},
            {"common_name": "node-2", "ifconfig_ip": "198.18.8.12", "iroutes": ["198.19.0.12/32"]},
        ]
    }
    before = desired_ccd(parse_desired(doc, path="/d", tunnel_cidr=TUNNEL), tunnel_cidr=TUNNEL)
    doc["clients"][1]["iroutes"].append("198.19.192.0/20")  # node-2 elected for services
    after = desired_ccd(parse_desired(doc, path="/d", tunnel_cidr=TUNNEL), tunnel_cidr=TUNNEL)
    plan = plan_ccd(desired=after, current=before)
    assert plan.kick == {"node-2": KICK_CCD_CHANGED}
    assert set(plan.write) == {"node-2"}


def test_revoked_names_maps_serials_to_known_clients_only() -> None:
    serial_to_cn = {0x10: "node-1", 0x20: "node-2"}
    assert revoked_names(revoked={0x20, 0x99}, serial_to_cn=serial_to_cn) == {"node-2"}
    assert revoked_names(revoked=set(), serial_to_cn=serial_to_cn) == frozenset()


@pytest.mark.parametrize(
    ("now", "old_mtime", "old_size", "new_size", "expected"),
    [
        (100.5, None, None, 50, 100.5),  # first install
        (100.5, 90.0, 50, 60, 100.5),  # size differs: any mtime will do
        (100.5, 99.9, 50, 50, 100.5),  # same size, a later second
        (100.5, 100.1, 50, 50, 101.0),  # same size, same second: push past it
        (100.5, 103.7, 50, 50, 104.0),  # old file "from the future": still move forward
    ],
)
def test_crl_install_mtime_always_looks_new_to_openvpn(
    now: float, old_mtime: float | None, old_size: int | None, new_size: int, expected: float
) -> None:
    mtime = crl_install_mtime(now=now, old_mtime=old_mtime, old_size=old_size, new_size=new_size)
    assert mtime == expected
    if old_mtime is not None and old_size == new_size:
        assert int(mtime) != int(old_mtime)
