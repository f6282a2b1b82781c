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

With a `bootstrap` section in its config, the node also obtains its own certificate
(agent/bootstrap.py): its key is made here and never leaves the node, the certificate
comes from a CSR authenticated as the node. openvpn is started only after the first
attempt (or at once, if a certificate that is still valid is already on disk); renewal
runs beside the live tunnel and swaps the files, which the shared material watch turns
into an openvpn restart. While no valid certificate exists, the `certificate` readiness
condition says what the node is waiting for.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import Mapping
from typing import Any

from prometheus_client import Counter, Gauge

from agent.bootstrap import (
    BootstrapError,
    CSRRefused,
    Obtained,
    Step,
    current_certificate,
    obtain_certificate,
    usable_tls_crypt_key,
)
from agent.files import FileWatch
from agent.role_config import BootstrapSettings
from agent.roles.client_role import ClientRole
from agent.roles.openvpn_role import Tasks

NODE_NAME_ENV = "NODE_NAME"
# A valid certificate is re-checked at least this often (files replaced, clock jumps).
RECHECK_INTERVAL = 60.0


class NodeRole(ClientRole):
    role = "node"

    def __init__(self, *, environ: Mapping[str, str] | None = None, **kwargs: Any) -> None:
        # Before super().__init__, which declares the conditions via extra_conditions().
        self._environ = os.environ if environ is None else environ
        self._first_attempt = asyncio.Event()
        super().__init__(**kwargs)
        self.certificate_requests = Counter(
            "vpnctl_agent_certificate_requests",
            "Attempts to obtain the node's certificate with a CSR, by result.",
            ["role", "result"],
            registry=self.registry,
        )
        self.certificate_expiry = Gauge(
            "vpnctl_agent_certificate_expiry_timestamp_seconds",
            "When the node's tunnel certificate expires (its notAfter), as a Unix timestamp.",
            ["role"],
            registry=self.registry,
        )

    @property
    def bootstrap(self) -> BootstrapSettings | None:
        return self.cfg.bootstrap

    def node_name(self) -> str | None:
        b = self.bootstrap
        if b is not None and b.node_name:
            return b.node_name
        return self._environ.get(NODE_NAME_ENV) or None

    def extra_conditions(self) -> dict[str, str]:
        conditions = {"sysctls": "sysctls not applied yet"}
        if self.cfg.bootstrap is not None:
            conditions["certificate"] = "the node's certificate has not been checked yet"
        return conditions

    async def setup(self) -> None:
        self.keep_forwarding_sysctls()

    def role_tasks(self) -> Tasks:
        tasks = super().role_tasks()
        if self.bootstrap is not None:
            tasks["bootstrap"] = self._bootstrap_task
        return tasks

    async def _material_task(self) -> None:
        if self.bootstrap is not None:
            await self._first_attempt.wait()
        await super()._material_task()

    # --- the node's own certificate --------------------------------------------------------

    def _have_valid(self, node: str) -> bool:
        ovpn = self.cfg.openvpn
        return usable_tls_crypt_key(ovpn.tls_crypt_v2) and (
            current_certificate(
                cert_path=ovpn.cert,
                key_path=ovpn.key,
                tunnel_ca_file=ovpn.ca,
                node_name=node,
                now=self.clock.now(),
            )
            is not None
        )

    def _on_step(self, step: Step, *, node: str) -> None:
        self.events(step.event, node=node, csr=step.csr_name)
        if not self._have_valid(node):  # a renewal beside a valid certificate stays ready
            self.conditions.set("certificate", step.message)

    async def _bootstrap_task(self) -> None:
        b = self.bootstrap
        assert b is not None
        node = self.node_name()
        if node is None:
            reason = (
                f"no node name: set bootstrap.node_name or the {NODE_NAME_ENV} environment "
                "variable (the DaemonSet sets it from spec.nodeName)"
            )
            self.conditions.set("certificate", reason)
            self.events.error("certificate_failed", error=reason, action="waiting for a restart")
            self._first_attempt.set()
            await asyncio.Event().wait()
        assert node is not None
        if self._have_valid(node):
            self._first_attempt.set()  # openvpn may start while a renewal runs
        ovpn = self.cfg.openvpn
        delay = b.retry[0]
        watch = FileWatch((ovpn.cert, ovpn.key, ovpn.ca, ovpn.tls_crypt_v2))
        while True:
            try:
                got = await obtain_certificate(
                    server=b.server,
                    ca_file=b.ca,
                    client_cert_file=b.client_cert,
                    client_key_file=b.client_key,
                    node_name=node,
                    key_path=ovpn.key,
                    cert_path=ovpn.cert,
                    tunnel_ca_file=ovpn.ca,
                    clock=self.clock.now,
                    timeout=b.timeout,
                    renew_fraction=b.renew_fraction,
                    expiration_seconds=b.expiration_seconds,
                    progress=lambda step: self._on_step(step, node=node),
                    tls_crypt_key_path=ovpn.tls_crypt_v2,
                )
            except BootstrapError as e:
                result = e.outcome.lower() if isinstance(e, CSRRefused) else "error"
                self.certificate_requests.labels(self.role, result).inc()
                valid = self._have_valid(node)
                if not valid:
                    self.conditions.set("certificate", str(e))
                self.events.error("certificate_failed", node=node, error=str(e),
                                  still_valid=valid, retry_in=f"{delay:.1f}s")  # fmt: skip
                self._first_attempt.set()
                await self.clock.sleep(delay * (0.8 + 0.4 * self.rng.random()))
                delay = min(delay * 2, b.retry[1])
                continue
            delay = b.retry[0]
            self._obtained(got, node=node)
            self._first_attempt.set()
            watch.changed()
            wait = (got.renew_at - self.clock.now()).total_seconds()
            if wait <= 0 and got.source == "issued":
                # Due on arrival (a lifetime shorter than the CA's remaining life, or a
                # tiny renew_fraction): don't turn that into a stream of CSRs.
                self.events.warning("certificate_due_on_arrival", node=node,
                                    renew_at=got.renew_at.isoformat())  # fmt: skip
                wait = RECHECK_INTERVAL
            try:
                async with asyncio.timeout(min(max(wait, 0.0), RECHECK_INTERVAL)):
                    await watch.wait_changed(interval=0.5, clock=self.clock)
            except TimeoutError:
                pass

    def _obtained(self, got: Obtained, *, node: str) -> None:
        self.conditions.ok("certificate")
        self.certificate_expiry.labels(self.role).set(got.info.not_after.timestamp())
        if got.source == "issued":
            self.certificate_requests.labels(self.role, "issued").inc()
            self.events("certificate_issued", node=node, csr=got.csr_name,
                        serial=f"{got.info.serial:x}", not_after=got.info.not_after.isoformat(),
                        renew_at=got.renew_at.isoformat())  # fmt: skip
