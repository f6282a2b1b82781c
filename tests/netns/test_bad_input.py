"""Bad input gets a clear error and no crash loop.

On the shared lab (`dataplane`, this module's own instance), a node agent is started on
the spare machine with broken input, or the server's inputs are broken while it runs.
Each test checks the three things an operator relies on: the agent process stays up (same
pid, never restarted), /readyz says what is wrong and where, and once the input is fixed
the agent recovers by itself.
"""

from __future__ import annotations

import secrets
import sys
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import pytest

import certs
from tests.netns.conftest import (
    DAY,
    DataPlane,
    Metrics,
    Proc,
    http_get,
    ns_pids,
)
from tests.netns.nsutil import NETNS_TIER
from tests.support.polling import eventually
from vpnctl.reconcile.agentdocs import ServerPaths

pytestmark = NETNS_TIER


def _readyz(dp: DataPlane, proc: Proc) -> tuple[int, str]:
    return dp.readyz(proc.name)


def _metrics_total(dp: DataPlane, proc: Proc, name: str, **labels: str) -> float:
    status, body = dp.scrape(proc.name)
    assert status == 200, body
    return Metrics.parse(body).total(name, **labels)


def _stays_up(proc: Proc, *, seconds: float) -> None:
    """PROC alive, the same process, for SECONDS: a window on purpose (nothing happens)."""
    assert proc.popen is not None
    pid = proc.popen.pid
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        assert proc.alive, f"agent exited ({proc.popen.returncode}):\n{proc.text()[-3000:]}"
        time.sleep(0.2)
    assert proc.popen.pid == pid


@pytest.fixture
def spare_dir(dataplane: DataPlane, request: pytest.FixtureRequest) -> Iterator[Path]:
    """A fresh directory for one spare-machine agent; the agent is stopped afterwards."""
    name = f"spare-{request.node.name.split('[')[0][5:20]}-{secrets.token_hex(2)}"
    d = dataplane.base / name
    d.mkdir(parents=True, exist_ok=True)
    yield d
    proc = dataplane.procs.get(d.name)
    if proc is not None:
        proc.stop()
    spare = dataplane.spare.ns
    eventually(
        lambda: not ns_pids(spare, "openvpn"),
        what="no openvpn left on the spare machine",
        timeout=10,
    )


def _copy_identity(dp: DataPlane, d: Path) -> tuple[Path, Path, Path]:
    files = dp.pki.clients["spare-node"]
    cert, key, tc = d / "cert.pem", d / "key.pem", d / "tc.key"
    cert.write_bytes(files.cert.read_bytes())
    key.write_bytes(files.key.read_bytes())
    tc.write_bytes(files.tc.read_bytes())
    return cert, key, tc


@pytest.mark.parametrize("breakage", ["corrupt-certificate", "key-of-another-certificate"])
def test_bad_certificate_material_is_reported_and_retried_on_change(
    dataplane: DataPlane, spare_dir: Path, breakage: str
) -> None:
    cert, key, tc = _copy_identity(dataplane, spare_dir)
    good_cert, good_key = cert.read_bytes(), key.read_bytes()
    if breakage == "corrupt-certificate":
        cert.write_bytes(
            b"-----BEGIN CERTIFICATE-----\nbm90IGEgY2VydA==\n-----END CERTIFICATE-----\n"
        )
        expected = [str(cert)]
    else:
        key.write_bytes(certs.new_private_key())
        expected = [str(key), "does not match"]
    cfg = dataplane.spare_node_config(
        openvpn={"cert": str(cert), "key": str(key), "tls_crypt_v2": str(tc)}
    )
    proc = dataplane.start_agent(spare_dir.name, role="node", ns=dataplane.spare.ns, config=cfg,
                                 identity="spare-node")  # fmt: skip

    _status, body = eventually(
        lambda: r if (r := _readyz(dataplane, proc))[0] == 503 and "material:" in r[1] else None,
        what="/readyz to report the material",
        timeout=10,
    )
    line = next(ln for ln in body.splitlines() if ln.startswith("material:"))
    print(f"{breakage}: {line}")
    for text in expected:
        assert text in line
    _stays_up(proc, seconds=2)
    assert ns_pids(dataplane.spare.ns, "openvpn") == [], "openvpn was started with bad material"
    assert _metrics_total(dataplane, proc, "vpnctl_agent_openvpn_starts_total") == 0
    assert (
        _metrics_total(dataplane, proc, "vpnctl_agent_config_errors_total", source="material") == 1
    )
    assert "event=material_invalid" in proc.text()

    # Fixed in place: picked up without a restart of the agent.
    cert.write_bytes(good_cert)
    key.write_bytes(good_key)
    eventually(
        lambda: _readyz(dataplane, proc)[0] == 200, what="the agent to become ready", timeout=20
    )
    _stays_up(proc, seconds=0.5)
    assert _metrics_total(dataplane, proc, "vpnctl_agent_openvpn_starts_total") == 1


