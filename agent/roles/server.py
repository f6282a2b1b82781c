"""The server role: the sidecar beside `openvpn --server` in the tenant's server pod.

It makes openvpn follow two inputs and reports what it sees:

* the desired-state file (clients, addresses, iroutes; format in `agent.desired_state`): the
  CCD directory, the kernel routes towards tun and the firewall follow it; a client whose
  CCD changed or disappeared is kicked so it reconnects with the new config (or is
  refused). An invalid file changes nothing: the last good state stays, /readyz says
  what is wrong, `vpnctl_agent_config_errors_total` counts it;
* the CRL at `crl_source`: checked against the CA, installed atomically where openvpn's
  `crl-verify` reads it (mtime pushed forward when needed, see `server_state`), and every
  connected client with a revoked serial is kicked at once;
* openvpn's `management-client-auth` questions: a client is admitted only with a serial the
  desired state lists for its common name and the CRL does not revoke (`server_auth`).

Kernel routes: the server owns one route per iroute towards tun (RouteKeeper, protocol
211) instead of rendering openvpn `route` lines, because the iroutes change at runtime
and openvpn applies `route` only at startup.

openvpn starts only once the certificate material is valid, the CRL is installed, the
desired state has been read and the firewall is in place: a server that would accept
clients before its firewall exists is worse than one that waits.

Also here: the UDP probe responder that nodes ping every second, a TCP probe of every
connected node's kubelet through the tunnel, and per-node metrics, among them each
node's connect time and round-trip time (`server_metrics`), which the controller reads
into the Tunnel's status (vpnctl/controller/observe.py).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import random
import time
from collections.abc import Callable
from ipaddress import IPv4Network
from typing import Any

from prometheus_client import CollectorRegistry

import certs
from agent.agent_clock import AgentClock
from agent.config_reader import InputError
from agent.desired_state import DesiredState, load_desired
from agent.files import ContentWatch, atomic_write
from agent.firewall import Firewall, FirewallError, FirewallPolicy, NftFirewall
from agent.netlink import Route
from agent.openvpn.config import render_server
from agent.openvpn.management import ClientStatus, Event
from agent.role_config import ServerRoleConfig
from agent.roles.material import (
    MaterialError,
    read_small,
)
from agent.roles.mgmt import LINK_ERRORS, Management, real_management
from agent.roles.openvpn_process import restart_openvpn
from agent.roles.openvpn_role import KernelFactory, OpenVPNRole, Tasks
from agent.roles.server_auth import ClientAuthorizer
from agent.roles.server_metrics import DIRECTIONS, ServerMetrics
from agent.roles.server_state import (
    KICK_REVOKED,
    authorize,
    crl_install_mtime,
    desired_ccd,
    plan_ccd,
    revoked_names,
)
from agent.route_keeper import RouteKeeper
from agent.tunnel_probe import CounterDelta, EchoResponder, ProbeError, tcp_probe

FILE_POLL = 0.25
FIREWALL_CHECK = 2.0


def file_stat(path: str) -> os.stat_result | None:
    try:
        return os.stat(path)
    except FileNotFoundError:
        return None


def read_ccd_dir(path: str) -> dict[str, str]:
    """File name -> content of every regular, non-hidden file in the CCD directory."""
    out: dict[str, str] = {}
    with os.scandir(path) as entries:
        for entry in entries:
            if entry.name.startswith(".") or not entry.is_file(follow_symlinks=False):
                continue
            try:
                with open(entry.path, encoding="utf-8", errors="replace") as f:
                    out[entry.name] = f.read()
            except OSError:
                out[entry.name] = ""  # unreadable: rewrite it
    return out


class ServerRole(OpenVPNRole):
    role = "server"
    watchdog_interval = 1.0  # the status task keeps the openvpn condition; see openvpn_role
    routes_ready_needs_clean_sync = False
    material_usage = "server"

    def __init__(
        self,
        *,
        cfg: ServerRoleConfig,
        registry: CollectorRegistry,
        clock: AgentClock,
        rng: random.Random,
        kernel_factory: KernelFactory,
        management_factory: Callable[[str], Management] = real_management,
        firewall: Firewall | None = None,
        logger: logging.Logger | None = None,
    ) -> None:
        self.cfg = cfg
        super().__init__(
            common=cfg.common,
            openvpn=cfg.openvpn,
            registry=registry,
            clock=clock,
            rng=rng,
            kernel_factory=kernel_factory,
            management_factory=management_factory,
            conditions=(
                ("crl", "CRL not installed yet"),
                ("desired", "desired state not read yet"),
                ("firewall", "firewall not applied yet" if cfg.firewall else None),
                ("openvpn", "openvpn not started yet"),
                ("routes", "routes not installed yet"),
                ("sysctls", "sysctls not applied yet"),
            ),
            logger=logger,
        )  # fmt: skip
        self.metrics = ServerMetrics(registry=registry)
        self.firewall: Firewall = firewall if firewall is not None else NftFirewall()
        self.authorizer = ClientAuthorizer(
            client=lambda: (self.link.connects, self.link.client),
            decide=lambda r: authorize(r, desired=self.desired, revoked=self.revoked),
            events=self.events,
            registry=registry,
            role=self.role,
        )
        self.responder = EchoResponder(address=cfg.server_ip, port=cfg.probe_port)
        # ip_forward and a loose rp_filter; no ICMP redirects is the firewall's job.
        self.keep_forwarding_sysctls()

        self.desired: DesiredState | None = None
        self.revoked: frozenset[int] = frozenset()
        self.connected: dict[str, ClientStatus] = {}
        self.pending_kicks: dict[str, str] = {}
        self._kick_lock = asyncio.Lock()
        self._bytes: dict[str, tuple[int | None, CounterDelta, CounterDelta]] = {}
        self._kubelet_ok: dict[str, bool] = {}
        # Client IDs we kicked. openvpn keeps a kicked UDP instance in `status` for a few
        # seconds (until its delayed exit); it must neither count as connected nor be
        # kicked again.
        self._kicked_ids: set[int] = set()
        self._policy: FirewallPolicy | None = None
        # The apiserver clients seen connected (vpnctl_agent_apiserver_connected).
        self._apiservers_up: set[str] = set()
        self._ready = {
            "material": self._material_ready,
            **{name: asyncio.Event() for name in ("crl", "desired", "firewall")},
        }
        if not cfg.firewall:
            self._ready["firewall"].set()

    # --- desired state ------------------------------------------------------------------------

    def _desired_policy(self) -> FirewallPolicy:
        apis = self.desired.apiservers if self.desired is not None else ()
        nodes = self.desired.clients if self.desired is not None else ()
        return FirewallPolicy(
            tun=self.cfg.openvpn.dev,
            apiserver_ips=tuple(a.ifconfig_ip for a in apis),
            probe_port=self.cfg.probe_port,
            owners=[(IPv4Network(e.ifconfig_ip), *e.iroutes) for e in nodes],
        )

    async def apply_desired(self, state: DesiredState) -> None:
        """Make CCD, routes, firewall policy, metrics and kicks follow STATE."""
        ccd_dir = self.cfg.openvpn.ccd_dir
        plan = plan_ccd(
            desired=desired_ccd(state, tunnel_cidr=self.cfg.openvpn.tunnel_cidr),
            current=read_ccd_dir(ccd_dir),
        )
        for name, content in plan.write.items():
            atomic_write(os.path.join(ccd_dir, name), content.encode(), mode=0o644)
        for name in plan.remove:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(os.path.join(ccd_dir, name))
        if not plan.empty:
            self.events("ccd_synced", written=",".join(sorted(plan.write)) or None,
                        removed=",".join(sorted(plan.remove)) or None)  # fmt: skip
        old_nodes = {e.common_name for e in self.desired.clients} if self.desired else set()
        self.desired = state
        self.authorizer.reconsider()
        self._apiservers_up &= {a.common_name for a in state.apiservers}
        self.metrics.apiserver_connected.labels(self.role).set(len(self._apiservers_up))
        for cn in old_nodes - {e.common_name for e in state.clients}:
            self._forget_node(cn)
        for e in state.clients:
            self.metrics.node_connected.labels(self.role, e.common_name).set(
                1 if e.common_name in self.connected else 0
            )
        if self.routes is not None:
            dev = self.cfg.openvpn.dev
            self.routes.set_desired(Route(dst=net, dev=dev) for net in state.routes)
        self.pending_kicks.update(plan.kick)
        self._kick_revoked()
        await self.flush_kicks()

    def _forget_node(self, cn: str) -> None:
        for metric in (
            self.metrics.node_connected,
            self.metrics.node_connected_since,
            self.metrics.node_rtt,
            self.metrics.kubelet_reachable,
            self.metrics.kubelet_probe,
        ):
            with contextlib.suppress(KeyError):
                metric.remove(self.role, cn)
        for direction in DIRECTIONS:
            with contextlib.suppress(KeyError):
                self.metrics.node_bytes.remove(self.role, cn, direction)
        self._bytes.pop(cn, None)
        self._kubelet_ok.pop(cn, None)

    def _kick_revoked(self, *, connected_only: bool = False) -> None:
        """Queue a kick for each client whose certificate is revoked.

        Judged by the serial each connection was admitted with: a name may list a revoked
        serial next to the one its node connects with now (a node replaced under the same
        name), and kicking by name would then throw the good connection out for ever. A
        connection admitted before this process knew its serial is judged by its name;
        so is a name not seen connected yet, unless CONNECTED_ONLY (the status poll: a
        refused client retrying must not be counted as kicked on every poll).
        """
        if self.desired is None:
            return
        for cn in revoked_names(revoked=self.revoked, serial_to_cn=self.desired.serial_to_cn()):
            status = self.connected.get(cn)
            if status is None and connected_only:
                continue
            cid = None if status is None else status.client_id
            serial = None if cid is None else self.authorizer.admitted.get(cid)
            if serial is None or serial in self.revoked:
                self.pending_kicks[cn] = KICK_REVOKED

    async def flush_kicks(self) -> None:
        """Kick every pending client through management; keep them pending if it is down."""
        async with self._kick_lock:
            client = self.link.client
            if client is None:
                return
            for cn, reason in list(self.pending_kicks.items()):
                try:
                    killed = await client.client_kill(cn)
                except LINK_ERRORS as e:
                    self.events.warning("kick_failed", cn=cn, reason=reason, error=str(e))
                    return
                self.pending_kicks.pop(cn, None)
                if killed:
                    self.metrics.kicked.labels(self.role, reason).inc()
                    gone = self.connected.pop(cn, None)
                    if gone is not None and gone.client_id is not None:
                        self._kicked_ids.add(gone.client_id)
                    self._set_connected(cn, False)
                    self.events.warning("client_kicked", cn=cn, reason=reason)

    async def _desired_task(self) -> None:
        path = self.cfg.desired_path
        watch = ContentWatch([path])
        while True:
            if watch.changed():
                try:
                    state = load_desired(path, tunnel_cidr=self.cfg.openvpn.tunnel_cidr)
                except InputError as e:
                    self.conditions.set("desired", f"{e.summary}; keeping the last good state")
                    self.common.config_errors.labels(self.role, "desired").inc()
                    self.events.error("desired_invalid", path=path, problems=" | ".join(e.problems),
                                      action="keeping the last good state")  # fmt: skip
                else:
                    await self.apply_desired(state)
                    self.conditions.ok("desired")
                    self._ready["desired"].set()
                    self.events("desired_applied", path=path, clients=len(state.clients),
                                apiservers=len(state.apiservers))  # fmt: skip
            await self.clock.sleep(FILE_POLL)

    # --- CRL -------------------------------------------------------------------------------------

    async def install_crl(self) -> None:
        """Validate crl_source against the CA, install it, kick the revoked. Raises on bad input."""
        source = self.cfg.crl_source
        try:
            data = read_small(source, what="CRL")
            ca = read_small(self.cfg.openvpn.ca, what="CA certificate")
            serials = certs.crl_serials(data, ca_pem=ca)
            next_update = certs.crl_next_update(data)
        except (MaterialError, certs.PKIError) as e:
            raise MaterialError(f"CRL {source}: {e}") from None
        target = self.cfg.openvpn.crl
        assert target is not None
        st = file_stat(target)
        same = st is not None and read_small(target, what="installed CRL") == data
        if not same:
            mtime = crl_install_mtime(
                now=time.time(),
                old_mtime=st.st_mtime if st else None,
                old_size=st.st_size if st else None,
                new_size=len(data),
            )
            atomic_write(target, data, mode=0o644, mtime=mtime)
            self.metrics.crl_installs.labels(self.role).inc()
        newly = serials - self.revoked
        self.revoked = serials
        self.metrics.revoked.labels(self.role).set(len(serials))
        if next_update is not None:
            self.metrics.crl_expiry.labels(self.role).set(next_update.timestamp())
        self.events("crl_installed", source=source, target=target, revoked=len(serials),
                    new=len(newly), changed=not same)  # fmt: skip
        self._kick_revoked()
        await self.flush_kicks()

    async def _crl_task(self) -> None:
        # Re-check when the CA changes too: a CRL is only valid for its CA.
        watch = ContentWatch([self.cfg.crl_source, self.cfg.openvpn.ca])
        while True:
            if watch.changed():
                try:
                    await self.install_crl()
                except MaterialError as e:
                    self.conditions.set("crl", f"{e}; keeping the installed CRL")
                    self.common.config_errors.labels(self.role, "crl").inc()
                    self.events.error(
                        "crl_invalid", error=str(e), action="keeping the installed CRL"
                    )
                else:
                    self.conditions.ok("crl")
                    self._ready["crl"].set()
            await self.clock.sleep(FILE_POLL)

    # --- openvpn and management ---------------------------------------------------------------

    def _on_openvpn_exit(self, rc: int) -> None:
        super()._on_openvpn_exit(rc)
        for cn in list(self.connected):
            self._set_connected(cn, False)
        self.connected.clear()

    def _on_management_event(self, event: Event) -> None:
        self.authorizer.submit(event)

    async def _on_management_connect(self, client: Management) -> None:
        await client.status()  # proves the interface answers, not just accepts

    def render_config(self) -> str:
        return render_server(self.cfg.openvpn)

    def _before_render(self) -> None:
        os.makedirs(self.cfg.openvpn.ccd_dir, exist_ok=True)

    async def _openvpn_task(self) -> None:
        for name, event in self._ready.items():
            if not event.is_set():
                self.conditions.set("openvpn", f"waiting for {name} before starting openvpn")
                await event.wait()
        self.conditions.set("openvpn", "openvpn starting")
        await self.supervisor.run()

    def _is_node(self, cn: str) -> bool:
        """CN is a node client of the current desired state (not the apiserver)."""
        desired = self.desired
        return desired is not None and any(e.common_name == cn for e in desired.clients)

    def _set_connected(self, cn: str, up: bool) -> None:
        desired = self.desired
        if desired is None:
            return
        api_names = {a.common_name for a in desired.apiservers}
        if cn in api_names or cn in self._apiservers_up:
            # How many apiserver clients (one per hosted apiserver replica) are up. Kept
            # as its own set: during a status poll self.connected is still the last one.
            up_names = (self._apiservers_up & api_names) - {cn}
            self._apiservers_up = up_names | ({cn} if up else set())
            self.metrics.apiserver_connected.labels(self.role).set(len(self._apiservers_up))
        elif self._is_node(cn):
            self.metrics.node_connected.labels(self.role, cn).set(1 if up else 0)
            if not up:
                self.metrics.kubelet_reachable.labels(self.role, cn).set(0)
                for gauge in (self.metrics.node_connected_since, self.metrics.node_rtt):
                    with contextlib.suppress(KeyError):
                        gauge.remove(self.role, cn)

    def _report_connection(self, st: ClientStatus) -> None:
        """A connected node's connect time (set on every poll: a reconnect between two
        polls brings a new one) and bytes."""
        if not self._is_node(st.common_name):
            return
        self.metrics.node_connected_since.labels(self.role, st.common_name).set(
            st.connected_since.timestamp()
        )
        self._account_bytes(st)

    def _account_bytes(self, st: ClientStatus) -> None:
        session = self._bytes.get(st.common_name)
        if session is None or session[0] != st.client_id:
            session = (st.client_id, CounterDelta(), CounterDelta())
            self._bytes[st.common_name] = session
        _, rx, tx = session
        node_bytes = self.metrics.node_bytes
        node_bytes.labels(self.role, st.common_name, "received").inc(rx.feed(st.bytes_received))
        node_bytes.labels(self.role, st.common_name, "sent").inc(tx.feed(st.bytes_sent))

    async def _status_task(self) -> None:
        while True:
            client = self.link.client
            statuses: list[ClientStatus] | None = None
            if client is not None:
                try:
                    statuses = await client.status()
                except LINK_ERRORS as e:
                    self.events.warning("status_failed", error=f"{type(e).__name__}: {e}")
            if statuses is not None:
                self._kicked_ids &= {s.client_id for s in statuses if s.client_id is not None}
                now = {s.common_name: s for s in statuses if s.client_id not in self._kicked_ids}
                for cn in set(self.connected) - set(now):
                    self._set_connected(cn, False)
                    self.events("client_disconnected", cn=cn)
                for cn, s in now.items():
                    if cn not in self.connected:
                        self.events("client_connected", cn=cn, real_address=s.real_address,
                                    virtual_address=s.virtual_address)  # fmt: skip
                    self._set_connected(cn, True)
                    self._report_connection(s)
                self.connected = now
                self.metrics.clients_connected.labels(self.role).set(len(now))
                self.authorizer.keep_admitted(
                    s.client_id for s in statuses if s.client_id is not None
                )
                self._kick_revoked(connected_only=True)
                await self.flush_kicks()
            self._update_openvpn_condition()
            self.common.ready.labels(self.role).set(1 if self.conditions.ready else 0)
            await self.clock.sleep(self.cfg.status_interval)

    def _update_openvpn_condition(self) -> None:
        if not self.supervisor.running:
            if self._ready["material"].is_set() and all(e.is_set() for e in self._ready.values()):
                self.conditions.set("openvpn", "openvpn is not running; the supervisor restarts it")
            return
        if not self.link.usable:
            self.conditions.set("openvpn", f"management interface unusable: {self.link.last_error}")
        else:
            self.conditions.ok("openvpn")

    async def _on_wedged(self) -> None:
        self.events.warning("openvpn_wedged", management_error=self.link.last_error,
                            action="restart openvpn")  # fmt: skip
        await restart_openvpn(self.supervisor, events=self.events, reason="wedged")

    # --- kubelet probes -----------------------------------------------------------------------

    async def _probe_kubelet(self, cn: str, host: str, port: int) -> None:
        error: ProbeError | None = None
        try:
            seconds = await tcp_probe(host, port, timeout=self.cfg.kubelet_probe_timeout)
        except ProbeError as e:
            error, seconds = e, 0.0
        # The node may have disconnected or left the desired state while the probe ran:
        # its answer must not bring its series back (a stale RTT for a gone node).
        if cn not in self.connected or not self._is_node(cn):
            return
        if error is not None:
            if self._kubelet_ok.get(cn, True):
                self.events.warning(
                    "kubelet_unreachable", node=cn, target=f"{host}:{port}", error=str(error)
                )
            self._kubelet_ok[cn] = False
            self.metrics.kubelet_reachable.labels(self.role, cn).set(0)
            with contextlib.suppress(KeyError):
                self.metrics.node_rtt.remove(self.role, cn)
            return
        if not self._kubelet_ok.get(cn, False):
            self.events(
                "kubelet_reachable", node=cn, target=f"{host}:{port}", seconds=f"{seconds:.4f}"
            )
        self._kubelet_ok[cn] = True
        self.metrics.kubelet_probe.labels(self.role, cn).observe(seconds)
        self.metrics.node_rtt.labels(self.role, cn).set(seconds)
        self.metrics.kubelet_reachable.labels(self.role, cn).set(1)

    async def _kubelet_task(self) -> None:
        while True:
            started = self.clock.monotonic()
            desired = self.desired
            if desired is not None:
                probes = []
                for e in desired.clients:
                    if e.kubelet is None:
                        continue
                    if e.common_name in self.connected:
                        probes.append(
                            self._probe_kubelet(e.common_name, str(e.kubelet[0]), e.kubelet[1])
                        )
                    else:
                        self.metrics.kubelet_reachable.labels(self.role, e.common_name).set(0)
                await asyncio.gather(*probes)
            interval = self.cfg.kubelet_probe_interval
            await self.clock.sleep(max(0.0, interval - (self.clock.monotonic() - started)))

    # --- firewall, routes, sysctls ------------------------------------------------------------

    async def _firewall_task(self) -> None:
        logged: str | None = None
        while True:
            policy = self._desired_policy()
            try:
                if policy != self._policy:
                    await self.firewall.apply(policy)
                    self.events("firewall_applied",
                                apiserver_ips=",".join(map(str, policy.apiserver_ips)) or None,
                                probe_port=policy.probe_port, tun=policy.tun)  # fmt: skip
                    self._policy = policy
                elif not await self.firewall.present():
                    await self.firewall.apply(policy)
                    self.metrics.firewall_repairs.labels(self.role).inc()
                    self.events.warning("firewall_repaired")
            except FirewallError as e:
                self.conditions.set("firewall", str(e))
                if str(e) != logged:
                    self.events.error("firewall_failed", error=str(e))
                    logged = str(e)
                self._policy = None
            else:
                self.conditions.ok("firewall")
                self._ready["firewall"].set()
                logged = None
            await self.clock.sleep(
                FIREWALL_CHECK if self._policy == self._desired_policy() else 0.1
            )

    # --- lifecycle ----------------------------------------------------------------------------

    def _starting_fields(self) -> dict[str, Any]:
        ovpn = self.cfg.openvpn
        return {"proto": ovpn.proto, "port": ovpn.port, "tunnel": ovpn.tunnel_cidr}

    async def setup(self) -> None:
        assert self.kernel is not None
        os.makedirs(self.cfg.openvpn.ccd_dir, exist_ok=True)
        self.routes = RouteKeeper(kernel=self.kernel, registry=self.registry, role=self.role)
        await self.responder.start()

    def role_tasks(self) -> Tasks:
        tasks: Tasks = {
            "desired": self._desired_task,
            "crl": self._crl_task,
            "client_auth": self.authorizer.run,
            "status": self._status_task,
            "kubelet": self._kubelet_task,
        }
        if self.cfg.firewall:
            tasks["firewall"] = self._firewall_task
        return tasks

    async def teardown(self) -> None:
        await self.responder.stop()
        if self.cfg.firewall:
            try:
                await self.firewall.remove()
                self.events("firewall_removed")
            except FirewallError as e:
                self.events.error("firewall_remove_failed", error=str(e))
