"""Which node carries the service CIDR (and the other networks no node owns), without flapping.

Electing a node rewrites its CCD, and the server role kicks a client whose CCD changed so
openvpn reads the new iroutes. The next observation then sees the new holder
disconnected. An election that only looked at "connected now" (as vpnctl's first did)
elected another node, kicked it too, and so on: 43 kicks in 22 s at a 1 s observe
interval (issue 12). So:

- The holder keeps the role while it is connected, whatever other nodes do.
- For ``grace`` after its election the holder keeps the role even while disconnected or
  while its kubelet probe fails: that is the kick its own election caused, and it is
  reconnecting. The time of the election is kept in the Tunnel's status
  (``serviceRouteElectedAt``), so a controller restart does not forget it.
- After that, a holder that is disconnected, or whose kubelet the server cannot reach
  through its tunnel while another connected node's kubelet answers, is replaced by the
  connected node whose name sorts first, preferring nodes whose kubelet answers.
- With no connected node to move to, the holder keeps the role (moving it nowhere
  would only rewrite its CCD once more when it comes back); a holder that is no longer a
  member loses it.

Pure: the caller passes the clock's ``now``.
"""

from __future__ import annotations

from collections.abc import Collection
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

DEFAULT_GRACE = timedelta(seconds=20)

# Why a new holder was elected (the metric's and the Event's reason).
NO_HOLDER = "NoHolder"
HOLDER_GONE = "HolderGone"
HOLDER_DISCONNECTED = "HolderDisconnected"
HOLDER_UNHEALTHY = "HolderUnhealthy"


@dataclass(frozen=True, kw_only=True)
class ServiceRouteElection:
    """The holder after this pass, since when it holds the role, and why it changed
    (None: the previous holder kept it)."""

    holder: str | None
    elected_at: datetime | None
    reason: str | None = None
    previous: str | None = None
    # When the grace of a holder kept only by it ends: the pass to schedule then, since
    # a holder that stays down changes no observation that would bring one.
    recheck_at: datetime | None = None

    @property
    def changed(self) -> bool:
        return self.reason is not None


def parse_elected_at(value: object) -> datetime | None:
    """``status.serviceRouteElectedAt`` as written by ``rfc3339``; None when absent or
    unreadable (then the holder has no grace: the safe side is a failover)."""
    if not isinstance(value, str):
        return None
    try:
        parsed = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        return None
    return parsed.astimezone(UTC) if parsed.tzinfo is not None else None


def elect_service_route_node(
    *,
    current: str | None,
    elected_at: datetime | None,
    members: Collection[str],
    connected: Collection[str],
    kubelet_up: Collection[str] = (),
    kubelet_down: Collection[str] = (),
    now: datetime | None,
    grace: timedelta = DEFAULT_GRACE,
) -> ServiceRouteElection:
    """See the module docstring. ``members``: nodes that may hold the role (routed
    members); ``connected``: those the server reports connected; ``kubelet_up`` /
    ``kubelet_down``: those whose kubelet probe through the tunnel answered / failed
    (neither: not known). ``now`` None (no clock) gives no grace."""
    candidates = set(connected) & set(members)
    keep = ServiceRouteElection(holder=current, elected_at=elected_at)
    if current is not None and current in members:
        grace_ends = elected_at + grace if elected_at is not None else None
        if now is not None and grace_ends is not None and grace_ends - grace <= now < grace_ends:
            if current in candidates and current not in kubelet_down:
                return keep
            return ServiceRouteElection(
                holder=current, elected_at=elected_at, recheck_at=grace_ends
            )
        if current in candidates:
            better = candidates & (set(kubelet_up) - {current})
            if current not in kubelet_down or not better:
                return keep
            candidates = better
            reason = HOLDER_UNHEALTHY
        elif not candidates:
            return keep
        else:
            reason = HOLDER_DISCONNECTED
    else:
        reason = NO_HOLDER if current is None else HOLDER_GONE
    up, down = set(kubelet_up), set(kubelet_down)
    ranked = sorted(candidates, key=lambda n: (0 if n in up else 2 if n in down else 1, n))
    if not ranked:
        if current is None:
            return keep
        return ServiceRouteElection(holder=None, elected_at=None, reason=reason, previous=current)
    return ServiceRouteElection(holder=ranked[0], elected_at=now, reason=reason, previous=current)
