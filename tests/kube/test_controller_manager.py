"""What we rely on kube-controller-manager for: garbage collection through owner
references, and signing approved CertificateSigningRequests with the cluster CA."""

from __future__ import annotations

import base64
import json
import uuid

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from tests.support.polling import aeventually
from vpnctl.testenv import KubectlError, ServiceCluster

pytestmark = pytest.mark.kube


async def _gone(cluster: ServiceCluster, *args: str) -> bool:
    try:
        await cluster.kubectl("get", *args, "-o", "name")
    except KubectlError as exc:
        if "NotFound" in exc.stderr:
            return True
        raise
    return False


async def test_owner_reference_garbage_collection(
    service_cluster: ServiceCluster, namespace: str
) -> None:
    await service_cluster.kubectl("create", "configmap", "owner", "-n", namespace)
    uid = await service_cluster.kubectl(
        "get", "configmap", "owner", "-n", namespace, "-o", "jsonpath={.metadata.uid}"
    )
    dependent = {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": {
            "name": "dependent",
            "namespace": namespace,
            "ownerReferences": [
                {"apiVersion": "v1", "kind": "ConfigMap", "name": "owner", "uid": uid}
            ],
        },
        "data": {"k": "v"},
    }
    await service_cluster.kubectl("create", "-f", "-", input=json.dumps(dependent))
    await service_cluster.kubectl("delete", "configmap", "owner", "-n", namespace)
    await aeventually(
        lambda: _gone(service_cluster, "configmap", "dependent", "-n", namespace),
        what="the dependent ConfigMap garbage-collected",
        timeout=90,
        interval=0.5,
    )


async def test_namespace_deletion_completes(service_cluster: ServiceCluster) -> None:
    doomed = f"doomed-{uuid.uuid4().hex[:6]}"
    await service_cluster.kubectl("create", "namespace", doomed)
    await service_cluster.kubectl("create", "configmap", "x", "-n", doomed)
    await service_cluster.kubectl("delete", "namespace", doomed, "--wait=false")
    await aeventually(
        lambda: _gone(service_cluster, "namespace", doomed),
        what=f"namespace {doomed} finalized",
        timeout=90,
        interval=0.5,
    )


async def test_approved_client_csr_is_signed_by_cluster_ca(
    service_cluster: ServiceCluster,
) -> None:
    key = ec.generate_private_key(ec.SECP256R1())
    csr = (
        x509.CertificateSigningRequestBuilder()
        .subject_name(
            x509.Name(
                [
                    x509.NameAttribute(NameOID.ORGANIZATION_NAME, "vpnctl-testers"),
                    x509.NameAttribute(NameOID.COMMON_NAME, "csr-tester"),
                ]
            )
        )
        .sign(key, hashes.SHA256())
    )
    name = "csr-tester"
    obj = {
        "apiVersion": "certificates.k8s.io/v1",
        "kind": "CertificateSigningRequest",
        "metadata": {"name": name},
        "spec": {
            "request": base64.b64encode(csr.public_bytes(serialization.Encoding.PEM)).decode(),
            "signerName": "kubernetes.io/kube-apiserver-client",
            "usages": ["client auth"],
            "expirationSeconds": 600,
        },
    }
    await service_cluster.kubectl("create", "-f", "-", input=json.dumps(obj))
    try:
        await service_cluster.kubectl("certificate", "approve", name)
        issued = await aeventually(
            lambda: service_cluster.kubectl(
                "get", "csr", name, "-o", "jsonpath={.status.certificate}"
            ),
            what="kube-controller-manager to sign the approved CSR",
            timeout=60,
            interval=0.3,
        )
        cert = x509.load_pem_x509_certificate(base64.b64decode(issued))
        ca = x509.load_pem_x509_certificate(service_cluster.ca_pem)
        cert.verify_directly_issued_by(ca)
        assert cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value == "csr-tester"
    finally:
        await service_cluster.kubectl("delete", "csr", name, check=False)
