"""Deciding and signing node CSRs (vpnctl.reconcile.csr): every approve and deny path."""

from __future__ import annotations

import base64
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import NameOID

import certs
from tests.support import capi
from vpnctl.reconcile.csr import (
    APPROVED_REASON,
    NODE_SIGNER,
    certificate_lifetime,
    csr_state,
    decide_csr,
    machine_for_node,
    request_pem,
    sign_node_csr,
)

NOW = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)
CLUSTER = "tenant-a"
KEY = certs.new_private_key()


def csr_body(
    *,
    cn: str = "node-1",
    user: str | None = "system:node:node-1",
    groups: list[str] | None = None,
    usages: list[str] | None = None,
    signer: str = NODE_SIGNER,
    request: str | None = None,
    key_pem: bytes = KEY,
    organization: str | None = None,
    expiration: int | None = None,
) -> dict[str, Any]:
    if request is None:
        pem = certs.new_csr(key_pem, common_name=cn, organization=organization)
        request = base64.b64encode(pem).decode()
    spec: dict[str, Any] = {
        "signerName": signer,
        "request": request,
        "usages": ["digital signature", "client auth"] if usages is None else usages,
        "groups": ["system:nodes", "system:authenticated"] if groups is None else groups,
    }
    if user is not None:
        spec["username"] = user
    if expiration is not None:
        spec["expirationSeconds"] = expiration
    return {
        "apiVersion": "certificates.k8s.io/v1",
        "kind": "CertificateSigningRequest",
        "metadata": {"name": "vpnctl-node-1-abc"},
        "spec": spec,
    }


MACHINES = [
    capi.machine(name="m-1", node="node-1", internal_ip="198.19.0.11"),
    capi.machine(name="m-2", node="node-2", internal_ip="198.19.0.12"),
]


def decide(csr: dict[str, Any], machines: Any = MACHINES, cluster: str = CLUSTER) -> Any:
    return decide_csr(csr, machines=machines, cluster_name=cluster)


# --- approve ------------------------------------------------------------------------------


def test_node_asking_for_itself_with_a_machine_is_approved() -> None:
    d = decide(csr_body())
    assert d.approve
    assert d.reason == APPROVED_REASON
    assert d.node_name == "node-1"
    assert d.machine == "m-1"
    assert "Machine m-1" in d.message


@pytest.mark.parametrize(
    "usages",
    [["client auth"], ["client auth", "digital signature", "key encipherment"]],
)
def test_allowed_usage_sets_are_approved(usages: list[str]) -> None:
    assert decide(csr_body(usages=usages)).approve


def test_organization_in_the_request_is_tolerated_and_not_signed() -> None:
    csr = csr_body(organization="system:masters")
    assert decide(csr).approve
    ca = certs.new_ca(common_name="tunnel-ca", now=NOW, lifetime=timedelta(days=365))
    cert = x509.load_pem_x509_certificate(
        sign_node_csr(ca, csr, now=NOW, lifetime=timedelta(days=30))
    )
    assert cert.subject.get_attributes_for_oid(NameOID.ORGANIZATION_NAME) == []


def test_rsa_2048_key_is_approved() -> None:
    rsa_key = certs.new_private_key(algorithm="rsa-2048")
    assert decide(csr_body(key_pem=rsa_key)).approve


def test_machine_matched_by_label_when_spec_has_no_cluster_name() -> None:
    machine = capi.machine(name="m-9", node="node-1", internal_ip="198.19.0.11")
    del machine["spec"]["clusterName"]
    d = decide(csr_body(), machines=[machine])
    assert d.approve
    assert d.machine == "m-9"


def test_machine_without_addresses_still_vouches() -> None:
    """The certificate needs only the nodeRef; routes wait for addresses, not the cert."""
    assert decide(csr_body(), machines=[capi.machine(name="m-1", node="node-1")]).approve


# --- deny -----------------------------------------------------------------------------------


def test_wrong_signer() -> None:
    d = decide(csr_body(signer="kubernetes.io/kube-apiserver-client-kubelet"))
    assert not d.approve
    assert d.reason == "WrongSigner"
    assert "kubernetes.io/kube-apiserver-client-kubelet" in d.message


