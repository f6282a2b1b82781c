"""Real openvpn 2.6 accepts what `certs` makes, and refuses what it must refuse.

Each handshake test makes its own network namespace, runs an openvpn server and
client in it over 127.0.0.1/UDP, and reads their logs with a deadline. The
material comes only from `certs`; openvpn is the judge. The interop tests run
`openvpn --genkey` (no network) to show the tls-crypt-v2 format matches openvpn's
both ways.
"""

from __future__ import annotations

import base64
import re
import secrets
import shutil
import signal
import subprocess
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

import certs
from certs import Issued
from tests.netns.nsutil import NETNS_TIER
from tests.support.polling import eventually

pytestmark = NETNS_TIER

OPENVPN = shutil.which("openvpn") or "/usr/sbin/openvpn"
PORT = "1194"
READY = "Initialization Sequence Completed"
DAY = timedelta(days=1)


def _now() -> datetime:
    # The one place the test reads the clock: openvpn checks validity against it.
    return datetime.now(UTC)


class Proc:
    """One openvpn process in a namespace, its output going to a log file."""

    def __init__(self, *, ns: str, args: list[str], log: Path) -> None:
        self.log = log
        self._out = log.open("wb")
        self.popen = subprocess.Popen(
            ["ip", "netns", "exec", ns, OPENVPN, *args],
            stdout=self._out,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
        )

    def text(self) -> str:
        return self.log.read_text(errors="replace")

    def wait_for(self, pattern: str, *, timeout: float) -> str:
        """The first log line matching `pattern`; fails at the deadline or if openvpn exits."""
        regex = re.compile(pattern)

        def found() -> str | None:
            line = next((ln for ln in self.text().splitlines() if regex.search(ln)), None)
            if line is None and self.popen.poll() is not None:
                pytest.fail(
                    f"openvpn exited ({self.popen.returncode}) before logging /{pattern}/:\n"
                    + self.text()
                )
            return line

        return eventually(found, what=f"/{pattern}/ in {self.log}", timeout=timeout, diag=self.text)

    def never(self, pattern: str, *, within: float) -> None:
        """Fail if `pattern` appears in the log during the next `within` seconds (a window
        on purpose: nothing must happen)."""
        regex = re.compile(pattern)
        deadline = time.monotonic() + within
        while time.monotonic() < deadline:
            hits = [line for line in self.text().splitlines() if regex.search(line)]
            if hits:
                pytest.fail(f"unexpected /{pattern}/ in {self.log}: {hits[0]}\n{self.text()}")
            time.sleep(0.1)

    def stop(self) -> None:
        if self.popen.poll() is None:
            self.popen.send_signal(signal.SIGTERM)
            try:
                self.popen.wait(timeout=5)
            except subprocess.TimeoutExpired:
                self.popen.kill()
                self.popen.wait(timeout=5)
        self._out.close()


@dataclass
class Lab:
    """A namespace, a directory for material, and the processes started in them."""

    ns: str
    dir: Path
    procs: list[Proc]

    def write(self, name: str, data: bytes) -> str:
        path = self.dir / name
        path.write_bytes(data)
        path.chmod(0o600)
        return str(path)

    def start(self, name: str, args: list[str]) -> Proc:
        proc = Proc(ns=self.ns, args=args, log=self.dir / f"{name}.log")
        self.procs.append(proc)
        return proc


@pytest.fixture
def lab(tmp_path: Path) -> Iterator[Lab]:
    ns = f"vt-{secrets.token_hex(3)}-tc2"
    subprocess.run(["ip", "netns", "add", ns], check=True)
    result = Lab(ns=ns, dir=tmp_path, procs=[])
    try:
        subprocess.run(["ip", "-n", ns, "link", "set", "lo", "up"], check=True)
        yield result
    finally:
        for proc in result.procs:
            proc.stop()
        subprocess.run(["ip", "netns", "del", ns], check=False)


@dataclass(frozen=True)
class Tenant:
    ca: Issued
    server: Issued
    tc_server_key: bytes


def _tenant(*, name: str, algorithm: certs.KeyAlgorithm = "ecdsa-p256") -> Tenant:
    now = _now()
    # Born a few days ago, so a test can also build material dated in the past.
    ca = certs.new_ca(
        common_name=f"{name}-ca", now=now - 3 * DAY, lifetime=30 * DAY, algorithm=algorithm
    )
    server = certs.new_server_cert(
        ca, common_name=f"{name}-server", now=now, lifetime=7 * DAY, algorithm=algorithm
    )
    return Tenant(ca=ca, server=server, tc_server_key=certs.new_tls_crypt_v2_server_key())


