"""The netns tier's data plane: a tenant PKI, the three agent roles and HTTPS targets as
real processes, in the lab's network namespaces, without Kubernetes.

The netns tests' `dataplane` fixture and bench/dataplane.py build the data path from this
module, on top of `vpnctl.lab.underlay`. The agents run under the configuration the
controller emits: the role configs and the server's desired state come from the
controller's own planner (`vpnctl.lab.netns_tenant`), unchanged, pod paths and all. Each
agent runs in its own mount namespace where the fixture's per-agent directories are
bound onto those pod paths (`vpnctl.lab.pod_mounts`), and in its network namespace:

* the server role in P-srv and the apiserver role in P-api;
* the node role in each node namespace, with an HTTPS target
  (`vpnctl.testenv.https_target`) on the node's kubelet port beside it and another in the
  pod namespace behind it. They are what the server's kubelet probe and the tests dial
  through the tunnel; the target's docstring says what they do not stand in for.

Processes get their own session; their pids are recorded in `<state>/procs.json`.
Talking to a namespace from this process (readiness, scrapes) happens in a short-lived
thread that has `setns()`-ed into it: the root namespace has no route into the lab, by
design.
"""

from __future__ import annotations

import asyncio
import contextlib
import copy
import ctypes
import json
import os
import secrets
import signal
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from ipaddress import IPv4Address
from pathlib import Path
from typing import Any, TypeVar

import certs
from vpnctl.lab.address_plan import LabPlan, NodePlan
from vpnctl.lab.netns import LabError
from vpnctl.lab.netns_pki import DAY, Pki, write_secret
from vpnctl.lab.netns_tenant import (
    SETTINGS,
    client_machine,
    node_config,
    plan_netns_tenant,
    signed,
)
from vpnctl.lab.pod_mounts import ensure_mount_points, host_path, pod_argv
from vpnctl.reconcile.agentdocs import ApiserverPaths, NodePaths, ServerPaths
from vpnctl.reconcile.tenant_plan import TenantPlan
from vpnctl.reconcile.tenant_spec import APISERVER_COMMON_NAME

T = TypeVar("T")

PY = sys.executable
APISERVER = "apiserver"  # the apiserver agent's name here (process, directory)
APISERVER_CN = APISERVER_COMMON_NAME  # its certificate's common name, as vpnctl issues it
SERVER_HEALTH_PORT = SETTINGS.server_health_port
_CLONE_NEWNET = 0x40000000
_libc = ctypes.CDLL("libc.so.6", use_errno=True)


# --- running code inside a namespace ------------------------------------------------------


def in_netns(ns: str, fn: Callable[[], T]) -> T:
    """Run FN in a fresh thread that has entered network namespace NS; return its result."""
    box: dict[str, Any] = {}

    def target() -> None:
        try:
            fd = os.open(f"/run/netns/{ns}", os.O_RDONLY)
            try:
                if _libc.setns(fd, _CLONE_NEWNET) != 0:
                    err = ctypes.get_errno()
                    raise OSError(err, f"setns into {ns}: {os.strerror(err)}")
            finally:
                os.close(fd)
            box["value"] = fn()
        except BaseException as e:
            box["error"] = e

    t = threading.Thread(target=target, name=f"in-{ns}")
    t.start()
    t.join()
    if "error" in box:
        raise box["error"]
    return box["value"]  # type: ignore[no-any-return]


def http_get(
    ns: str, url: str, *, timeout: float = 2.0, cafile: str | None = None
) -> tuple[int, str]:
    """(status, body) of GET URL from inside NS; status 0 and the error text if no answer."""
    import ssl

    def get() -> tuple[int, str]:
        ctx = ssl.create_default_context(cafile=cafile) if cafile else None
        try:
            with urllib.request.urlopen(url, timeout=timeout, context=ctx) as r:
                return int(r.status), r.read().decode(errors="replace")
        except urllib.error.HTTPError as e:
            return e.code, e.read().decode(errors="replace")
        except (OSError, urllib.error.URLError) as e:
            return 0, f"{type(e).__name__}: {e}"

    return in_netns(ns, get)