FAKE_OPENVPN = r'''
"""Stands in for openvpn: a management socket that speaks garbage."""
import os, socket, sys, threading, time

conf = open(sys.argv[sys.argv.index("--config") + 1]).read()
path = next(line.split()[1] for line in conf.splitlines() if line.startswith("management "))
if os.path.exists(path):
    os.unlink(path)
srv = socket.socket(socket.AF_UNIX)
srv.bind(path)
srv.listen(4)
GARBAGE = [b"\xff\xfe\x00 binary\r\n", b">STATE:not-a-time,CONNECTED\r\n", b">BYTECOUNT:x,y\r\n",
           b">\r\n", b"SUCCESS\r\n", b"ERROR\r\n", b"x" * 70000 + b"\r\n", b"END\r\n",
           b"no newline"]

def serve(conn, n):
    try:
        if n % 2:
            conn.sendall(b">INFO:OpenVPN Management Interface Version 5 -- not really\r\n")
        for junk in GARBAGE:
            conn.sendall(junk)
            time.sleep(0.02)
        while conn.recv(4096):
            conn.sendall(b"\x00\x01 what?\r\n")
    except OSError:
        pass
    finally:
        conn.close()

n = 0
while True:
    conn, _ = srv.accept()
    n += 1
    threading.Thread(target=serve, args=(conn, n), daemon=True).start()
'''


def test_garbage_on_the_management_socket(dataplane: DataPlane, spare_dir: Path) -> None:
    fake = spare_dir / "fake-openvpn"
    fake.write_text(f"#!{sys.executable}\n{FAKE_OPENVPN}")
    fake.chmod(0o755)
    cfg = dataplane.spare_node_config(openvpn_binary=str(fake))
    proc = dataplane.start_agent(spare_dir.name, role="node", ns=dataplane.spare.ns, config=cfg,
                                 identity="spare-node")  # fmt: skip
    _status, body = eventually(
        lambda: (
            r
            if (r := _readyz(dataplane, proc))[0] == 503 and "management interface" in r[1]
            else None
        ),
        what="/readyz to blame the management interface",
        timeout=15,
    )
    print(body)
    # The watchdog restarts an "openvpn" whose management interface stays unusable.
    eventually(
        lambda: _metrics_total(dataplane, proc, "vpnctl_agent_openvpn_starts_total") >= 2,
        what="the wedged process to be restarted",
        timeout=20,
        interval=0.5,
    )
    _stays_up(proc, seconds=1)
    assert _readyz(dataplane, proc)[0] == 503
    assert _metrics_total(dataplane, proc, "vpnctl_agent_tunnel_up") == 0
    text = proc.text()
    assert "event=management_unusable" in text
    assert "Traceback" not in text


