"""Golden checks and every validation error of agent.openvpn.config, with injection attempts."""

from __future__ import annotations

import dataclasses
from ipaddress import IPv4Address, IPv4Network
from typing import Any

import pytest

from agent.openvpn.config import (
    CCDEntry,
    ClientConfig,
    ConfigError,
    ServerConfig,
    render_ccd,
    render_client,
    render_server,
    server_address,
    validate_common_name,
)

TUNNEL = IPv4Network("198.18.8.0/24")


def _server(**overrides: Any) -> ServerConfig:
    fields: dict[str, Any] = {
        "tunnel_cidr": TUNNEL,
        "ca": "/etc/vpn/ca.crt",
        "cert": "/etc/vpn/server.crt",
        "key": "/etc/vpn/server.key",
        "crl": "/etc/vpn/crl.pem",
        "tls_crypt_v2": "/etc/vpn/tc-server.key",
        "ccd_dir": "/etc/vpn/ccd",
        "management": "/run/vpn/mgmt.sock",
    }
    fields.update(overrides)
    return ServerConfig(**fields)


def _client(**overrides: Any) -> ClientConfig:
    fields: dict[str, Any] = {
        "remotes": [("vpn.tenant-a.example", 1194), ("198.18.0.1", 31194)],
        "ca": "/etc/vpn/ca.crt",
        "cert": "/etc/vpn/node.crt",
        "key": "/etc/vpn/node.key",
        "tls_crypt_v2": "/etc/vpn/tc-node.key",
        "management": "/run/vpn/mgmt.sock",
    }
    fields.update(overrides)
    return ClientConfig(**fields)


def _directives(text: str) -> list[str]:
    return [line for line in text.splitlines() if line and not line.startswith("#")]


# --- golden rendering --------------------------------------------------------------------


def test_server_udp_golden() -> None:
    cfg = _server(routes=[IPv4Network("198.19.1.0/24"), IPv4Network("198.19.2.7/32")])
    assert _directives(render_server(cfg)) == [
        "proto udp4",
        "port 1194",
        "dev tun0",
        "dev-type tun",
        "txqueuelen 1000",
        "topology subnet",
        "server 198.18.8.0 255.255.255.0 nopool",
        "client-config-dir /etc/vpn/ccd",
        "ccd-exclusive",
        "max-clients 1024",
        "keepalive 1 5",
        "reneg-sec 3600",
        "persist-key",
        "persist-tun",
        "user nobody",
        "group nogroup",
        "ca /etc/vpn/ca.crt",
        "cert /etc/vpn/server.crt",
        "key /etc/vpn/server.key",
        "dh none",
        "tls-crypt-v2 /etc/vpn/tc-server.key",
        "remote-cert-tls client",
        "tls-version-min 1.2",
        "data-ciphers AES-256-GCM:CHACHA20-POLY1305",
        "crl-verify /etc/vpn/crl.pem",
        "route 198.19.1.0 255.255.255.0",
        "route 198.19.2.7 255.255.255.255",
        "explicit-exit-notify 1",
        "fast-io",
        "sndbuf 2097152",
        "rcvbuf 2097152",
        "management /run/vpn/mgmt.sock unix",
        "management-client-auth",
        "auth-user-pass-optional",
        "script-security 1",
        "verb 3",
    ]


def test_server_tcp_has_no_udp_only_directives_and_optional_parts() -> None:
    cfg = _server(
        proto="tcp",
        port=443,
        listen=IPv4Address("198.18.0.5"),
        crl=None,
        status_file="/run/vpn/status",
        keepalive=(2, 10),
        max_clients=10,
        verb=4,
    )
    lines = _directives(render_server(cfg))
    assert lines[:3] == ["proto tcp4-server", "port 443", "local 198.18.0.5"]
    for absent in ("explicit-exit-notify 1", "fast-io", "sndbuf 2097152", "rcvbuf 2097152"):
        assert absent not in lines
    assert not [x for x in lines if x.startswith("crl-verify")]
    assert "status /run/vpn/status 10" in lines
    assert "status-version 3" in lines
    assert "keepalive 2 10" in lines
    assert "max-clients 10" in lines
    assert "verb 4" in lines
    assert "tcp-nodelay" in lines  # Nagle under TCP over TCP cost ~220 ms per new connection
    assert "tcp-nodelay" not in _directives(render_server(_server()))


