"""The shared data-plane fixture: the lab topology with real openvpn and all three roles.

`dataplane` (module scoped, parametrized over udp and tcp) builds the lab underlay of
`vpnctl.lab` under a unique prefix, issues a tenant PKI with `certs`, writes the role
configs, the server's desired state and CRL, and starts, each with `ip netns exec`:

* the server role in P-srv, the apiserver role in P-api;
* the node role in P-n1..P-n3, a kubelet stand-in on each node and a webhook stand-in
  in each pod namespace behind it;
* nothing in P-n4: it is the "spare" machine from which tests run ad-hoc openvpn
  clients (foreign CA, revoked, wrong tls-crypt-v2 key, the client that gets revoked).

Everything is torn down in `finally`: agents get SIGTERM (graceful), then whatever is
left in the namespaces is killed and the namespaces are deleted.

Talking to a namespace from the test process: the root namespace has no route into the
lab (by design), so HTTP scrapes and TCP connects run in a short-lived thread that has
`setns()`-ed into the target namespace; a socket belongs to the namespace it was created
in. That keeps a scrape at milliseconds, fast enough to watch an outage come and go.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import json
import os
import re
import secrets
import shutil
import signal
import socket
import ssl
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from ipaddress import IPv4Address
from pathlib import Path
from typing import Any, TypeVar

import pytest
from prometheus_client.parser import text_string_to_metric_families

import certs
from agent.openvpn.config import ClientConfig, render_client
from vpnctl.lab.plan import LabPlan, NodePlan, make_plan
from vpnctl.lab.underlay import build_underlay, destroy_underlay

T = TypeVar("T")

ROOT = Path(__file__).resolve().parents[2]
PY = sys.executable
OPENVPN = shutil.which("openvpn") or "/usr/sbin/openvpn"
HEALTH_PORT = 9100
PROBE_PORT = 7947
AGENT_NODES = 3  # node-1..3 run the node role; node-4 is the spare machine
DAY = timedelta(days=1)
CLONE_NEWNET = 0x40000000

_libc = ctypes.CDLL("libc.so.6", use_errno=True)


# --- running code inside a namespace ------------------------------------------------------


def in_netns(ns: str, fn: Callable[[], T]) -> T:
    """Run FN in a fresh thread that has entered network namespace NS."""
    box: dict[str, Any] = {}

    def target() -> None:
        try:
            fd = os.open(f"/run/netns/{ns}", os.O_RDONLY)
            try:
                if _libc.setns(fd, CLONE_NEWNET) != 0:
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

    def get() -> tuple[int, str]:
        ctx = ssl.create_default_context(cafile=cafile) if cafile else None
        try:
            with urllib.request.urlopen(url, timeout=timeout, context=ctx) as r:
                return r.status, r.read().decode(errors="replace")
        except urllib.error.HTTPError as e:
            return e.code, e.read().decode(errors="replace")
        except (OSError, urllib.error.URLError) as e:
            return 0, f"{type(e).__name__}: {e}"

    return in_netns(ns, get)


def tcp_connect(ns: str, host: str, port: int, *, timeout: float = 1.0) -> str:
    """'ok' if a TCP connection from NS to HOST:PORT completes, else the error's name."""

    def connect() -> str:
        try:
            with socket.create_connection((host, port), timeout=timeout):
                return "ok"
        except TimeoutError:
            return "timeout"
        except OSError as e:
            return type(e).__name__

    return in_netns(ns, connect)


