"""Each node's own tls-crypt-v2 client key, sealed to the public key of its CSR.

Why: a node needs a tls-crypt-v2 client key wrapped by its tenant's server key before
openvpn will even answer it, and one shared key would give up what per-client keys buy
(a stranger, or another tenant's node, gets no TLS answer). The controller makes one
key per node when it signs the node's CSR, with metadata naming the node and an expiry
(the certificate's notAfter), and hands it over on the CSR itself.

Why sealed and not plain: every node can read every CSR (``system:node`` may get and
list them), so a plain annotation would hand a compromised node every other node's key.
The key is sealed to the CSR's public key, so only the holder of that CSR's private key
(the agent that made it) can read it:

- EC P-256: ECIES, an ephemeral P-256 key, ECDH with the CSR's key, HKDF-SHA256, then
  AES-256-GCM;
- RSA: a random AES-256 key wrapped with RSA-OAEP(SHA-256), then AES-256-GCM.

The associated data binds the blob to the recipient's public key and the node name, so
a blob cannot be moved to another node's CSR unnoticed. The text format is versioned:
``kd1.<scheme>.<base64 key part>.<base64 nonce>.<base64 ciphertext>``. The plaintext is
compact JSON ``{"node", "exp", "key"}``: the agent cannot unwrap the key's own metadata
(only the server key can), so node and expiry travel beside it, and the server checks
the wrapped copy (``tls_crypt_v2_client_metadata`` + ``node_key_metadata``).
"""

from __future__ import annotations

import base64
import binascii
import json
import os
from dataclasses import dataclass
from datetime import UTC, datetime

from cryptography import x509
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from certs._material import utc
from certs.errors import Expired, KeyMismatch, MalformedMaterial, PKIError
from certs.tls_crypt_v2 import (
    CLIENT_KEY_LEN,
    CLIENT_PEM_LABEL,
    LEN_LEN,
    MAX_WKC_LEN,
    METADATA_TYPE_USER,
    TAG_LEN,
    _pem_decode,
    new_tls_crypt_v2_client_key,
)

# Where the sealed key travels on the node's CSR: the one name the controller's signer
# and the node agent share (both import it from here).
KEY_ANNOTATION = "vpnctl.io/tls-crypt-v2-client-key"
VERSION = "kd1"
_EC = "ec"
_RSA = "rsa"
_NONCE_LEN = 12
_AAD_PREFIX = b"vpnctl tls-crypt-v2 key delivery v1\x00"
_HKDF_INFO = b"vpnctl kd1 ecies p256 aes-256-gcm"
# A sealed blob of one node key is under 2 KiB; refuse anything far bigger unread.
_MAX_BLOB = 16 * 1024

_Public = ec.EllipticCurvePublicKey | rsa.RSAPublicKey


@dataclass(frozen=True, kw_only=True)
class DeliveredKey:
    """A node's tls-crypt-v2 client key (PEM), the node it names and its expiry."""

    node: str
    not_after: datetime
    client_key: bytes

    def __repr__(self) -> str:  # never the key itself
        return f"DeliveredKey(node={self.node!r}, not_after={self.not_after.isoformat()})"


def node_key_metadata(*, node: str, not_after: datetime) -> bytes:
    """tls-crypt-v2 user metadata (type 0x00) naming NODE and its expiry (unix seconds)."""
    if not node:
        raise PKIError("node name for a tls-crypt-v2 client key is empty")
    body = json.dumps({"node": node, "exp": int(utc(not_after).timestamp())}, separators=(",", ":"))
    return bytes([METADATA_TYPE_USER]) + body.encode("utf-8")


def parse_node_key_metadata(metadata: bytes) -> tuple[str, datetime]:
    """(node, expiry) from metadata made by ``node_key_metadata``."""
    if not metadata or metadata[0] != METADATA_TYPE_USER:
        raise MalformedMaterial(
            "tls-crypt-v2 client key metadata is not vpnctl's node metadata (type 0x00 JSON)"
        )
    try:
        doc = json.loads(metadata[1:].decode("utf-8"))
    except (UnicodeDecodeError, ValueError):
        raise MalformedMaterial("tls-crypt-v2 client key metadata is not JSON") from None
    return _node_and_exp(doc, what="tls-crypt-v2 client key metadata")


