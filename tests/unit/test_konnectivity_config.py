"""What vpnctl.testenv.konnectivity writes for the apiserver and the processes, and what
it refuses before starting anything. The processes themselves run in
tests/kube/test_konnectivity.py."""

from __future__ import annotations

import ipaddress
from pathlib import Path

import pytest
import yaml
from cryptography import x509

import certs
from vpnctl.testenv.konnectivity import (
    KonnectivityAgent,
    KonnectivityError,
    KonnectivityServer,
    egress_selector_config,
    write_konnectivity_pki,
)


@pytest.mark.parametrize(("mode", "protocol"), [("grpc", "GRPC"), ("http-connect", "HTTPConnect")])
def test_egress_selector_sends_cluster_traffic_to_the_socket(mode: str, protocol: str) -> None:
    doc = yaml.safe_load(egress_selector_config(Path("/run/k/konn.sock"), mode=mode))  # type: ignore[arg-type]
    assert doc["apiVersion"] == "apiserver.k8s.io/v1beta1"
    assert doc["kind"] == "EgressSelectorConfiguration"
    assert doc["egressSelections"] == [
        {
            "name": "cluster",
            "connection": {
                "proxyProtocol": protocol,
                "transport": {"uds": {"udsName": "/run/k/konn.sock"}},
            },
        }
    ]


def test_pki_serves_the_dialled_address_and_signs_each_agent(tmp_path: Path) -> None:
    pki = write_konnectivity_pki(
        tmp_path, server_addresses=["198.18.0.1", "konn.example"], agents=["a1", "a2"]
    )
    server = x509.load_pem_x509_certificate(pki.server_cert.read_bytes())
    san = server.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert ipaddress.ip_address("198.18.0.1") in san.get_values_for_type(x509.IPAddress)
    assert "konn.example" in san.get_values_for_type(x509.DNSName)
    assert sorted(pki.agents) == ["a1", "a2"]
    for agent, (cert, key) in pki.agents.items():
        info = certs.cert_info(cert.read_bytes())
        assert (info.common_name, info.issuer_cn) == (agent, "konnectivity-ca")
        assert key.stat().st_mode & 0o777 == 0o600
    assert pki.server_key.stat().st_mode & 0o777 == 0o600


async def test_server_refuses_a_socket_path_the_kernel_cannot_bind(tmp_path: Path) -> None:
    pki = write_konnectivity_pki(tmp_path, server_addresses=["198.18.0.1"], agents=["a1"])
    with pytest.raises(KonnectivityError, match="over the kernel's 107"):
        await KonnectivityServer.launch(
            binary=Path("/nonexistent"), workdir=tmp_path, pki=pki, agent_address="198.18.0.1",
            uds=tmp_path / ("x" * 120),
        )  # fmt: skip


async def test_agent_needs_a_certificate_of_its_own(tmp_path: Path) -> None:
    pki = write_konnectivity_pki(tmp_path, server_addresses=["198.18.0.1"], agents=["a1"])
    with pytest.raises(KonnectivityError, match="no client certificate for agent 'a9'"):
        await KonnectivityAgent.launch(
            binary=Path("/nonexistent"), workdir=tmp_path, pki=pki, agent_id="a9",
            server_host="198.18.0.1",
        )  # fmt: skip
