"""The agent's input files: role configs and the server's desired state, strictly validated."""

from __future__ import annotations

import json
from ipaddress import IPv4Address, IPv4Network
from pathlib import Path
from typing import Any

import pytest

from agent.config_reader import InputError
from agent.desired_state import load_desired, parse_desired
from agent.files import file_signature
from agent.role_config import ClientRoleConfig, Role, ServerRoleConfig, load_role_config

TUNNEL = IPv4Network("198.18.8.0/24")


def _write(tmp_path: Path, doc: object, name: str = "cfg.json") -> str:
    path = tmp_path / name
    path.write_text(json.dumps(doc))
    return str(path)


def server_doc() -> dict[str, Any]:
    return {
        "openvpn": {
            "proto": "tcp",
            "port": 1194,
            "listen": "198.18.0.1",
            "tunnel_cidr": "198.18.8.0/24",
            "ca": "/pki/ca.pem",
            "cert": "/pki/server.pem",
            "key": "/pki/server.key",
            "tls_crypt_v2": "/pki/tc.key",
            "ccd_dir": "/run/ccd",
            "management": "/run/mgmt.sock",
            "crl": "/run/crl.pem",
        },
        "desired_path": "/etc/desired.json",
        "crl_source": "/etc/crl.pem",
        "state_dir": "/run/state",
        "health_address": "0.0.0.0:9200",
    }


def client_doc() -> dict[str, Any]:
    return {
        "openvpn": {
            "remotes": [["198.18.0.1", 1194]],
            "ca": "/pki/ca.pem",
            "cert": "/pki/node.pem",
            "key": "/pki/node.key",
            "tls_crypt_v2": "/pki/tc.key",
            "management": "/run/mgmt.sock",
        },
        "probe": {"target": "198.18.8.1:7947"},
        "state_dir": "/run/state",
    }


def desired_doc() -> dict[str, Any]:
    return {
        "apiserver": {"common_name": "apiserver", "ifconfig_ip": "198.18.8.2", "serial": "0a:1b"},
        "clients": [
            {
                "common_name": "node-1",
                "ifconfig_ip": "198.18.8.11",
                "iroutes": ["198.19.0.11/32", "198.19.65.0/24"],
                "kubelet": "198.19.0.11:10250",
                "serial": "5B019F",
            },
            {
                "common_name": "node-2",
                "ifconfig_ip": "198.18.8.12",
                "iroutes": ["198.19.0.12/32", "198.19.66.0/24"],
                "kubelet": None,
            },
        ],
    }


def _problems(doc: object) -> list[str]:
    with pytest.raises(InputError) as info:
        parse_desired(doc, path="/etc/desired.json", tunnel_cidr=TUNNEL)
    assert str(info.value).startswith("/etc/desired.json: ")
    return list(info.value.problems)


# --- role configs ------------------------------------------------------------------------------


def test_server_config_loads_with_defaults(tmp_path: Path) -> None:
    cfg = load_role_config(_write(tmp_path, server_doc()), role="server")
    assert isinstance(cfg, ServerRoleConfig)
    assert cfg.openvpn.proto == "tcp"
    assert cfg.openvpn.listen == IPv4Address("198.18.0.1")
    assert cfg.openvpn.crl == "/run/crl.pem"
    assert cfg.server_ip == IPv4Address("198.18.8.1")
    assert (cfg.common.health_host, cfg.common.health_port) == ("0.0.0.0", 9200)
    assert cfg.probe_port == 7947
    assert cfg.firewall is True
    assert cfg.common.openvpn_binary == "openvpn"


def test_node_and_apiserver_configs_load(tmp_path: Path) -> None:
    node = load_role_config(_write(tmp_path, client_doc()), role="node")
    assert isinstance(node, ClientRoleConfig)
    assert node.probe.target == (IPv4Address("198.18.8.1"), 7947)
    assert (node.probe.interval, node.probe.timeout, node.probe.misses) == (1.0, 1.0, 3)
    assert node.routes == ()
    doc = client_doc() | {"routes": ["198.19.0.0/24", "198.19.64.0/18"]}
    api = load_role_config(_write(tmp_path, doc), role="apiserver")
    assert isinstance(api, ClientRoleConfig)
    assert api.routes == (IPv4Network("198.19.0.0/24"), IPv4Network("198.19.64.0/18"))


def test_routes_are_refused_for_a_node(tmp_path: Path) -> None:
    doc = client_doc() | {"routes": ["198.19.0.0/24"]}
    with pytest.raises(InputError, match=r"routes: unknown key"):
        load_role_config(_write(tmp_path, doc), role="node")