def _node_and_exp(doc: object, *, what: str) -> tuple[str, datetime]:
    if not isinstance(doc, dict):
        raise MalformedMaterial(f"{what} is not a JSON object")
    node, exp = doc.get("node"), doc.get("exp")
    if not isinstance(node, str) or not node or not isinstance(exp, int):
        raise MalformedMaterial(f"{what} lacks a node name or an integer expiry")
    return node, datetime.fromtimestamp(exp, tz=UTC)


def new_node_client_key(
    server_key: bytes, *, node: str, not_after: datetime, now: datetime
) -> bytes:
    """A tls-crypt-v2 client key (PEM) wrapped by SERVER_KEY, its metadata naming NODE."""
    return new_tls_crypt_v2_client_key(
        server_key, now=now, metadata=node_key_metadata(node=node, not_after=not_after)
    )


def check_client_key_shape(client_key: bytes) -> None:
    """Raise unless CLIENT_KEY is a well-formed tls-crypt-v2 client key PEM (its wrapped
    part can only be authenticated with the server key; the server does that)."""
    data = _pem_decode(client_key, label=CLIENT_PEM_LABEL, what="tls-crypt-v2 client key")
    wkc = data[CLIENT_KEY_LEN:]
    if not TAG_LEN + CLIENT_KEY_LEN + LEN_LEN <= len(wkc) <= MAX_WKC_LEN or int.from_bytes(
        wkc[-LEN_LEN:], "big"
    ) != len(wkc):
        raise MalformedMaterial(
            f"tls-crypt-v2 client key is {len(data)} bytes with an inconsistent wrapped part: "
            "it is corrupt; the controller issues a new one with the next certificate"
        )


def _public_of_csr(csr_pem: bytes) -> _Public:
    try:
        key = x509.load_pem_x509_csr(csr_pem).public_key()
    except ValueError:
        raise MalformedMaterial("certificate signing request is not a PEM CSR") from None
    if isinstance(key, ec.EllipticCurvePublicKey) and isinstance(key.curve, ec.SECP256R1):
        return key
    if isinstance(key, rsa.RSAPublicKey):
        return key
    raise PKIError(
        f"cannot seal a key to a CSR with a {type(key).__name__}: "
        "node CSRs use EC P-256 or RSA keys"
    )


def _spki(key: _Public) -> bytes:
    return key.public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )


def _aad(scheme: str, recipient: _Public, node: str) -> bytes:
    return (
        _AAD_PREFIX
        + scheme.encode("ascii")
        + b"\x00"
        + _spki(recipient)
        + b"\x00"
        + node.encode("utf-8")
    )


def _ecies_key(shared: bytes, ephemeral: bytes, recipient: _Public) -> bytes:
    return HKDF(
        algorithm=hashes.SHA256(), length=32, salt=ephemeral, info=_HKDF_INFO + _spki(recipient)
    ).derive(shared)


def _oaep() -> padding.OAEP:
    return padding.OAEP(mgf=padding.MGF1(hashes.SHA256()), algorithm=hashes.SHA256(), label=None)


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def seal_node_key(client_key: bytes, *, csr_pem: bytes, node: str, not_after: datetime) -> str:
    """CLIENT_KEY sealed to the public key of CSR_PEM for NODE, as versioned text."""
    recipient = _public_of_csr(csr_pem)
    plaintext = json.dumps(
        {
            "node": node,
            "exp": int(utc(not_after).timestamp()),
            "key": client_key.decode("ascii"),
        },
        separators=(",", ":"),
    ).encode("utf-8")
    nonce = os.urandom(_NONCE_LEN)
    if isinstance(recipient, ec.EllipticCurvePublicKey):
        scheme = _EC
        ephemeral = ec.generate_private_key(ec.SECP256R1())
        point = ephemeral.public_key().public_bytes(
            serialization.Encoding.X962, serialization.PublicFormat.UncompressedPoint
        )
        key = _ecies_key(ephemeral.exchange(ec.ECDH(), recipient), point, recipient)
        head = point
    else:
        scheme = _RSA
        key = AESGCM.generate_key(bit_length=256)
        head = recipient.encrypt(key, _oaep())
    sealed = AESGCM(key).encrypt(nonce, plaintext, _aad(scheme, recipient, node))
    return ".".join((VERSION, scheme, _b64(head), _b64(nonce), _b64(sealed)))


