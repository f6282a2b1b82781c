"""``Kube`` against a real kube-apiserver: apply, status, errors, retries, CSRs, kubeconfigs."""

from __future__ import annotations

import base64
import datetime as dt
import random
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from vpnctl.kube import (
    CERTIFICATE_SIGNING_REQUEST,
    CONFIG_MAP,
    NAMESPACE,
    SECRET,
    AlreadyExists,
    Conflict,
    Invalid,
    Kube,
    KubeconfigError,
    KubeObject,
    ManualClock,
    NotFound,
    Resource,
    TransportError,
    kubeconfig_text_from_secret,
    with_retries,
)
from vpnctl.testenv import ServiceCluster

from .kubefix import gadget_crd, kube, unique  # noqa: F401

pytestmark = pytest.mark.kube


def _managers(obj: dict[str, Any]) -> set[tuple[str, str]]:
    fields = obj["metadata"]["managedFields"]
    return {(f["manager"], f.get("subresource", "")) for f in fields}


async def test_apply_is_idempotent_and_records_the_field_manager(
    kube: Kube,  # noqa: F811
    gadget_crd: Resource,  # noqa: F811
    namespace: str,
) -> None:
    body = {
        "metadata": {"name": "g1", "namespace": namespace, "labels": {"app": "t"}},
        "spec": {"size": 3, "colour": "teal", "tags": ["a", "b"]},
    }
    first = await kube.apply(gadget_crd, body)
    assert first["apiVersion"] == "kubetest.vpnctl.io/v1"
    assert first["kind"] == "Gadget"
    assert first["spec"] == body["spec"]
    assert ("vpnctl", "") in _managers(first)

    second = await kube.apply(gadget_crd, body)
    assert second["metadata"]["resourceVersion"] == first["metadata"]["resourceVersion"]
    assert second["metadata"]["generation"] == 1

    # A field we stop sending is removed (we were its only manager).
    trimmed = {"metadata": body["metadata"], "spec": {"size": 3, "colour": "teal"}}
    third = await kube.apply(gadget_crd, trimmed)
    assert "tags" not in third["spec"]
    assert third["metadata"]["generation"] == 2

    # Status goes through its own subresource and doesn't touch spec or generation.
    status = await kube.apply_status(
        gadget_crd,
        {
            "metadata": {"name": "g1", "namespace": namespace},
            "status": {"observedGeneration": 2, "phase": "Ready"},
        },
    )
    assert status["status"] == {"observedGeneration": 2, "phase": "Ready"}
    assert status["spec"] == trimmed["spec"]
    assert status["metadata"]["generation"] == 2
    assert ("vpnctl", "status") in _managers(status)
    again = await kube.apply_status(
        gadget_crd,
        {
            "metadata": {"name": "g1", "namespace": namespace},
            "status": {"observedGeneration": 2, "phase": "Ready"},
        },
    )
    assert again["metadata"]["resourceVersion"] == status["metadata"]["resourceVersion"]

    # An object read back (with managedFields) can be applied as is.
    read = await kube.get(gadget_crd, "g1", namespace)
    assert read is not None
    assert (await kube.apply(gadget_crd, read))["metadata"]["resourceVersion"] == (
        read["metadata"]["resourceVersion"]
    )


