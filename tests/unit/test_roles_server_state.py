"""The server role's pure decisions: CCD diffing, revocation -> kicks, CRL install mtime."""

from __future__ import annotations

from ipaddress import IPv4Network

import pytest

from agent.desired_state import parse_desired
from agent.openvpn.client_auth import ClientAuthRequest
from agent.roles.server_state import (
    KICK_CCD_CHANGED,
    KICK_REMOVED,
    authorize,
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
    node_2_iroutes = ["198.19.0.12/32"]
    doc = {
        "clients": [
            {"common_name": "node-1", "ifconfig_ip": "198.18.8.11", "iroutes": ["198.19.0.11/32"]},
            {"common_name": "node-2", "ifconfig_ip": "198.18.8.12", "iroutes": node_2_iroutes},
        ]
    }
    before = desired_ccd(parse_desired(doc, path="/d", tunnel_cidr=TUNNEL), tunnel_cidr=TUNNEL)
    node_2_iroutes.append("198.19.192.0/20")  # node-2 elected for services
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


# --- who may connect -----------------------------------------------------------------------


def _request(cn: str | None, serial: int | None, *, kind: str = "CONNECT") -> ClientAuthRequest:
    env = {} if cn is None else {"common_name": cn}
    if serial is not None:
        env["tls_serial_0"] = str(serial)
    return ClientAuthRequest(kind="REAUTH" if kind == "REAUTH" else "CONNECT", cid=1, kid=0,
                             env=env)  # fmt: skip


_PINNED = parse_desired(
    {
        "apiserver": {"common_name": "vpnctl-apiserver", "ifconfig_ip": "198.18.8.2",
                      "serial": "a1", "serials": ["a0", "a1"]},
        "clients": [{"common_name": "node-1", "ifconfig_ip": "198.18.8.11",
                     "serials": ["b1", "b2"]}],
    },
    path="/d.json",
    tunnel_cidr=TUNNEL,
)  # fmt: skip


@pytest.mark.parametrize(
    ("cn", "serial", "revoked", "allow", "reason"),
    [
        ("vpnctl-apiserver", 0xA1, set(), True, "serial a1 issued for vpnctl-apiserver"),
        ("vpnctl-apiserver", 0xA0, set(), True, "serial a0 issued"),  # the renewed one's
        ("vpnctl-apiserver", 0xC3, set(), False, "serial c3 was not issued by vpnctl for"),
        ("vpnctl-apiserver", 0xB1, set(), False, "serial b1 was not issued by vpnctl"),
        ("node-1", 0xB2, set(), True, "issued for node-1"),
        ("node-1", 0xB1, {0xB1}, False, "serial b1 of node-1 is revoked"),
        ("node-9", 0xB1, set(), False, "node-9 is not a client of this tunnel"),
        (None, 0xB1, set(), False, "no common_name"),
        ("node-1", None, set(), False, "no usable certificate serial for node-1"),
    ],
)
def test_only_a_serial_vpnctl_issued_for_the_name_and_not_revoked_gets_in(
    cn: str | None, serial: int | None, revoked: set[int], allow: bool, reason: str
) -> None:
    for kind in ("CONNECT", "REAUTH"):  # a renegotiation is asked the same question
        verdict = authorize(_request(cn, serial, kind=kind), desired=_PINNED,
                            revoked=frozenset(revoked))  # fmt: skip
        assert verdict.allow is allow
        assert reason in verdict.reason


def test_nobody_gets_in_before_the_desired_state_or_with_a_malformed_request() -> None:
    assert not authorize(_request("node-1", 0xB1), desired=None, revoked=frozenset()).allow
    odd = ClientAuthRequest(kind="CONNECT", cid=1, kid=0,
                            env={"common_name": "node-1", "tls_serial_0": "177"},
                            problems=("ENV variable 'common_name' repeated",))  # fmt: skip
    verdict = authorize(odd, desired=_PINNED, revoked=frozenset())
    assert not verdict.allow
    assert "malformed request: ENV variable 'common_name' repeated" in verdict.reason
