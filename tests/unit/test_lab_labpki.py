"""What the lab provisions on a node: the kubelet's client certificate, and nothing else."""

from __future__ import annotations

import ipaddress
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from vpnctl.lab import labpki
from vpnctl.testenv.cluster_pki import write_cluster_pki


def test_kubelet_client_certificate_is_the_nodes_identity(tmp_path: Path) -> None:
    pki = write_cluster_pki(tmp_path / "pki", cluster_name="tenant-a", apiserver_ips=["198.18.0.2"])
    pem = labpki.kubelet_client_pem(ca_cert=pki.ca.cert, ca_key=pki.ca.key, node="node-2")
    cert = x509.load_pem_x509_certificate(pem)
    key = serialization.load_pem_private_key(pem, password=None)
    assert cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value == "system:node:node-2"
    orgs = cert.subject.get_attributes_for_oid(NameOID.ORGANIZATION_NAME)
    assert [o.value for o in orgs] == ["system:nodes"]
    eku = cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert list(eku) == [ExtendedKeyUsageOID.CLIENT_AUTH]
    ca = x509.load_pem_x509_certificate(pki.ca.cert.read_bytes())
    cert.verify_directly_issued_by(ca)
    assert key.public_key() == cert.public_key()


def test_serving_certificates_carry_the_names_the_apiserver_checks() -> None:
    ca = labpki.new_ca("lab-webhook-serving")
    issued = labpki.serving_cert(
        ca,
        name="webhook-node-1",
        ips=(ipaddress.IPv4Address("198.19.65.2"),),
        dns=("webhook-node-1.lab.svc",),
    )
    san = (
        x509.load_pem_x509_certificate(issued.cert_pem)
        .extensions.get_extension_for_class(x509.SubjectAlternativeName)
        .value
    )
    assert "webhook-node-1.lab.svc" in san.get_values_for_type(x509.DNSName)
    assert san.get_values_for_type(x509.IPAddress) == [ipaddress.IPv4Address("198.19.65.2")]


def test_the_lab_forges_no_tls_crypt_key() -> None:
    """vpnctl delivers each node's own key on its CSR (certs/key_delivery.py): the lab
    puts only the kubelet's client certificate on a node, as kubeadm would."""
    import inspect

    from vpnctl.lab import kubelet

    for module in (labpki, kubelet):
        source = inspect.getsource(module)
        assert "new_tls_crypt_v2_client_key" not in source, module.__name__
        assert "TLS_CRYPT_V2_SERVER" not in source, module.__name__