# --- processes -------------------------------------------------------------------------------


@dataclass
class Proc:
    """A process started in a namespace, its output appended to a log file."""

    name: str
    ns: str
    argv: list[str]
    log: Path
    popen: subprocess.Popen[bytes] | None = None

    def start(self, *, cwd: Path | None = None) -> Proc:
        with self.log.open("ab") as out:
            self.popen = subprocess.Popen(
                ["ip", "netns", "exec", self.ns, *self.argv],
                stdout=out,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                cwd=cwd,
                start_new_session=True,
            )
        return self

    @property
    def pid(self) -> int | None:
        return self.popen.pid if self.popen is not None else None

    @property
    def alive(self) -> bool:
        return self.popen is not None and self.popen.poll() is None

    def text(self) -> str:
        try:
            return self.log.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def signal(self, sig: signal.Signals) -> None:
        if self.alive:
            assert self.popen is not None
            self.popen.send_signal(sig)

    def stop(self, *, timeout: float = 10.0) -> int | None:
        """SIGTERM, wait, SIGKILL; the exit code (None if never started)."""
        if self.popen is None:
            return None
        if self.popen.poll() is None:
            self.popen.send_signal(signal.SIGTERM)
            try:
                self.popen.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                self.popen.kill()
                self.popen.wait(timeout=5)
        return self.popen.returncode


# --- the data plane --------------------------------------------------------------------------


def write_json_atomic(path: Path, doc: object) -> None:
    tmp = path.with_name(f".{path.name}.{secrets.token_hex(3)}")
    tmp.write_text(json.dumps(doc, indent=2))
    os.replace(tmp, path)


_ROLE_CONFIG_PATHS = {
    "server": ServerPaths.role_config,
    "apiserver": ApiserverPaths.role_config,
    "node": NodePaths.role_config,
}


def _pod_binds(role: str, d: Path) -> dict[str, Path]:
    """Pod directory -> the fixture's directory under D, for an agent of ROLE."""
    if role == "server":
        return {ServerPaths.config_dir: d / "etc", ServerPaths.state_dir: d / "run"}
    if role == "apiserver":
        return {ApiserverPaths.config_dir: d / "etc", ApiserverPaths.state_dir: d / "run"}
    return {NodePaths.config_dir: d / "etc", NodePaths.state_dir: d / "state",
            NodePaths.run_dir: d / "run"}  # fmt: skip


