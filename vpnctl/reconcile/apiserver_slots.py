"""One tunnel identity and address per hosted kube-apiserver replica: the slot plan.

Hosted control planes run two or three kube-apiserver replicas. openvpn admits one
connection per common name (a second one with the same name evicts the first), and
the server gives each name one address, so the replicas need a name, a certificate and
an address each. The design (README, "Several apiserver replicas"):

- A *slot* is one apiserver client: a common name (`vpnctl-apiserver` for slot 0, as
  before, then `vpnctl-apiserver-<i>`), a tunnel address and a certificate in its own
  Secret. Slot 0 has the address it always had (the tunnel CIDR's second host); the
  others count down from the top of the CIDR, a block the node allocator never hands
  out (`replica_block`).
- The controller gives each live pod of the labelled apiserver Deployments a slot and
  writes it on the pod (annotation `vpnctl.io/apiserver-slot`); the sidecar reads its
  own pod's annotation through a downward-API file and connects with that slot's
  certificate. The pods' annotations are the record: a restarted controller reads them
  back, so no pod is moved to another slot, and nothing is kept in memory.
- A pod keeps its slot for as long as it lives; a new pod gets the lowest free slot.
  The certificate of each slot beyond 0 is issued *for one pod* (its uid is on the
  Secret): when the slot passes to another pod it is issued anew, so the serial the
  server admits is that pod's alone. Slot 0 keeps the one Secret and certificate the
  single apiserver client always had (renewed as before), so a sidecar that predates
  slots, or a kubelet without downward-API files, still connects as slot 0.
- A slot without a live pod is left out of the server's desired state: the server
  kicks and refuses it (it admits only listed serials). Only when no apiserver pod
  exists at all is slot 0 listed, as before there were slots.
- Scaling needs nothing by hand: kube-controller-manager adds or deletes pods, the
  controller (which watches them) assigns or frees slots.

Everything here is pure; the pods, Secrets and patches are the controller's
(`controller/tenant_apiserver_slots.py`).
"""

from __future__ import annotations

from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from ipaddress import IPv4Address, IPv4Network
from typing import Any

from vpnctl.reconcile.tenant_members import APISERVER_COMMON_NAME

# The most replicas of one tenant's apiserver that get their own tunnel identity.
MAX_APISERVER_SLOTS = 8
# On each apiserver pod: the slot the controller gave it (a decimal index).
SLOT_ANNOTATION = "vpnctl.io/apiserver-slot"


def replica_block(tunnel_cidr: IPv4Network) -> tuple[IPv4Address, ...]:
    """The addresses of slots 1.. , highest first: the top hosts of the tunnel CIDR, at
    most MAX_APISERVER_SLOTS - 1 of them and at most a quarter of the hosts (a /29 keeps
    three addresses for nodes). The node allocator never hands these out."""
    top = int(tunnel_cidr.broadcast_address) - 1
    hosts = tunnel_cidr.num_addresses - 2
    size = min(MAX_APISERVER_SLOTS - 1, hosts // 4)
    return tuple(IPv4Address(top - i) for i in range(size))


def slot_common_name(index: int) -> str:
    """Slot 0 keeps the name the single apiserver client always had."""
    return APISERVER_COMMON_NAME if index == 0 else f"{APISERVER_COMMON_NAME}-{index}"


@dataclass(frozen=True, kw_only=True)
class ApiserverPod:
    """A pod of a labelled apiserver Deployment, as the slot plan needs it."""

    name: str
    uid: str
    slot: int | None  # its annotation, when it has a valid one


@dataclass(frozen=True, kw_only=True)
class Slot:
    index: int
    common_name: str
    tunnel_ip: IPv4Address
    pod: str  # the pod holding it
    pod_uid: str


@dataclass(frozen=True, kw_only=True)
class SlotPlan:
    slots: tuple[Slot, ...]  # by index
    # Pods whose annotation must be written: pod name -> slot index.
    annotate: Mapping[str, int]
    # Pods that got no slot: every slot is held (more replicas than the tunnel has
    # apiserver addresses for). They wait; their sidecar is not ready.
    waiting: tuple[str, ...]


def slot_addresses(
    tunnel_cidr: IPv4Network, *, apiserver_ip: IPv4Address, taken: Collection[IPv4Address]
) -> tuple[IPv4Address | None, ...]:
    """Address of each slot index: slot 0 at APISERVER_IP, slot i at the replica block's
    i-th address, or None where a node already holds it (an allocation made before the
    block existed is kept, never renumbered; that slot is then not offered)."""
    return (apiserver_ip, *(None if ip in taken else ip for ip in replica_block(tunnel_cidr)))


def parse_slot(annotations: Mapping[str, Any] | None) -> int | None:
    """The slot index on a pod's annotations, or None when absent or not an index."""
    raw = (annotations or {}).get(SLOT_ANNOTATION)
    if not isinstance(raw, str) or not raw.isdigit() or len(raw) > 3:
        return None
    return int(raw)


def plan_slots(
    pods: Sequence[ApiserverPod], *, addresses: Sequence[IPv4Address | None]
) -> SlotPlan:
    """Give every pod one slot (see the module docstring).

    A pod keeps a valid slot it already has (first pod by name wins a slot two pods
    claim, as a hand edit could make); the others get the lowest free indexes, in name
    order, so the same pods always give the same plan.
    """
    usable = [i for i, ip in enumerate(addresses) if ip is not None]
    held: dict[int, ApiserverPod] = {}
    for pod in sorted(pods, key=lambda p: p.name):
        if pod.slot is not None and pod.slot in usable and pod.slot not in held:
            held[pod.slot] = pod
    holders = {p.name for p in held.values()}
    free = (i for i in usable if i not in held)
    annotate: dict[str, int] = {}
    waiting: list[str] = []
    for pod in sorted(pods, key=lambda p: p.name):
        if pod.name in holders:
            continue
        index = next(free, None)
        if index is None:
            waiting.append(pod.name)
            continue
        held[index] = pod
        annotate[pod.name] = index
    slots = tuple(
        Slot(
            index=i,
            common_name=slot_common_name(i),
            tunnel_ip=ip,
            pod=held[i].name,
            pod_uid=held[i].uid,
        )
        for i in sorted(held)
        if (ip := addresses[i]) is not None
    )
    return SlotPlan(slots=slots, annotate=annotate, waiting=tuple(waiting))


@dataclass(frozen=True, kw_only=True)
class ApiserverReplicas:
    """What the server's desired state needs of the apiserver pods: the held slots and
    the serial of each further slot's certificate by common name."""

    slots: tuple[Slot, ...] = ()
    serials: Mapping[str, str] = field(default_factory=dict)
    # The earliest renewal due among the slots' certificates (None: no slot beyond 0).
    renew_at: datetime | None = None