def test_unreachable_server_keeps_retrying(dataplane: DataPlane, spare_dir: Path) -> None:
    cfg = dataplane.spare_node_config(openvpn={"remotes": [["198.18.0.99", 1194]]})
    proc = dataplane.start_agent(spare_dir.name, role="node", ns=dataplane.spare.ns, config=cfg,
                                 identity="spare-node")  # fmt: skip
    eventually(lambda: ns_pids(dataplane.spare.ns, "openvpn"), what="openvpn running", timeout=10)
    _stays_up(proc, seconds=6)
    status, body = _readyz(dataplane, proc)
    print(body)
    assert status == 503
    assert "tunnel: openvpn state is" in body
    assert _metrics_total(dataplane, proc, "vpnctl_agent_tunnel_up") == 0
    # One openvpn the whole time, retrying on its own: no crash loop.
    assert _metrics_total(dataplane, proc, "vpnctl_agent_openvpn_starts_total") == 1
    assert len(ns_pids(dataplane.spare.ns, "openvpn")) == 1


def _ccd_snapshot(dp: DataPlane) -> dict[str, str]:
    ccd = dp.ccd_dir
    return {p.name: p.read_text() for p in sorted(ccd.iterdir()) if not p.name.startswith(".")}


def test_overlapping_cidrs_in_desired_state_keep_the_last_good_state(dataplane: DataPlane) -> None:
    server = dataplane.agent("server")
    before = _ccd_snapshot(dataplane)
    errors = dataplane.metrics("server").total("vpnctl_agent_config_errors_total", source="desired")
    bad = dataplane.desired_doc()
    bad["clients"][1]["iroutes"].append(str(dataplane.plan.node_cidr))  # covers node-1's /32
    dataplane.write_desired(bad)
    status, body = eventually(
        lambda: r if (r := dataplane.readyz("server"))[0] == 503 and "overlaps" in r[1] else None,
        what="/readyz to report the overlap",
        timeout=5,
    )
    print(body)
    assert "desired:" in body
    assert ServerPaths.desired in body
    _stays_up(server, seconds=1)
    assert _ccd_snapshot(dataplane) == before, "a refused desired state changed the CCD files"
    assert (
        dataplane.metrics("server").total("vpnctl_agent_config_errors_total", source="desired")
        == errors + 1
    )
    n2 = dataplane.agent_nodes[1]
    status, _ = http_get(dataplane.plan.api_ns, f"{dataplane.node_target_url(n2)}/healthz",
                         cafile=str(dataplane.target_ca_path))  # fmt: skip
    assert status == 200, "the last good state should keep serving"

    dataplane.write_desired(dataplane.desired_doc())
    eventually(lambda: dataplane.readyz("server")[0] == 200, what="server ready again", timeout=5)
    assert _ccd_snapshot(dataplane) == before


def test_bad_crl_keeps_the_installed_one(dataplane: DataPlane) -> None:
    installed = dataplane.crl_installed.read_bytes()
    good = dataplane.crl_source.read_bytes()
    now = datetime.now(UTC)
    other_ca = certs.new_ca(common_name="tenant-b", now=now, lifetime=DAY)
    foreign = certs.build_crl(other_ca, revoked=[], now=now, next_update=DAY, crl_number=1)
    for bad, expected in ((b"garbage\n", "CRL"), (foreign, "tenant-b")):
        dataplane.crl_source.write_bytes(bad)
        _status, body = eventually(
            lambda: r if (r := dataplane.readyz("server"))[0] == 503 and "crl:" in r[1] else None,
            what="/readyz to report the CRL",
            timeout=5,
        )
        line = next(ln for ln in body.splitlines() if ln.startswith("crl:"))
        print(line)
        assert expected in line
        assert ServerPaths.crl_source in line
        assert dataplane.crl_installed.read_bytes() == installed
        dataplane.crl_source.write_bytes(good)
        eventually(
            lambda: dataplane.readyz("server")[0] == 200, what="server ready again", timeout=5
        )
    _stays_up(dataplane.agent("server"), seconds=0.5)