@dataclass
class DataPlane:
    """Everything the netns tier's data path is made of, and the processes running it."""

    proto: str
    base: Path
    plan: LabPlan
    pki: Pki
    target_ca: certs.Issued  # signs the HTTPS targets' certificates
    target_ca_path: Path
    agent_count: int
    tenant: TenantPlan  # the controller's plan: role configs and desired state come from it
    extra_clients: Mapping[str, IPv4Address] = field(default_factory=dict)  # cn -> InternalIP
    procs: dict[str, Proc] = field(default_factory=dict)
    health_ports: dict[str, int] = field(default_factory=dict)
    revoked: list[int] = field(default_factory=list)

    # -- layout
    @property
    def agent_nodes(self) -> tuple[NodePlan, ...]:
        return self.plan.nodes[: self.agent_count]

    @property
    def server_binds(self) -> dict[str, Path]:
        return _pod_binds("server", self.base / "server")

    @property
    def desired_path(self) -> Path:
        return host_path(self.server_binds, ServerPaths.desired)

    @property
    def crl_source(self) -> Path:
        return host_path(self.server_binds, ServerPaths.crl_source)

    @property
    def crl_installed(self) -> Path:
        return host_path(self.server_binds, ServerPaths.crl)

    @property
    def ccd_dir(self) -> Path:
        return host_path(self.server_binds, ServerPaths.ccd_dir)

    @property
    def server_openvpn_log(self) -> Path:
        """The server's openvpn writes to the agent's output, as in its pod."""
        return self.procs["server"].log

    def agent(self, name: str) -> Proc:
        return self.procs[name]

    def tunnel_ip(self, node: str) -> IPv4Address:
        """The tunnel address the controller's planner allocated to NODE."""
        for a in self.tenant.allocation.allocations:
            if a.node == node:
                return a.tunnel_ip
        raise KeyError(f"no tunnel address for {node!r}")

    # -- inputs
    def desired_doc(self) -> dict[str, Any]:
        """The server's desired state, as the controller renders it: the planner's clients
        with the serial the lab issued each, and the apiserver's serial."""
        serials = {cn: files.serial for cn, files in self.pki.clients.items()}
        return self.tenant.desired_state(
            apiserver_serial=self.pki.clients[APISERVER_CN].serial,
            allocations=signed(self.tenant, serials),
        )

    def write_desired(self, doc: object) -> None:
        write_json_atomic(self.desired_path, doc)

    def write_crl(self, revoked: Sequence[int]) -> None:
        self.revoked = list(revoked)
        tmp = self.crl_source.with_name(".crl.tmp")
        tmp.write_bytes(self.pki.crl(revoked))
        os.replace(tmp, self.crl_source)

    # -- configs, as the controller renders them
    def server_config(self) -> dict[str, Any]:
        return copy.deepcopy(self.tenant.server_role_config)

    def client_config(self, role: str) -> dict[str, Any]:
        if role == "apiserver":
            return copy.deepcopy(self.tenant.apiserver_role_config)
        return node_config(self.tenant, self.plan)

    def _place_material(self, role: str, binds: Mapping[str, Path], identity: str) -> None:
        """Put ROLE's certificates and keys where its pod has them (Secret volumes; for a
        node, the files the CSR flow writes into its host directory)."""
        if role == "server":
            files = {ServerPaths.ca: self.pki.ca_path, ServerPaths.cert: self.pki.server_cert,
                     ServerPaths.key: self.pki.server_key,
                     ServerPaths.tls_crypt_v2: self.pki.server_tc}  # fmt: skip
        else:
            paths = ApiserverPaths if role == "apiserver" else NodePaths
            mine = self.pki.clients[identity]
            files = {paths.ca: self.pki.ca_path, paths.cert: mine.cert, paths.key: mine.key,
                     paths.tls_crypt_v2: mine.tc}  # fmt: skip
        for pod_path, source in files.items():
            dest = host_path(binds, pod_path)
            dest.parent.mkdir(parents=True, exist_ok=True)
            if pod_path.endswith(".key"):
                write_secret(dest, source.read_bytes())
            else:
                dest.write_bytes(source.read_bytes())

    def _hosts_file(self, config: Mapping[str, Any]) -> str:
        """/etc/hosts for an agent whose remotes are names: each resolves to the server,
        as the cluster's DNS answers for the server's Service."""
        lines = ["127.0.0.1 localhost"]
        for host, _port in config.get("openvpn", {}).get("remotes", []):
            try:
                IPv4Address(host)
            except ValueError:
                lines.append(f"{self.plan.server_ip} {host}")
        return "\n".join(lines) + "\n"

    def start_agent(
        self, name: str, *, role: str, ns: str, config: dict[str, Any], identity: str | None = None
    ) -> Proc:
        """Start agent NAME of ROLE in network namespace NS from CONFIG, in a mount
        namespace of its own with its pod's paths (`vpnctl.lab.pod_mounts`). IDENTITY is
        the client whose certificate it gets (default NAME; the apiserver's is
        APISERVER_CN)."""
        d = self.base / name
        binds = _pod_binds(role, d)
        for source in binds.values():
            source.mkdir(parents=True, exist_ok=True)
        if role == "apiserver":
            (d / "hosts").write_text(self._hosts_file(config))
            binds["/etc/hosts"] = d / "hosts"
        who = identity or (APISERVER_CN if role == "apiserver" else name)
        self._place_material(role, binds, who)
        role_config = _ROLE_CONFIG_PATHS[role]
        host_path(binds, role_config).write_text(json.dumps(config, indent=2))
        ensure_mount_points(binds)
        # The agent's own default when the config has none (agent/role_config.py).
        _host, port = str(config.get("health_address", "0.0.0.0:9100")).rsplit(":", 1)
        self.health_ports[name] = int(port)
        proc = Proc(
            name=name,
            ns=ns,
            argv=pod_argv(binds, [PY, "-m", "agent", role, "--config", role_config]),
            log=d / "agent.log",
        ).start()
        self.procs[name] = proc
        self.save_pids()
        return proc

    def node_target_url(self, node: NodePlan) -> str:
        """The HTTPS target on NODE, where its kubelet would listen."""
        return node.kubelet_url

    def pod_target_url(self, node: NodePlan) -> str:
        """The HTTPS target in the pod behind NODE, where a webhook would listen."""
        return node.webhook_url

    def start_https_targets(self, node: NodePlan) -> None:
        """An HTTPS target on NODE (its kubelet's address) and one in the pod behind it."""
        now = datetime.now(UTC)
        for where, ns, ip, port in (
            ("node", node.ns, node.internal_ip, node.kubelet_port),
            ("pod", node.pod_ns, node.pod_ip, node.webhook_port),
        ):
            name = target_name(node, where=where)
            serving = certs.new_server_cert(
                self.target_ca, common_name=name, now=now, lifetime=DAY, ip_addresses=[ip]
            )
            d = self.base / name
            d.mkdir(parents=True, exist_ok=True)
            (d / "tls.pem").write_bytes(serving.cert_pem)
            write_secret(d / "tls.key", serving.key_pem)
            argv = [PY, "-m", "vpnctl.testenv.https_target", "--listen", f"{ip}:{port}",
                    "--cert", str(d / "tls.pem"), "--key", str(d / "tls.key"),
                    "--name", name]  # fmt: skip
            proc = Proc(name=name, ns=ns, argv=argv, log=d / "target.log")
            self.procs[proc.name] = proc.start()
        self.save_pids()

    def save_pids(self) -> None:
        write_json_atomic(
            self.base / "procs.json",
            {name: {"ns": p.ns, "pid": p.pid} for name, p in self.procs.items()},
        )

    # -- observing
    def ns_of(self, name: str) -> str:
        return self.procs[name].ns

    def scrape(self, name: str, path: str = "/metrics") -> tuple[int, str]:
        port = self.health_ports[name]
        return http_get(self.ns_of(name), f"http://127.0.0.1:{port}{path}")

    def readyz(self, name: str) -> tuple[int, str]:
        return self.scrape(name, "/readyz?verbose")

    def all_agents(self) -> list[str]:
        return ["server", APISERVER, *(n.name for n in self.agent_nodes)]

    async def until_ready(self, *names: str, timeout: float = 45.0) -> None:
        """Until every named agent answers /readyz with 200; LabError with its reason if not."""
        deadline = time.monotonic() + timeout
        for name in names:
            while True:
                proc = self.procs[name]
                if not proc.alive:
                    raise LabError(f"agent {name} exited:\n{proc.text()[-4000:]}")
                status, body = await asyncio.to_thread(self.readyz, name)
                if status == 200:
                    break
                if time.monotonic() > deadline:
                    raise LabError(f"agent {name} not ready after {timeout:.0f}s: {body}")
                await asyncio.sleep(0.2)

    def dump_logs(self) -> str:
        return "\n".join(f"===== {n} ({p.log})\n{p.text()[-6000:]}" for n, p in self.procs.items())

    # -- teardown
    def stop_all(self) -> dict[str, int | None]:
        return {n: p.stop(timeout=10) for n, p in reversed(list(self.procs.items()))}


def target_name(node: NodePlan, *, where: str = "node") -> str:
    """The HTTPS target's name (its process, folder and the tag of its lines) on NODE's
    address (`node`) or its pod's (`pod`)."""
    return f"target-{where}-{node.name}"


def prepare_dataplane(
    *,
    plan: LabPlan,
    proto: str,
    base: Path,
    agent_count: int | None = None,
    extra_clients: Mapping[str, IPv4Address] | None = None,
    foreign_tc: Sequence[str] = (),
    reneg_sec: int | None = None,
) -> DataPlane:
    """Issue the PKI, plan the tenant with the controller's planner and lay out the state
    directory; starts nothing. RENEG_SEC is the Tunnel's
    `spec.transport.renegotiateSeconds` (None: its default).

    `extra_clients` (common name -> InternalIP) are Machines of their own without an agent
    (the tests use them as ad-hoc openvpn clients); those named in `foreign_tc` get a
    tls-crypt-v2 key wrapped by another server's key.
    """
    agents = plan.nodes if agent_count is None else plan.nodes[:agent_count]
    extra = dict(extra_clients or {})
    base.mkdir(parents=True, exist_ok=True)
    # openvpn drops to an unprivileged user after start and then re-reads the installed
    # CRL and the CCD files under BASE: it must be able to traverse it (keys stay 0600).
    base.chmod(0o755)
    pki = Pki.create(base / "pki", server_ip=plan.server_ip)
    for cn in [APISERVER_CN, *(n.name for n in agents), *extra]:
        if cn in foreign_tc:
            pki.client(cn, tc_server=certs.new_tls_crypt_v2_server_key())
        else:
            pki.client(cn)
    machines = [*agents, *(client_machine(plan, number=k, name=cn, internal_ip=ip)
                           for k, (cn, ip) in enumerate(extra.items()))]  # fmt: skip
    tenant = plan_netns_tenant(
        plan, proto=proto, machines=machines, connected=[n.name for n in agents],
        reneg_sec=reneg_sec,
    )  # fmt: skip
    target_ca = certs.new_ca(common_name="https-targets", now=datetime.now(UTC), lifetime=DAY)
    target_ca_path = base / "pki" / "target-ca.pem"
    target_ca_path.write_bytes(target_ca.cert_pem)
    return DataPlane(
        proto=proto, base=base, plan=plan, pki=pki, target_ca=target_ca,
        target_ca_path=target_ca_path, agent_count=len(agents), tenant=tenant,
        extra_clients=extra,
    )  # fmt: skip


