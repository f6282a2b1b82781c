"""Tenant kubeconfigs for tests: a valid one with real key material, and every form that
vpnctl refuses, each applied to otherwise valid credentials.

``REFUSED`` is shared by the parser's, the Secret reader's and the client's tests, so the
three layers are proven against the same list.
"""

from __future__ import annotations

import base64
import copy
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import yaml

import certs

TOKEN = "vpnctl-test-token-4f9a1c0b7e"  # a recognisable literal, to scan messages for


@dataclass(frozen=True)
class Material:
    ca: certs.Issued
    client: certs.Issued


def material(now: datetime | None = None) -> Material:
    now = now or datetime.now(UTC)
    ca = certs.new_ca(common_name="tenant-ca", now=now, lifetime=timedelta(days=1))
    client = certs.new_client_cert(
        ca, common_name="kubernetes-admin", now=now, lifetime=timedelta(days=1)
    )
    return Material(ca=ca, client=client)


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def valid(m: Material, *, server: str = "https://198.18.0.2:6443") -> dict[str, Any]:
    """A kubeconfig as Cluster API writes it: inline CA, client certificate and key."""
    return {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [
            {
                "name": "c",
                "cluster": {"server": server, "certificate-authority-data": b64(m.ca.cert_pem)},
            }
        ],
        "users": [
            {
                "name": "admin",
                "user": {
                    "client-certificate-data": b64(m.client.cert_pem),
                    "client-key-data": b64(m.client.key_pem),
                },
            }
        ],
        "contexts": [{"name": "admin@c", "context": {"cluster": "c", "user": "admin"}}],
        "current-context": "admin@c",
    }


def dump(doc: dict[str, Any]) -> str:
    return yaml.safe_dump(doc, sort_keys=False)


def exec_user(marker: str) -> dict[str, Any]:
    """An exec credential plugin that would create ``marker`` (and then print a valid
    ExecCredential, so a loader that runs it is satisfied)."""
    credential = (
        '{"apiVersion":"client.authentication.k8s.io/v1beta1","kind":"ExecCredential",'
        '"status":{"token":"from-exec"}}'
    )
    return {
        "apiVersion": "client.authentication.k8s.io/v1beta1",
        "command": "/bin/sh",
        "args": ["-c", f"touch {marker}; echo '{credential}'"],
        "interactiveMode": "Never",
    }


Edit = Callable[[dict[str, Any]], None]


def _cluster(key: str, value: Any) -> Edit:
    return lambda doc: doc["clusters"][0]["cluster"].__setitem__(key, value)


def _user(key: str, value: Any) -> Edit:
    return lambda doc: doc["users"][0]["user"].__setitem__(key, value)


def _server(value: str) -> Edit:
    return _cluster("server", value)


# (id, edit, the field the refusal names). Every edit keeps the valid credentials.
REFUSED: list[tuple[str, Edit, str]] = [
    ("exec", _user("exec", exec_user("/nonexistent/marker")), "users[0].user.exec"),
    (
        "auth-provider",
        _user("auth-provider", {"name": "oidc", "config": {"id-token": "x"}}),
        "users[0].user.auth-provider",
    ),
    (
        "tokenFile",
        _user("tokenFile", "/var/run/secrets/kubernetes.io/serviceaccount/token"),
        "users[0].user.tokenFile",
    ),
    (
        "client-certificate",
        _user("client-certificate", "/etc/x.crt"),
        "users[0].user.client-certificate",
    ),
    ("client-key", _user("client-key", "/etc/x.key"), "users[0].user.client-key"),
    (
        "certificate-authority",
        _cluster("certificate-authority", "/etc/ca.crt"),
        "clusters[0].cluster.certificate-authority",
    ),
    (
        "insecure-skip-tls-verify",
        _cluster("insecure-skip-tls-verify", True),
        "clusters[0].cluster.insecure-skip-tls-verify",
    ),
    ("proxy-url", _cluster("proxy-url", "http://198.18.0.9:3128"), "clusters[0].cluster.proxy-url"),
    ("http-server", _server("http://198.18.0.2:6443"), "clusters[0].cluster.server"),
    ("basic-auth", _user("username", "admin"), "users[0].user.username"),
    ("impersonation", _user("as", "system:admin"), "users[0].user.as"),
    (
        "unknown-cluster-key",
        _cluster("tls-server-name", "kubernetes"),
        "clusters[0].cluster.tls-server-name",
    ),
    ("unknown-top-key", lambda doc: doc.__setitem__("plugins", []), "plugins"),
    (
        # a refused form in an entry the current context does not use is refused too
        "exec-in-another-user",
        lambda doc: doc["users"].append({"name": "other", "user": {"exec": exec_user("/x")}}),
        "users[1].user.exec",
    ),
    (
        "current-context-missing-target",
        lambda doc: doc.__setitem__("current-context", "elsewhere"),
        "current-context",
    ),
    (
        "context-names-missing-cluster",
        lambda doc: doc["contexts"][0]["context"].__setitem__("cluster", "gone"),
        "contexts[0].context.cluster",
    ),
    (
        "key-without-certificate",
        lambda doc: doc["users"][0]["user"].pop("client-certificate-data"),
        "users[0].user.client-certificate-data",
    ),
    ("token-with-newline", _user("token", TOKEN + "\nX-Injected: 1"), "users[0].user.token"),
    (
        "too-many-entries",
        lambda doc: doc["users"].extend(
            {"name": f"u{i}", "user": {"token": "t"}} for i in range(40)
        ),
        "users",
    ),
]


def refused(m: Material, edit: Edit) -> dict[str, Any]:
    doc = copy.deepcopy(valid(m))
    edit(doc)
    return doc


def inlined(path: Path) -> str:
    """A kubeconfig file (as the test clusters write it, with PEM file paths) with every
    file inlined as ``*-data``: the form CAPI's Secret holds and vpnctl accepts."""
    doc = yaml.safe_load(path.read_text())
    for entry in doc["clusters"]:
        cluster = entry["cluster"]
        ca = Path(cluster.pop("certificate-authority"))
        cluster["certificate-authority-data"] = b64(ca.read_bytes())
    for entry in doc["users"]:
        user = entry["user"]
        for key in ("client-certificate", "client-key"):
            user[f"{key}-data"] = b64(Path(user.pop(key)).read_bytes())
    return dump(doc)
