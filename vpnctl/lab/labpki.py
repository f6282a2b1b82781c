"""Certificates and keys the lab makes itself, where production has other owners.

- The kubelets' serving certificates, from a "kubelet-serving" CA the tenant apiserver
  trusts (`--kubelet-certificate-authority`), with the node's InternalIP as IP SAN.
- The webhooks' serving certificates, for the DNS name the apiserver checks
  (`<service>.<namespace>.svc`), from a CA put in the webhook configuration's caBundle.
- Each node's kubelet client certificate, `CN=system:node:<node>, O=system:nodes`, from
  the tenant cluster's CA: what TLS bootstrapping gives a real kubelet. The node agent
  authenticates its certificate request with it (agent/bootstrap.py). `certs` makes
  only tunnel certificates (CN only, no organization), so this one is built here with
  `cryptography`, in one PEM file as the kubelet keeps it.

Not the nodes' tls-crypt-v2 client keys: vpnctl delivers each node its own, sealed on
its CSR (certs/key_delivery.py).
"""

from __future__ import annotations

import os
from datetime import UTC, datetime, timedelta
from ipaddress import IPv4Address
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

import certs

LIFETIME = timedelta(days=7)
SKEW = timedelta(minutes=5)


def write_private(path: Path, data: bytes) -> None:
    """Write key material readable by root only, atomically."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(data)
    os.replace(tmp, path)


def new_ca(name: str) -> certs.Issued:
    return certs.new_ca(common_name=name, now=datetime.now(UTC), lifetime=LIFETIME)


def serving_cert(
    ca: certs.Issued, *, name: str, ips: tuple[IPv4Address, ...] = (),
    dns: tuple[str, ...] = (),
) -> certs.Issued:  # fmt: skip
    return certs.new_server_cert(
        ca, common_name=name, now=datetime.now(UTC), lifetime=LIFETIME,
        ip_addresses=list(ips), dns_names=list(dns),
    )  # fmt: skip


def kubelet_client_pem(*, ca_cert: Path, ca_key: Path, node: str) -> bytes:
    """`CN=system:node:<node>, O=system:nodes` from the tenant CA: certificate, then key."""
    issuer = x509.load_pem_x509_certificate(ca_cert.read_bytes())
    signer = serialization.load_pem_private_key(ca_key.read_bytes(), password=None)
    if not isinstance(signer, ec.EllipticCurvePrivateKey):
        raise ValueError(f"{ca_key}: the tenant CA key is not an ECDSA key")
    key = ec.generate_private_key(ec.SECP256R1())
    now = datetime.now(UTC)
    subject = x509.Name([
        x509.NameAttribute(NameOID.ORGANIZATION_NAME, "system:nodes"),
        x509.NameAttribute(NameOID.COMMON_NAME, f"system:node:{node}"),
    ])  # fmt: skip
    cert = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(issuer.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - SKEW)
        .not_valid_after(now + LIFETIME)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.CLIENT_AUTH]), critical=False)
        .sign(signer, hashes.SHA256())
    )
    return cert.public_bytes(serialization.Encoding.PEM) + key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
