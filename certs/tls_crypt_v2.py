"""tls-crypt-v2 keys in OpenVPN 2.5+'s own format, made without running openvpn.

With tls-crypt-v2 every client has its own control-channel key, wrapped by the
server's key, so a peer without a valid client key gets no TLS response at all,
and one node's key is of no use to another tenant's server. Making the keys here
keeps `certs` free of I/O (no `openvpn --genkey` subprocess, no temp files).

The format (openvpn's doc/tls-crypt-v2.txt and src/openvpn/tls_crypt.c):

- server key: 128 bytes, openvpn's `struct key` = 64 cipher bytes || 64 HMAC
  bytes. tls-crypt-v2 uses AES-256-CTR with Ke = the first 32 cipher bytes and
  HMAC-SHA256 with Ka = the first 32 HMAC bytes; the rest is unused.
- client key Kc: 256 random bytes (openvpn's `struct key2`, two `struct key`s).
- metadata: one type byte (0x00 user data, 0x01 a 64-bit big-endian unix
  timestamp) and its payload; at most 734 bytes.
- len = 2-byte big-endian length of the whole WKc (tag + ciphertext + len).
- T = HMAC-SHA256(Ka, len || Kc || metadata), 32 bytes.
- WKc = T || AES-256-CTR(Ke, IV = first 16 bytes of T, Kc || metadata) || len.
- client key file: PEM of Kc || WKc. WKc is at most 1024 bytes.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import os
from datetime import UTC, datetime

from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

from certs._material import utc
from certs.errors import KeyMismatch, MalformedMaterial, PKIError

SERVER_PEM_LABEL = "OpenVPN tls-crypt-v2 server key"
CLIENT_PEM_LABEL = "OpenVPN tls-crypt-v2 client key"

SERVER_KEY_LEN = 128
CLIENT_KEY_LEN = 256
TAG_LEN = 32
LEN_LEN = 2
MAX_WKC_LEN = 1024
MAX_METADATA_LEN = MAX_WKC_LEN - (CLIENT_KEY_LEN + TAG_LEN + LEN_LEN)  # 734

METADATA_TYPE_USER = 0x00
METADATA_TYPE_TIMESTAMP = 0x01

_KE = slice(0, 32)  # AES-256 key: start of the cipher half
_KA = slice(64, 96)  # HMAC-SHA256 key: start of the HMAC half


def _pem_encode(label: str, body: bytes) -> bytes:
    b64 = base64.b64encode(body).decode("ascii")
    lines = [b64[i : i + 64] for i in range(0, len(b64), 64)]
    return (f"-----BEGIN {label}-----\n" + "\n".join(lines) + f"\n-----END {label}-----\n").encode(
        "ascii"
    )


def _pem_decode(data: object, *, label: str, what: str) -> bytes:
    if not isinstance(data, bytes | bytearray | memoryview):
        raise MalformedMaterial(
            f"{what} must be PEM bytes, got {type(data).__name__}: read the file in binary mode"
        )
    raw = bytes(data)
    begin = f"-----BEGIN {label}-----".encode("ascii")
    end = f"-----END {label}-----".encode("ascii")
    start = raw.find(begin)
    stop = raw.find(end, start + len(begin)) if start >= 0 else -1
    if start < 0 or stop < 0:
        raise MalformedMaterial(
            f"{what} is not a PEM '{label}' block (no BEGIN/END '{label}' lines): "
            "check that the right key file was passed"
        )
    body = b"".join(raw[start + len(begin) : stop].split())
    try:
        return base64.b64decode(body, validate=True)
    except (binascii.Error, ValueError):
        raise MalformedMaterial(
            f"{what}: its PEM body is not valid base64; the file is corrupt, generate a new key"
        ) from None


def _server_keys(server_key: bytes) -> tuple[bytes, bytes]:
    key = _pem_decode(server_key, label=SERVER_PEM_LABEL, what="tls-crypt-v2 server key")
    if len(key) != SERVER_KEY_LEN:
        raise MalformedMaterial(
            f"tls-crypt-v2 server key is {len(key)} bytes, expected {SERVER_KEY_LEN}: "
            "the file is truncated or corrupt"
        )
    return key[_KE], key[_KA]


def _ctr(ke: bytes, tag: bytes, data: bytes) -> bytes:
    cipher = Cipher(algorithms.AES(ke), modes.CTR(tag[:16])).encryptor()
    return cipher.update(data) + cipher.finalize()


def _tag(ka: bytes, net_len: bytes, plaintext: bytes) -> bytes:
    return hmac.new(ka, net_len + plaintext, hashlib.sha256).digest()


def new_tls_crypt_v2_server_key() -> bytes:
    """A fresh tls-crypt-v2 server key, PEM, as `openvpn --genkey tls-crypt-v2-server` writes."""
    return _pem_encode(SERVER_PEM_LABEL, os.urandom(SERVER_KEY_LEN))


def timestamp_metadata(now: datetime) -> bytes:
    """Metadata type 0x01 with `now` as a 64-bit big-endian unix time, openvpn's default."""
    seconds = int(utc(now).timestamp())
    return bytes([METADATA_TYPE_TIMESTAMP]) + seconds.to_bytes(8, "big", signed=True)


