"""The server's nftables ruleset: what it allows, and that nft accepts it."""

from __future__ import annotations

import os
import shutil
import subprocess
from ipaddress import IPv4Address, IPv4Network

import pytest

from agent.firewall import FirewallPolicy, owned_pairs, render_ruleset
from agent.openvpn.config import ConfigError


def test_ruleset_allows_new_only_from_the_apiserver_and_only_within_tun() -> None:
    text = render_ruleset(
        FirewallPolicy(tun="tun0", apiserver_ips=(IPv4Address("198.18.8.2"),), probe_port=7947)
    )
    forward = text.split("chain forward")[1].split("chain input")[0]
    lines = [ln.strip() for ln in forward.splitlines() if "iifname" in ln]
    assert lines == [
        'oifname "tun0" iifname != "tun0" counter drop',
        'iifname "tun0" oifname != "tun0" counter drop',
        'iifname "tun0" ct state established accept',
        'iifname "tun0" ip saddr @apiservers ct state new accept',
        'iifname "tun0" ip daddr @apiservers ct state related meta l4proto icmp'
        " ip saddr . ct original ip daddr @owned accept",
        'iifname "tun0" counter drop',
    ]
    apiservers = text.split("set apiservers {")[1].split("\n    }")[0]
    assert "elements = { 198.18.8.2 }" in apiservers
    input_chain = text.split("chain input")[1].split("chain output")[0]
    assert 'iifname "tun0" ct state established accept' in input_chain
    assert (
        'iifname "tun0" ct state related meta l4proto icmp ip saddr . ct original ip daddr @owned'
        in input_chain
    )
    assert "established,related" not in text
    assert 'iifname "tun0" udp dport 7947 accept' in input_chain
    assert 'iifname "tun0" icmp type echo-request accept' in input_chain
    assert input_chain.strip().splitlines()[-2].strip() == 'iifname "tun0" counter drop'
    output = text.split("chain output")[1]
    assert [ln.strip() for ln in output.splitlines() if "tun0" in ln] == [
        'oifname "tun0" icmp type redirect counter drop'
    ]


def test_every_apiserver_replica_may_initiate_and_no_one_else() -> None:
    replicas = (IPv4Address("198.18.8.254"), IPv4Address("198.18.8.2"), IPv4Address("198.18.8.253"))
    text = render_ruleset(FirewallPolicy(tun="tun0", apiserver_ips=replicas, probe_port=7947))
    apiservers = text.split("set apiservers {")[1].split("\n    }")[0]
    assert "elements = { 198.18.8.2, 198.18.8.253, 198.18.8.254 }" in apiservers
    forward = text.split("chain forward")[1].split("chain input")[0]
    new_rules = [ln.strip() for ln in forward.splitlines() if "ct state new" in ln]
    assert new_rules == ['iifname "tun0" ip saddr @apiservers ct state new accept']


def test_related_icmp_is_allowed_only_between_prefixes_of_one_client() -> None:
    n1 = (IPv4Network("198.18.8.11/32"), IPv4Network("198.19.65.0/24"))
    n2 = (IPv4Network("198.18.8.12/32"),)
    assert owned_pairs([n1, n2]) == [
        "198.18.8.11/32 . 198.18.8.11/32",
        "198.18.8.11/32 . 198.19.65.0/24",
        "198.18.8.12/32 . 198.18.8.12/32",
        "198.19.65.0/24 . 198.18.8.11/32",
        "198.19.65.0/24 . 198.19.65.0/24",
    ]
    text = render_ruleset(
        FirewallPolicy(
            tun="tun0", apiserver_ips=(IPv4Address("198.18.8.2"),), probe_port=7947, owners=[n1, n2]
        )
    )
    assert "198.18.8.11/32 . 198.18.8.12/32" not in text
    assert "elements = { 198.18.8.11/32 . 198.18.8.11/32," in text


def test_ruleset_replaces_the_table_atomically() -> None:
    text = render_ruleset(FirewallPolicy(tun="tun0", apiserver_ips=(), probe_port=7947))
    first = text.splitlines()[:3]
    assert first == ["table inet vpnctl", "delete table inet vpnctl", "table inet vpnctl {"]
    assert "ct state new accept" not in text  # no apiserver: nothing may be opened
    assert "ct state related" not in text.split("chain input")[0]


@pytest.mark.parametrize(
    ("tun", "port", "match"),
    [('tun0" accept\n', 7947, "not a plain interface name"), ("tun0", 0, "out of range")],
)
def test_policy_refuses_injection_and_bad_ports(tun: str, port: int, match: str) -> None:
    with pytest.raises(ConfigError, match=match):
        FirewallPolicy(tun=tun, apiserver_ips=(), probe_port=port)


@pytest.mark.skipif(
    os.geteuid() != 0 or shutil.which("nft") is None or shutil.which("unshare") is None,
    reason="needs nft, unshare and root",
)
def test_nft_accepts_the_ruleset_in_check_mode() -> None:
    # -c: parse and validate only, and in a throw-away network namespace at that.
    owners = [(IPv4Network("198.18.8.11/32"), IPv4Network("198.19.65.0/24"))]
    apis = (IPv4Address("198.18.8.2"), IPv4Address("198.18.8.254"))
    text = render_ruleset(
        FirewallPolicy(tun="tun0", apiserver_ips=apis, probe_port=7947, owners=owners)
    )
    proc = subprocess.run(
        ["unshare", "--net", "nft", "-c", "-f", "-"],
        input=text,
        capture_output=True,
        text=True,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr
