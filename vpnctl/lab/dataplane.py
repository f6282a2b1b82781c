"""The netns tier's data plane: a tenant PKI, the three agent roles and HTTPS targets as
real processes, in the lab's network namespaces, without Kubernetes.

The netns tests' `dataplane` fixture and bench/dataplane.py build the data path from this
module, on top of `vpnctl.lab.underlay`. It writes every input the way the controller
renders it (role configs, the server's desired state, the CRL; formats in
`agent/role_config.py` and `agent/desired_state.py`) into a state directory and starts,
each with `ip netns exec`:

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
from datetime import UTC, datetime, timedelta
from ipaddress import IPv4Address, IPv4Network
from pathlib import Path
from typing import Any, TypeVar

import certs
from vpnctl.lab.address_plan import LabPlan, NodePlan
from vpnctl.lab.netns import LabError
from vpnctl.reconcile.agentdocs import server_desired_state
from vpnctl.reconcile.routes import ClientRoutes

T = TypeVar("T")

PY = sys.executable
HEALTH_PORT = 9100
PROBE_PORT = 7947
DAY = timedelta(days=1)
APISERVER_CN = "apiserver"
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


# --- PKI -------------------------------------------------------------------------------------


def write_secret(path: Path, data: bytes) -> None:
    """Write key material readable by root only."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(data)


def write_json_atomic(path: Path, doc: object) -> None:
    tmp = path.with_name(f".{path.name}.{secrets.token_hex(3)}")
    tmp.write_text(json.dumps(doc, indent=2))
    os.replace(tmp, path)


@dataclass
class ClientFiles:
    cn: str
    cert: Path
    key: Path
    tc: Path
    serial: int


@dataclass
class Pki:
    """The tenant's PKI as files: CA, server cert, tls-crypt-v2 keys, client certs, CRLs."""

    base: Path
    ca: certs.Issued
    ca_path: Path
    tc_server: bytes
    server_cert: Path
    server_key: Path
    server_tc: Path
    clients: dict[str, ClientFiles] = field(default_factory=dict)
    crl_number: int = 0

    @classmethod
    def create(cls, base: Path, *, server_ip: IPv4Address, tenant: str = "tenant-a") -> Pki:
        base.mkdir(parents=True, exist_ok=True)
        now = datetime.now(UTC)
        ca = certs.new_ca(common_name=tenant, now=now, lifetime=DAY)
        server = certs.new_server_cert(
            ca, common_name="server", now=now, lifetime=DAY, ip_addresses=[server_ip]
        )
        tc_server = certs.new_tls_crypt_v2_server_key()
        pki = cls(
            base=base,
            ca=ca,
            ca_path=base / "ca.pem",
            tc_server=tc_server,
            server_cert=base / "server.pem",
            server_key=base / "server.key",
            server_tc=base / "tc-server.key",
        )
        pki.ca_path.write_bytes(ca.cert_pem)
        pki.server_cert.write_bytes(server.cert_pem)
        write_secret(pki.server_key, server.key_pem)
        write_secret(pki.server_tc, tc_server)
        return pki

    def client(
        self, cn: str, *, ca: certs.Issued | None = None, tc_server: bytes | None = None
    ) -> ClientFiles:
        """Issue (once) a client cert+key and tls-crypt-v2 key for CN."""
        if cn in self.clients:
            return self.clients[cn]
        now = datetime.now(UTC)
        issued = certs.new_client_cert(ca or self.ca, common_name=cn, now=now, lifetime=DAY)
        tc = certs.new_tls_crypt_v2_client_key(tc_server or self.tc_server, now=now)
        files = ClientFiles(
            cn=cn,
            cert=self.base / f"{cn}.pem",
            key=self.base / f"{cn}.key",
            tc=self.base / f"{cn}.tc.key",
            serial=certs.cert_info(issued.cert_pem).serial,
        )
        files.cert.write_bytes(issued.cert_pem)
        write_secret(files.key, issued.key_pem)
        write_secret(files.tc, tc)
        self.clients[cn] = files
        return files

    def crl(self, revoked: Sequence[int]) -> bytes:
        self.crl_number += 1
        now = datetime.now(UTC)
        return certs.build_crl(
            self.ca,
            revoked=[certs.Revoked(serial=s, revoked_at=now) for s in revoked],
            now=now,
            next_update=DAY,
            crl_number=self.crl_number,
        )