class Listener:
    """A TCP listener inside a namespace that accepts and closes, for reachability checks."""

    def __init__(self, ns: str, host: str, port: int) -> None:
        self.sock = in_netns(ns, lambda: self._make(host, port))
        self.accepted = 0
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._thread.start()

    @staticmethod
    def _make(host: str, port: int) -> socket.socket:
        s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        s.bind((host, port))
        s.listen(16)
        return s

    def _serve(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            self.accepted += 1
            conn.close()

    def close(self) -> None:
        with contextlib.suppress(OSError):
            self.sock.shutdown(socket.SHUT_RDWR)
        self.sock.close()
        self._thread.join(timeout=2)


class ReadyzWatcher:
    """Polls an agent's /readyz every INTERVAL in a thread and records each change."""

    def __init__(self, dp: DataPlane, name: str, *, interval: float = 0.05) -> None:
        self._dp = dp
        self._name = name
        self._interval = interval
        self.changes: list[tuple[float, int, str]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> ReadyzWatcher:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=5)

    def _run(self) -> None:
        last: int | None = None
        while not self._stop.is_set():
            status, body = self._dp.readyz(self._name)
            if status != last:
                self.changes.append((time.monotonic(), status, body))
                last = status
            time.sleep(self._interval)

    @property
    def statuses(self) -> list[int]:
        return [s for _, s, _ in self.changes]

    def saw_outage_and_recovery(self) -> bool:
        """200, then 503 at some point, and 200 again at the end."""
        s = self.statuses
        return bool(s) and s[-1] == 200 and 503 in s


def wait_until(
    what: str, check: Callable[[], T | None], *, timeout: float, interval: float = 0.05
) -> T:
    """Poll CHECK until it returns something truthy; fail with WHAT at the deadline."""
    deadline = time.monotonic() + timeout
    last: T | None = None
    while True:
        last = check()
        if last:
            return last
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout}s waiting for {what} (last: {last!r})")
        time.sleep(interval)


# --- metrics ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class Metrics:
    samples: dict[tuple[str, frozenset[tuple[str, str]]], float]

    @classmethod
    def parse(cls, text: str) -> Metrics:
        samples: dict[tuple[str, frozenset[tuple[str, str]]], float] = {}
        for family in text_string_to_metric_families(text):
            for s in family.samples:
                samples[(s.name, frozenset(s.labels.items()))] = s.value
        return cls(samples)

    def get(self, name: str, **labels: str) -> float | None:
        """The sample NAME whose labels include LABELS (None if absent)."""
        want = set(labels.items())
        for (n, ls), v in self.samples.items():
            if n == name and want <= set(ls):
                return v
        return None

    def total(self, name: str, **labels: str) -> float:
        """Sum of all samples NAME whose labels include LABELS (0 if none)."""
        want = set(labels.items())
        return sum(v for (n, ls), v in self.samples.items() if n == name and want <= set(ls))


# --- processes -------------------------------------------------------------------------------


@dataclass
class Proc:
    """A process started in a namespace, output to a log file."""

    name: str
    ns: str
    argv: list[str]
    log: Path
    popen: subprocess.Popen[bytes] | None = None

    def start(self) -> Proc:
        with self.log.open("ab") as out:
            self.popen = subprocess.Popen(
                ["ip", "netns", "exec", self.ns, *self.argv],
                stdout=out,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                cwd=ROOT,
                start_new_session=True,
            )
        return self

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


def ns_pids(ns: str, exe_name: str) -> list[int]:
    """PIDs in namespace NS whose executable's base name is EXE_NAME."""
    out = subprocess.run(["ip", "netns", "pids", ns], capture_output=True, text=True, check=False)
    pids = []
    for text in out.stdout.split():
        try:
            exe = os.readlink(f"/proc/{text}/exe")
        except OSError:
            continue
        if os.path.basename(exe) == exe_name:
            pids.append(int(text))
    return pids


def ip_out(*argv: str) -> str:
    return subprocess.run(["ip", *argv], capture_output=True, text=True, check=True).stdout


# --- PKI -------------------------------------------------------------------------------------


@dataclass
class ClientFiles:
    cn: str
    cert: Path
    key: Path
    tc: Path
    serial: int