def _client(tenant: Tenant, *, cn: str = "node-1") -> Issued:
    return certs.new_client_cert(tenant.ca, common_name=cn, now=_now(), lifetime=7 * DAY)


COMMON = ["--dev", "tun", "--proto", "udp", "--verb", "3", "--hand-window", "5", "--disable-dco"]


def start_server(
    lab: Lab, tenant: Tenant, *, extra: Sequence[str] = (), tc_server_key: bytes | None = None
) -> Proc:
    args = [
        *COMMON,
        "--topology", "subnet",
        "--server", "198.18.250.0", "255.255.255.0",
        "--local", "127.0.0.1", "--port", PORT,
        "--ca", lab.write("ca.crt", tenant.ca.cert_pem),
        "--cert", lab.write("server.crt", tenant.server.cert_pem),
        "--key", lab.write("server.key", tenant.server.key_pem),
        "--dh", "none",
        "--tls-crypt-v2", lab.write("tc-server.key", tc_server_key or tenant.tc_server_key),
        "--remote-cert-tls", "client",
        *extra,
    ]  # fmt: skip
    server = lab.start("server", args)
    server.wait_for(READY, timeout=10)
    return server


def start_client(lab: Lab, *, ca: Issued, client: Issued, tc_client_key: bytes) -> Proc:
    args = [
        *COMMON,
        "--client",
        "--remote", "127.0.0.1", PORT,
        "--nobind",
        "--ca", lab.write("client-ca.crt", ca.cert_pem),
        "--cert", lab.write("client.crt", client.cert_pem),
        "--key", lab.write("client.key", client.key_pem),
        "--remote-cert-tls", "server",
        "--tls-crypt-v2", lab.write("tc-client.key", tc_client_key),
        "--connect-retry", "1", "1",
    ]  # fmt: skip
    return lab.start("client", args)


@pytest.mark.parametrize(
    ("algorithm", "via_csr"),
    [("ecdsa-p256", True), ("rsa-2048", False)],
    ids=["ecdsa-client-from-csr", "rsa"],
)
def test_client_completes_handshake_and_server_sees_our_metadata(
    lab: Lab, algorithm: certs.KeyAlgorithm, via_csr: bool
) -> None:
    tenant = _tenant(name="tenant-a", algorithm=algorithm)
    if via_csr:
        node_key = certs.new_private_key()
        csr = certs.new_csr(node_key, common_name="node-1", organization="system:nodes")
        cert_pem = certs.sign_csr(tenant.ca, csr, now=_now(), lifetime=DAY, usage="client")
        client = Issued(cert_pem=cert_pem, key_pem=node_key)
    else:
        client = certs.new_client_cert(
            tenant.ca, common_name="node-1", now=_now(), lifetime=DAY, algorithm=algorithm
        )
    payload = b"tenant-a/node-1"
    tc_client = certs.new_tls_crypt_v2_client_key(
        tenant.tc_server_key, now=_now(), metadata=b"\x00" + payload
    )
    # openvpn hands the unwrapped metadata to --tls-crypt-v2-verify: record it.
    seen = lab.dir / "metadata.seen"
    script = lab.dir / "verify.sh"
    script.write_text(
        f'#!/bin/sh\necho "$metadata_type" > {seen}.type\ncp "$metadata_file" {seen}\n'
    )
    script.chmod(0o755)
    server = start_server(
        lab,
        tenant,
        extra=["--script-security", "2", "--tls-crypt-v2-verify", str(script)],
    )
    client_proc = start_client(lab, ca=tenant.ca, client=client, tc_client_key=tc_client)

    client_proc.wait_for(READY, timeout=15)
    server.wait_for("TLS CRYPT V2 VERIFY SCRIPT OK", timeout=5)
    assert seen.read_bytes() == payload
    assert Path(f"{seen}.type").read_text().strip() == "0"
    server.wait_for(r"node-1.*(Peer Connection Initiated|SENT CONTROL)", timeout=5)


def test_client_key_wrapped_by_another_server_key_gets_no_tls_at_all(lab: Lab) -> None:
    tenant = _tenant(name="tenant-a")
    other_server_key = certs.new_tls_crypt_v2_server_key()
    stray = certs.new_tls_crypt_v2_client_key(other_server_key, now=_now())
    server = start_server(lab, tenant)
    client = start_client(lab, ca=tenant.ca, client=_client(tenant), tc_client_key=stray)

    server.wait_for(r"client key authentication error|Can not unwrap tls-crypt-v2", timeout=10)
    # Not a TLS alert, not a reset: the server stays silent, so the client never
    # even sees an initial packet from it.
    client.never(rf"{READY}|Initial packet from", within=5)