async def start_dataplane(dp: DataPlane, *, revoked: Sequence[int] = ()) -> None:
    """Start the server, the apiserver client, every node agent and the HTTPS targets, and
    wait until every agent is ready. The underlay must already be built."""
    dp.desired_path.parent.mkdir(parents=True, exist_ok=True)
    dp.write_desired(dp.desired_doc())
    dp.write_crl(revoked)
    dp.start_agent("server", role="server", ns=dp.plan.srv_ns, config=dp.server_config())
    dp.start_agent(APISERVER, role="apiserver", ns=dp.plan.api_ns,
                   config=dp.client_config("apiserver"))  # fmt: skip
    for n in dp.agent_nodes:
        dp.start_agent(n.name, role="node", ns=n.ns, config=dp.client_config("node"))
        dp.start_https_targets(n)
    await dp.until_ready(*dp.all_agents())


def kill_recorded(base: Path) -> list[int]:
    """SIGTERM the processes a previous `vpnctl lab up` recorded in BASE (for `lab down`)."""
    path = base / "procs.json"
    try:
        recorded = json.loads(path.read_text())
    except (FileNotFoundError, json.JSONDecodeError):
        return []
    killed = []
    for entry in recorded.values():
        pid = entry.get("pid")
        if isinstance(pid, int):
            with contextlib.suppress(ProcessLookupError):
                os.killpg(pid, signal.SIGTERM)
                killed.append(pid)
    return killed