@pytest.mark.parametrize(
    ("user", "groups"),
    [
        ("system:serviceaccount:vpnctl-system:node-agent", ["system:serviceaccounts"]),
        ("system:node:node-1", ["system:authenticated"]),  # not in system:nodes
        ("node-1", ["system:nodes"]),
        ("system:node:", ["system:nodes"]),
        (None, ["system:nodes"]),
    ],
)
def test_requester_not_a_node(user: str | None, groups: list[str]) -> None:
    d = decide(csr_body(user=user, groups=groups))
    assert not d.approve
    assert d.reason == "RequesterNotANode"
    assert d.node_name is None
    assert "kubelet's client certificate" in d.message


def test_another_nodes_name_is_a_common_name_mismatch() -> None:
    d = decide(csr_body(cn="node-1", user="system:node:node-2"))
    assert not d.approve
    assert d.reason == "CommonNameMismatch"
    assert d.node_name == "node-2"
    assert "CN=node-1" in d.message
    assert "CN=node-2" in d.message


def test_kubelet_style_common_name_is_a_common_name_mismatch() -> None:
    """CN=system:node:node-1 is what a kubelet CSR carries; it is not a node name."""
    key = ec.generate_private_key(ec.SECP256R1())
    pem = (
        x509.CertificateSigningRequestBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "system:node:node-1")]))
        .sign(key, hashes.SHA256())
        .public_bytes(serialization.Encoding.PEM)
    )
    d = decide(csr_body(request=base64.b64encode(pem).decode()))
    assert d.reason == "CommonNameMismatch"
    assert "system:node:node-1" in d.message


@pytest.mark.parametrize(
    "usages",
    [
        ["digital signature", "client auth", "server auth"],
        ["digital signature"],
        [],
        ["client auth", "cert sign"],
    ],
)
def test_forbidden_usages(usages: list[str]) -> None:
    d = decide(csr_body(usages=usages))
    assert not d.approve
    assert d.reason == "ForbiddenUsages"
    assert d.node_name == "node-1"


@pytest.mark.parametrize(
    "name",
    ["vpnctl-apiserver", "vpnctl-server", "vpnctl-anything", f"{CLUSTER}-vpn-ca"],
)
def test_reserved_names_are_denied_even_with_a_machine(name: str) -> None:
    """A tenant admin can name a Node `vpnctl-apiserver` and point a Machine's nodeRef at
    it; the certificate would impersonate the apiserver sidecar (issue 9, item 2)."""
    machine = capi.machine(name="m-evil", node=name, internal_ip="198.19.0.66")
    d = decide(csr_body(cn=name, user=f"system:node:{name}"), machines=[*MACHINES, machine])
    assert not d.approve
    assert d.reason == "ReservedName"
    assert name in d.message
    assert "rename the Node" in d.message


def test_no_machine_for_node() -> None:
    d = decide(csr_body(cn="node-3", user="system:node:node-3"))
    assert not d.approve
    assert d.reason == "NoMachineForNode"
    assert "node-3" in d.message
    assert CLUSTER in d.message


@pytest.mark.parametrize(
    "machines",
    [
        [capi.machine(name="m-1", node="node-1", internal_ip="198.19.0.11", deleting=True)],
        [capi.machine(name="m-1", node="node-1", cluster_name="tenant-b")],
        [capi.machine(name="m-1")],  # no nodeRef yet
        [],
    ],
    ids=["deleting", "other-cluster", "no-node-ref", "none"],
)
def test_machines_that_do_not_vouch(machines: list[Any]) -> None:
    assert decide(csr_body(), machines=machines).reason == "NoMachineForNode"


def test_node_ref_of_another_kind_does_not_vouch() -> None:
    machine = capi.machine(name="m-1", node="node-1")
    machine["status"]["nodeRef"]["kind"] = "Pod"
    assert machine_for_node([machine], node="node-1", cluster_name=CLUSTER) is None


