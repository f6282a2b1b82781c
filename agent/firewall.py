"""The server pod's firewall: nodes may answer, never initiate, and never reach each other.

Without `client-to-client`, every packet between two tunnel clients leaves openvpn
through tun and comes back in, so the kernel's FORWARD hook sees it. That is where the
policy of DESIGN.md lives:

* FORWARD into tun only from tun: nothing that enters from eth0 (the pod network, the
  outside) is ever forwarded to a tunnel client, and tunnel clients reach nothing but
  the tunnel.
* FORWARD from tun: NEW connections only from the apiserver clients' tunnel addresses
  (one per hosted apiserver replica, the set `apiservers`); answers
  (ESTABLISHED) from anyone; everything else dropped. So a node cannot open anything
  towards the apiserver, nor towards another node.
* RELATED (ICMP errors about a tracked flow) only towards the apiserver, and only from
  the client that owns the flow's destination: conntrack relates an ICMP error to a
  flow by the header quoted inside it, which any node can forge. Without this a node
  could send "fragmentation needed" about the apiserver's flow to another node and
  shrink the apiserver's path MTU for it. The `owned` set holds, per client, every pair
  of its own prefixes (tunnel address and iroutes; openvpn already refuses a packet
  from a client whose source is not one of them), matched as
  `ip saddr . ct original ip daddr`.
* INPUT from tun: answers to what the server itself opened (its kubelet probes, ICMP
  errors about them only from the probed node, as above), the probe responder's UDP port
  and ICMP echo; everything else to the server is dropped.
* OUTPUT to tun: no ICMP redirects. Every packet between two clients leaves by the tun
  it came in on, so the kernel would tell the sender to go direct, which on a tun it
  cannot. `send_redirects=0` would say the same, but a pod's /proc/sys is read-only
  under a real kubelet (and an unsafe sysctl needs the service cluster's kubelets to
  allow it), while this table is ours to write.

Why nftables in one owned table (`inet vpnctl`): a table is a namespace of its own, so we
never edit or reorder anyone else's rules; the whole ruleset is replaced atomically in
one `nft -f` transaction (`table; delete table; table {...}` is the idempotent idiom:
no window without rules, and the same call both creates and repairs it); and removing
it on shutdown is a single `delete table`. Only this namespace is touched: the agent
runs inside the server pod's network namespace.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from dataclasses import dataclass, field
from ipaddress import IPv4Address, IPv4Network
from typing import Protocol

from agent.openvpn.config import ConfigError

TABLE = "vpnctl"
FAMILY = "inet"


class FirewallError(RuntimeError):
    """nft refused or failed; the message carries nft's own error text."""


@dataclass(frozen=True, kw_only=True)
class FirewallPolicy:
    tun: str
    # The tunnel addresses of the apiserver clients (one per replica); empty: nobody may
    # open connections through the tunnel.
    apiserver_ips: tuple[IPv4Address, ...]
    probe_port: int
    # Per tunnel client, the prefixes it owns (its tunnel address /32 and its iroutes).
    owners: Sequence[tuple[IPv4Network, ...]] = field(default=())

    def __post_init__(self) -> None:
        if not self.tun or not all(c.isalnum() or c in "_-" for c in self.tun):
            raise ConfigError(f"tun device name {self.tun!r} is not a plain interface name")
        if not 1 <= self.probe_port <= 65535:
            raise ConfigError(f"probe port {self.probe_port} is out of range 1..65535")
        object.__setattr__(self, "owners", tuple(tuple(nets) for nets in self.owners))
        object.__setattr__(self, "apiserver_ips", tuple(sorted(set(self.apiserver_ips))))


def owned_pairs(owners: Sequence[Sequence[IPv4Network]]) -> list[str]:
    """nft elements `a . b` for every pair of prefixes owned by the same client."""
    return sorted({f"{a} . {b}" for nets in owners for a in nets for b in nets})


