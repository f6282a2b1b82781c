"""CPU and memory requests and limits of the containers vpnctl runs for each tenant: the
openvpn server pods, the apiserver sidecar and the node agent DaemonSet.

Every one gets small requests (so a scheduler places it and a node's eviction ranks it)
and a memory limit (so a leak in one tenant's agent cannot take a node's memory). The
controller's flags (`--server-resources` and friends) set the defaults; a Tunnel's
`spec.resources.{server,sidecar,agent}` replaces one of them for that tenant, whole, as
a container's `resources` would. Pure: no I/O, values checked here so a mistake is a
condition on the Tunnel (or a refused flag) instead of pods the apiserver rejects.

Why these defaults: each container is one Python process beside an openvpn process of a
few MiB. The roles' peak resident size was 62-63 MiB each (node, server, apiserver) in
tests/netns/test_dataplane.py; the requests sit above that and the limits at about four
times it. The server's openvpn grows with its clients, hence its larger limit.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from decimal import Decimal, InvalidOperation
from typing import Any

# Kubernetes' quantity syntax (resource.Quantity): a decimal number with an optional
# binary (Ki..Ei) or decimal (n, u, m, k, M..E) suffix, or an exponent.
_QUANTITY = re.compile(
    r"^(?P<number>[+]?(?:[0-9]+(?:\.[0-9]*)?|\.[0-9]+))"
    r"(?:(?P<binary>Ki|Mi|Gi|Ti|Pi|Ei)|(?P<decimal>[numkMGTPE])|[eE](?P<exp>[+-]?[0-9]+))?$"
)
_BINARY = {"Ki": 2**10, "Mi": 2**20, "Gi": 2**30, "Ti": 2**40, "Pi": 2**50, "Ei": 2**60}
_DECIMAL = {"n": -9, "u": -6, "m": -3, "k": 3, "M": 6, "G": 9, "T": 12, "P": 15, "E": 18}
KINDS = ("requests", "limits")
NAMES = ("cpu", "memory")


def parse_quantity(text: str) -> Decimal:
    """A quantity's value (cores or bytes); ValueError for anything Kubernetes refuses."""
    match = _QUANTITY.match(text)
    if match is None:
        raise ValueError(f"{text!r} is not a quantity (like 100m, 0.5, 64Mi or 1G)")
    try:
        number = Decimal(match["number"])
    except InvalidOperation:  # pragma: no cover - the pattern admits only numbers
        raise ValueError(f"{text!r} is not a quantity") from None
    if match["binary"]:
        return number * _BINARY[match["binary"]]
    if match["decimal"]:
        return number.scaleb(_DECIMAL[match["decimal"]])
    if match["exp"]:
        return number.scaleb(int(match["exp"]))
    return number


@dataclass(frozen=True, kw_only=True)
class ContainerResources:
    """A container's `resources`: sorted (name, quantity) pairs, hashable."""

    requests: tuple[tuple[str, str], ...] = ()
    limits: tuple[tuple[str, str], ...] = ()

    def __post_init__(self) -> None:
        for kind in KINDS:
            for name, quantity in getattr(self, kind):
                if name not in NAMES:
                    raise ValueError(f"{kind}.{name}: only {' and '.join(NAMES)} can be set")
                parse_quantity(quantity)
        limits = dict(self.limits)
        for name, request in self.requests:
            if name in limits and parse_quantity(request) > parse_quantity(limits[name]):
                raise ValueError(
                    f"requests.{name} {request} is more than limits.{name} {limits[name]}"
                )

    def body(self, *, extra_limits: Mapping[str, str] | None = None) -> dict[str, Any]:
        """The Kubernetes `resources` object, with ``extra_limits`` (a device plugin's
        tun resource) added to the limits; {} when nothing is set."""
        out: dict[str, Any] = {}
        if self.requests:
            out["requests"] = dict(self.requests)
        limits = {**dict(self.limits), **dict(extra_limits or {})}
        if limits:
            out["limits"] = limits
        return out


def resources_from_body(value: object) -> ContainerResources:
    """From a `{requests: {cpu, memory}, limits: {...}}` mapping (a Tunnel's spec, a Helm
    value); ValueError naming what is wrong."""
    if not isinstance(value, Mapping):
        raise ValueError(f"must be an object with requests and limits, got {value!r}")
    unknown = sorted(set(value) - set(KINDS))
    if unknown:
        raise ValueError(f"{unknown[0]}: only requests and limits can be set")
    pairs: dict[str, tuple[tuple[str, str], ...]] = {}
    for kind in KINDS:
        section = value.get(kind) or {}
        if not isinstance(section, Mapping):
            raise ValueError(f"{kind} must map cpu and memory to quantities, got {section!r}")
        items = []
        for name, quantity in section.items():
            if isinstance(quantity, bool) or not isinstance(quantity, str | int | float):
                raise ValueError(f"{kind}.{name} must be a quantity, got {quantity!r}")
            items.append((str(name), str(quantity)))
        pairs[kind] = tuple(sorted(items))
    return ContainerResources(requests=pairs["requests"], limits=pairs["limits"])


def resources_from_flag(text: str) -> ContainerResources:
    """From `requests.cpu=50m,requests.memory=96Mi,limits.memory=256Mi` (a flag); an
    empty string means none at all. ValueError naming what is wrong."""
    body: dict[str, dict[str, str]] = {}
    for term in filter(None, (t.strip() for t in text.split(","))):
        key, sep, quantity = term.partition("=")
        kind, dot, name = key.partition(".")
        if not sep or not dot or kind not in KINDS or not name or not quantity:
            raise ValueError(
                f"{term!r} is not requests.NAME=QUANTITY or limits.NAME=QUANTITY "
                "(e.g. requests.cpu=50m,limits.memory=256Mi)"
            )
        body.setdefault(kind, {})[name] = quantity
    return resources_from_body(body)


def flag_text(resources: ContainerResources) -> str:
    """The flag syntax of ``resources`` (shown as the flags' defaults)."""
    return ",".join(
        f"{kind}.{name}={quantity}" for kind in KINDS for name, quantity in getattr(resources, kind)
    )


DEFAULT_SERVER_RESOURCES = ContainerResources(
    requests=(("cpu", "50m"), ("memory", "128Mi")), limits=(("memory", "512Mi"),)
)
DEFAULT_SIDECAR_RESOURCES = ContainerResources(
    requests=(("cpu", "10m"), ("memory", "96Mi")), limits=(("memory", "256Mi"),)
)
DEFAULT_AGENT_RESOURCES = ContainerResources(
    requests=(("cpu", "10m"), ("memory", "96Mi")), limits=(("memory", "256Mi"),)
)


@dataclass(frozen=True, kw_only=True)
class ResourceOverrides:
    """A Tunnel's spec.resources: None where the controller's default applies."""

    server: ContainerResources | None = None
    sidecar: ContainerResources | None = None
    agent: ContainerResources | None = None


NO_OVERRIDES = ResourceOverrides()
COMPONENTS = ("server", "sidecar", "agent")