def test_server_never_allows_client_to_client_or_pool_and_asks_the_agent_about_clients() -> None:
    text = render_server(_server())
    assert "client-to-client" not in text
    assert "ifconfig-pool" not in text
    assert "management-hold" not in text
    lines = _directives(text)
    # Every client that passed TLS waits for the agent's client-auth/client-deny.
    assert "management-client-auth" in lines
    # openvpn drops root after start; persist-* because it could not reopen them then.
    assert {"user nobody", "group nogroup", "persist-tun", "persist-key"} <= set(lines)


@pytest.mark.parametrize("render", ["server", "client"])
def test_privilege_drop_can_be_configured_or_turned_off(render: str) -> None:
    def lines(**kw: object) -> list[str]:
        if render == "server":
            return _directives(render_server(_server(**kw)))
        return _directives(render_client(_client(**kw)))

    assert {"user vpn", "group vpn"} <= set(lines(user="vpn", group="vpn"))
    assert not [x for x in lines(user=None, group=None) if x.startswith(("user ", "group "))]
    with pytest.raises(ConfigError, match="is not a user or group name"):
        lines(user="nobody\nup /bin/sh")


def test_client_udp_golden() -> None:
    cfg = _client(routes=[IPv4Network("198.19.0.0/16")])
    assert _directives(render_client(cfg)) == [
        "client",
        "proto udp",
        "remote vpn.tenant-a.example 1194",
        "remote 198.18.0.1 31194",
        "nobind",
        "resolv-retry infinite",
        "connect-retry 1 5",
        "server-poll-timeout 10",
        "dev tun0",
        "dev-type tun",
        "txqueuelen 1000",
        "keepalive 1 5",
        "reneg-sec 3600",
        "persist-key",
        "persist-tun",
        "user nobody",
        "group nogroup",
        "ca /etc/vpn/ca.crt",
        "cert /etc/vpn/node.crt",
        "key /etc/vpn/node.key",
        "tls-crypt-v2 /etc/vpn/tc-node.key",
        "remote-cert-tls server",
        "tls-version-min 1.2",
        "data-ciphers AES-256-GCM:CHACHA20-POLY1305",
        "route 198.19.0.0 255.255.0.0",
        "explicit-exit-notify 1",
        "fast-io",
        "sndbuf 2097152",
        "rcvbuf 2097152",
        "management /run/vpn/mgmt.sock unix",
        "script-security 1",
        "verb 3",
    ]


def test_client_tcp() -> None:
    lines = _directives(render_client(_client(proto="tcp", connect_retry=(2, 30), dev="tun7")))
    assert "proto tcp-client" in lines
    assert "explicit-exit-notify 1" not in lines
    assert "fast-io" not in lines
    assert not [x for x in lines if x.startswith(("sndbuf", "rcvbuf"))]
    assert "connect-retry 2 30" in lines
    assert "dev tun7" in lines
    assert "socket-flags TCP_NODELAY" in lines
    assert "socket-flags TCP_NODELAY" not in render_client(_client())
    assert "management-hold" not in render_client(_client())


@pytest.mark.parametrize("seconds", [10, 600, 86400])
def test_both_ends_render_the_same_renegotiation_interval(seconds: int) -> None:
    # Either end renegotiates when its own timer runs out: the shorter one decides, so a
    # value on one end only would change nothing against the other's default.
    server = _directives(render_server(_server(reneg_sec=seconds)))
    client = _directives(render_client(_client(reneg_sec=seconds)))
    for lines in (server, client):
        assert [x for x in lines if x.startswith("reneg-sec")] == [f"reneg-sec {seconds}"]


