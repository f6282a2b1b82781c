"""The node's own certificate, the parts that need no apiserver: reusing what is on disk,
key handling, the config section, and the node role's readiness while it waits.

The CSR round trip itself (create, 409, watch, approve, deny) runs against a real
kube-apiserver in tests/kube/test_node_credentials.py. Here the apiserver URL points at a
closed loopback port, so any test that must not talk to it fails loudly if it does.
"""

from __future__ import annotations

import asyncio
import json
import os
import random
import socket
import stat
from datetime import UTC, datetime, timedelta
from ipaddress import IPv4Address
from pathlib import Path
from typing import Any

import pytest
from prometheus_client import CollectorRegistry

import certs
from agent.bootstrap import (
    PENDING_SUFFIX,
    ApiRequestError,
    BootstrapError,
    Obtained,
    csr_name,
    current_certificate,
    obtain_certificate,
)
from agent.config_reader import InputError
from agent.netlink import Kernel
from agent.openvpn.config import ClientConfig
from agent.role_config import (
    BootstrapSettings,
    ClientRoleConfig,
    Common,
    ProbeSettings,
    load_role_config,
)
from agent.roles.node import NodeRole
from vpnctl.kube.clock import ManualClock

NOW = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Files:
    def __init__(self, tmp: Path) -> None:
        self.tmp = tmp
        self.ca = certs.new_ca(common_name="tunnel-ca", now=NOW, lifetime=timedelta(days=365))
        self.ca_path = tmp / "tunnel-ca.crt"
        self.ca_path.write_bytes(self.ca.cert_pem)
        self.state = tmp / "state"
        self.key = self.state / "node.key"
        self.cert = self.state / "node.crt"
        self.pending = Path(str(self.key) + PENDING_SUFFIX)
        self.tc = self.state / "tls-crypt-v2-client.key"
        self.server_key = certs.new_tls_crypt_v2_server_key()
        # Stands in for the tenant apiserver's CA and the kubelet's credentials: valid
        # PEM, so the TLS context loads, but nothing listens at the server URL.
        kubelet = certs.new_client_cert(
            self.ca, common_name="kubelet", now=NOW, lifetime=timedelta(days=1)
        )
        self.kubelet = tmp / "kubelet.pem"
        self.kubelet.write_bytes(kubelet.cert_pem + kubelet.key_pem)
        self.server = f"https://127.0.0.1:{closed_port()}"

    def install(
        self,
        *,
        common_name: str = "node-1",
        lifetime: timedelta = timedelta(days=30),
        ca: certs.Issued | None = None,
    ) -> certs.Issued:
        issued = certs.new_client_cert(
            ca or self.ca, common_name=common_name, now=NOW, lifetime=lifetime
        )
        self.state.mkdir(exist_ok=True)
        self.key.write_bytes(issued.key_pem)
        self.cert.write_bytes(issued.cert_pem)
        self.tc.write_bytes(
            certs.new_node_client_key(
                self.server_key, node=common_name, not_after=NOW + lifetime, now=NOW
            )
        )
        return issued

    async def obtain(self, *, now: datetime = NOW, **kw: Any) -> Obtained:
        args: dict[str, Any] = {
            "server": self.server,
            "ca_file": str(self.ca_path),
            "client_cert_file": str(self.kubelet),
            "client_key_file": str(self.kubelet),
            "node_name": "node-1",
            "key_path": str(self.key),
            "cert_path": str(self.cert),
            "tunnel_ca_file": str(self.ca_path),
            "clock": lambda: now,
            "timeout": 5.0,
        }
        args.update(kw)
        return await obtain_certificate(**args)


@pytest.fixture
def files(tmp_path: Path) -> Files:
    return Files(tmp_path)


# --- obtain_certificate without an apiserver ------------------------------------------------------


async def test_valid_certificate_is_reused_without_asking(files: Files) -> None:
    issued = files.install()
    got = await files.obtain()
    assert got.source == "existing"
    assert got.cert_pem == issued.cert_pem
    assert got.info.common_name == "node-1"
    assert got.renew_at == certs.renew_at(issued.cert_pem)
    assert got.csr_name is None


