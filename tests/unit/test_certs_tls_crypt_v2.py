"""tls-crypt-v2 keys: format, wrapping, and refusals, without running openvpn.

The known-answer vector below was made by `openvpn --genkey tls-crypt-v2-server`
and `openvpn --tls-crypt-v2 <it> --genkey tls-crypt-v2-client` (openvpn 2.6.14);
these are throw-away test keys. tests/netns/test_tls_crypt_v2.py proves the
other direction against a running openvpn.
"""

from __future__ import annotations

import base64
from datetime import UTC, datetime

import pytest

import certs
from certs.tls_crypt_v2 import CLIENT_PEM_LABEL, MAX_METADATA_LEN, SERVER_PEM_LABEL

NOW = datetime(2026, 1, 1, 12, 30, 45, 999_000, tzinfo=UTC)

OPENVPN_SERVER_KEY = b"""-----BEGIN OpenVPN tls-crypt-v2 server key-----
D74fbB8UUY2f8lj1HjLgmgdScmv7QzUCIta+G/EeRBEMoHPnBuwlGg+ILjOFOfQ8
rlTmJR132u/uLh518VJC1tVuKrtcnqeF08x354nYjonpmj4tfVe/0H1hFBB0oXo2
dY0EhPLeR7//UpYniXGI/EzOUKk+EWxT26sYgpGpu10=
-----END OpenVPN tls-crypt-v2 server key-----
"""
OPENVPN_CLIENT_KEY = b"""-----BEGIN OpenVPN tls-crypt-v2 client key-----
P+ffjXzABfgUAkH/yCZuzCxu5aIn1q2si39YWljjxJb3drPE/RmEWnX6B/qCfDCB
bRh3N5dV0MyYuD4a6o2P3yGh8RGSVkwHhWkLiFAYzD+pO5b3ITq9reBwPUeW0ZBR
kXc46MxJOCDO5G9iACJA5x6C3LBGYF95baDJIb23Ef2yWwknE6rCO1C7kN6c4L9i
OBPWwTsnFzoNzLZp1/td9/QALxTmp5MNnXtjPTpYfZBR9JWLrmOIoa2+vTNpqJL4
ZIipw8oRRkjy4kUHO5DssLBLGEUFwSBBWfdrPhBZTD4LnKbw89NZpzxRd6kEqtto
oKcMY6Q5YtO6AmgZGibUiRNoNfyhMBEyEtepRSGrfiwbniYWwNBwC1a9gA/m6AEE
I869RylaN7rx+koZanCbulhgFO7u6Y9m7YKPmsajPcJLehTz17vR1IatJXcQXQJW
p5HSLOWZlpe/rEXGU+vfBnTT+i9X3SvJdlvkbvxfCGKjTR2t/7Ia7HJt0ARr9iA5
tHTu2Al9kHEXp2pPdGkQjYhohmZUewGsgbecfQiry42v7h0bgMjR1UPZbmOaYtmY
4VEzR+B9SfS0mpknZpn9oq7SoRb1XWIV/F6MqFolXG5gjvGDu4FHgjprcFs3Uc+g
k90nKIUQwrzKKMkorxpwq1WG7GRzDttzx2wVFXZN6M4Jc7JeKECUm1zxTiVr1/ut
BNmBC3dAuQjuWGKX+eUO4NovoPZNDIxi0QEr
-----END OpenVPN tls-crypt-v2 client key-----
"""


def _body(pem: bytes, label: str) -> bytes:
    lines = pem.decode().strip().splitlines()
    assert lines[0] == f"-----BEGIN {label}-----"
    assert lines[-1] == f"-----END {label}-----"
    assert all(len(line) <= 64 for line in lines[1:-1])
    return base64.b64decode("".join(lines[1:-1]), validate=True)


def _pem(label: str, body: bytes) -> bytes:
    return (
        f"-----BEGIN {label}-----\n{base64.b64encode(body).decode()}\n-----END {label}-----\n"
    ).encode()


def test_reads_a_client_key_that_openvpn_wrapped() -> None:
    metadata = certs.tls_crypt_v2_client_metadata(OPENVPN_SERVER_KEY, OPENVPN_CLIENT_KEY)
    assert metadata == bytes.fromhex("01000000006b0718b8")
    assert certs.metadata_timestamp(metadata) == datetime(2026, 11, 25, 17, 19, 52, tzinfo=UTC)


def test_openvpns_client_key_is_refused_by_another_server_key() -> None:
    with pytest.raises(certs.KeyMismatch, match="another server key"):
        certs.tls_crypt_v2_client_metadata(certs.new_tls_crypt_v2_server_key(), OPENVPN_CLIENT_KEY)


def test_server_key_is_128_random_bytes_in_openvpns_pem() -> None:
    first = certs.new_tls_crypt_v2_server_key()
    second = certs.new_tls_crypt_v2_server_key()
    assert first.startswith(b"-----BEGIN OpenVPN tls-crypt-v2 server key-----\n")
    assert len(_body(first, SERVER_PEM_LABEL)) == 128
    assert _body(first, SERVER_PEM_LABEL) != _body(second, SERVER_PEM_LABEL)


def test_client_key_default_metadata_is_openvpns_timestamp() -> None:
    server_key = certs.new_tls_crypt_v2_server_key()
    client_key = certs.new_tls_crypt_v2_client_key(server_key, now=NOW)
    body = _body(client_key, CLIENT_PEM_LABEL)
    # Kc (256) || T (32) || AES-CTR(Kc || metadata) (256 + 9) || len (2)
    assert len(body) == 256 + 32 + 256 + 9 + 2
    assert int.from_bytes(body[-2:], "big") == len(body) - 256
    metadata = certs.tls_crypt_v2_client_metadata(server_key, client_key)
    assert metadata == b"\x01" + int(NOW.timestamp()).to_bytes(8, "big")
    assert certs.metadata_timestamp(metadata) == NOW.replace(microsecond=0)


