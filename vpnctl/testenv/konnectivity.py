"""Konnectivity (apiserver-network-proxy) as local processes: the peer path vpnctl is
measured against.

Hosted control planes (HyperShift, Kamaji, k0smotron, Kubermatic) reach their nodes
through Konnectivity: the apiserver hands each connection it opens towards the cluster
to a konnectivity-server over a Unix socket (its ``--egress-selector-config-file``), and
konnectivity-agents on the nodes, which dialled that server with client certificates,
open the connection on their side. To compare vpnctl with that honestly, the tests and
the benchmark run the real thing, built from its Go module by ``vpnctl.testenv.build``
(``ensure_binaries(with_konnectivity=True)``, pinned at ``KONNECTIVITY_VERSION``).

What is here:

* ``write_konnectivity_pki``: a CA, the server's certificate for the agent listener and
  one client certificate per agent (mTLS: the server refuses an agent without one);
* ``write_egress_selector``: the apiserver's ``EgressSelectorConfiguration``, whose
  ``cluster`` selection names the server's Unix socket;
* ``KonnectivityServer`` and ``KonnectivityAgent``: start (optionally inside a network
  namespace), wait until observably ready, stop.

What it leaves out, so no reader takes more from a result than it shows: agents
authenticate by certificate only (no ServiceAccount tokens, no ``--authentication-
audience``), there is one server (no ``--server-count`` HA, no lease counting), and the
proxy strategy is the default one (any agent serves any destination), which is what a
single-node-pool tenant ships.
"""

from __future__ import annotations

import asyncio
import sys
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from ipaddress import IPv4Address, IPv6Address, ip_address
from pathlib import Path
from typing import Literal, Self

import certs
from vpnctl.testenv.local_probes import run_short
from vpnctl.testenv.procs import ManagedProcess, environ_without_proxies, netns_argv

Mode = Literal["grpc", "http-connect"]

# sun_path is 108 bytes with its terminating NUL.
_UDS_MAX = 107
_POLL = 0.2
_LIFETIME = timedelta(days=1)

# The readiness probe runs inside the process's namespace, where the test process has
# no socket of its own: a short Python child does the GET (the interpreter is ours, so
# nothing else need be installed).
_PROBE = (
    "import sys, urllib.request\n"
    "try:\n"
    "    r = urllib.request.urlopen(sys.argv[1], timeout=2)\n"
    "    print(r.status, r.read().decode(errors='replace'))\n"
    "except urllib.error.HTTPError as e:\n"
    "    print(e.code, e.read().decode(errors='replace'))\n"
    "except OSError as e:\n"
    "    print(0, e)\n"
)


class KonnectivityError(RuntimeError):
    """A Konnectivity process failed to start or to become ready; the message says which
    and quotes its log."""


@dataclass(frozen=True, kw_only=True)
class KonnectivityPKI:
    """Paths of the PEM files ``write_konnectivity_pki`` wrote."""

    ca: Path
    server_cert: Path
    server_key: Path
    # agent id -> (certificate, key)
    agents: dict[str, tuple[Path, Path]]


def write_konnectivity_pki(
    directory: Path,
    *,
    server_addresses: list[str],
    agents: list[str],
    now: datetime | None = None,
) -> KonnectivityPKI:
    """A fresh CA in ``directory``, a serving certificate for the agent listener valid
    for ``server_addresses`` (IPs or DNS names the agents dial) and a client certificate
    per agent id."""
    now = now or datetime.now(UTC)
    directory.mkdir(parents=True, exist_ok=True)
    ca = certs.new_ca(common_name="konnectivity-ca", now=now, lifetime=_LIFETIME)
    ips: list[IPv4Address | IPv6Address] = []
    names: list[str] = []
    for address in server_addresses:
        try:
            ips.append(ip_address(address))
        except ValueError:
            names.append(address)
    server = certs.new_server_cert(
        ca, common_name="konnectivity-server", now=now, lifetime=_LIFETIME,
        ip_addresses=ips, dns_names=names,
    )  # fmt: skip

    def write(name: str, data: bytes, *, private: bool = False) -> Path:
        path = directory / name
        path.write_bytes(data)
        if private:
            path.chmod(0o600)
        return path

    issued: dict[str, tuple[Path, Path]] = {}
    for agent in agents:
        client = certs.new_client_cert(ca, common_name=agent, now=now, lifetime=_LIFETIME)
        issued[agent] = (
            write(f"agent-{agent}.crt", client.cert_pem),
            write(f"agent-{agent}.key", client.key_pem, private=True),
        )
    return KonnectivityPKI(
        ca=write("ca.crt", ca.cert_pem),
        server_cert=write("server.crt", server.cert_pem),
        server_key=write("server.key", server.key_pem, private=True),
        agents=issued,
    )