@pytest.mark.parametrize(
    "case", ["missing", "due", "other-node", "other-ca", "expired", "key-mismatch"]
)
async def test_unusable_or_due_certificate_goes_to_the_apiserver(files: Files, case: str) -> None:
    """Each of these needs a CSR, so it reaches the (closed) server and says so."""
    now = NOW
    if case == "due":
        files.install(lifetime=timedelta(days=3))
        now = NOW + timedelta(days=2, hours=1)
    elif case == "other-node":
        files.install(common_name="node-2")
    elif case == "other-ca":
        other = certs.new_ca(common_name="tunnel-ca", now=NOW, lifetime=timedelta(days=365))
        files.install(ca=other)
    elif case == "expired":
        files.install(lifetime=timedelta(hours=2))
        now = NOW + timedelta(hours=3)
    elif case == "key-mismatch":
        files.install()
        files.key.write_bytes(certs.new_private_key())
    with pytest.raises(ApiRequestError, match="cannot reach the tenant apiserver"):
        await files.obtain(now=now)


async def test_renewal_asks_with_a_new_key_beside_the_live_pair(files: Files) -> None:
    issued = files.install(lifetime=timedelta(days=3))
    with pytest.raises(ApiRequestError):
        await files.obtain(now=NOW + timedelta(days=2, hours=1))
    assert files.key.read_bytes() == issued.key_pem  # openvpn's pair untouched
    assert files.cert.read_bytes() == issued.cert_pem
    assert files.pending.exists()
    assert stat.S_IMODE(os.stat(files.pending).st_mode) == 0o600
    first = files.pending.read_bytes()
    with pytest.raises(ApiRequestError):
        await files.obtain(now=NOW + timedelta(days=2, hours=2))
    assert files.pending.read_bytes() == first  # the same renewal, so the same CSR name


async def test_first_key_is_made_private_and_kept_across_attempts(files: Files) -> None:
    for _ in range(2):
        with pytest.raises(ApiRequestError):
            await files.obtain()
    assert stat.S_IMODE(os.stat(files.key).st_mode) == 0o600
    assert stat.S_IMODE(os.stat(files.state).st_mode) == 0o700
    key = files.key.read_bytes()
    assert b"PRIVATE KEY" in key
    with pytest.raises(ApiRequestError):
        await files.obtain()
    assert files.key.read_bytes() == key


async def test_corrupt_key_is_replaced(files: Files) -> None:
    files.state.mkdir()
    files.key.write_bytes(b"-----BEGIN PRIVATE KEY-----\nbroken\n-----END PRIVATE KEY-----\n")
    with pytest.raises(ApiRequestError):
        await files.obtain()
    certs.new_csr(files.key.read_bytes(), common_name="node-1")  # a usable key again


async def test_bad_node_name_is_refused_before_any_key_is_made(files: Files) -> None:
    with pytest.raises(BootstrapError, match="cannot be a certificate CN"):
        await files.obtain(node_name="Node_1")
    assert not files.state.exists()


async def test_missing_tunnel_ca_is_named(files: Files) -> None:
    files.ca_path.unlink()
    with pytest.raises(BootstrapError, match=r"tunnel CA .* does not exist"):
        await files.obtain()


async def test_unloadable_kubelet_credentials_are_named(files: Files) -> None:
    files.kubelet.write_bytes(b"nothing here")
    with pytest.raises(BootstrapError, match="kubelet's client certificate") as e:
        await files.obtain()
    assert str(files.kubelet) in str(e.value)


def test_csr_name_follows_the_public_key() -> None:
    key = certs.new_private_key()
    name = csr_name(node_name="node-1", key_pem=key)
    assert name == csr_name(node_name="node-1", key_pem=key)
    assert name.startswith("vpnctl-node-1-")
    assert len(name) == len("vpnctl-node-1-") + 12
    assert name != csr_name(node_name="node-1", key_pem=certs.new_private_key())


def test_current_certificate(files: Files) -> None:
    assert (
        current_certificate(
            cert_path=str(files.cert),
            key_path=str(files.key),
            tunnel_ca_file=str(files.ca_path),
            node_name="node-1",
            now=NOW,
        )
        is None
    )
    files.install()
    info = current_certificate(
        cert_path=str(files.cert),
        key_path=str(files.key),
        tunnel_ca_file=str(files.ca_path),
        node_name="node-1",
        now=NOW,
    )
    assert info is not None
    assert info.common_name == "node-1"
    assert (
        current_certificate(
            cert_path=str(files.cert),
            key_path=str(files.key),
            tunnel_ca_file=str(files.ca_path),
            node_name="node-2",
            now=NOW,
        )
        is None
    )


