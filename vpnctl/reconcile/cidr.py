"""IPv4 network helpers shared by validation, allocation and routes.

The tunnel is IPv4 only (openvpn's iroute and ifconfig-push work per family, and the
product's data path is v4), so everything here speaks `IPv4Network`. Parsing is strict:
host bits set in `198.18.0.5/24` is a typo worth reporting, not something to round away,
because a route to the wrong network fails silently much later.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable
from ipaddress import IPv4Address, IPv4Network

from vpnctl.reconcile.errors import PermanentError


def parse_network(text: object, *, field: str, fix: str) -> IPv4Network:
    """Parse `text` as an IPv4 network in CIDR notation, else raise PermanentError(InvalidCIDR).

    `field` names where the text came from (``spec.tunnelCIDR of Tunnel ns/name``) and
    `fix` says what to do (``set spec.tunnelCIDR``); both end up in the condition message.
    """
    if not isinstance(text, str):
        raise PermanentError(
            reason="InvalidCIDR",
            message=f"{field} must be a CIDR string like 100.127.240.0/24, got {text!r}; {fix}",
        )
    if "/" not in text:
        raise PermanentError(
            reason="InvalidCIDR",
            message=f"{field} {text!r} has no prefix length (e.g. /24); {fix}",
        )
    try:
        net = ipaddress.ip_network(text, strict=True)
    except ValueError as exc:
        try:
            loose = ipaddress.ip_network(text, strict=False)
        except ValueError:
            raise PermanentError(
                reason="InvalidCIDR", message=f"{field} {text!r} is not a CIDR: {exc}; {fix}"
            ) from None
        raise PermanentError(
            reason="InvalidCIDR",
            message=f"{field} {text!r} has host bits set; did you mean {loose}? {fix}",
        ) from None
    if not isinstance(net, IPv4Network):
        raise PermanentError(
            reason="InvalidCIDR",
            message=f"{field} {text!r} is IPv6; the tunnel carries IPv4 only; {fix}",
        )
    return net


def parse_address(text: object) -> IPv4Address | None:
    """An IPv4 address, or None for anything else (IPv6, hostnames, junk)."""
    if not isinstance(text, str):
        return None
    try:
        addr = ipaddress.ip_address(text)
    except ValueError:
        return None
    return addr if isinstance(addr, IPv4Address) else None


def host_route(addr: IPv4Address) -> IPv4Network:
    return IPv4Network(f"{addr}/32")


def collapse(nets: Iterable[IPv4Network]) -> tuple[IPv4Network, ...]:
    """Deduplicate, merge adjacent and drop covered networks; sorted, so output is stable."""
    return tuple(sorted(ipaddress.collapse_addresses(nets)))


def unique_sorted(nets: Iterable[IPv4Network]) -> tuple[IPv4Network, ...]:
    """Deduplicate and sort without merging (for iroutes, where each prefix is a claim)."""
    return tuple(sorted(set(nets)))


def covered(net: IPv4Network, by: Iterable[IPv4Network]) -> bool:
    return any(net.subnet_of(other) for other in by)
