"""Pieces the tenant workloads' builders share: the serving certificates they are
given, a TLS Secret, and the locked-down container security context."""

from __future__ import annotations

import base64
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from certs import Issued

Object = dict[str, Any]
NOBODY = 65534


@dataclass(frozen=True, kw_only=True)
class ServingTLS:
    """Serving certificates of the webhook and metrics-server Services, by DNS name,
    and the CA that issued them (the APIService's and webhooks' caBundle)."""

    ca_pem: bytes
    certs: Mapping[str, Issued]

    def __repr__(self) -> str:
        return f"ServingTLS(certs={sorted(self.certs)})"


def restricted(uid: int) -> Object:
    return {
        "runAsNonRoot": True,
        "runAsUser": uid,
        "runAsGroup": uid,
        "allowPrivilegeEscalation": False,
        "readOnlyRootFilesystem": True,
        "capabilities": {"drop": ["ALL"]},
    }


def tls_secret(name: str, namespace: str, issued: Issued) -> Object:
    return {
        "apiVersion": "v1",
        "kind": "Secret",
        "metadata": {"name": name, "namespace": namespace},
        "type": "kubernetes.io/tls",
        "data": {"tls.crt": b64(issued.cert_pem), "tls.key": b64(issued.key_pem)},
    }


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")
