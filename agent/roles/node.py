"""The node role: the worker node's end of the tunnel.

The node is a router for the apiserver's traffic: packets for its own InternalIP arrive
on tun and are delivered locally, packets for its pods arrive on tun and are forwarded
to the pod network. So on top of the shared client behaviour (`ClientRole`) the node
keeps two sysctls right, restoring them if someone changes them:

* `net.ipv4.ip_forward = 1`, or nothing behind the node is reachable;
* `rp_filter` on tun loose (2): replies leave through tun towards the apiserver's tunnel
  address while, on a multi-homed node, the reverse path of the apiserver's source may
  be judged elsewhere; strict rp_filter would drop them.

No routes beyond tun's own subnet are needed in lab v1: the only remote address the node
answers is the apiserver's tunnel IP, which lies in that subnet.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Coroutine
from typing import Any

from agent.roles.client import ClientRole
from agent.routes import SysctlKeeper, forwarding_sysctls


class NodeRole(ClientRole):
    role = "node"

    def extra_conditions(self) -> dict[str, str]:
        return {"sysctls": "sysctls not applied yet"}

    async def setup(self) -> None:
        self.sysctls = SysctlKeeper(registry=self.registry, role=self.role, interval=1.0)
        self.sysctls.set_desired(forwarding_sysctls(tun=self.cfg.openvpn.dev, rp_filter=2))

    def extra_tasks(self) -> dict[str, Callable[[], Coroutine[Any, Any, Any]]]:
        return {"sysctls": self._sysctl_task}

    async def _sysctl_task(self) -> None:
        dev = self.cfg.openvpn.dev
        while True:
            result = await self.sysctls.sync_once()
            if result.errors:
                self.conditions.set("sysctls", "; ".join(result.errors))
            elif result.pending:
                self.conditions.set("sysctls", f"waiting for {dev}: {', '.join(result.pending)}")
            else:
                self.conditions.ok("sysctls")
            await asyncio.sleep(1.0)