def test_every_problem_is_listed_with_its_field(tmp_path: Path) -> None:
    doc = server_doc()
    doc["openvpn"]["proto"] = "sctp"
    doc["desired_path"] = "relative/desired.json"
    doc["helth_address"] = "0.0.0.0:1"
    del doc["crl_source"]
    path = _write(tmp_path, doc)
    with pytest.raises(InputError) as info:
        load_role_config(path, role="server")
    text = str(info.value)
    assert text.startswith(f"{path}: ")
    assert 'openvpn.proto: must be "udp" or "tcp"' in text
    assert "helth_address: unknown key" in text
    assert "desired_path: 'relative/desired.json' must be an absolute path" in text


@pytest.mark.parametrize(
    ("change", "expected"),
    [
        ({"probe": {"target": "198.18.8.1"}}, r'probe.target: .* must be "ip:port"'),
        (
            {"probe": {"target": "198.18.8.1:7947", "timeout": 2, "interval": 1}},
            r"probe.timeout: 2.0 s is longer than the interval",
        ),
        ({"probe": {"target": "198.18.8.1:7947", "misses": 0}}, r"probe.misses: 0 is out of range"),
        ({"health_address": "localhost:9100"}, r"health_address: .* not an IPv4 address"),
        ({"state_dir": 5}, r"state_dir: must be a non-empty string, got a int 5"),
    ],
)
def test_client_config_field_errors(tmp_path: Path, change: dict[str, Any], expected: str) -> None:
    with pytest.raises(InputError, match=expected):
        load_role_config(_write(tmp_path, client_doc() | change), role="node")


@pytest.mark.parametrize("role", ["server", "node", "apiserver"])
def test_reneg_sec_is_optional_and_reaches_the_openvpn_config(tmp_path: Path, role: Role) -> None:
    def doc() -> dict[str, Any]:
        return server_doc() if role == "server" else client_doc()

    without = load_role_config(_write(tmp_path, doc()), role=role)
    assert without.openvpn.reneg_sec == 3600  # openvpn's own default, rendered explicitly
    changed = doc()
    changed["openvpn"]["reneg_sec"] = 10
    cfg = load_role_config(_write(tmp_path, changed), role=role)
    assert cfg.openvpn.reneg_sec == 10


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (5, r"openvpn.reneg_sec: 5 s is out of range; use 10..86400 seconds"),
        (86401, r"openvpn.reneg_sec: 86401 s is out of range"),
        ("3600", r"openvpn.reneg_sec: must be an integer, got a str"),
        (36.5, r"openvpn.reneg_sec: must be an integer"),
        (True, r"openvpn.reneg_sec: must be an integer"),
    ],
)
@pytest.mark.parametrize("role", ["server", "node"])
def test_reneg_sec_out_of_bounds_is_refused_at_its_field(
    tmp_path: Path, role: Role, value: object, expected: str
) -> None:
    doc = server_doc() if role == "server" else client_doc()
    doc["openvpn"]["reneg_sec"] = value
    with pytest.raises(InputError, match=expected):
        load_role_config(_write(tmp_path, doc), role=role)


def test_openvpn_level_errors_are_reported_under_openvpn(tmp_path: Path) -> None:
    doc = client_doc()
    doc["openvpn"]["management"] = "/run/" + "x" * 200
    with pytest.raises(InputError, match=r"openvpn: management .* bytes; a unix socket path"):
        load_role_config(_write(tmp_path, doc), role="node")


def test_unreadable_files_become_input_errors(tmp_path: Path) -> None:
    with pytest.raises(InputError, match="file not found; create it or fix the path"):
        load_role_config(str(tmp_path / "missing.json"), role="node")
    bad = tmp_path / "bad.json"
    bad.write_text('{"state_dir": "/x",,}')
    with pytest.raises(InputError, match=r"line 1 column 20: invalid JSON"):
        load_role_config(str(bad), role="node")
    with pytest.raises(InputError, match="must be a JSON object, got a list"):
        load_role_config(_write(tmp_path, [1, 2]), role="server")


# --- desired state ------------------------------------------------------------------------------


def test_desired_state_parses() -> None:
    state = parse_desired(desired_doc(), path="/d.json", tunnel_cidr=TUNNEL)
    assert state.apiserver is not None
    assert state.apiserver.is_apiserver
    assert state.apiserver.serial == 0x0A1B
    n1, n2 = state.clients
    assert n1.serial == 0x5B019F
    assert n1.kubelet == (IPv4Address("198.19.0.11"), 10250)
    assert n2.kubelet is None
    assert n2.serial is None
    assert state.serial_to_cn() == {0x0A1B: "apiserver", 0x5B019F: "node-1"}
    assert [str(n) for n in state.routes] == [
        "198.19.0.11/32", "198.19.0.12/32", "198.19.65.0/24", "198.19.66.0/24",
    ]  # fmt: skip
    assert [e.common_name for e in state.entries] == ["apiserver", "node-1", "node-2"]