def test_client_cert_of_another_ca_fails_the_tls_handshake(lab: Lab) -> None:
    tenant = _tenant(name="tenant-a")
    other = _tenant(name="tenant-b")
    intruder = _client(other, cn="node-1")
    # A valid tls-crypt-v2 key for tenant A, so the failure is in the certificate check.
    tc_client = certs.new_tls_crypt_v2_client_key(tenant.tc_server_key, now=_now())
    server = start_server(lab, tenant)
    client = start_client(lab, ca=tenant.ca, client=intruder, tc_client_key=tc_client)

    server.wait_for(r"VERIFY ERROR: depth=0", timeout=10)
    client.wait_for(r"Initial packet from", timeout=5)
    client.never(READY, within=2)


@pytest.mark.parametrize("case", ["revoked", "other-serial-revoked", "expired-crl"])
def test_crl_decides_whether_the_client_gets_in(lab: Lab, case: str) -> None:
    tenant = _tenant(name="tenant-a")
    client = _client(tenant)
    bystander = _client(tenant, cn="node-2")
    victim = client if case == "revoked" else bystander
    # An expired CRL (nextUpdate passed) shuts every client out: the controller must
    # re-issue the CRL before next_update even when nothing new was revoked.
    built = _now() - 2 * DAY if case == "expired-crl" else _now()
    crl = certs.build_crl(
        tenant.ca,
        revoked=[certs.Revoked(serial=certs.cert_info(victim.cert_pem).serial, revoked_at=built)],
        now=built,
        next_update=DAY,
        crl_number=1,
    )
    tc_client = certs.new_tls_crypt_v2_client_key(tenant.tc_server_key, now=_now())
    server = start_server(lab, tenant, extra=["--crl-verify", lab.write("crl.pem", crl)])
    client_proc = start_client(lab, ca=tenant.ca, client=client, tc_client_key=tc_client)

    if case == "revoked":
        server.wait_for(r"VERIFY ERROR: depth=0, error=certificate revoked", timeout=10)
        client_proc.never(READY, within=2)
    elif case == "expired-crl":
        server.wait_for(r"VERIFY ERROR: depth=0, error=CRL has expired", timeout=10)
        client_proc.never(READY, within=2)
    else:
        client_proc.wait_for(READY, timeout=15)


def test_openvpn_reads_our_server_key_and_we_read_its_client_keys(tmp_path: Path) -> None:
    server_key = certs.new_tls_crypt_v2_server_key()
    server_path = tmp_path / "tc-server.key"
    server_path.write_bytes(server_key)
    payload = b"\x01\x02 user data"
    for name, extra, expected in [
        ("user", [base64.b64encode(payload).decode()], b"\x00" + payload),
        ("default", [], None),
    ]:
        client_path = tmp_path / f"tc-client-{name}.key"
        before = int(_now().timestamp())
        subprocess.run(
            [OPENVPN, "--tls-crypt-v2", str(server_path), "--genkey", "tls-crypt-v2-client",
             str(client_path), *extra],
            check=True, capture_output=True, timeout=30,
        )  # fmt: skip
        metadata = certs.tls_crypt_v2_client_metadata(server_key, client_path.read_bytes())
        if expected is not None:
            assert metadata == expected
        else:
            stamp = certs.metadata_timestamp(metadata)
            assert stamp is not None
            assert before <= stamp.timestamp() <= _now().timestamp()
        with pytest.raises(certs.KeyMismatch):
            certs.tls_crypt_v2_client_metadata(
                certs.new_tls_crypt_v2_server_key(), client_path.read_bytes()
            )


def test_openvpn_server_key_wraps_our_client_key_for_a_real_handshake(lab: Lab) -> None:
    ovpn_key_path = lab.dir / "ovpn-tc-server.key"
    subprocess.run(
        [OPENVPN, "--genkey", "tls-crypt-v2-server", str(ovpn_key_path)],
        check=True, capture_output=True, timeout=30,
    )  # fmt: skip
    ovpn_key = ovpn_key_path.read_bytes()
    tc_client = certs.new_tls_crypt_v2_client_key(ovpn_key, now=_now())
    assert certs.metadata_timestamp(certs.tls_crypt_v2_client_metadata(ovpn_key, tc_client))

    tenant = _tenant(name="tenant-a")
    start_server(lab, tenant, tc_server_key=ovpn_key)
    client = start_client(lab, ca=tenant.ca, client=_client(tenant), tc_client_key=tc_client)
    client.wait_for(READY, timeout=15)
