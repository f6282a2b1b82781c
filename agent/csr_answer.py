"""What an answered node CSR brings, checked and installed: the certificate and the
node's own tls-crypt-v2 client key, sealed to the CSR's public key by vpnctl's signer.

Why apart from `agent.bootstrap` (which asks and waits): this is the part that decides
what reaches openvpn's files, so it is small and testable without an apiserver. The
order of the writes is the invariant: tls-crypt key, private key, then certificate,
each atomic, and nothing at all unless every part is usable. Nothing here logs.
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import os
from collections.abc import Mapping
from datetime import datetime
from typing import Any

import certs
from agent.csr_api import BootstrapError, CSRRefused, sealed_key
from agent.files import atomic_write

_MAX_FILE = 1024 * 1024


def read_small(path: str) -> bytes | None:
    """The file's bytes, None if it does not exist; other problems raise BootstrapError."""
    try:
        with open(path, "rb") as f:
            data = f.read(_MAX_FILE + 1)
    except FileNotFoundError:
        return None
    except OSError as e:
        raise BootstrapError(f"cannot read {path}: {e.strerror}; check the mount") from None
    if len(data) > _MAX_FILE:
        raise BootstrapError(f"{path} is over {_MAX_FILE} bytes; is it the right file?")
    return data


def write_private(path: str, data: bytes) -> None:
    os.makedirs(os.path.dirname(path) or ".", mode=0o700, exist_ok=True)
    atomic_write(path, data, mode=0o600)


def remove(path: str) -> None:
    with contextlib.suppress(FileNotFoundError):
        os.unlink(path)


def usable_tls_crypt_key(path: str | None) -> bool:
    """Whether PATH holds a well-formed tls-crypt-v2 client key (None: none is managed)."""
    if path is None:
        return True
    try:
        data = read_small(path)
        if data is None:
            return False
        certs.check_client_key_shape(data)
    except (BootstrapError, certs.PKIError):
        return False
    return True


def _delivered_key(
    csr: Mapping[str, Any], *, name: str, key_pem: bytes, node_name: str, now: datetime
) -> bytes:
    """The tls-crypt-v2 client key sealed on CSR for this node and key, checked."""
    sealed = sealed_key(csr)
    if sealed is None:
        raise BootstrapError(f"CSR {name} was signed without a tls-crypt-v2 client key")
    try:
        return certs.unseal_node_key(sealed, key_pem, node=node_name, now=now).client_key
    except certs.PKIError as e:
        raise CSRRefused(
            csr_name=name, outcome="Failed", reason="BadTLSCryptKey", message=str(e)
        ) from None


def _first_certificate(encoded: str, *, name: str) -> bytes:
    try:
        chain = base64.b64decode(encoded, validate=True)
    except (binascii.Error, ValueError):
        raise BootstrapError(f"CSR {name} status.certificate is not base64") from None
    end = b"-----END CERTIFICATE-----"
    if end not in chain:
        raise BootstrapError(f"CSR {name} status.certificate holds no PEM certificate")
    return chain[: chain.index(end) + len(end)] + b"\n"


def install_issued(
    issued: Mapping[str, Any],
    *,
    name: str,
    key_pem: bytes,
    key_file: str,
    key_path: str,
    cert_path: str,
    ca_pem: bytes,
    tunnel_ca_file: str,
    node_name: str,
    now: datetime,
    tls_crypt_key_path: str | None,
) -> tuple[bytes, certs.CertInfo]:
    """Check what the issued CSR brought (certificate; sealed tls-crypt-v2 key if
    TLS_CRYPT_KEY_PATH) and install it: tls-crypt key, key, certificate. Nothing is
    written unless all of it is usable; a key that does not open burns KEY_FILE."""
    status = issued.get("status")
    encoded = status.get("certificate") if isinstance(status, Mapping) else None
    cert_pem = _first_certificate(str(encoded or ""), name=name)
    try:
        info = certs.validate(cert_pem, key_pem=key_pem, ca_pem=ca_pem, now=now, usage="client")
    except certs.PKIError as e:
        raise BootstrapError(
            f"CSR {name} was answered with a certificate this node cannot use: {e}; "
            f"is the tunnel CA {tunnel_ca_file} the one vpnctl signs with?"
        ) from None
    if info.common_name != node_name:
        raise BootstrapError(
            f"CSR {name} was answered with a certificate for CN={info.common_name}, "
            f"not {node_name}; refusing it"
        )
    if tls_crypt_key_path is not None:
        try:
            tls_key = _delivered_key(
                issued, name=name, key_pem=key_pem, node_name=node_name, now=now
            )
        except CSRRefused:
            remove(key_file)  # stuck on this CSR otherwise: the next attempt has a new one
            raise
        # Any valid tls-crypt-v2 key works with either pair, so it goes first.
        write_private(tls_crypt_key_path, tls_key)
    # Key first, then certificate: a reader in between sees a mismatched pair and keeps
    # what it runs (the role's material check), never a half-written file.
    if key_file != key_path:
        os.replace(key_file, key_path)
    write_private(cert_path, cert_pem)
    return cert_pem, info
