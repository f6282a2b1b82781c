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

So the apiserver's desired-state entry on the server pushes no tenant routes
(`push_routes: []`, which is what the controller's planner emits): if it did, openvpn's
`route add` would collide with ours ("File exists") and log an error on every connect,
and every change of them (a node joining) would rewrite the apiserver's CCD, which
costs a kick and cuts every exec, logs -f and port-forward.

The controller writes the routes into this role's config (`routes`), and they follow
the tenant's nodes (each node address no listed network covers has its own /32). So,
given the config file's path, the role re-reads `routes` every `ROUTES_RELOAD_INTERVAL`
seconds and hands a changed set to the keeper: a node that joins is reachable once
kubelet has refreshed the ConfigMap volume, without a restart or a reconnect. A file
that does not load keeps the routes as they are (logged once per distinct problem).
"""

from __future__ import annotations

from ipaddress import IPv4Network
from typing import Any

from agent.config_reader import InputError
from agent.netlink import Route
from agent.role_config import ClientRoleConfig, load_role_config
from agent.roles.client_role import ClientRole
from agent.roles.openvpn_role import Tasks
from agent.route_keeper import RouteKeeper

ROUTES_RELOAD_INTERVAL = 1.0


class ApiserverRole(ClientRole):
    role = "apiserver"

    def __init__(self, *, config_path: str | None = None, **kwargs: Any) -> None:
        """``config_path``: the role config file, re-read for `routes` (see the module
        docstring); None keeps the routes of ``cfg`` for good."""
        super().__init__(**kwargs)
        self._config_path = config_path
        self._routes: tuple[IPv4Network, ...] = self.cfg.routes
        self._reload_problem: str | None = None

    def role_tasks(self) -> Tasks:
        tasks = super().role_tasks()
        if self._config_path is not None:
            tasks["routes_config"] = self._routes_config_task
        return tasks

    def reload_routes(self) -> bool:
        """Read the config file's `routes` once; True when they changed (and were handed
        to the keeper)."""
        assert self._config_path is not None
        assert self.routes is not None
        try:
            cfg = load_role_config(self._config_path, role="apiserver")
        except (InputError, OSError) as e:
            problem = e.summary if isinstance(e, InputError) else str(e)
            if problem != self._reload_problem:
                self.events.warning("routes_config_unusable", path=self._config_path,
                                    problem=problem, kept=len(self._routes))  # fmt: skip
                self._reload_problem = problem
            return False
        self._reload_problem = None
        assert isinstance(cfg, ClientRoleConfig)
        if cfg.routes == self._routes:
            return False
        added = sorted(set(cfg.routes) - set(self._routes))
        removed = sorted(set(self._routes) - set(cfg.routes))
        self.routes.set_desired(Route(dst=net, dev=self.cfg.openvpn.dev) for net in cfg.routes)
        self._routes = cfg.routes
        self.events("routes_changed", added=",".join(map(str, added)) or "-",
                    removed=",".join(map(str, removed)) or "-", routes=len(cfg.routes))  # fmt: skip
        return True

    async def _routes_config_task(self) -> None:
        while True:
            await self.clock.sleep(ROUTES_RELOAD_INTERVAL)
            self.reload_routes()

    def extra_conditions(self) -> dict[str, str]:
        return {"routes": "routes not installed yet"}

    async def setup(self) -> None:
        assert self.kernel is not None
        self.routes = RouteKeeper(
            kernel=self.kernel, registry=self.registry, role=self.role, interval=0.25
        )
        dev = self.cfg.openvpn.dev
        self.routes.set_desired(Route(dst=net, dev=dev) for net in self.cfg.routes)
