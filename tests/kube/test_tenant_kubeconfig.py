"""The kubeconfig forms vpnctl accepts from a tenant (inline client certificate, literal
token) still make a working client against a real kube-apiserver, and the server sees the
identity the kubeconfig carries: the client configuration built from parsed credentials
(``Kube.from_kubeconfig``) authenticates exactly as the kubeconfig says.
"""

from __future__ import annotations

import base64
from typing import Any

import pytest
import yaml

from vpnctl.kube import SERVICE_ACCOUNT, Kube
from vpnctl.testenv import ServiceCluster

from .kubefix import kube, unique  # noqa: F401

pytestmark = pytest.mark.kube

_REVIEW = "/apis/authentication.k8s.io/v1/selfsubjectreviews"


def _kubeconfig(server: str, ca: bytes, user: dict[str, Any]) -> str:
    return yaml.safe_dump(
        {
            "apiVersion": "v1",
            "kind": "Config",
            "clusters": [
                {
                    "name": "c",
                    "cluster": {
                        "server": server,
                        "certificate-authority-data": base64.b64encode(ca).decode(),
                    },
                }
            ],
            "users": [{"name": "u", "user": user}],
            "contexts": [{"name": "t", "context": {"cluster": "c", "user": "u"}}],
            "current-context": "t",
        }
    )


async def _whoami(text: str) -> str:
    async with await Kube.from_kubeconfig_text(text, name="tenant kubeconfig") as tenant:
        review = await tenant.request(
            "POST",
            _REVIEW,
            body={"apiVersion": "authentication.k8s.io/v1", "kind": "SelfSubjectReview"},
        )
    return str(review["status"]["userInfo"]["username"])


async def test_inline_client_certificate_authenticates(service_cluster: ServiceCluster) -> None:
    pki = service_cluster.pki
    user = {
        "client-certificate-data": base64.b64encode(pki.admin.cert.read_bytes()).decode(),
        "client-key-data": base64.b64encode(pki.admin.key.read_bytes()).decode(),
    }
    text = _kubeconfig(service_cluster.server_url, pki.ca.cert.read_bytes(), user)
    assert await _whoami(text) == "vpnctl-testenv-admin"


async def test_literal_token_authenticates(
    kube: Kube,  # noqa: F811
    service_cluster: ServiceCluster,
    namespace: str,
) -> None:
    name = unique("sa")
    await kube.create(SERVICE_ACCOUNT, {"metadata": {"name": name, "namespace": namespace}})
    request = await kube.request(
        "POST",
        SERVICE_ACCOUNT.path(namespace=namespace, name=name, subresource="token"),
        body={
            "apiVersion": "authentication.k8s.io/v1",
            "kind": "TokenRequest",
            "spec": {"expirationSeconds": 600},
        },
    )
    token = request["status"]["token"]
    text = _kubeconfig(
        service_cluster.server_url, service_cluster.pki.ca.cert.read_bytes(), {"token": token}
    )
    assert await _whoami(text) == f"system:serviceaccount:{namespace}:{name}"