def new_tls_crypt_v2_client_key(
    server_key: bytes, *, now: datetime, metadata: bytes | None = None
) -> bytes:
    """A fresh client key wrapped by `server_key`, PEM.

    `metadata` is stored as given, type byte first (e.g. b"\\x00" + user data);
    by default it is the timestamp of `now`, which openvpn's
    `--tls-crypt-v2-max-age` reads.
    """
    ke, ka = _server_keys(server_key)
    if metadata is None:
        metadata = timestamp_metadata(now)
    else:
        utc(now)
        if not isinstance(metadata, bytes):
            raise PKIError(f"metadata must be bytes, got {type(metadata).__name__}")
        if not 1 <= len(metadata) <= MAX_METADATA_LEN:
            raise PKIError(
                f"tls-crypt-v2 metadata is {len(metadata)} bytes; it must hold a type byte "
                f"and fit in {MAX_METADATA_LEN} bytes: shorten it"
            )
    kc = os.urandom(CLIENT_KEY_LEN)
    plaintext = kc + metadata
    net_len = (TAG_LEN + len(plaintext) + LEN_LEN).to_bytes(LEN_LEN, "big")
    tag = _tag(ka, net_len, plaintext)
    wkc = tag + _ctr(ke, tag, plaintext) + net_len
    return _pem_encode(CLIENT_PEM_LABEL, kc + wkc)


def tls_crypt_v2_client_metadata(server_key: bytes, client_key: bytes) -> bytes:
    """Unwrap `client_key` with `server_key`, authenticate it, and return its metadata.

    Raises `MalformedMaterial` for a corrupt key and `KeyMismatch` for a client
    key wrapped by another server key (openvpn's server would drop its packets).
    """
    ke, ka = _server_keys(server_key)
    data = _pem_decode(client_key, label=CLIENT_PEM_LABEL, what="tls-crypt-v2 client key")
    wkc = data[CLIENT_KEY_LEN:]
    if len(wkc) < TAG_LEN + CLIENT_KEY_LEN + LEN_LEN or len(wkc) > MAX_WKC_LEN:
        raise MalformedMaterial(
            f"tls-crypt-v2 client key is {len(data)} bytes, which no valid client key is: "
            "the file is truncated or corrupt, issue a new client key"
        )
    net_len = wkc[-LEN_LEN:]
    if int.from_bytes(net_len, "big") != len(wkc):
        raise MalformedMaterial(
            "tls-crypt-v2 client key's wrapped part has an inconsistent length field: "
            "the file is corrupt, issue a new client key"
        )
    tag = wkc[:TAG_LEN]
    plaintext = _ctr(ke, tag, wkc[TAG_LEN:-LEN_LEN])
    if not hmac.compare_digest(tag, _tag(ka, net_len, plaintext)):
        raise KeyMismatch(
            "tls-crypt-v2 client key does not authenticate with this server key: it was "
            "wrapped by another server key (another tenant, or before a server key "
            "rotation) or it is corrupt; issue the client a new key from this server key"
        )
    if not hmac.compare_digest(plaintext[:CLIENT_KEY_LEN], data[:CLIENT_KEY_LEN]):
        raise MalformedMaterial(
            "tls-crypt-v2 client key's plain part differs from its wrapped copy: "
            "the file is corrupt, issue a new client key"
        )
    return plaintext[CLIENT_KEY_LEN:]


def metadata_timestamp(metadata: bytes) -> datetime | None:
    """The creation time in timestamp metadata (type 0x01), or None for other types."""
    if len(metadata) != 9 or metadata[0] != METADATA_TYPE_TIMESTAMP:
        return None
    return datetime.fromtimestamp(int.from_bytes(metadata[1:], "big", signed=True), tz=UTC)
