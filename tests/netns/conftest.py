"""The shared data-plane fixture: the lab topology with real openvpn and all three roles.

`dataplane` (module scoped, parametrized over udp and tcp) builds the lab underlay of
`vpnctl.lab` under a unique prefix, issues a tenant PKI with `certs`, writes the role
configs and the server's desired state the controller's planner renders
(`vpnctl.lab.netns_tenant`) and the CRL, and starts, each with `ip netns exec` and in a
mount namespace of its own with its pod's paths (`vpnctl.lab.pod_mounts`):

* the server role in P-srv, the apiserver role in P-api;
* the node role in P-n1..P-n3, an HTTPS target (`vpnctl.testenv.https_target`) on each
  node's kubelet address and another in each pod namespace behind it;
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
import dataclasses
import json
import os
import re
import secrets
import shutil
import socket
import subprocess
import tempfile
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from ipaddress import IPv4Address
from pathlib import Path
from typing import Any, TypeVar

import pytest
from prometheus_client.parser import text_string_to_metric_families

from agent.openvpn.config import ClientConfig, render_client
from tests.support.polling import eventually
from vpnctl.lab.address_plan import NodePlan, make_plan
from vpnctl.lab.dataplane import (
    SERVER_HEALTH_PORT,
    Proc,
    http_get,
    in_netns,
    prepare_dataplane,
    start_dataplane,
)
from vpnctl.lab.dataplane import DataPlane as LabDataPlane
from vpnctl.lab.netns_pki import DAY, ClientFiles, Pki
from vpnctl.lab.underlay import build_underlay, destroy_underlay

__all__ = ["DAY", "SERVER_HEALTH_PORT", "ClientFiles", "Pki", "Proc", "http_get"]

T = TypeVar("T")

OPENVPN = shutil.which("openvpn") or "/usr/sbin/openvpn"
AGENT_NODES = 3  # node-1..3 run the node role; node-4 is the spare machine


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


READY = "Initialization Sequence Completed"


class LogCursor:
    """Reads only what a log file gained after the cursor was made."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.offset = path.stat().st_size if path.exists() else 0

    def new(self) -> str:
        with self.path.open("rb") as f:
            f.seek(self.offset)
            return f.read().decode(errors="replace")

    def wait_for(self, pattern: str, *, timeout: float) -> str:
        regex = re.compile(pattern)

        def find() -> str | None:
            return next((ln for ln in self.new().splitlines() if regex.search(ln)), None)

        return eventually(find, what=f"/{pattern}/ in {self.path}", timeout=timeout, interval=0.02)

    def never(self, pattern: str, *, within: float) -> None:
        regex = re.compile(pattern)
        deadline = time.monotonic() + within
        while time.monotonic() < deadline:
            hits = [ln for ln in self.new().splitlines() if regex.search(ln)]
            assert not hits, f"unexpected /{pattern}/ in {self.path}: {hits[0]}"
            time.sleep(0.1)


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


# --- the data plane --------------------------------------------------------------------------

# Ad-hoc clients, each a Machine of its own so the controller's planner gives it a CCD
# entry (only the property under test fails): cn -> InternalIP. They run on the spare
# machine, but two clients may not claim the same InternalIP, so all but `spare-node`
# (the spare machine itself) have addresses nothing answers on.
SPARE_CLIENTS = {
    "victim": IPv4Address("198.19.0.50"),
    "revoked-at-start": IPv4Address("198.19.0.51"),
    "wrong-tc": IPv4Address("198.19.0.52"),
}