async def test_get_list_patch_delete_on_plain_dicts(kube: Kube, namespace: str) -> None:  # noqa: F811
    assert await kube.get(CONFIG_MAP, "absent", namespace) is None
    for i in range(5):
        await kube.apply(
            CONFIG_MAP,
            {
                "metadata": {
                    "name": f"cm-{i}",
                    "namespace": namespace,
                    "labels": {"parity": "even" if i % 2 == 0 else "odd"},
                },
                "data": {"i": str(i)},
            },
        )
    items, version = await kube.list(CONFIG_MAP, namespace, label_selector="parity=even")
    assert sorted(o["metadata"]["name"] for o in items) == ["cm-0", "cm-2", "cm-4"]
    assert all(o["kind"] == "ConfigMap" and o["apiVersion"] == "v1" for o in items)
    assert version.isdigit()

    # Pagination is followed to the end.
    paged, _ = await kube.list(CONFIG_MAP, namespace, label_selector="parity", page_size=2)
    assert len(paged) == 5

    patched = await kube.patch_merge(
        CONFIG_MAP, "cm-1", {"data": {"extra": "yes"}}, namespace=namespace
    )
    assert patched["data"] == {"i": "1", "extra": "yes"}

    assert await kube.delete(CONFIG_MAP, "cm-1", namespace) is True
    assert await kube.delete(CONFIG_MAP, "cm-1", namespace) is False
    assert await kube.get(CONFIG_MAP, "cm-1", namespace) is None

    # Cluster-scoped objects, all namespaces.
    ns = await kube.get(NAMESPACE, namespace)
    assert ns is not None
    assert ns["metadata"]["name"] == namespace
    everywhere, _ = await kube.list(CONFIG_MAP, label_selector="parity=odd")
    assert {o["metadata"]["namespace"] for o in everywhere} >= {namespace}


async def test_errors_are_mapped_with_the_apiservers_words(
    kube: Kube,  # noqa: F811
    gadget_crd: Resource,  # noqa: F811
    namespace: str,
) -> None:
    with pytest.raises(NotFound) as not_found:
        await kube.patch_merge(CONFIG_MAP, "nope", {"data": {}}, namespace=namespace)
    assert f"/api/v1/namespaces/{namespace}/configmaps/nope" in str(not_found.value)
    assert not_found.value.status == 404

    body = {"metadata": {"name": "dup", "namespace": namespace}, "data": {"a": "1"}}
    await kube.create(CONFIG_MAP, body)
    with pytest.raises(AlreadyExists):
        await kube.create(CONFIG_MAP, body)

    with pytest.raises(Invalid) as invalid:
        await kube.apply(
            gadget_crd,
            {"metadata": {"name": "bad", "namespace": namespace}, "spec": {"size": 0}},
        )
    assert any("spec.size" in cause for cause in invalid.value.causes)
    assert "spec.size" in str(invalid.value)

    stale = await kube.get(CONFIG_MAP, "dup", namespace)
    assert stale is not None
    await kube.patch_merge(CONFIG_MAP, "dup", {"data": {"a": "2"}}, namespace=namespace)
    stale["data"] = {"a": "3"}
    with pytest.raises(Conflict):
        await kube.replace(CONFIG_MAP, stale)


async def test_a_stale_update_is_retried_after_a_fresh_read(
    kube: Kube,  # noqa: F811
    namespace: str,
    caplog: pytest.LogCaptureFixture,
) -> None:
    await kube.create(
        CONFIG_MAP, {"metadata": {"name": "counter", "namespace": namespace}, "data": {"n": "0"}}
    )
    interfered = False

    async def increment() -> dict[str, object]:
        nonlocal interfered
        current = await kube.get(CONFIG_MAP, "counter", namespace)
        assert current is not None
        if not interfered:  # another writer sneaks in between our read and write
            interfered = True
            await kube.patch_merge(
                CONFIG_MAP, "counter", {"data": {"n": "10"}}, namespace=namespace
            )
        current["data"]["n"] = str(int(current["data"]["n"]) + 1)
        return await kube.replace(CONFIG_MAP, current)

    clock = ManualClock(autoadvance=True)
    result = await with_retries(increment, rng=random.Random(1), clock=clock, conflicts=True)
    assert result["data"] == {"n": "11"}  # the retry read the other writer's value
    assert len(clock.sleeps) == 1
    assert "attempt #1/4 failed; will retry in" in caplog.text
    assert "409 Conflict" in caplog.text


async def test_connection_refused_is_a_transport_error() -> None:
    text = _kubeconfig_text(
        server="https://127.0.0.1:1",  # nothing listens on port 1
        ca=b"", cert=b"", key=b"",
    )  # fmt: skip
    async with await Kube.from_kubeconfig_text(text, name="refused") as dead:
        with pytest.raises(TransportError) as err:
            await dead.get(CONFIG_MAP, "x", "default")
    assert "GET /api/v1/namespaces/default/configmaps/x" in str(err.value)


