"""The lab's own serving certificates (stand-ins of the netns tier)."""

from __future__ import annotations

import ipaddress

from cryptography import x509

from vpnctl.lab import labpki


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