@pytest.mark.parametrize(
    "request_text",
    [
        "",
        "not base64 !!",
        base64.b64encode(b"-----BEGIN CERTIFICATE REQUEST-----\ngarbage\n").decode(),
        base64.b64encode(certs.new_private_key()).decode(),  # a key, not a CSR
    ],
    ids=["empty", "not-base64", "garbage-pem", "a-key"],
)
def test_malformed_request(request_text: str) -> None:
    d = decide(csr_body(request=request_text))
    assert not d.approve
    assert d.reason == "MalformedRequest"
    assert d.node_name == "node-1"
    assert "MII" not in d.message  # names the PEM block type, never quotes content


def test_request_with_a_broken_signature_is_malformed() -> None:
    pem = certs.new_csr(KEY, common_name="node-1")
    der = bytearray(x509.load_pem_x509_csr(pem).public_bytes(serialization.Encoding.DER))
    der[-3] ^= 0xFF  # inside the signature
    tampered = x509.load_der_x509_csr(bytes(der)).public_bytes(serialization.Encoding.PEM)
    d = decide(csr_body(request=base64.b64encode(tampered).decode()))
    assert d.reason == "MalformedRequest"


@pytest.mark.parametrize(
    "key",
    [
        ec.generate_private_key(ec.SECP521R1()),
        rsa.generate_private_key(public_exponent=65537, key_size=1024),
    ],
    ids=["p521", "rsa1024"],
)
def test_unsupported_keys_are_malformed(key: Any) -> None:
    pem = (
        x509.CertificateSigningRequestBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "node-1")]))
        .sign(key, hashes.SHA256())
        .public_bytes(serialization.Encoding.PEM)
    )
    d = decide(csr_body(request=base64.b64encode(pem).decode()))
    assert d.reason == "MalformedRequest"
    assert "key" in d.message


def test_deny_checks_the_requester_before_the_request() -> None:
    """A non-node's garbage is refused for who it is, not for what it sent."""
    d = decide(csr_body(user="mallory", groups=["system:authenticated"], request="x"))
    assert d.reason == "RequesterNotANode"


# --- state, lifetime, signing -----------------------------------------------------------------


@pytest.mark.parametrize(
    ("status", "state"),
    [
        ({}, "pending"),
        ({"conditions": [{"type": "Approved", "status": "True"}]}, "approved"),
        ({"conditions": [{"type": "Approved", "status": "True"}], "certificate": "eA=="}, "issued"),
        ({"conditions": [{"type": "Denied", "status": "True"}]}, "denied"),
        ({"conditions": [{"type": "Approved"}, {"type": "Failed", "status": "True"}]}, "failed"),
        ({"conditions": [{"type": "Approved", "status": "False"}]}, "pending"),
    ],
)
def test_csr_state(status: dict[str, Any], state: str) -> None:
    assert csr_state({"status": status}) == state


def test_lifetime_honours_a_shorter_expiration_but_not_below_ten_minutes() -> None:
    month = timedelta(days=30)
    assert certificate_lifetime(csr_body(), lifetime=month) == month
    assert certificate_lifetime(csr_body(expiration=3600), lifetime=month) == timedelta(hours=1)
    assert certificate_lifetime(csr_body(expiration=60), lifetime=month) == timedelta(minutes=10)
    assert certificate_lifetime(csr_body(expiration=10**9), lifetime=month) == month


def test_signed_certificate_is_a_client_cert_for_the_node_and_its_key() -> None:
    ca = certs.new_ca(common_name="tunnel-ca", now=NOW, lifetime=timedelta(days=365))
    csr = csr_body(expiration=7200)
    cert_pem = sign_node_csr(ca, csr, now=NOW, lifetime=timedelta(days=30))
    info = certs.validate(cert_pem, key_pem=KEY, ca_pem=ca.cert_pem, now=NOW, usage="client")
    assert info.common_name == "node-1"
    assert info.not_after == NOW + timedelta(hours=2)


def test_signing_a_malformed_request_raises() -> None:
    ca = certs.new_ca(common_name="tunnel-ca", now=NOW, lifetime=timedelta(days=365))
    with pytest.raises(certs.MalformedMaterial, match=r"spec\.request"):
        sign_node_csr(ca, csr_body(request=""), now=NOW, lifetime=timedelta(days=30))


def test_request_pem_round_trips() -> None:
    pem = certs.new_csr(KEY, common_name="node-1")
    assert request_pem(csr_body(request=base64.b64encode(pem).decode())) == pem