# --- the config section ---------------------------------------------------------------------------


def node_doc(**bootstrap: Any) -> dict[str, Any]:
    return {
        "openvpn": {
            "remotes": [["198.18.0.1", 1194]],
            "ca": "/etc/vpnctl/ca.crt",
            "cert": "/var/lib/vpnctl/node.crt",
            "key": "/var/lib/vpnctl/node.key",
            "tls_crypt_v2": "/var/lib/vpnctl/tc.key",
            "management": "/run/vpnctl/client.sock",
        },
        "probe": {"target": "198.18.8.1:7947"},
        "state_dir": "/var/lib/vpnctl",
        "bootstrap": {
            "server": "https://198.18.0.10:6443",
            "ca": "/etc/vpnctl/tenant-ca.crt",
            "client_cert": "/var/lib/kubelet/pki/kubelet-client-current.pem",
            **bootstrap,
        },
    }


def _load(tmp_path: Path, doc: object, role: str = "node") -> Any:
    path = tmp_path / "node.json"
    path.write_text(json.dumps(doc))
    return load_role_config(str(path), role=role)  # type: ignore[arg-type]


def test_bootstrap_section_with_defaults(tmp_path: Path) -> None:
    cfg = _load(tmp_path, node_doc())
    assert cfg.bootstrap == BootstrapSettings(
        server="https://198.18.0.10:6443",
        ca="/etc/vpnctl/tenant-ca.crt",
        client_cert="/var/lib/kubelet/pki/kubelet-client-current.pem",
        client_key="/var/lib/kubelet/pki/kubelet-client-current.pem",
    )


def test_bootstrap_section_in_full(tmp_path: Path) -> None:
    cfg = _load(
        tmp_path,
        node_doc(
            client_key="/k.pem",
            node_name="node-7",
            expiration_seconds=3600,
            renew_fraction=0.5,
            timeout=60,
            retry=[1, 30],
        ),
    )
    b = cfg.bootstrap
    assert (b.client_key, b.node_name, b.expiration_seconds) == ("/k.pem", "node-7", 3600)
    assert (b.renew_fraction, b.timeout, b.retry) == (0.5, 60.0, (1.0, 30.0))


def test_no_bootstrap_section_means_mounted_material(tmp_path: Path) -> None:
    doc = node_doc()
    del doc["bootstrap"]
    assert _load(tmp_path, doc).bootstrap is None


@pytest.mark.parametrize(
    ("change", "where"),
    [
        ({"server": "http://198.18.0.10:6443"}, "bootstrap.server"),
        ({"server": "https://198.18.0.10:6443/api"}, "bootstrap.server"),
        ({"ca": "relative.crt"}, "bootstrap.ca"),
        ({"node_name": "Node_1"}, "bootstrap.node_name"),
        ({"expiration_seconds": 60}, "bootstrap.expiration_seconds"),
        ({"renew_fraction": 1.5}, "bootstrap.renew_fraction"),
        ({"retry": [30, 1]}, "bootstrap.retry"),
        ({"tokn": "x"}, "bootstrap.tokn"),
    ],
)
def test_bad_bootstrap_fields_are_named(tmp_path: Path, change: dict[str, Any], where: str) -> None:
    with pytest.raises(InputError) as e:
        _load(tmp_path, node_doc(**change))
    assert any(p.startswith(f"{where}:") for p in e.value.problems), e.value.problems


def test_bootstrap_is_refused_outside_the_node_role(tmp_path: Path) -> None:
    with pytest.raises(InputError, match="bootstrap: unknown key"):
        _load(tmp_path, node_doc(), role="apiserver")


# --- the node role while it has no certificate ----------------------------------------------------


async def _no_kernel() -> Kernel:
    raise AssertionError("the bootstrap task needs no kernel")