def _kubeconfig_text(*, server: str, ca: bytes, cert: bytes, key: bytes) -> str:
    def b64(data: bytes) -> str:
        return base64.b64encode(data).decode()

    cluster = f"    server: {server}\n"
    if ca:
        cluster += f"    certificate-authority-data: {b64(ca)}\n"
    user = (
        "    token: not-a-real-token\n"
        if not cert
        else (f"    client-certificate-data: {b64(cert)}\n    client-key-data: {b64(key)}\n")
    )
    return (
        "apiVersion: v1\nkind: Config\ncurrent-context: t\n"
        f"clusters:\n- name: c\n  cluster:\n{cluster}"
        f"users:\n- name: u\n  user:\n{user}"
        "contexts:\n- name: t\n  context: {cluster: c, user: u}\n"
    )


async def test_kubeconfig_from_a_capi_style_secret(
    kube: Kube,  # noqa: F811
    service_cluster: ServiceCluster,
    namespace: str,
) -> None:
    pki = service_cluster.pki
    text = _kubeconfig_text(
        server=service_cluster.server_url,
        ca=pki.ca.cert.read_bytes(),
        cert=pki.admin.cert.read_bytes(),
        key=pki.admin.key.read_bytes(),
    )
    await kube.create(
        SECRET,
        {
            "metadata": {"name": "tenant-kubeconfig", "namespace": namespace},
            "data": {"value": base64.b64encode(text.encode()).decode()},
        },
    )
    secret = await kube.get(SECRET, "tenant-kubeconfig", namespace)
    assert secret is not None
    tenant_text = kubeconfig_text_from_secret(secret)
    async with await Kube.from_kubeconfig_text(tenant_text, name="secret") as tenant:
        assert tenant.server == service_cluster.server_url
        assert await tenant.get(NAMESPACE, namespace) is not None

    secret["data"] = {"other": "eA=="}
    with pytest.raises(
        KubeconfigError, match=rf"Secret {namespace}/tenant-kubeconfig has no key 'value'"
    ):
        kubeconfig_text_from_secret(secret)

    broken = text.replace(service_cluster.server_url, "not-a-url")
    with pytest.raises(KubeconfigError, match=r"clusters\[0\]\.cluster\.server must be an https"):
        await Kube.from_kubeconfig_text(broken, name="secret t/x")

    # A CA that isn't a certificate: caught when the client is built, not at first use.
    bad_ca = _kubeconfig_text(
        server=service_cluster.server_url,
        ca=b"-----BEGIN CERTIFICATE-----\nnot base64 der\n-----END CERTIFICATE-----\n",
        cert=pki.admin.cert.read_bytes(),
        key=pki.admin.key.read_bytes(),
    )
    with pytest.raises(KubeconfigError, match="CA certificate or the client"):
        await Kube.from_kubeconfig_text(bad_ca, name="bad ca")


def _csr_pem(node: str) -> bytes:
    key = ec.generate_private_key(ec.SECP256R1())
    request = (
        x509.CertificateSigningRequestBuilder()
        .subject_name(
            x509.Name(
                [
                    x509.NameAttribute(NameOID.ORGANIZATION_NAME, "system:nodes"),
                    x509.NameAttribute(NameOID.COMMON_NAME, f"system:node:{node}"),
                ]
            )
        )
        .sign(key, hashes.SHA256())
    )
    return request.public_bytes(serialization.Encoding.PEM)


def _self_signed_pem(node: str) -> bytes:
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, f"system:node:{node}")])
    now = dt.datetime.now(dt.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=1))
        .not_valid_after(now + dt.timedelta(hours=1))
        .sign(key, hashes.SHA256())
    )
    return cert.public_bytes(serialization.Encoding.PEM)


async def _new_csr(kube: Kube, name: str, *, signer: str = "vpnctl.io/node") -> KubeObject:  # noqa: F811
    return await kube.create(
        CERTIFICATE_SIGNING_REQUEST,
        {
            "metadata": {"name": name},
            "spec": {
                "request": base64.b64encode(_csr_pem("n1")).decode(),
                "signerName": signer,
                "usages": ["digital signature", "client auth"],
            },
        },
    )