@dataclass
class Pki:
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
    def create(cls, base: Path, *, server_ip: IPv4Address) -> Pki:
        base.mkdir(parents=True, exist_ok=True)
        now = datetime.now(UTC)
        ca = certs.new_ca(common_name="tenant-a", now=now, lifetime=DAY)
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
        _write_secret(pki.server_key, server.key_pem)
        _write_secret(pki.server_tc, tc_server)
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
        _write_secret(files.key, issued.key_pem)
        _write_secret(files.tc, tc)
        self.clients[cn] = files
        return files

    def crl(self, revoked: list[int]) -> bytes:
        self.crl_number += 1
        now = datetime.now(UTC)
        return certs.build_crl(
            self.ca,
            revoked=[certs.Revoked(serial=s, revoked_at=now) for s in revoked],
            now=now,
            next_update=DAY,
            crl_number=self.crl_number,
        )


def _write_secret(path: Path, data: bytes) -> None:
    path.write_bytes(data)
    path.chmod(0o600)


def write_json_atomic(path: Path, doc: object) -> None:
    tmp = path.with_name(f".{path.name}.{secrets.token_hex(3)}")
    tmp.write_text(json.dumps(doc, indent=2))
    os.replace(tmp, path)


# --- the data plane --------------------------------------------------------------------------

SPARE_CLIENTS = {
    # cn: tunnel address; all have CCD entries, so only the property under test fails.
    "victim": "198.18.8.50",
    "revoked-at-start": "198.18.8.51",
    "wrong-tc": "198.18.8.52",
    "spare-node": "198.18.8.53",
}