def _role(
    files: Files,
    *,
    node_name: str | None,
    environ: dict[str, str],
    clock: ManualClock | None = None,
) -> NodeRole:
    cfg = ClientRoleConfig(
        role="node",
        common=Common(state_dir=str(files.state)),
        openvpn=ClientConfig(
            remotes=[("198.18.0.1", 1194)],
            ca=str(files.ca_path),
            cert=str(files.cert),
            key=str(files.key),
            tls_crypt_v2=str(files.tc),
            management=str(files.tmp / "m.sock"),
        ),
        probe=ProbeSettings(target=(IPv4Address("198.18.8.1"), 7947)),
        bootstrap=BootstrapSettings(
            server=files.server,
            ca=str(files.ca_path),
            client_cert=str(files.kubelet),
            client_key=str(files.kubelet),
            node_name=node_name,
            retry=(0.1, 0.2),
        ),
    )
    return NodeRole(
        cfg=cfg,
        registry=CollectorRegistry(),
        clock=clock or ManualClock(wall=NOW),
        rng=random.Random(1),
        kernel_factory=_no_kernel,
        environ=environ,
    )


async def _run_until(role: NodeRole, check: Any) -> None:
    task = asyncio.create_task(role._bootstrap_task())
    try:
        async with asyncio.timeout(5):
            while not check():
                await asyncio.sleep(0.02)
    finally:
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task


def _failed_requests(role: NodeRole) -> float:
    """Certificate requests of ROLE that failed so far."""
    value = role.registry.get_sample_value(
        "vpnctl_agent_certificate_requests_total", {"role": "node", "result": "error"}
    )
    return value or 0.0


async def test_role_is_not_ready_while_the_apiserver_cannot_be_reached(files: Files) -> None:
    # The retries wait on the role's clock, which moves only as far as each wait asks.
    clock = ManualClock(wall=NOW, autoadvance=True)
    role = _role(files, node_name=None, environ={"NODE_NAME": "node-1"}, clock=clock)
    assert role.node_name() == "node-1"
    assert role.conditions.reason("certificate") is not None

    await _run_until(role, lambda: _failed_requests(role) >= 2)
    reason = role.conditions.reason("certificate")
    assert reason is not None
    assert "cannot reach the tenant apiserver" in reason
    assert role._first_attempt.is_set()  # openvpn's material check may proceed (and report)
    # Backoff from retry=(0.1, 0.2): 0.1 s, then doubled and capped at 0.2 s, each +-20 %.
    first, second = clock.sleeps[:2]
    assert 0.08 <= first <= 0.12
    assert 0.16 <= second <= 0.24


async def test_role_with_a_valid_certificate_is_ready_at_once(files: Files) -> None:
    issued = files.install()
    role = _role(files, node_name="node-1", environ={})
    await _run_until(role, lambda: role.conditions.reason("certificate") is None)
    assert role._first_attempt.is_set()
    expiry = role.registry.get_sample_value(
        "vpnctl_agent_certificate_expiry_timestamp_seconds", {"role": "node"}
    )
    assert expiry == certs.cert_info(issued.cert_pem).not_after.timestamp()


async def test_role_without_a_node_name_says_how_to_set_it(files: Files) -> None:
    role = _role(files, node_name=None, environ={})
    await _run_until(role, role._first_attempt.is_set)
    reason = role.conditions.reason("certificate")
    assert reason is not None
    assert "NODE_NAME" in reason
    assert "bootstrap.node_name" in reason


async def test_valid_certificate_without_its_tls_crypt_key_asks_for_a_new_pair(
    files: Files,
) -> None:
    issued = files.install()
    got = await files.obtain(tls_crypt_key_path=str(files.tc))
    assert got.source == "existing"  # certificate and key both there: reused
    files.tc.unlink()
    with pytest.raises(ApiRequestError, match="cannot reach the tenant apiserver"):
        await files.obtain(tls_crypt_key_path=str(files.tc))
    assert files.cert.read_bytes() == issued.cert_pem  # openvpn's pair untouched
    assert files.pending.exists()  # asking beside it, as a renewal does


async def test_role_without_its_tls_crypt_key_is_not_ready(files: Files) -> None:
    files.install()
    files.tc.write_bytes(b"not a key")
    clock = ManualClock(wall=NOW, autoadvance=True)
    role = _role(files, node_name="node-1", environ={}, clock=clock)

    await _run_until(role, lambda: _failed_requests(role) >= 1)
    reason = role.conditions.reason("certificate")
    assert reason is not None
    assert "cannot reach the tenant apiserver" in reason