async def test_csr_approve_deny_and_sign(kube: Kube) -> None:  # noqa: F811
    names = [unique("csr-a"), unique("csr-d")]
    created = [await _new_csr(kube, name) for name in names]
    approved_name = names[0]
    try:
        approved = await kube.approve_csr(
            created[0],
            signer="vpnctl.io/node",
            reason="MachineMatches",
            message="node n1 is Machine m1's nodeRef",
        )
        conditions = approved["status"]["conditions"]
        assert [(c["type"], c["status"], c["reason"]) for c in conditions] == [
            ("Approved", "True", "MachineMatches")
        ]
        # Approving again changes nothing.
        again = await kube.approve_csr(
            approved, signer="vpnctl.io/node", reason="MachineMatches", message="again"
        )
        assert len(again["status"]["conditions"]) == 1

        certificate = _self_signed_pem("n1")
        signed = await kube.sign_csr(approved, signer="vpnctl.io/node", certificate_pem=certificate)
        assert base64.b64decode(signed["status"]["certificate"]) == certificate
        read = await kube.get(CERTIFICATE_SIGNING_REQUEST, approved_name)
        assert read is not None
        assert base64.b64decode(read["status"]["certificate"]) == certificate

        denied = await kube.deny_csr(
            created[1],
            signer="vpnctl.io/node",
            reason="NoSuchMachine",
            message="no Machine has nodeRef n1",
        )
        assert [(c["type"], c["message"]) for c in denied["status"]["conditions"]] == [
            ("Denied", "no Machine has nodeRef n1")
        ]
        gone = dict(created[0], metadata={**created[0]["metadata"], "name": unique("absent")})
        with pytest.raises(NotFound):
            await kube.approve_csr(gone, signer="vpnctl.io/node", reason="X", message="y")
    finally:
        for name in names:
            await kube.delete(CERTIFICATE_SIGNING_REQUEST, name)


async def test_csr_recreated_under_the_same_name_is_not_approved_or_signed(
    kube: Kube,  # noqa: F811
) -> None:
    """Issue 9, item 5: approval and signing are bound to the decided object, so a CSR
    deleted and re-created under the same name (here a kube-apiserver-client request)
    between the decision and the approval gets a Conflict, not our approval."""
    name = unique("csr-swap")
    decided = await _new_csr(kube, name)
    try:
        await kube.delete(CERTIFICATE_SIGNING_REQUEST, name)
        swapped = await _new_csr(kube, name, signer="kubernetes.io/kube-apiserver-client")
        with pytest.raises(Conflict):
            await kube.approve_csr(
                decided, signer="vpnctl.io/node", reason="NodeHasMachine", message="m"
            )
        with pytest.raises(ValueError, match=r"not 'vpnctl\.io/node'"):
            await kube.approve_csr(
                swapped, signer="vpnctl.io/node", reason="NodeHasMachine", message="m"
            )
        read = await kube.get(CERTIFICATE_SIGNING_REQUEST, name)
        assert read is not None
        assert not (read.get("status") or {}).get("conditions")

        # Replaced after the approval: the certificate does not land on the new one.
        await kube.delete(CERTIFICATE_SIGNING_REQUEST, name)
        ours = await _new_csr(kube, name)
        approved = await kube.approve_csr(
            ours, signer="vpnctl.io/node", reason="NodeHasMachine", message="m"
        )
        await kube.delete(CERTIFICATE_SIGNING_REQUEST, name)
        other = await _new_csr(kube, name)
        await kube.approve_csr(other, signer="vpnctl.io/node", reason="Someone", message="else")
        with pytest.raises((Conflict, Invalid)):
            await kube.sign_csr(
                approved, signer="vpnctl.io/node", certificate_pem=_self_signed_pem("n1")
            )
        read = await kube.get(CERTIFICATE_SIGNING_REQUEST, name)
        assert read is not None
        assert not (read.get("status") or {}).get("certificate")
    finally:
        await kube.delete(CERTIFICATE_SIGNING_REQUEST, name)
