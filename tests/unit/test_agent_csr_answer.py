"""What the node agent installs from an answered CSR: its certificate and its own
tls-crypt-v2 client key, sealed to the CSR's key (agent/csr_answer.py), and how it waits
for a key that is not there yet (agent/bootstrap.py). The round trip through a real
apiserver is in tests/kube/test_node_credentials.py."""

from __future__ import annotations

import base64
import os
import stat
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, cast

import pytest

import certs
from agent.bootstrap import Step, _wait_answer
from agent.csr_answer import install_issued
from agent.csr_api import BootstrapError, CsrApi, CSRRefused
from certs.key_delivery import KEY_ANNOTATION

NOW = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)
CA = certs.new_ca(common_name="tunnel-ca", now=NOW, lifetime=timedelta(days=365))
SERVER_KEY = certs.new_tls_crypt_v2_server_key()


class Node:
    """A node's state dir with a pending key, and the CSR vpnctl answered for it."""

    def __init__(self, tmp: Path, *, name: str = "node-1") -> None:
        self.state = tmp / "state"
        self.state.mkdir(parents=True)
        self.key_pem = certs.new_private_key()
        self.csr_pem = certs.new_csr(self.key_pem, common_name=name)
        self.pending = self.state / "node.key.next"
        self.pending.write_bytes(self.key_pem)
        self.key = self.state / "node.key"
        self.cert = self.state / "node.crt"
        self.tc = self.state / "tls-crypt-v2-client.key"
        self.issued = certs.sign_csr(
            CA, self.csr_pem, now=NOW, lifetime=timedelta(days=30), usage="client"
        )
        self.not_after = certs.cert_info(self.issued).not_after

    def answer(self, *, sealed: str | None) -> dict[str, Any]:
        meta: dict[str, Any] = {"name": "vpnctl-node-1-abc", "resourceVersion": "5"}
        if sealed is not None:
            meta["annotations"] = {KEY_ANNOTATION: sealed}
        return {
            "metadata": meta,
            "status": {"certificate": base64.b64encode(self.issued).decode()},
        }

    def seal(self, *, node: str = "node-1", not_after: datetime | None = None) -> str:
        return certs.seal_new_node_key(
            SERVER_KEY,
            csr_pem=self.csr_pem,
            node=node,
            not_after=not_after or self.not_after,
            now=NOW,
        )

    def install(self, answer: dict[str, Any], *, now: datetime = NOW) -> None:
        install_issued(
            answer,
            name="vpnctl-node-1-abc",
            key_pem=self.key_pem,
            key_file=str(self.pending),
            key_path=str(self.key),
            cert_path=str(self.cert),
            ca_pem=CA.cert_pem,
            tunnel_ca_file="tunnel-ca.crt",
            node_name="node-1",
            now=now,
            tls_crypt_key_path=str(self.tc),
        )

    def nothing_installed(self) -> bool:
        return not (self.key.exists() or self.cert.exists() or self.tc.exists())


def test_the_key_is_installed_with_the_certificate(tmp_path: Path) -> None:
    node = Node(tmp_path)
    node.install(node.answer(sealed=node.seal()))
    assert node.cert.read_bytes() == node.issued
    assert node.key.read_bytes() == node.key_pem
    assert not node.pending.exists()
    assert stat.S_IMODE(os.stat(node.tc).st_mode) == 0o600
    metadata = certs.tls_crypt_v2_client_metadata(SERVER_KEY, node.tc.read_bytes())
    assert certs.parse_node_key_metadata(metadata) == ("node-1", node.not_after)


def test_a_key_for_another_node_is_refused_and_burns_the_csr_key(tmp_path: Path) -> None:
    node = Node(tmp_path)
    with pytest.raises(CSRRefused, match="BadTLSCryptKey") as e:
        node.install(node.answer(sealed=node.seal(node="node-2")))
    assert "does not open for node node-1" in str(e.value)
    assert node.nothing_installed()
    assert not node.pending.exists()  # the next attempt asks with a new key and CSR


def test_an_expired_key_is_refused(tmp_path: Path) -> None:
    node = Node(tmp_path)
    with pytest.raises(CSRRefused, match="expired"):
        node.install(node.answer(sealed=node.seal(not_after=NOW - timedelta(seconds=1))))
    assert node.nothing_installed()


def test_a_key_sealed_to_another_csr_is_refused(tmp_path: Path) -> None:
    node, other = Node(tmp_path / "a"), Node(tmp_path / "b")
    with pytest.raises(CSRRefused, match="another node or key"):
        node.install(node.answer(sealed=other.seal()))
    assert node.nothing_installed()


def test_garbage_is_refused(tmp_path: Path) -> None:
    node = Node(tmp_path)
    with pytest.raises(CSRRefused, match="format kd1"):
        node.install(node.answer(sealed="hello"))
    assert node.nothing_installed()


def test_no_key_no_install(tmp_path: Path) -> None:
    node = Node(tmp_path)
    with pytest.raises(BootstrapError, match="without a tls-crypt-v2 client key"):
        node.install(node.answer(sealed=None))
    assert node.nothing_installed()
    assert node.pending.exists()  # the key may still come: vpnctl adds it to issued CSRs


class SlowSigner:
    """``CsrApi``'s watch/get: the CSR is signed, and its key comes one change later."""

    def __init__(self, later: dict[str, Any]) -> None:
        self.later = later
        self.watches = 0

    async def watch(
        self, name: str, *, resource_version: str, seconds: int
    ) -> tuple[str, dict[str, Any]] | None:
        self.watches += 1
        return ("MODIFIED", self.later)

    async def get(self, name: str) -> dict[str, Any] | None:
        raise AssertionError("not needed: the watch answers")


async def test_a_signed_csr_without_its_key_is_waited_for_and_said_so(tmp_path: Path) -> None:
    node = Node(tmp_path)
    with_key = node.answer(sealed=node.seal())
    api = SlowSigner(with_key)
    steps: list[Step] = []
    got = await _wait_answer(
        cast(CsrApi, api),
        node.answer(sealed=None),
        name="vpnctl-node-1-abc",
        poll_interval=0.01,
        need_key=True,
        report=steps.append,
    )
    assert got is with_key
    assert api.watches == 1
    [step] = steps
    assert step.event == "tls_crypt_key_waiting"
    assert "vpnctl.io/tls-crypt-v2-client-key" in step.message
