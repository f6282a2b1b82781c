"""The netns tier's tenant PKI as files: the CA, the server's certificate, tls-crypt-v2
keys, the clients' certificates, CRLs.

What the controller's `TenantPKI` and the nodes' CSR flow would issue, made here with
`certs` directly: the netns tier has no service cluster to keep a CA in and no tenant
apiserver to sign CSRs. The files are the fixture's; `vpnctl.lab.dataplane` copies each
agent's onto the paths its pod would have them at.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from ipaddress import IPv4Address
from pathlib import Path

import certs

DAY = timedelta(days=1)


def write_secret(path: Path, data: bytes) -> None:
    """Write key material readable by root only."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(data)


@dataclass
class ClientFiles:
    cn: str
    cert: Path
    key: Path
    tc: Path
    serial: int


@dataclass
class Pki:
    """The tenant's PKI as files: CA, server cert, tls-crypt-v2 keys, client certs, CRLs."""

    base: Path
    ca: certs.Issued
    ca_path: Path
    tc_server: bytes
    server_cert: Path
    server_key: Path
    server_tc: Path
    clients: dict[str, ClientFiles] = field(default_factory=dict)
    crl_number: int = 0

    @classmethod
    def create(cls, base: Path, *, server_ip: IPv4Address, tenant: str = "tenant-a") -> Pki:
        base.mkdir(parents=True, exist_ok=True)
        now = datetime.now(UTC)
        ca = certs.new_ca(common_name=tenant, now=now, lifetime=DAY)
        server = certs.new_server_cert(
            ca, common_name="server", now=now, lifetime=DAY, ip_addresses=[server_ip]
        )
        tc_server = certs.new_tls_crypt_v2_server_key()
        pki = cls(
            base=base,
            ca=ca,
            ca_path=base / "ca.pem",
            tc_server=tc_server,
            server_cert=base / "server.pem",
            server_key=base / "server.key",
            server_tc=base / "tc-server.key",
        )
        pki.ca_path.write_bytes(ca.cert_pem)
        pki.server_cert.write_bytes(server.cert_pem)
        write_secret(pki.server_key, server.key_pem)
        write_secret(pki.server_tc, tc_server)
        return pki

    def client(
        self, cn: str, *, ca: certs.Issued | None = None, tc_server: bytes | None = None
    ) -> ClientFiles:
        """Issue (once) a client cert+key and tls-crypt-v2 key for CN."""
        if cn in self.clients:
            return self.clients[cn]
        now = datetime.now(UTC)
        issued = certs.new_client_cert(ca or self.ca, common_name=cn, now=now, lifetime=DAY)
        tc = certs.new_tls_crypt_v2_client_key(tc_server or self.tc_server, now=now)
        files = ClientFiles(
            cn=cn,
            cert=self.base / f"{cn}.pem",
            key=self.base / f"{cn}.key",
            tc=self.base / f"{cn}.tc.key",
            serial=certs.cert_info(issued.cert_pem).serial,
        )
        files.cert.write_bytes(issued.cert_pem)
        write_secret(files.key, issued.key_pem)
        write_secret(files.tc, tc)
        self.clients[cn] = files
        return files

    def crl(self, revoked: Sequence[int]) -> bytes:
        self.crl_number += 1
        now = datetime.now(UTC)
        return certs.build_crl(
            self.ca,
            revoked=[certs.Revoked(serial=s, revoked_at=now) for s in revoked],
            now=now,
            next_update=DAY,
            crl_number=self.crl_number,
        )