def test_ccd_golden() -> None:
    entry = CCDEntry(
        common_name="node-1.tenant-a",
        ifconfig_ip=IPv4Address("198.18.8.10"),
        iroutes=[IPv4Network("198.19.0.10/32"), IPv4Network("198.19.64.0/24")],
        push_routes=[IPv4Network("198.19.128.0/20")],
    )
    assert _directives(render_ccd(entry, tunnel_cidr=TUNNEL)) == [
        "ifconfig-push 198.18.8.10 255.255.255.0",
        "iroute 198.19.0.10 255.255.255.255",
        "iroute 198.19.64.0 255.255.255.0",
        'push "route 198.19.128.0 255.255.240.0"',
    ]


def test_ccd_minimal_and_last_host() -> None:
    entry = CCDEntry(common_name="n", ifconfig_ip=IPv4Address("198.18.8.254"))
    assert _directives(render_ccd(entry, tunnel_cidr=TUNNEL)) == [
        "ifconfig-push 198.18.8.254 255.255.255.0"
    ]


def test_server_address_is_first_host() -> None:
    assert server_address(TUNNEL) == IPv4Address("198.18.8.1")


def test_inputs_are_frozen_and_sequences_normalised() -> None:
    cfg = _server(routes=[IPv4Network("198.19.1.0/24")])
    assert cfg.routes == (IPv4Network("198.19.1.0/24"),)
    hash(cfg)
    with pytest.raises(dataclasses.FrozenInstanceError):
        cfg.port = 1  # type: ignore[misc]


# --- common names ------------------------------------------------------------------------


@pytest.mark.parametrize(
    "name", ["a", "node-1", "ip-10-0-0-1.eu-west-1.compute.internal", "x" * 64]
)
def test_valid_common_names(name: str) -> None:
    assert validate_common_name(name) == name


@pytest.mark.parametrize(
    "name",
    [
        "",
        "Node-1",
        "-node",
        "node-",
        "node..1",
        ".node",
        "node_1",
        "node 1",
        "node\n",
        "node-1\nscript-security 3",
        'node"1',
        "node'1",
        "no\tde",
        "x" * 65,
        "DEFAULT",
        "1.2.3.4:5",
    ],
)
def test_invalid_common_names(name: str) -> None:
    with pytest.raises(ConfigError, match="common name"):
        validate_common_name(name)


def test_common_name_must_be_a_string() -> None:
    with pytest.raises(ConfigError, match="must be a string"):
        validate_common_name(7)  # type: ignore[arg-type]


# --- server validation -------------------------------------------------------------------