def render_ruleset(policy: FirewallPolicy, *, table: str = TABLE) -> str:
    """The nft script that (re)creates our table atomically."""
    tun = f'"{policy.tun}"'
    apis = policy.apiserver_ips
    from_apiserver = (
        f"        iifname {tun} ip saddr @apiservers ct state new accept\n"
        f"        iifname {tun} ip daddr @apiservers ct state related meta l4proto icmp"
        " ip saddr . ct original ip daddr @owned accept\n"
        if apis
        else ""
    )
    api_elements = f"        elements = {{ {', '.join(str(a) for a in apis)} }}\n" if apis else ""
    pairs = owned_pairs(policy.owners)
    elements = f"        elements = {{ {', '.join(pairs)} }}\n" if pairs else ""
    return (
        f"table {FAMILY} {table}\n"
        f"delete table {FAMILY} {table}\n"
        f"table {FAMILY} {table} {{\n"
        "    set owned {\n"
        "        type ipv4_addr . ipv4_addr\n"
        "        flags interval\n"
        f"{elements}"
        "    }\n"
        "    set apiservers {\n"
        "        type ipv4_addr\n"
        f"{api_elements}"
        "    }\n"
        "    chain forward {\n"
        "        type filter hook forward priority filter; policy accept;\n"
        f"        oifname {tun} iifname != {tun} counter drop\n"
        f"        iifname {tun} oifname != {tun} counter drop\n"
        f"        iifname {tun} ct state established accept\n"
        f"{from_apiserver}"
        f"        iifname {tun} counter drop\n"
        "    }\n"
        "    chain input {\n"
        "        type filter hook input priority filter; policy accept;\n"
        f"        iifname {tun} ct state established accept\n"
        f"        iifname {tun} ct state related meta l4proto icmp"
        " ip saddr . ct original ip daddr @owned accept\n"
        f"        iifname {tun} udp dport {policy.probe_port} accept\n"
        f"        iifname {tun} icmp type echo-request accept\n"
        f"        iifname {tun} counter drop\n"
        "    }\n"
        "    chain output {\n"
        "        type filter hook output priority filter; policy accept;\n"
        f"        oifname {tun} icmp type redirect counter drop\n"
        "    }\n"
        "}\n"
    )


class Firewall(Protocol):
    """What the server role needs of a firewall; tests use a fake of this."""

    async def apply(self, policy: FirewallPolicy) -> None: ...

    async def present(self) -> bool: ...

    async def remove(self) -> None: ...


class NftFirewall:
    """`Firewall` on the nft command, in the namespace the agent runs in."""

    def __init__(self, *, nft: str = "nft", table: str = TABLE, timeout: float = 10.0) -> None:
        self._nft = nft
        self._table = table
        self._timeout = timeout

    async def _run(self, *args: str, stdin: str | None = None) -> tuple[int, str, str]:
        try:
            proc = await asyncio.create_subprocess_exec(
                self._nft,
                *args,
                stdin=asyncio.subprocess.PIPE if stdin is not None else asyncio.subprocess.DEVNULL,
                stdout=asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.PIPE,
            )
        except OSError as e:
            raise FirewallError(
                f"cannot run {self._nft!r}: {e.strerror}; install nftables in the server image"
            ) from e
        try:
            async with asyncio.timeout(self._timeout):
                out, err = await proc.communicate(stdin.encode() if stdin is not None else None)
        except TimeoutError:
            proc.kill()
            await proc.wait()
            raise FirewallError(
                f"nft {' '.join(args)} did not finish in {self._timeout:g}s"
            ) from None
        assert proc.returncode is not None
        return proc.returncode, out.decode(errors="replace"), err.decode(errors="replace")

    async def apply(self, policy: FirewallPolicy) -> None:
        rc, _out, err = await self._run("-f", "-", stdin=render_ruleset(policy, table=self._table))
        if rc != 0:
            raise FirewallError(
                f"nft refused the {FAMILY} {self._table} ruleset (exit {rc}): {err.strip()}"
            )

    async def present(self) -> bool:
        rc, _out, _err = await self._run("list", "table", FAMILY, self._table)
        return rc == 0

    async def remove(self) -> None:
        rc, _out, err = await self._run("delete", "table", FAMILY, self._table)
        if rc != 0 and "No such file" not in err:
            raise FirewallError(
                f"cannot delete table {FAMILY} {self._table} (exit {rc}): {err.strip()}"
            )
