"""Certificates the lab makes itself for the netns tier's stand-ins (`vpnctl.lab.dataplane`):
a serving CA and serving certificates for the names and addresses a client checks.

The full lab makes none: its kubelets get certificates from the tenant CA as kubeadm
issues them (`vpnctl.lab.realnode`), and vpnctl delivers each node its own tunnel
certificate and tls-crypt-v2 client key through the node's CSR (certs/key_delivery.py).
"""

from __future__ import annotations

import os
from datetime import UTC, datetime, timedelta
from ipaddress import IPv4Address
from pathlib import Path

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