# --- the data plane --------------------------------------------------------------------------


@dataclass
class DataPlane:
    """Everything the lab's data path is made of, and the processes running it."""

    proto: str
    base: Path
    plan: LabPlan
    pki: Pki
    target_ca: certs.Issued  # signs the HTTPS targets' certificates
    target_ca_path: Path
    agent_count: int
    extra_clients: Mapping[str, str] = field(default_factory=dict)  # cn -> tunnel IP
    procs: dict[str, Proc] = field(default_factory=dict)
    revoked: list[int] = field(default_factory=list)

    # -- layout
    @property
    def agent_nodes(self) -> tuple[NodePlan, ...]:
        return self.plan.nodes[: self.agent_count]

    @property
    def srv_dir(self) -> Path:
        return self.base / "srv"

    @property
    def desired_path(self) -> Path:
        return self.srv_dir / "desired.json"

    @property
    def crl_source(self) -> Path:
        return self.srv_dir / "crl.pem"

    @property
    def crl_installed(self) -> Path:
        return self.srv_dir / "crl-installed.pem"

    @property
    def server_openvpn_log(self) -> Path:
        return self.srv_dir / "openvpn.log"

    def agent(self, name: str) -> Proc:
        return self.procs[name]

    # -- inputs
    def desired_doc(self) -> dict[str, Any]:
        """The server's desired state, made by the controller's own serialiser: one CCD
        entry per node, the first node elected to carry the service CIDR, and the
        apiserver client (whose routes its role owns). Each client's serial is the one
        certificate the lab issued it: the server admits nobody else under that name."""
        routes = [
            ClientRoutes(
                common_name=APISERVER_CN,
                tunnel_ip=self.plan.tunnel_apiserver_ip,
                iroutes=(),
                push_routes=(),
            )
        ]
        for i, n in enumerate(self.agent_nodes):
            iroutes = [IPv4Network(f"{n.internal_ip}/32"), n.pod_cidr]
            if i == 0:
                iroutes.append(self.plan.service_cidr)
            routes.append(
                ClientRoutes(
                    common_name=n.name,
                    tunnel_ip=n.tunnel_ip,
                    iroutes=tuple(iroutes),
                    push_routes=(),
                    machine=n.name,
                    kubelet=(n.internal_ip, n.kubelet_port),
                    serial=f"{self.pki.clients[n.name].serial:x}",
                )
            )
        for cn, ip in self.extra_clients.items():
            routes.append(
                ClientRoutes(
                    common_name=cn,
                    tunnel_ip=IPv4Address(ip),
                    iroutes=(),
                    push_routes=(),
                    machine=cn,
                    serial=f"{self.pki.clients[cn].serial:x}",
                )
            )
        return server_desired_state(
            clients=routes, apiserver_serial=self.pki.clients[APISERVER_CN].serial
        )

    def write_desired(self, doc: object) -> None:
        write_json_atomic(self.desired_path, doc)

    def write_crl(self, revoked: Sequence[int]) -> None:
        self.revoked = list(revoked)
        tmp = self.crl_source.with_name(".crl.tmp")
        tmp.write_bytes(self.pki.crl(revoked))
        os.replace(tmp, self.crl_source)

    # -- configs
    def server_config(self) -> dict[str, Any]:
        d = self.srv_dir
        return {
            "openvpn": {
                "proto": self.proto,
                "port": self.plan.server_port,
                "listen": str(self.plan.server_ip),
                "tunnel_cidr": str(self.plan.tunnel_cidr),
                "ca": str(self.pki.ca_path),
                "cert": str(self.pki.server_cert),
                "key": str(self.pki.server_key),
                "tls_crypt_v2": str(self.pki.server_tc),
                "ccd_dir": str(d / "ccd"),
                "management": str(d / "mgmt.sock"),
                "crl": str(self.crl_installed),
                "keepalive": [1, 5],
            },
            "desired_path": str(self.desired_path),
            "crl_source": str(self.crl_source),
            "state_dir": str(d / "state"),
            "health_address": f"0.0.0.0:{HEALTH_PORT}",
            "openvpn_log": str(self.server_openvpn_log),
            "probe_port": PROBE_PORT,
            "kubelet_probe_interval": 1.0,
            "kubelet_probe_timeout": 1.0,
        }

    def client_config(self, name: str, *, role: str) -> dict[str, Any]:
        d = self.base / name
        files = self.pki.clients[name]
        cfg: dict[str, Any] = {
            "openvpn": {
                "proto": self.proto,
                "remotes": [[str(self.plan.server_ip), self.plan.server_port]],
                "ca": str(self.pki.ca_path),
                "cert": str(files.cert),
                "key": str(files.key),
                "tls_crypt_v2": str(files.tc),
                "management": str(d / "mgmt.sock"),
                "connect_retry": [1, 2],
                "keepalive": [1, 5],
            },
            "probe": {
                "target": f"{self.plan.tunnel_server_ip}:{PROBE_PORT}",
                "interval": 1.0,
                "timeout": 0.5,
                "misses": 3,
            },
            "state_dir": str(d / "state"),
            "health_address": f"0.0.0.0:{HEALTH_PORT}",
            "openvpn_log": str(d / "openvpn.log"),
        }
        if role == "apiserver":
            # The apiserver role owns its routes (proto 211, restored within a second),
            # so its CCD pushes none: each route has exactly one owner.
            cfg["routes"] = [str(c) for c in self.plan.tenant_cidrs]
        return cfg

    def start_agent(self, name: str, *, role: str, ns: str, config: dict[str, Any]) -> Proc:
        d = self.base / name
        d.mkdir(parents=True, exist_ok=True)
        path = d / "agent.json"
        path.write_text(json.dumps(config, indent=2))
        proc = Proc(
            name=name,
            ns=ns,
            argv=[PY, "-m", "agent", role, "--config", str(path)],
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
            name = f"target-{where}-{node.name}"
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
        return http_get(self.ns_of(name), f"http://127.0.0.1:{HEALTH_PORT}{path}")

    def readyz(self, name: str) -> tuple[int, str]:
        return self.scrape(name, "/readyz?verbose")

    def all_agents(self) -> list[str]:
        return ["server", "apiserver", *(n.name for n in self.agent_nodes)]

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
        parts = [f"===== {n} ({p.log})\n{p.text()[-6000:]}" for n, p in self.procs.items()]
        for log in sorted(self.base.glob("*/openvpn.log")):
            parts.append(f"===== {log}\n{log.read_text(errors='replace')[-3000:]}")
        return "\n".join(parts)

    # -- teardown
    def stop_all(self) -> dict[str, int | None]:
        return {n: p.stop(timeout=10) for n, p in reversed(list(self.procs.items()))}


def prepare_dataplane(
    *,
    plan: LabPlan,
    proto: str,
    base: Path,
    agent_count: int | None = None,
    extra_clients: Mapping[str, str] | None = None,
    foreign_tc: Sequence[str] = (),
) -> DataPlane:
    """Issue the PKI and lay out the state directory; starts nothing.

    `extra_clients` get certificates and CCD entries without an agent (the tests use them
    as ad-hoc openvpn clients); those named in `foreign_tc` get a tls-crypt-v2 key wrapped
    by another server's key.
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
    target_ca = certs.new_ca(common_name="https-targets", now=datetime.now(UTC), lifetime=DAY)
    target_ca_path = base / "pki" / "target-ca.pem"
    target_ca_path.write_bytes(target_ca.cert_pem)
    return DataPlane(
        proto=proto, base=base, plan=plan, pki=pki, target_ca=target_ca,
        target_ca_path=target_ca_path, agent_count=len(agents), extra_clients=extra,
    )  # fmt: skip


async def start_dataplane(dp: DataPlane, *, revoked: Sequence[int] = ()) -> None:
    """Start the server, the apiserver client, every node agent and the HTTPS targets, and
    wait until every agent is ready. The underlay must already be built."""
    dp.srv_dir.mkdir(parents=True, exist_ok=True)
    dp.write_desired(dp.desired_doc())
    dp.write_crl(revoked)
    dp.start_agent("server", role="server", ns=dp.plan.srv_ns, config=dp.server_config())
    dp.start_agent(
        APISERVER_CN, role="apiserver", ns=dp.plan.api_ns,
        config=dp.client_config(APISERVER_CN, role="apiserver"),
    )  # fmt: skip
    for n in dp.agent_nodes:
        dp.start_agent(n.name, role="node", ns=n.ns, config=dp.client_config(n.name, role="node"))
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
