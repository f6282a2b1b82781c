"""The per-tenant PKI on `cryptography`: no I/O, and the clock is passed in.

Why a library of its own: the controller issues and renews, the node agent makes
its own key and CSR, and the server agent validates and installs what it is
given. All three need the same rules (profiles openvpn accepts, names that are
safe as CCD file names, errors a person can act on), and none of them should
need a clock or a file system to test them. Keys travel as PEM bytes; nothing
here logs, and no message or repr contains key material.
"""

from certs.check import CertInfo, cert_info, validate
from certs.crl import Revoked, build_crl, crl_next_update, crl_serials
from certs.errors import (
    ChainError,
    Expired,
    InvalidName,
    KeyMismatch,
    MalformedMaterial,
    NotYetValid,
    PKIError,
    WrongUsage,
)
from certs.issue import (
    CLOCK_SKEW,
    Issued,
    KeyAlgorithm,
    csr_info,
    key_usage,
    new_ca,
    new_client_cert,
    new_csr,
    new_private_key,
    new_server_cert,
    sign_csr,
)
from certs.key_delivery import (
    DeliveredKey,
    check_client_key_shape,
    new_node_client_key,
    parse_node_key_metadata,
    seal_new_node_key,
    seal_node_key,
    unseal_node_key,
)
from certs.renewal import DEFAULT_RENEW_FRACTION, renew_at, renewal_due
from certs.tls_crypt_v2 import (
    metadata_timestamp,
    new_tls_crypt_v2_client_key,
    new_tls_crypt_v2_server_key,
    tls_crypt_v2_client_metadata,
)

__all__ = [
    "CLOCK_SKEW",
    "DEFAULT_RENEW_FRACTION",
    "CertInfo",
    "ChainError",
    "DeliveredKey",
    "Expired",
    "InvalidName",
    "Issued",
    "KeyAlgorithm",
    "KeyMismatch",
    "MalformedMaterial",
    "NotYetValid",
    "PKIError",
    "Revoked",
    "WrongUsage",
    "build_crl",
    "cert_info",
    "check_client_key_shape",
    "crl_next_update",
    "crl_serials",
    "csr_info",
    "key_usage",
    "metadata_timestamp",
    "new_ca",
    "new_client_cert",
    "new_csr",
    "new_node_client_key",
    "new_private_key",
    "new_server_cert",
    "new_tls_crypt_v2_client_key",
    "new_tls_crypt_v2_server_key",
    "parse_node_key_metadata",
    "renew_at",
    "renewal_due",
    "seal_new_node_key",
    "seal_node_key",
    "sign_csr",
    "tls_crypt_v2_client_metadata",
    "unseal_node_key",
    "validate",
]