def egress_selector_config(uds: Path, *, mode: Mode = "grpc") -> str:
    """The ``EgressSelectorConfiguration`` that sends the apiserver's traffic towards the
    cluster (node, pod and service proxy, webhooks, aggregated APIs) through the
    konnectivity-server listening on ``uds``; control-plane and etcd traffic stay direct."""
    protocol = "GRPC" if mode == "grpc" else "HTTPConnect"
    return (
        "apiVersion: apiserver.k8s.io/v1beta1\n"
        "kind: EgressSelectorConfiguration\n"
        "egressSelections:\n"
        "- name: cluster\n"
        "  connection:\n"
        f"    proxyProtocol: {protocol}\n"
        "    transport:\n"
        "      uds:\n"
        f"        udsName: {uds}\n"
    )


def write_egress_selector(path: Path, uds: Path, *, mode: Mode = "grpc") -> Path:
    """Write ``egress_selector_config`` to ``path``; pass it to kube-apiserver as
    ``--egress-selector-config-file``."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(egress_selector_config(uds, mode=mode))
    return path


async def _http_status(netns: str | None, url: str) -> tuple[int, str]:
    """(status, body) of GET ``url`` from inside ``netns``; status 0 when nothing answered."""
    code, out = await run_short(netns_argv(netns, [sys.executable, "-c", _PROBE, url]))
    if code != 0:
        return 0, out.strip()
    status, _, body = out.strip().partition(" ")
    return (int(status), body) if status.isdigit() else (0, out.strip())


class _Konnectivity:
    """One Konnectivity process with a health port that answers ``/readyz``."""

    role: str

    def __init__(self, proc: ManagedProcess, *, netns: str | None, health_url: str) -> None:
        self.process = proc
        self.netns = netns
        self.health_url = health_url

    @property
    def log_path(self) -> Path:
        return self.process.log_path

    def running(self) -> bool:
        return self.process.running()

    async def wait_ready(self, *, timeout: float = 60.0) -> None:
        """Until ``/readyz`` answers 200: for the server, at least one agent is connected;
        for an agent, it holds a connection to the server."""
        deadline = asyncio.get_running_loop().time() + timeout
        last = "(not probed)"
        while True:
            if not self.process.running():
                raise KonnectivityError(
                    f"konnectivity-{self.role} exited (code {self.process.returncode}) "
                    f"before it was ready; last lines of {self.log_path}:\n"
                    f"{self.process.log_tail()}"
                )
            status, body = await _http_status(self.netns, self.health_url)
            if status == 200:
                return
            last = f"HTTP {status}: {body[:200]}" if status else body[:200]
            if asyncio.get_running_loop().time() > deadline:
                raise KonnectivityError(
                    f"konnectivity-{self.role} not ready after {timeout}s "
                    f"({self.health_url}: {last}); last lines of {self.log_path}:\n"
                    f"{self.process.log_tail()}"
                )
            await asyncio.sleep(_POLL)

    async def stop(self) -> None:
        """SIGTERM, then SIGKILL after a grace period. Idempotent."""
        await self.process.stop(grace=5.0)

    def kill(self) -> None:
        """SIGKILL at once (a fault to inject, or a finalizer's last resort)."""
        self.process.kill_now()


def _start(
    name: str, argv: list[str], *, workdir: Path, netns: str | None, die_with_parent: bool
) -> ManagedProcess:
    proc = ManagedProcess(
        name, argv, log_path=workdir / f"{name}.log", netns=netns,
        env=environ_without_proxies(), cwd=workdir, die_with_parent=die_with_parent,
    )  # fmt: skip
    proc.start()
    return proc


class KonnectivityServer(_Konnectivity):
    """konnectivity-server: the apiserver's side on a Unix socket, the agents' side on
    ``agent_address:agent_port`` with mTLS."""

    role = "server"

    def __init__(
        self, proc: ManagedProcess, *, netns: str | None, health_url: str, uds: Path, mode: Mode
    ) -> None:
        super().__init__(proc, netns=netns, health_url=health_url)
        self.uds = uds
        self.mode = mode

    def egress_selector_config(self) -> str:
        return egress_selector_config(self.uds, mode=self.mode)

    @classmethod
    async def launch(
        cls,
        *,
        binary: Path,
        workdir: Path,
        pki: KonnectivityPKI,
        agent_address: str,
        agent_port: int = 8091,
        health_port: int = 8092,
        admin_port: int = 8095,
        uds: Path | None = None,
        mode: Mode = "grpc",
        netns: str | None = None,
        die_with_parent: bool = True,
    ) -> Self:
        """Start the server; it is up when this returns, but ``wait_ready()`` only passes
        once an agent has connected. ``uds`` defaults to ``workdir/konnectivity.sock``
        (which must fit a socket address: at most 107 bytes)."""
        workdir.mkdir(parents=True, exist_ok=True)
        uds = uds or workdir / "konnectivity.sock"
        if len(str(uds).encode()) > _UDS_MAX:
            raise KonnectivityError(
                f"socket path {uds} is {len(str(uds).encode())} bytes, over the kernel's "
                f"{_UDS_MAX}; pass a shorter workdir or uds="
            )
        argv = [
            str(binary),
            f"--mode={mode}",
            f"--uds-name={uds}",
            "--delete-existing-uds-file=true",
            "--server-port=0",  # 0: the apiserver's side is the Unix socket only
            f"--agent-bind-address={agent_address}",
            f"--agent-port={agent_port}",
            f"--cluster-cert={pki.server_cert}",
            f"--cluster-key={pki.server_key}",
            f"--cluster-ca-cert={pki.ca}",  # agents must present a certificate of this CA
            "--health-bind-address=127.0.0.1",
            f"--health-port={health_port}",
            "--admin-bind-address=127.0.0.1",
            f"--admin-port={admin_port}",
            "--server-count=1",
            "--v=2",
        ]
        proc = _start("konnectivity-server", argv, workdir=workdir, netns=netns,
                      die_with_parent=die_with_parent)  # fmt: skip
        return cls(proc, netns=netns, health_url=f"http://127.0.0.1:{health_port}/readyz",
                   uds=uds, mode=mode)  # fmt: skip


class KonnectivityAgent(_Konnectivity):
    """konnectivity-agent: dials the server with its client certificate and opens, on
    the server's behalf, the connections the apiserver asked for."""

    role = "agent"

    @classmethod
    async def launch(
        cls,
        *,
        binary: Path,
        workdir: Path,
        pki: KonnectivityPKI,
        agent_id: str,
        server_host: str,
        server_port: int = 8091,
        health_port: int = 8093,
        admin_port: int = 8094,
        netns: str | None = None,
        die_with_parent: bool = True,
    ) -> Self:
        """Start agent ``agent_id`` (one of the ids ``pki`` issued certificates for)."""
        if agent_id not in pki.agents:
            raise KonnectivityError(
                f"no client certificate for agent {agent_id!r}; write_konnectivity_pki "
                f"issued {sorted(pki.agents)}"
            )
        cert, key = pki.agents[agent_id]
        workdir.mkdir(parents=True, exist_ok=True)
        argv = [
            str(binary),
            f"--agent-id={agent_id}",
            f"--proxy-server-host={server_host}",
            f"--proxy-server-port={server_port}",
            f"--ca-cert={pki.ca}",
            f"--agent-cert={cert}",
            f"--agent-key={key}",
            "--health-server-host=127.0.0.1",
            f"--health-server-port={health_port}",
            "--admin-bind-address=127.0.0.1",
            f"--admin-server-port={admin_port}",
            "--v=2",
        ]
        proc = _start(f"konnectivity-agent-{agent_id}", argv, workdir=workdir, netns=netns,
                      die_with_parent=die_with_parent)  # fmt: skip
        return cls(proc, netns=netns, health_url=f"http://127.0.0.1:{health_port}/readyz")