def seal_new_node_key(
    server_key: bytes, *, csr_pem: bytes, node: str, not_after: datetime, now: datetime
) -> str:
    """A new client key for NODE from SERVER_KEY, sealed to CSR_PEM's public key."""
    client_key = new_node_client_key(server_key, node=node, not_after=not_after, now=now)
    return seal_node_key(client_key, csr_pem=csr_pem, node=node, not_after=not_after)


def unseal_node_key(blob: str, private_key_pem: bytes, *, node: str, now: datetime) -> DeliveredKey:
    """The key sealed in BLOB, checked: for NODE, not expired at NOW, well formed.

    Raises a ``PKIError`` that says what is wrong: garbage, another node's or another
    key's blob (``KeyMismatch``), tampered, or expired (``Expired``).
    """
    now = utc(now)
    if not isinstance(blob, str) or len(blob) > _MAX_BLOB:
        raise MalformedMaterial("sealed tls-crypt-v2 key is not text of a sane size")
    parts = blob.strip().split(".")
    if len(parts) != 5 or parts[0] != VERSION or parts[1] not in (_EC, _RSA):
        raise MalformedMaterial(
            f"sealed tls-crypt-v2 key is not in format {VERSION} "
            "(kd1.<ec|rsa>.<key>.<nonce>.<ciphertext>): the annotation is garbage or "
            "from a newer vpnctl"
        )
    scheme = parts[1]
    try:
        head, nonce, sealed = (base64.b64decode(p, validate=True) for p in parts[2:])
    except (binascii.Error, ValueError):
        raise MalformedMaterial("sealed tls-crypt-v2 key has a part that is not base64") from None
    try:
        private = serialization.load_pem_private_key(private_key_pem, password=None)
    except (ValueError, TypeError):
        raise MalformedMaterial("the node's private key is not an unencrypted PEM key") from None
    try:
        if scheme == _EC:
            if not isinstance(private, ec.EllipticCurvePrivateKey):
                raise KeyMismatch("sealed tls-crypt-v2 key is sealed to an EC key; ours is not")
            recipient: _Public = private.public_key()
            ephemeral = ec.EllipticCurvePublicKey.from_encoded_point(ec.SECP256R1(), head)
            key = _ecies_key(private.exchange(ec.ECDH(), ephemeral), head, recipient)
        else:
            if not isinstance(private, rsa.RSAPrivateKey):
                raise KeyMismatch("sealed tls-crypt-v2 key is sealed to an RSA key; ours is not")
            recipient = private.public_key()
            key = private.decrypt(head, _oaep())
        plaintext = AESGCM(key).decrypt(nonce, sealed, _aad(scheme, recipient, node))
    except PKIError:
        raise
    except (InvalidTag, ValueError):
        raise KeyMismatch(
            f"sealed tls-crypt-v2 key does not open for node {node} with this node's private "
            "key: it was sealed for another node or key, or it was tampered with; the "
            "controller seals a new one when it signs this node's next CSR"
        ) from None
    try:
        doc = json.loads(plaintext.decode("utf-8"))
    except (UnicodeDecodeError, ValueError):
        raise MalformedMaterial("sealed tls-crypt-v2 key's content is not JSON") from None
    named, not_after = _node_and_exp(doc, what="sealed tls-crypt-v2 key")
    client_key = doc.get("key") if isinstance(doc, dict) else None
    if named != node:
        raise KeyMismatch(f"sealed tls-crypt-v2 key names node {named}, not {node}")
    if not_after <= now:
        raise Expired(
            f"tls-crypt-v2 client key of node {node} expired at {not_after.isoformat()}: "
            "the agent renews its certificate and gets a new key with it"
        )
    if not isinstance(client_key, str):
        raise MalformedMaterial("sealed tls-crypt-v2 key carries no client key")
    pem = client_key.encode("ascii", errors="replace")
    check_client_key_shape(pem)
    return DeliveredKey(node=node, not_after=not_after, client_key=pem)