@pytest.mark.parametrize(
    ("overrides", "match"),
    [
        ({"proto": "sctp"}, "proto must be 'udp' or 'tcp'"),
        ({"port": 0}, "port must be an integer in 1..65535"),
        ({"port": 65536}, "port must be an integer in 1..65535"),
        ({"port": True}, "port must be an integer"),
        ({"listen": "198.18.0.1"}, "listen must be an IPv4Address"),
        ({"tunnel_cidr": "198.18.8.0/24"}, "tunnel_cidr must be an IPv4Network"),
        ({"tunnel_cidr": IPv4Network("198.18.8.0/31")}, "tunnel_cidr 198.18.8.0/31 is too small"),
        ({"dev": "tun0\nup /bin/sh"}, "dev .* is not a valid interface name"),
        ({"dev": "a-very-long-interface-name"}, "not a valid interface name"),
        ({"ca": ""}, "ca must be a non-empty path"),
        ({"ca": "ca.crt"}, "ca 'ca.crt' must be an absolute path"),
        ({"cert": "/etc/vpn/server.crt\nscript-security 3"}, "cert .* contains whitespace"),
        ({"key": "/etc/my key"}, "key .* contains whitespace"),
        ({"crl": '/etc/"crl'}, "crl .* a quote"),
        ({"tls_crypt_v2": "/etc/tc'key"}, "tls_crypt_v2 .* a quote"),
        ({"ccd_dir": "/etc/ccd\\x"}, "ccd_dir .* a backslash"),
        ({"ccd_dir": "/etc/ccd#x"}, "ccd_dir"),
        ({"status_file": "/run/status;x"}, "status_file"),
        ({"management": "/run/mgmt\x00.sock"}, "management"),
        ({"management": "/" + "m" * 120}, "unix socket path may be at most 107 bytes"),
        ({"routes": ["198.19.0.0/16"]}, r"routes\[0\] must be an IPv4Network"),
        ({"routes": "198.19.0.0/16"}, "routes must be a sequence"),
        ({"routes": [IPv4Network("198.18.0.0/16")]}, "overlaps the tunnel CIDR 198.18.8.0/24"),
        ({"keepalive": (1, 1)}, "keepalive .* at least 2 times"),
        ({"keepalive": (0, 5)}, "keepalive"),
        ({"keepalive": (1,)}, "keepalive must be a pair"),
        ({"max_clients": 0}, "max_clients"),
        ({"verb": 12}, "verb"),
        ({"txqueuelen": 0}, "txqueuelen"),
        ({"reneg_sec": 9}, r"reneg_sec must be an integer in 10..86400, got 9"),
        ({"reneg_sec": 86401}, "reneg_sec"),
        ({"reneg_sec": "60\nup /bin/sh"}, "reneg_sec must be an integer"),
        ({"reneg_sec": True}, "reneg_sec"),
    ],
)
def test_server_validation(overrides: dict[str, Any], match: str) -> None:
    with pytest.raises(ConfigError, match=match):
        _server(**overrides)


# --- client validation -------------------------------------------------------------------


@pytest.mark.parametrize(
    ("overrides", "match"),
    [
        ({"proto": "UDP"}, "proto"),
        ({"remotes": []}, "remotes must be a non-empty list"),
        ({"remotes": "vpn:1194"}, "remotes must be a non-empty list"),
        ({"remotes": [("vpn", 1194, "udp")]}, r"remotes\[0\] must be a \(host, port\) pair"),
        ({"remotes": [("vpn\nup /bin/sh", 1194)]}, r"remotes\[0\] host .* is not a hostname"),
        ({"remotes": [("vpn example", 1194)]}, "is not a hostname"),
        ({"remotes": [("-vpn", 1194)]}, "is not a hostname"),
        ({"remotes": [("vpn", 0)]}, r"remotes\[0\] port must be an integer in 1..65535"),
        ({"remotes": [("vpn", "1194")]}, r"remotes\[0\] port"),
        ({"dev": ""}, "dev"),
        ({"ca": "/etc/ca.crt\n<ca>"}, "ca .* contains whitespace"),
        ({"key": "relative.key"}, "absolute path"),
        ({"management": "/run/m sock"}, "management"),
        ({"routes": [IPv4Address("198.19.0.1")]}, r"routes\[0\] must be an IPv4Network"),
        ({"connect_retry": (5, 1)}, "connect_retry"),
        ({"keepalive": (10, 5)}, "keepalive"),
        ({"server_poll_timeout": 0}, "server_poll_timeout"),
        ({"verb": -1}, "verb"),
        ({"reneg_sec": 5}, r"reneg_sec must be an integer in 10..86400, got 5"),
        ({"reneg_sec": 60.0}, "reneg_sec"),
    ],
)
def test_client_validation(overrides: dict[str, Any], match: str) -> None:
    with pytest.raises(ConfigError, match=match):
        _client(**overrides)


# --- CCD validation ----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("ip", "match"),
    [
        ("198.18.9.10", "outside the tunnel CIDR"),
        ("198.18.8.0", "network or broadcast"),
        ("198.18.8.255", "network or broadcast"),
        ("198.18.8.1", "server's own tunnel address"),
    ],
)
def test_ccd_address_checks(ip: str, match: str) -> None:
    entry = CCDEntry(common_name="node-1", ifconfig_ip=IPv4Address(ip))
    with pytest.raises(ConfigError, match=match):
        render_ccd(entry, tunnel_cidr=TUNNEL)