def test_no_apiserver_and_no_clients_is_valid() -> None:
    state = parse_desired({"apiserver": None}, path="/d.json", tunnel_cidr=TUNNEL)
    assert state.apiserver is None
    assert state.entries == ()


def test_overlapping_iroutes_between_clients() -> None:
    doc = desired_doc()
    doc["clients"][1]["iroutes"].append("198.19.0.11/32")
    (problem,) = _problems(doc)
    assert problem.startswith("clients[1].iroutes[2]: 198.19.0.11/32 overlaps 198.19.0.11/32, ")
    assert "an iroute of clients[0] (node-1)" in problem


def test_iroute_overlapping_the_tunnel() -> None:
    doc = desired_doc()
    doc["clients"][0]["iroutes"].append("198.18.0.0/16")
    assert _problems(doc) == [
        "clients[0].iroutes[2]: 198.18.0.0/16 overlaps the tunnel CIDR 198.18.8.0/24; remove it"
    ]


def test_duplicate_names_addresses_and_serials() -> None:
    doc = desired_doc()
    doc["clients"][1].update(common_name="node-1", ifconfig_ip="198.18.8.2", serial="0a1b")
    problems = _problems(doc)
    assert any(p.startswith("clients[1].common_name: 'node-1' is also used by") for p in problems)
    assert any(
        p.startswith("clients[1].ifconfig_ip: 198.18.8.2 is also given to apiserver (apiserver)")
        for p in problems
    )
    assert any(p.startswith("clients[1].serials: a1b is also a serial of") for p in problems)


@pytest.mark.parametrize(
    ("ip", "expected"),
    [
        ("198.18.9.1", "is outside the tunnel CIDR 198.18.8.0/24"),
        ("198.18.8.0", "is the network or broadcast address"),
        ("198.18.8.255", "is the network or broadcast address"),
        ("198.18.8.1", "is the server's own tunnel address"),
    ],
)
def test_addresses_that_cannot_be_given_to_a_client(ip: str, expected: str) -> None:
    doc = desired_doc()
    doc["clients"][0]["ifconfig_ip"] = ip
    (problem,) = _problems(doc)
    assert problem.startswith(f"clients[0].ifconfig_ip: {ip} {expected}")


def test_kubelet_outside_the_clients_iroutes() -> None:
    doc = desired_doc()
    doc["clients"][0]["kubelet"] = "198.19.0.12:10250"
    (problem,) = _problems(doc)
    assert problem.startswith("clients[0].kubelet: 198.19.0.12 is not inside any iroute")


@pytest.mark.parametrize(
    ("field", "value", "expected"),
    [
        ("common_name", "Node_1", "is not a DNS-1123 subdomain"),
        ("common_name", "node-1\nscript-security 3", "is not a DNS-1123 subdomain"),
        ("iroutes", ["198.19.0.11/24"], "has host bits set; use the network address 198.19.0.0/24"),
        ("iroutes", "198.19.0.0/24", "must be a list"),
        ("kubelet", "198.19.0.11", 'must be "ip:port"'),
        ("serial", "xyz", "is not a hex certificate serial"),
        ("extra", 1, "unknown key"),
    ],
)
def test_field_level_errors_name_the_field(field: str, value: object, expected: str) -> None:
    doc = desired_doc()
    doc["clients"][0][field] = value
    problems = _problems(doc)
    assert any(p.startswith(f"clients[0].{field}: ") and expected in p for p in problems), problems


def test_apiserver_entry_may_not_own_networks() -> None:
    doc = desired_doc()
    doc["apiserver"]["iroutes"] = ["198.19.0.0/24"]
    assert any(p.startswith("apiserver.iroutes: unknown key") for p in _problems(doc))


def test_summary_is_one_line() -> None:
    doc = desired_doc()
    doc["clients"][0]["ifconfig_ip"] = "10.0.0.1"
    doc["clients"][1]["ifconfig_ip"] = "10.0.0.2"
    with pytest.raises(InputError) as info:
        parse_desired(doc, path="/d.json", tunnel_cidr=TUNNEL)
    assert "\n" not in info.value.summary
    assert info.value.summary.endswith("(+1 more)")


