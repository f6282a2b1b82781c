"""Sealing a node's tls-crypt-v2 client key to its CSR: round trips and every refusal."""

from __future__ import annotations

import base64
from datetime import UTC, datetime, timedelta

import pytest

import certs
from certs.key_delivery import node_key_metadata

NOW = datetime(2026, 1, 1, 12, 0, tzinfo=UTC)
NOT_AFTER = NOW + timedelta(days=1)
SERVER_KEY = certs.new_tls_crypt_v2_server_key()


def _node(name: str, algorithm: certs.KeyAlgorithm = "ecdsa-p256") -> tuple[bytes, bytes]:
    key = certs.new_private_key(algorithm=algorithm)
    return key, certs.new_csr(key, common_name=name)


@pytest.mark.parametrize("algorithm", ["ecdsa-p256", "rsa-2048"])
def test_round_trip_gives_a_key_the_server_key_authenticates(
    algorithm: certs.KeyAlgorithm,
) -> None:
    key, csr = _node("node-a", algorithm)
    blob = certs.seal_new_node_key(
        SERVER_KEY, csr_pem=csr, node="node-a", not_after=NOT_AFTER, now=NOW
    )
    assert blob.startswith(f"kd1.{'ec' if algorithm == 'ecdsa-p256' else 'rsa'}.")
    delivered = certs.unseal_node_key(blob, key, node="node-a", now=NOW)
    assert delivered.node == "node-a"
    assert delivered.not_after == NOT_AFTER
    metadata = certs.tls_crypt_v2_client_metadata(SERVER_KEY, delivered.client_key)
    assert metadata == node_key_metadata(node="node-a", not_after=NOT_AFTER)
    assert certs.parse_node_key_metadata(metadata) == ("node-a", NOT_AFTER)
    assert "BEGIN" not in repr(delivered)


def test_each_seal_is_a_different_key() -> None:
    key, csr = _node("node-a")
    one, two = (
        certs.unseal_node_key(
            certs.seal_new_node_key(
                SERVER_KEY, csr_pem=csr, node="node-a", not_after=NOT_AFTER, now=NOW
            ),
            key,
            node="node-a",
            now=NOW,
        ).client_key
        for _ in range(2)
    )
    assert one != two


def test_refuses_a_blob_for_another_node() -> None:
    key, csr = _node("node-a")
    blob = certs.seal_new_node_key(
        SERVER_KEY, csr_pem=csr, node="node-a", not_after=NOT_AFTER, now=NOW
    )
    with pytest.raises(certs.KeyMismatch, match="node node-b"):
        certs.unseal_node_key(blob, key, node="node-b", now=NOW)


def test_refuses_a_key_naming_another_node_even_if_sealed_to_us() -> None:
    key, csr = _node("node-a")
    client_key = certs.new_node_client_key(SERVER_KEY, node="node-b", not_after=NOT_AFTER, now=NOW)
    blob = certs.seal_node_key(client_key, csr_pem=csr, node="node-a", not_after=NOT_AFTER)
    # The sealed envelope names node-a; the wrapped metadata (server side) names node-b.
    delivered = certs.unseal_node_key(blob, key, node="node-a", now=NOW)
    assert (
        certs.parse_node_key_metadata(
            certs.tls_crypt_v2_client_metadata(SERVER_KEY, delivered.client_key)
        )[0]
        == "node-b"
    )


def test_refuses_another_private_key() -> None:
    _, csr = _node("node-a")
    other, _ = _node("node-a")
    rsa_other, _ = _node("node-a", "rsa-2048")
    blob = certs.seal_new_node_key(
        SERVER_KEY, csr_pem=csr, node="node-a", not_after=NOT_AFTER, now=NOW
    )
    with pytest.raises(certs.KeyMismatch, match="another node or key"):
        certs.unseal_node_key(blob, other, node="node-a", now=NOW)
    with pytest.raises(certs.KeyMismatch, match="EC key"):
        certs.unseal_node_key(blob, rsa_other, node="node-a", now=NOW)


def test_refuses_a_tampered_blob() -> None:
    key, csr = _node("node-a")
    blob = certs.seal_new_node_key(
        SERVER_KEY, csr_pem=csr, node="node-a", not_after=NOT_AFTER, now=NOW
    )
    parts = blob.split(".")
    sealed = bytearray(base64.b64decode(parts[4]))
    sealed[10] ^= 0x01
    parts[4] = base64.b64encode(bytes(sealed)).decode()
    with pytest.raises(certs.KeyMismatch, match="tampered"):
        certs.unseal_node_key(".".join(parts), key, node="node-a", now=NOW)


def test_refuses_an_expired_key() -> None:
    key, csr = _node("node-a")
    blob = certs.seal_new_node_key(
        SERVER_KEY, csr_pem=csr, node="node-a", not_after=NOT_AFTER, now=NOW
    )
    with pytest.raises(certs.Expired, match="expired"):
        certs.unseal_node_key(blob, key, node="node-a", now=NOT_AFTER)


@pytest.mark.parametrize(
    "garbage",
    ["", "hello", "kd2.ec.AA==.AA==.AA==", "kd1.ec.!!.AA==.AA==", "kd1.dsa.AA==.AA==.AA=="],
)
def test_refuses_garbage(garbage: str) -> None:
    key, _ = _node("node-a")
    with pytest.raises(certs.MalformedMaterial):
        certs.unseal_node_key(garbage, key, node="node-a", now=NOW)


def test_refuses_a_sealed_non_key() -> None:
    key, csr = _node("node-a")
    blob = certs.seal_node_key(b"not a key", csr_pem=csr, node="node-a", not_after=NOT_AFTER)
    with pytest.raises(certs.MalformedMaterial, match="PEM"):
        certs.unseal_node_key(blob, key, node="node-a", now=NOW)