@dataclass
class DataPlane:
    proto: str
    base: Path
    plan: LabPlan
    pki: Pki
    kubelet_ca: Path
    procs: dict[str, Proc] = field(default_factory=dict)
    revoked: list[int] = field(default_factory=list)

    # -- layout
    @property
    def agent_nodes(self) -> tuple[NodePlan, ...]:
        return self.plan.nodes[:AGENT_NODES]

    @property
    def spare(self) -> NodePlan:
        return self.plan.nodes[AGENT_NODES]

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
        api = self.pki.clients["apiserver"]
        clients: list[dict[str, Any]] = []
        for i, n in enumerate(self.agent_nodes):
            iroutes = [f"{n.internal_ip}/32", str(n.pod_cidr)]
            if i == 0:  # the elected node also carries the service CIDR
                iroutes.append(str(self.plan.service_cidr))
            clients.append(
                {
                    "common_name": n.name,
                    "ifconfig_ip": str(n.tunnel_ip),
                    "iroutes": iroutes,
                    "kubelet": n.kubelet_address,
                    "serial": f"{self.pki.clients[n.name].serial:x}",
                }
            )
        for cn, ip in SPARE_CLIENTS.items():
            clients.append(
                {"common_name": cn, "ifconfig_ip": ip, "serial": f"{self.pki.clients[cn].serial:x}"}
            )
        return {
            "apiserver": {
                "common_name": "apiserver",
                "ifconfig_ip": str(self.plan.tunnel_apiserver_ip),
                "push_routes": [],
                "serial": f"{api.serial:x}",
            },
            "clients": clients,
        }

    def write_desired(self, doc: object) -> None:
        write_json_atomic(self.desired_path, doc)

    def write_crl(self, revoked: list[int]) -> None:
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
            cfg["routes"] = [str(c) for c in self.plan.tenant_cidrs]
        return cfg

    def spare_node_config(self, name: str, **overrides: Any) -> dict[str, Any]:
        """A node-role config for the spare machine, as identity `spare-node`, in dir NAME."""
        cfg = self.client_config("spare-node", role="node")
        d = self.base / name
        cfg["openvpn"]["management"] = str(d / "mgmt.sock")
        cfg["state_dir"] = str(d / "state")
        cfg["openvpn_log"] = str(d / "openvpn.log")
        for key, value in overrides.items():
            if isinstance(value, dict):
                cfg[key] = {**cfg.get(key, {}), **value}
            else:
                cfg[key] = value
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
        return proc

    # -- observing
    def ns_of(self, name: str) -> str:
        return self.procs[name].ns

    def scrape(self, name: str, path: str = "/metrics") -> tuple[int, str]:
        return http_get(self.ns_of(name), f"http://127.0.0.1:{HEALTH_PORT}{path}")

    def metrics(self, name: str) -> Metrics:
        status, body = self.scrape(name)
        assert status == 200, f"/metrics of {name}: {status} {body}"
        return Metrics.parse(body)

    def readyz(self, name: str) -> tuple[int, str]:
        return self.scrape(name, "/readyz?verbose")

    def wait_ready(self, *names: str, timeout: float = 30.0) -> None:
        for name in names:

            def ready(n: str = name) -> bool:
                assert self.procs[n].alive, f"agent {n} exited:\n{self.procs[n].text()[-4000:]}"
                return self.readyz(n)[0] == 200

            try:
                wait_until(f"{name} /readyz 200", ready, timeout=timeout, interval=0.2)
            except BaseException:
                print(self.readyz(name))
                raise

    def all_agents(self) -> list[str]:
        return ["server", "apiserver", *(n.name for n in self.agent_nodes)]

    def dump_logs(self) -> str:
        parts = []
        for name, proc in self.procs.items():
            parts.append(f"===== {name} ({proc.log})\n{proc.text()[-6000:]}")
        for log in sorted(self.base.glob("*/openvpn.log")):
            parts.append(f"===== {log}\n{log.read_text(errors='replace')[-3000:]}")
        return "\n".join(parts)

    # -- ad-hoc openvpn clients on the spare machine
    def raw_client(
        self,
        cn: str,
        *,
        dev: str,
        files: ClientFiles | None = None,
        tls_crypt: bool = True,
        label: str | None = None,
    ) -> Proc:
        """A plain openvpn client as CN on the spare machine (no agent), logging to a file.

        `tls_crypt=False` leaves out the tls-crypt-v2 key altogether.
        """
        files = files or self.pki.clients[cn]
        label = label or cn
        d = self.base / f"raw-{label}"
        d.mkdir(parents=True, exist_ok=True)
        cfg = ClientConfig(
            proto=self.proto,  # type: ignore[arg-type]
            remotes=[(str(self.plan.server_ip), self.plan.server_port)],
            dev=dev,
            ca=str(self.pki.ca_path),
            cert=str(files.cert),
            key=str(files.key),
            tls_crypt_v2=str(files.tc),
            management=str(d / "mgmt.sock"),
            connect_retry=(1, 2),
        )
        conf = d / "client.conf"
        text = render_client(cfg)
        if not tls_crypt:
            text = "".join(ln for ln in text.splitlines(True) if not ln.startswith("tls-crypt-v2 "))
        conf.write_text(text)
        log = d / "openvpn.log"
        log.write_bytes(b"")
        proc = Proc(name=f"raw-{label}", ns=self.spare.ns, argv=[OPENVPN, "--config", str(conf)],
                    log=log).start()  # fmt: skip
        self.procs[proc.name] = proc
        return proc

    # -- teardown
    def stop_all(self) -> dict[str, int | None]:
        codes = {}
        for name, proc in reversed(list(self.procs.items())):
            codes[name] = proc.stop(timeout=10)
        return codes