class DataPlane(LabDataPlane):
    """The lab's data plane plus what the tests need: a spare machine, ad-hoc clients."""

    @property
    def spare(self) -> NodePlan:
        return self.plan.nodes[AGENT_NODES]

    def metrics(self, name: str) -> Metrics:
        status, body = self.scrape(name)
        assert status == 200, f"/metrics of {name}: {status} {body}"
        return Metrics.parse(body)

    def wait_ready(self, *names: str, timeout: float = 30.0) -> None:
        for name in names:

            def ready(n: str = name) -> bool:
                assert self.procs[n].alive, f"agent {n} exited:\n{self.procs[n].text()[-4000:]}"
                return self.readyz(n)[0] == 200

            try:
                eventually(ready, what=f"{name} /readyz 200", timeout=timeout, interval=0.2)
            except BaseException:
                print(self.readyz(name))
                raise

    def spare_node_config(self, **overrides: Any) -> dict[str, Any]:
        """The node-role config the controller renders, with OVERRIDES merged in; start it
        with `start_agent(..., identity="spare-node")` on the spare machine."""
        cfg = self.client_config("node")
        for key, value in overrides.items():
            if isinstance(value, dict):
                cfg[key] = {**cfg.get(key, {}), **value}
            else:
                cfg[key] = value
        return cfg

    # -- ad-hoc openvpn clients on the spare machine
    def raw_client(
        self,
        cn: str,
        *,
        dev: str,
        files: ClientFiles | None = None,
        tls_crypt: bool = True,
        label: str | None = None,
        extra: tuple[str, ...] = (),
    ) -> Proc:
        """A plain openvpn client as CN on the spare machine (no agent), logging to a file.

        `tls_crypt=False` leaves out the tls-crypt-v2 key altogether; `extra` directives
        are appended to the rendered config.
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
        text += "".join(f"{line}\n" for line in extra)
        conf.write_text(text)
        log = d / "openvpn.log"
        log.write_bytes(b"")
        proc = Proc(name=f"raw-{label}", ns=self.spare.ns, argv=[OPENVPN, "--config", str(conf)],
                    log=log).start()  # fmt: skip
        self.procs[proc.name] = proc
        return proc


def build_dataplane(*, proto: str, base: Path, reneg_sec: int | None = None) -> DataPlane:
    plan = make_plan(prefix=f"v{secrets.token_hex(3)}", nodes=AGENT_NODES + 1)
    spare = {**SPARE_CLIENTS, "spare-node": plan.nodes[AGENT_NODES].internal_ip}
    lab = prepare_dataplane(
        plan=plan, proto=proto, base=base, agent_count=AGENT_NODES,
        extra_clients=spare, foreign_tc=("wrong-tc",), reneg_sec=reneg_sec,
    )  # fmt: skip
    dp = DataPlane(**{f.name: getattr(lab, f.name) for f in dataclasses.fields(lab)})
    asyncio.run(build_underlay(plan))
    try:
        asyncio.run(start_dataplane(dp, revoked=[dp.pki.clients["revoked-at-start"].serial]))
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


class DataPlanes:
    """The data planes of one test module, one per transport, built on first use.

    Tests share them (a build takes seconds), so every test must leave its data plane as
    it found it: a test that cannot (it stops agents, say) carries
    ``@pytest.mark.spoils_dataplane``, and a data plane found changed after a test is
    thrown away too; the next test that asks gets a new one. So the module passes in any
    order, and udp and tcp tests may interleave (pytest-randomly) without rebuilds.
    """

    def __init__(self, *, reneg_sec: int | None = None) -> None:
        """RENEG_SEC: every role's openvpn.reneg_sec (None: the agents' default)."""
        self._live: dict[str, tuple[DataPlane, Path, list[int]]] = {}
        self._reneg_sec = reneg_sec

    def get(self, proto: str) -> DataPlane:
        if proto not in self._live:
            # Not under pytest's 0700 tmp root: openvpn, once it has dropped to nobody,
            # re-reads the CRL and CCD files in here.
            base = Path(tempfile.mkdtemp(prefix=f"vpnctl-dp-{proto}-"))
            try:
                dp = build_dataplane(proto=proto, base=base, reneg_sec=self._reneg_sec)
            except BaseException:
                shutil.rmtree(base, ignore_errors=True)
                raise
            self._live[proto] = (dp, base, list(dp.revoked))
        return self._live[proto][0]

    def changed(self, proto: str) -> str | None:
        """What differs from the data plane as built (None: nothing we can see)."""
        dp, _, revoked = self._live[proto]
        dead = [n for n in dp.all_agents() if not dp.procs[n].alive]
        if dead:
            return f"agents gone: {dead}"
        if dp.revoked != revoked:
            return f"CRL changed: {dp.revoked} (built with {revoked})"
        return None

    def discard(self, proto: str, *, dump: bool = False) -> None:
        dp, base, _ = self._live.pop(proto)
        try:
            if dump:
                print(dp.dump_logs())
            teardown_dataplane(dp)
        finally:
            shutil.rmtree(base, ignore_errors=True)

    def close(self) -> None:
        for proto in list(self._live):
            self.discard(proto)


@pytest.fixture(scope="module")
def dataplanes() -> Iterator[DataPlanes]:
    if os.geteuid() != 0:
        pytest.skip("needs root for network namespaces")
    planes = DataPlanes()
    try:
        yield planes
    finally:
        planes.close()


@pytest.fixture(params=["udp", "tcp"])
def dataplane(request: pytest.FixtureRequest, dataplanes: DataPlanes) -> Iterator[DataPlane]:
    """A running data plane (agents ready), shared within the module; see DataPlanes."""
    proto = str(request.param)
    dp = dataplanes.get(proto)
    dp.wait_ready(*dp.all_agents(), timeout=30)
    failed_before = request.session.testsfailed
    yield dp
    failed = request.session.testsfailed != failed_before
    spoiled = request.node.get_closest_marker("spoils_dataplane") is not None
    changed = None if spoiled else dataplanes.changed(proto)
    if failed or spoiled or changed:
        if changed:
            print(f"{request.node.nodeid} changed the {proto} data plane ({changed}): rebuilt")
        dataplanes.discard(proto, dump=failed)


def route_get(ns: str, dst: str) -> str:
    return ip_out("-n", ns, "route", "get", dst).strip()


def link_bytes(ns: str, dev: str) -> tuple[int, int]:
    """(rx_bytes, tx_bytes) of DEV in NS, from `ip -s -j link`."""
    out = json.loads(ip_out("-n", ns, "-s", "-j", "link", "show", dev))
    stats = out[0]["stats64"]
    return int(stats["rx"]["bytes"]), int(stats["tx"]["bytes"])


LOG_TIME = re.compile(r"^(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d)")
