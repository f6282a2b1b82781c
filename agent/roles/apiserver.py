"""The apiserver role: the hosted kube-apiserver's way into the tenant's networks.

An openvpn client (shared behaviour in `ClientRole`) whose tun carries the tenant's node,
pod and service CIDRs.

Who owns those routes: **this role, not openvpn's pushed routes.** The role puts one
route per configured CIDR on tun, tagged with our protocol (211), through
`agent.route_keeper.RouteKeeper`. Why:

* a route deleted by hand (or by anything else) is back within a second; routes that
  openvpn pushed are only re-added on the next reconnect;
* after a restart the keeper deletes exactly our stale routes (by protocol number) and
  nothing of anyone else's;
* the apiserver pod has no other route to those networks, so while tun is gone the
  routes are simply pending and traffic fails fast ("network unreachable") instead of
  leaking onto another path.

So the apiserver's desired-state entry on the server should push no tenant routes
(`push_routes: []`): if it did, openvpn's `route add` would collide with ours ("File
exists") and log an error on every connect.
"""

from __future__ import annotations

from agent.netlink import Route
from agent.roles.client_role import ClientRole
from agent.route_keeper import RouteKeeper


class ApiserverRole(ClientRole):
    role = "apiserver"

    def extra_conditions(self) -> dict[str, str]:
        return {"routes": "routes not installed yet"}

    async def setup(self) -> None:
        assert self.kernel is not None
        self.routes = RouteKeeper(
            kernel=self.kernel, registry=self.registry, role=self.role, interval=0.25
        )
        dev = self.cfg.openvpn.dev
        self.routes.set_desired(Route(dst=net, dev=dev) for net in self.cfg.routes)