def build_dataplane(*, proto: str, base: Path) -> DataPlane:
    prefix = f"v{secrets.token_hex(3)}"
    plan = make_plan(prefix=prefix, nodes=AGENT_NODES + 1)
    base.mkdir(parents=True, exist_ok=True)
    pki = Pki.create(base / "pki", server_ip=plan.server_ip)
    for cn in ["apiserver", *(n.name for n in plan.nodes[:AGENT_NODES]), *SPARE_CLIENTS]:
        if cn == "wrong-tc":
            # A valid certificate, but the tls-crypt-v2 key of another server.
            pki.client(cn, tc_server=certs.new_tls_crypt_v2_server_key())
        else:
            pki.client(cn)
    # Serving certs for the kubelet and webhook stand-ins, from a CA of their own.
    now = datetime.now(UTC)
    serving_ca = certs.new_ca(common_name="kubelet-serving", now=now, lifetime=DAY)
    kubelet_ca = base / "pki" / "kubelet-ca.pem"
    kubelet_ca.write_bytes(serving_ca.cert_pem)
    dp = DataPlane(proto=proto, base=base, plan=plan, pki=pki, kubelet_ca=kubelet_ca)
    asyncio.run(build_underlay(plan))
    try:
        dp.srv_dir.mkdir(parents=True, exist_ok=True)
        dp.write_desired(dp.desired_doc())
        dp.write_crl([pki.clients["revoked-at-start"].serial])
        dp.start_agent("server", role="server", ns=plan.srv_ns, config=dp.server_config())
        dp.start_agent(
            "apiserver",
            role="apiserver",
            ns=plan.api_ns,
            config=dp.client_config("apiserver", role="apiserver"),
        )
        for n in dp.agent_nodes:
            dp.start_agent(
                n.name, role="node", ns=n.ns, config=dp.client_config(n.name, role="node")
            )
            for kind, ns, ip, port in (
                ("kubelet", n.ns, n.internal_ip, n.kubelet_port),
                ("webhook", n.pod_ns, n.pod_ip, n.webhook_port),
            ):
                serving = certs.new_server_cert(
                    serving_ca, common_name=f"{kind}-{n.name}", now=now, lifetime=DAY,
                    ip_addresses=[ip],
                )  # fmt: skip
                d = base / f"{kind}-{n.name}"
                d.mkdir(parents=True, exist_ok=True)
                (d / "tls.pem").write_bytes(serving.cert_pem)
                _write_secret(d / "tls.key", serving.key_pem)
                argv = [PY, "-m", "vpnctl.lab.standins", kind, "--listen", f"{ip}:{port}",
                        "--cert", str(d / "tls.pem"), "--key", str(d / "tls.key")]  # fmt: skip
                if kind == "kubelet":
                    argv += ["--name", n.name]
                proc = Proc(name=f"{kind}-{n.name}", ns=ns, argv=argv, log=d / "standin.log")
                dp.procs[proc.name] = proc.start()
        dp.wait_ready(*dp.all_agents(), timeout=45)
    except BaseException:
        print(dp.dump_logs())
        teardown_dataplane(dp)
        raise
    return dp


def teardown_dataplane(dp: DataPlane) -> None:
    try:
        dp.stop_all()
    finally:
        asyncio.run(destroy_underlay(dp.plan))


@pytest.fixture(scope="module", params=["udp", "tcp"])
def dataplane(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[DataPlane]:
    if os.geteuid() != 0:
        pytest.skip("needs root for network namespaces")
    proto = str(request.param)
    base = tmp_path_factory.mktemp(f"dp-{proto}")
    dp = build_dataplane(proto=proto, base=base)
    failed_before = request.session.testsfailed
    try:
        yield dp
    finally:
        if request.session.testsfailed != failed_before:
            print(dp.dump_logs())
        teardown_dataplane(dp)


def route_get(ns: str, dst: str) -> str:
    return ip_out("-n", ns, "route", "get", dst).strip()


def link_bytes(ns: str, dev: str) -> tuple[int, int]:
    """(rx_bytes, tx_bytes) of DEV in NS, from `ip -s -j link`."""
    out = json.loads(ip_out("-n", ns, "-s", "-j", "link", "show", dev))
    stats = out[0]["stats64"]
    return int(stats["rx"]["bytes"]), int(stats["tx"]["bytes"])


LOG_TIME = re.compile(r"^(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d)")