def test_client_keys_are_fresh_and_user_metadata_round_trips() -> None:
    server_key = certs.new_tls_crypt_v2_server_key()
    metadata = b"\x00" + b"tenant-a/node-1"
    one = certs.new_tls_crypt_v2_client_key(server_key, now=NOW, metadata=metadata)
    two = certs.new_tls_crypt_v2_client_key(server_key, now=NOW, metadata=metadata)
    assert _body(one, CLIENT_PEM_LABEL)[:256] != _body(two, CLIENT_PEM_LABEL)[:256]
    assert certs.tls_crypt_v2_client_metadata(server_key, one) == metadata
    assert certs.metadata_timestamp(metadata) is None


def test_metadata_of_the_largest_size_openvpn_allows_round_trips() -> None:
    server_key = certs.new_tls_crypt_v2_server_key()
    metadata = b"\x00" + bytes(range(256)) * 2 + b"x" * (MAX_METADATA_LEN - 513)
    assert len(metadata) == 734
    client_key = certs.new_tls_crypt_v2_client_key(server_key, now=NOW, metadata=metadata)
    assert len(_body(client_key, CLIENT_PEM_LABEL)) == 256 + 1024
    assert certs.tls_crypt_v2_client_metadata(server_key, client_key) == metadata


@pytest.mark.parametrize("metadata", [b"", b"\x00" + b"x" * MAX_METADATA_LEN])
def test_metadata_that_openvpn_cannot_carry_is_refused(metadata: bytes) -> None:
    with pytest.raises(certs.PKIError, match="metadata is"):
        certs.new_tls_crypt_v2_client_key(
            certs.new_tls_crypt_v2_server_key(), now=NOW, metadata=metadata
        )


def test_naive_now_is_refused() -> None:
    with pytest.raises(certs.PKIError, match="no time zone"):
        certs.new_tls_crypt_v2_client_key(
            certs.new_tls_crypt_v2_server_key(), now=datetime(2026, 1, 1)
        )


def test_client_key_of_another_server_key_is_a_key_mismatch() -> None:
    ours = certs.new_tls_crypt_v2_server_key()
    theirs = certs.new_tls_crypt_v2_server_key()
    client_key = certs.new_tls_crypt_v2_client_key(theirs, now=NOW)
    with pytest.raises(certs.KeyMismatch) as caught:
        certs.tls_crypt_v2_client_metadata(ours, client_key)
    assert isinstance(caught.value, certs.PKIError)
    assert "issue the client a new key" in str(caught.value)


def _flip(body: bytes, index: int) -> bytes:
    return body[:index] + bytes([body[index] ^ 0x01]) + body[index + 1 :]


@pytest.mark.parametrize(
    ("where", "error", "message"),
    [
        (5, certs.MalformedMaterial, "differs from its wrapped copy"),  # plain Kc
        (256 + 40, certs.KeyMismatch, "does not authenticate"),  # ciphertext
        (256 + 3, certs.KeyMismatch, "does not authenticate"),  # tag
        (-1, certs.MalformedMaterial, "inconsistent length"),  # len field
    ],
    ids=["plain-key", "ciphertext", "tag", "length"],
)
def test_tampered_client_key_is_refused(
    where: int, error: type[certs.PKIError], message: str
) -> None:
    server_key = certs.new_tls_crypt_v2_server_key()
    body = _body(certs.new_tls_crypt_v2_client_key(server_key, now=NOW), CLIENT_PEM_LABEL)
    tampered = _pem(CLIENT_PEM_LABEL, _flip(body, where if where >= 0 else len(body) + where))
    with pytest.raises(error, match=message):
        certs.tls_crypt_v2_client_metadata(server_key, tampered)


def test_malformed_keys_are_refused_without_quoting_them() -> None:
    server_key = certs.new_tls_crypt_v2_server_key()
    client_key = certs.new_tls_crypt_v2_client_key(server_key, now=NOW)
    secret_line = server_key.splitlines()[1].decode()
    cases: list[tuple[bytes, bytes, str]] = [
        (client_key, client_key, "not a PEM 'OpenVPN tls-crypt-v2 server key'"),  # swapped
        (server_key, server_key, "not a PEM 'OpenVPN tls-crypt-v2 client key'"),
        (b"garbage", client_key, "not a PEM"),
        (_pem(SERVER_PEM_LABEL, b"\x00" * 64), client_key, "64 bytes, expected 128"),
        (server_key.replace(b"\n", b"!\n", 2), client_key, "not valid base64"),
        (server_key, _pem(CLIENT_PEM_LABEL, b"\x00" * 300), "truncated or corrupt"),
    ]
    for server, client, message in cases:
        with pytest.raises(certs.MalformedMaterial, match=message) as caught:
            certs.tls_crypt_v2_client_metadata(server, client)
        assert secret_line not in str(caught.value)
    with pytest.raises(certs.MalformedMaterial, match="must be PEM bytes"):
        certs.tls_crypt_v2_client_metadata(server_key.decode(), client_key)  # type: ignore[arg-type]
    with pytest.raises(certs.MalformedMaterial):
        certs.new_tls_crypt_v2_client_key(b"not a key", now=NOW)