def test_ccd_routes_must_not_overlap_tunnel() -> None:
    iroute = CCDEntry(
        common_name="node-1",
        ifconfig_ip=IPv4Address("198.18.8.10"),
        iroutes=[IPv4Network("198.18.8.128/25")],
    )
    with pytest.raises(ConfigError, match=r"iroutes of client 'node-1' entry 198\.18\.8\.128/25"):
        render_ccd(iroute, tunnel_cidr=TUNNEL)
    push = CCDEntry(
        common_name="node-1",
        ifconfig_ip=IPv4Address("198.18.8.10"),
        push_routes=[IPv4Network("198.18.0.0/16")],
    )
    with pytest.raises(ConfigError, match="push_routes of client 'node-1'"):
        render_ccd(push, tunnel_cidr=TUNNEL)


@pytest.mark.parametrize(
    ("fields", "match"),
    [
        ({"common_name": "node-1\nifconfig-push 198.18.8.1 255.255.255.0"}, "common name"),
        ({"common_name": "../etc/passwd"}, "common name"),
        ({"ifconfig_ip": "198.18.8.10"}, "must be an IPv4Address"),
        (
            {"iroutes": ["198.19.0.0/24\npush x"]},
            r"iroutes of 'node-1'\[0\] must be an IPv4Network",
        ),
        ({"push_routes": [None]}, r"push_routes of 'node-1'\[0\]"),
    ],
)
def test_ccd_entry_validation(fields: dict[str, Any], match: str) -> None:
    base: dict[str, Any] = {"common_name": "node-1", "ifconfig_ip": IPv4Address("198.18.8.10")}
    base.update(fields)
    with pytest.raises(ConfigError, match=match):
        CCDEntry(**base)


def test_ccd_tunnel_cidr_is_validated() -> None:
    entry = CCDEntry(common_name="node-1", ifconfig_ip=IPv4Address("198.18.8.10"))
    with pytest.raises(ConfigError, match="tunnel_cidr"):
        render_ccd(entry, tunnel_cidr="198.18.8.0/24")  # type: ignore[arg-type]


def test_rendered_text_is_one_directive_per_line() -> None:
    # Whatever valid input we render, no argument contains a newline or quote of its own:
    # each line starts with a known directive.
    known = {
        "proto", "port", "local", "dev", "dev-type", "txqueuelen", "topology", "server",
        "client-config-dir", "ccd-exclusive", "max-clients", "keepalive", "persist-key",
        "persist-tun", "ca", "cert", "key", "dh", "tls-crypt-v2", "remote-cert-tls",
        "tls-version-min", "data-ciphers", "crl-verify", "route", "explicit-exit-notify",
        "fast-io", "sndbuf", "rcvbuf", "management", "script-security", "verb", "status",
        "status-version",
        "client", "remote", "nobind", "resolv-retry", "connect-retry", "server-poll-timeout",
        "ifconfig-push", "iroute", "push", "user", "group", "management-client-auth",
        "auth-user-pass-optional", "reneg-sec",
    }  # fmt: skip
    texts = [
        render_server(_server(routes=[IPv4Network("198.19.0.0/24")], status_file="/run/s")),
        render_client(_client(routes=[IPv4Network("198.19.0.0/24")])),
        render_ccd(
            CCDEntry(
                common_name="a",
                ifconfig_ip=IPv4Address("198.18.8.2"),
                iroutes=[IPv4Network("198.19.0.0/24")],
                push_routes=[IPv4Network("198.19.1.0/24")],
            ),
            tunnel_cidr=TUNNEL,
        ),
    ]
    for text in texts:
        assert text.endswith("\n")
        for line in _directives(text):
            assert line.split(" ", 1)[0] in known, line