def test_load_desired_and_file_signature(tmp_path: Path) -> None:
    path = _write(tmp_path, desired_doc(), "desired.json")
    first = file_signature(path)
    assert first is not None
    assert len(load_desired(path, tunnel_cidr=TUNNEL).clients) == 2
    Path(path).write_text(json.dumps(desired_doc() | {"clients": []}))
    assert file_signature(path) != first
    assert file_signature(str(tmp_path / "gone.json")) is None


# --- pinned identities ---------------------------------------------------------------------------


def test_serials_list_every_certificate_a_client_may_connect_with() -> None:
    doc = desired_doc()
    doc["apiserver"]["serials"] = ["09", "0a:1b"]
    doc["clients"][0]["serials"] = ["4a77", "5b:01:9f"]
    state = parse_desired(doc, path="/d.json", tunnel_cidr=TUNNEL)
    assert state.apiserver is not None
    assert state.apiserver.allowed_serials == {0x09, 0x0A1B}
    node1, node2 = state.clients
    assert node1.allowed_serials == {0x4A77, 0x5B019F}
    assert node2.allowed_serials == frozenset()  # nothing known: nobody gets in as node-2
    assert state.serial_to_cn() == {
        0x09: "apiserver", 0x0A1B: "apiserver", 0x4A77: "node-1", 0x5B019F: "node-1"
    }  # fmt: skip
    assert state.entry("node-1") is node1
    assert state.entry("node-9") is None


@pytest.mark.parametrize(
    ("serials", "expected"),
    [
        (["zz"], "clients[0].serials: item 0: 'zz' is not a hex certificate serial"),
        ([None], "clients[0].serials: must list hex serials, not null"),
        ("5b019f", "clients[0].serials: must be a list"),
    ],
)
def test_bad_serials_are_refused(serials: object, expected: str) -> None:
    doc = desired_doc()
    doc["clients"][0]["serials"] = serials
    (problem,) = _problems(doc)
    assert problem.startswith(expected), problem


def test_a_serial_belongs_to_one_client_only() -> None:
    doc = desired_doc()
    doc["clients"][1]["serials"] = ["0a1b"]  # the apiserver's
    (problem,) = _problems(doc)
    assert problem.startswith("clients[1].serials: a1b is also a serial of apiserver")


def test_apiserver_replicas_each_have_their_own_name_address_and_serial() -> None:
    doc = desired_doc()
    doc["apiserver_replicas"] = [
        {"common_name": "apiserver-1", "ifconfig_ip": "198.18.8.254", "serial": "0c"},
        {"common_name": "apiserver-2", "ifconfig_ip": "198.18.8.253", "serial": "0d"},
    ]
    state = parse_desired(doc, path="/d.json", tunnel_cidr=TUNNEL)
    assert [a.common_name for a in state.apiservers] == ["apiserver", "apiserver-1", "apiserver-2"]
    assert all(a.is_apiserver and not a.iroutes for a in state.apiservers)
    assert state.serial_to_cn()[0x0D] == "apiserver-2"
    assert [e.common_name for e in state.clients] == ["node-1", "node-2"]


def test_apiserver_replicas_are_refused_like_any_client_and_never_without_a_first() -> None:
    doc = desired_doc()
    doc["apiserver_replicas"] = [
        {"common_name": "apiserver", "ifconfig_ip": "198.18.8.11", "serial": "0a1b"},
    ]
    problems = _problems(doc)
    assert any(p.startswith("apiserver_replicas[0].common_name: 'apiserver' is also used by")
               for p in problems)  # fmt: skip
    assert any(p.startswith("clients[0].ifconfig_ip: 198.18.8.11 is also given to "
                            "apiserver_replicas[0]") for p in problems)  # fmt: skip
    assert any(p.startswith("apiserver_replicas[0].serials: a1b is also a serial of")
               for p in problems)  # fmt: skip
    routed = desired_doc()
    routed["apiserver_replicas"] = [
        {"common_name": "apiserver-2", "ifconfig_ip": "198.18.8.253", "iroutes": []}]  # fmt: skip
    assert any("apiserver_replicas[0]" in p and "iroutes" in p for p in _problems(routed))
    lone = {"apiserver": None, "apiserver_replicas": [
        {"common_name": "apiserver-1", "ifconfig_ip": "198.18.8.254", "serial": "0c"}]}  # fmt: skip
    assert any(p.startswith("apiserver_replicas: must be empty while apiserver is null")
               for p in _problems(lone))  # fmt: skip
    assert _problems({"apiserver_replicas": {}})[0].startswith("apiserver_replicas: must be a list")
