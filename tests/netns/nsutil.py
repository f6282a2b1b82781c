"""Throw-away network namespaces for tests, made and removed with plain `ip` commands.

The namespaces are built with iproute2 rather than with the code under test, so a
bug in our netlink layer cannot hide itself by also being the thing that set the
scene. Names are unique per call (`vt-<6 hex>-<suffix>`) so engineers running tests
side by side never collide, and every context manager deletes what it made, even
when the test body raises.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from ipaddress import IPv4Interface

import pytest

# Every module of this tier carries these marks: `-m netns` selects it, and without root
# (no network namespaces) it is skipped rather than failed.
NETNS_TIER = [
    pytest.mark.netns,
    pytest.mark.skipif(os.geteuid() != 0, reason="needs root for network namespaces"),
]

IFNAMSIZ_MAX = 15  # Linux interface names are at most 15 bytes (IFNAMSIZ - 1).


@dataclass(frozen=True, kw_only=True)
class NsEnd:
    """One side of a veth pair: its namespace, interface name and address."""

    ns: str
    veth: str
    addr: IPv4Interface


def unique_tag() -> str:
    """Six hex characters, fresh on every call."""
    return secrets.token_hex(3)


def ns_name(tag: str, suffix: str) -> str:
    return f"vt-{tag}-{suffix}"


def if_name(tag: str, suffix: str) -> str:
    """An interface name derived from the tag; raises if it would not fit in IFNAMSIZ."""
    name = f"v{tag}{suffix}"
    if len(name) > IFNAMSIZ_MAX:
        raise ValueError(
            f"interface name {name!r} is {len(name)} chars, over the kernel's "
            f"{IFNAMSIZ_MAX}; use a suffix of at most {IFNAMSIZ_MAX - 1 - len(tag)} chars"
        )
    return name


def ip(*argv: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    """Run `ip ARGV...`; on failure raise with the command and its stderr."""
    return _run(["ip", *argv], check=check)


def run_in(ns: str, *argv: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    """Run ARGV inside namespace NS (`ip netns exec`)."""
    return _run(["ip", "netns", "exec", ns, *argv], check=check)


def _run(cmd: list[str], *, check: bool) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=30, check=False)
    if check and proc.returncode != 0:
        raise RuntimeError(
            f"command failed (exit {proc.returncode}): {' '.join(cmd)}\n{proc.stderr.strip()}"
        )
    return proc


def make_ns(name: str) -> None:
    """Create namespace NAME with its loopback up."""
    ip("netns", "add", name)
    ip("-n", name, "link", "set", "lo", "up")


def delete_ns(name: str) -> None:
    """Delete namespace NAME; a namespace that is already gone is fine.

    Deleting a namespace also destroys the interfaces inside it (a veth takes its
    peer with it), so there is nothing else to clean up.
    """
    ip("netns", "delete", name, check=False)


def ns_exists(name: str) -> bool:
    return name in ip("netns", "list").stdout.split()


@contextlib.contextmanager
def netns(suffix: str = "ns", *, tag: str | None = None) -> Iterator[str]:
    """One fresh namespace, deleted on exit."""
    name = ns_name(tag or unique_tag(), suffix)
    try:
        make_ns(name)
        yield name
    finally:
        delete_ns(name)


@contextlib.contextmanager
def netns_pair(
    label: str = "",
    *,
    suffixes: tuple[str, str] = ("a", "b"),
    addrs: tuple[str, str] = ("198.18.0.1/30", "198.18.0.2/30"),
) -> Iterator[tuple[NsEnd, NsEnd]]:
    """Two fresh namespaces `vt-<tag>-<label><suffix>` joined by a veth pair whose ends
    (`v<tag><label><suffix>`, so label + suffix <= 8 chars) are up and addressed.

    Only 198.18.0.0/15 addresses are accepted, so a test cannot accidentally put a
    real-world network into a namespace.
    """
    ends = tuple(IPv4Interface(a) for a in addrs)
    for want in ends:
        if not want.network.subnet_of(IPv4Interface("198.18.0.0/15").network):
            raise ValueError(f"test address {want} is outside 198.18.0.0/15; pick one inside it")
    tag = unique_tag()
    names = [f"{label}{suffix}" for suffix in suffixes]
    veths = [if_name(tag, name) for name in names]  # raises before anything is made
    made: list[str] = []
    try:
        pair: list[NsEnd] = []
        for name, veth, addr in zip(names, veths, ends, strict=True):
            ns = ns_name(tag, name)
            make_ns(ns)
            made.append(ns)
            pair.append(NsEnd(ns=ns, veth=veth, addr=addr))
        a, b = pair
        # Create the pair directly inside the namespaces: nothing ever touches the root ns.
        ip("-n", a.ns, "link", "add", a.veth, "type", "veth", "peer", "name", b.veth,
           "netns", b.ns)  # fmt: skip
        for end in (a, b):
            ip("-n", end.ns, "addr", "add", str(end.addr), "dev", end.veth)
            ip("-n", end.ns, "link", "set", end.veth, "up")
        yield a, b
    finally:
        for ns in made:
            delete_ns(ns)


def add_tun(ns: str, dev: str, *, addr: str | None = None) -> None:
    """A tun device in NS, set up (and addressed). With no process attached it shows
    NO-CARRIER, yet routes through it can be added: enough for route tests."""
    if len(dev) > IFNAMSIZ_MAX:
        raise ValueError(f"interface name {dev!r} is over the kernel's {IFNAMSIZ_MAX} chars")
    ip("-n", ns, "tuntap", "add", "dev", dev, "mode", "tun")
    ip("-n", ns, "link", "set", dev, "up")
    if addr is not None:
        ip("-n", ns, "addr", "add", addr, "dev", dev)
