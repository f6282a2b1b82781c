"""Desired Kubernetes objects in the tenant's namespace of the service cluster, as dicts.

Pure builders: the same inputs give the same dict, with sorted keys where order is free,
so the kube layer can apply them with server-side apply and `diff.needs_update` can tell
when there is nothing to do. Every object carries our labels, an owner reference to the
Tunnel (so deleting the Tunnel, or the Cluster that owns it, deletes them) and the
desired-hash annotation.

Key material enters only as bytes the caller got from `certs`, and leaves only in a
Secret's `data`; no builder logs or hashes it.

Choices worth knowing:

- The server pod gets the CA *certificate* only; the CA key stays in its own Secret that
  only the controller reads.
- The server's files come through one projected volume, so the role config is at
  /etc/vpnctl/server.json and every file the agent reads sits beside it.
- `/dev/net/tun` and every container's securityContext: `pod_security.py`.
- IPv4 forwarding in the pod's namespace: Linux copies it from the host for new network
  namespaces, and every Kubernetes node forwards, so nothing is set here by default. A
  cluster that needs it explicitly lists `net.ipv4.ip_forward` in
  `Settings.server_pod_sysctls` (and allows it as an unsafe sysctl in the kubelet).
- The Service uses `sessionAffinity: ClientIP`: a UDP "connection" is a flow of
  datagrams, and with more than one replica every packet of a client must reach the
  same server.
"""

from __future__ import annotations

import base64
from collections.abc import Mapping
from typing import Any

from vpnctl.api import KubeObject
from vpnctl.reconcile.agentdocs import ApiserverPaths, ServerPaths, canonical_json
from vpnctl.reconcile.diff import digest, stamp
from vpnctl.reconcile.names import (
    COMPONENT_APISERVER,
    COMPONENT_PKI,
    COMPONENT_SERVER,
    CONFIG_HASH_ANNOTATION,
    TenantNames,
    labels,
    selector_labels,
    tunnel_owner_reference,
)
from vpnctl.reconcile.pod_security import agent_container, container_security, tun_parts
from vpnctl.reconcile.settings import Settings
from vpnctl.reconcile.tenant_spec import TenantSpec

# Secret keys, shared with the kube layer that reads them back.
TLS_CERT = "tls.crt"
TLS_KEY = "tls.key"
CA_CERT = "ca.crt"
TLS_CRYPT_V2_SERVER = "tls-crypt-v2-server.key"
TLS_CRYPT_V2_CLIENT = "tls-crypt-v2-client.key"
# Server ConfigMap keys.
SERVER_JSON = "server.json"
DESIRED_JSON = "desired.json"
CRL_PEM = "crl.pem"
APISERVER_JSON = "apiserver.json"

HEALTH_PORT_NAME = "http-metrics"
VPN_PORT_NAME = "vpn"
SERVER_CONTAINER = "openvpn-server"
APISERVER_CONTAINER = "vpnctl-apiserver"
_KEY_MODE = 0o400
_FILE_MODE = 0o444


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def _metadata(
    *, tenant: TenantSpec, name: str, component: str, annotations: Mapping[str, str] = {}
) -> dict[str, Any]:
    return {
        "name": name,
        "namespace": tenant.namespace,
        "labels": labels(cluster_name=tenant.cluster_name, component=component),
        "annotations": dict(sorted(annotations.items())),
        "ownerReferences": [
            tunnel_owner_reference(tunnel_name=tenant.tunnel_name, tunnel_uid=tenant.tunnel_uid)
        ],
    }


def _names(tenant: TenantSpec) -> TenantNames:
    return TenantNames.for_cluster(tenant.cluster_name)


# --- PKI Secrets --------------------------------------------------------------------------


def _secret(
    *,
    tenant: TenantSpec,
    name: str,
    kind: str,
    data: Mapping[str, bytes],
    component: str,
    annotations: Mapping[str, str] = {},
) -> KubeObject:
    return stamp(
        {
            "apiVersion": "v1",
            "kind": "Secret",
            "metadata": _metadata(
                tenant=tenant, name=name, component=component, annotations=annotations
            ),
            "type": kind,
            "data": {k: _b64(v) for k, v in sorted(data.items())},
        }
    )


def ca_secret(*, tenant: TenantSpec, cert_pem: bytes, key_pem: bytes) -> KubeObject:
    """The tenant's CA. Only the controller reads it; it signs and revokes."""
    return _secret(
        tenant=tenant,
        name=_names(tenant).ca_secret,
        kind="kubernetes.io/tls",
        data={TLS_CERT: cert_pem, TLS_KEY: key_pem},
        component=COMPONENT_PKI,
    )


def _tls_secret(
    tenant: TenantSpec,
    name: str,
    component: str,
    pems: tuple[bytes, bytes, bytes],
    tls_crypt_v2: tuple[str, bytes],
    annotations: Mapping[str, str] = {},
) -> KubeObject:
    """A `kubernetes.io/tls` Secret: PEMS (certificate, key, CA) and one tls-crypt-v2 key
    (TLS_CRYPT_V2 is its data key and its bytes)."""
    cert_pem, key_pem, ca_pem = pems
    tc_field, tc_key = tls_crypt_v2
    return _secret(
        tenant=tenant,
        name=name,
        kind="kubernetes.io/tls",
        data={TLS_CERT: cert_pem, TLS_KEY: key_pem, CA_CERT: ca_pem, tc_field: tc_key},
        component=component,
        annotations=annotations,
    )


def server_secret(
    *, tenant: TenantSpec, cert_pem: bytes, key_pem: bytes, ca_pem: bytes, tls_crypt_v2_key: bytes
) -> KubeObject:
    """The server's certificate and key, the CA certificate and the tls-crypt-v2 server key.

    One Secret, so the server pod mounts one thing and a rotation is one write.
    """
    pems = (cert_pem, key_pem, ca_pem)
    tls_crypt = (TLS_CRYPT_V2_SERVER, tls_crypt_v2_key)
    return _tls_secret(tenant, _names(tenant).server_secret, COMPONENT_SERVER, pems, tls_crypt)


def tls_crypt_secret(*, tenant: TenantSpec, server_key: bytes) -> KubeObject:
    """The tls-crypt-v2 server key on its own, for the controller to wrap client keys.

    The server pod reads its copy from the server Secret; this one outlives server
    certificate rotations, and every client key was made from it.
    """
    return _secret(
        tenant=tenant,
        name=_names(tenant).tls_crypt_secret,
        kind="Opaque",
        data={TLS_CRYPT_V2_SERVER: server_key},
        component=COMPONENT_PKI,
    )


def apiserver_client_secret(
    *,
    tenant: TenantSpec,
    cert_pem: bytes,
    key_pem: bytes,
    ca_pem: bytes,
    tls_crypt_v2_client_key: bytes,
    slot: int = 0,
    holder_uid: str | None = None,
) -> KubeObject:
    """The apiserver sidecar's client certificate, key, CA and tls-crypt-v2 client key:
    slot 0's, or apiserver slot SLOT's (apiserver_slots.py), issued for the pod with uid
    HOLDER_UID (kept on the Secret: when the slot passes to another pod, the controller
    issues a new certificate)."""
    pems = (cert_pem, key_pem, ca_pem)
    tls_crypt = (TLS_CRYPT_V2_CLIENT, tls_crypt_v2_client_key)
    annotations = {} if holder_uid is None else {SLOT_HOLDER_ANNOTATION: holder_uid}
    return _tls_secret(
        tenant,
        _names(tenant).apiserver_slot_secret(slot),
        COMPONENT_APISERVER,
        pems,
        tls_crypt,
        annotations,
    )


# On an apiserver slot's Secret: the uid of the pod its certificate was issued for.
SLOT_HOLDER_ANNOTATION = "vpnctl.io/apiserver-pod-uid"


# --- ConfigMaps ---------------------------------------------------------------------------


def server_config_map(
    *,
    tenant: TenantSpec,
    role_config: Mapping[str, Any],
    desired: Mapping[str, Any],
    crl_pem: bytes,
) -> KubeObject:
    """server.json (read at start), desired.json and crl.pem (both re-read live)."""
    return stamp(
        {
            "apiVersion": "v1",
            "kind": "ConfigMap",
            "metadata": _metadata(
                tenant=tenant, name=_names(tenant).server_config, component=COMPONENT_SERVER
            ),
            "data": {
                CRL_PEM: crl_pem.decode("ascii"),
                DESIRED_JSON: canonical_json(desired),
                SERVER_JSON: canonical_json(role_config),
            },
        }
    )


def apiserver_config_map(*, tenant: TenantSpec, role_config: Mapping[str, Any]) -> KubeObject:
    return stamp(
        {
            "apiVersion": "v1",
            "kind": "ConfigMap",
            "metadata": _metadata(
                tenant=tenant, name=_names(tenant).apiserver_config, component=COMPONENT_APISERVER
            ),
            "data": {APISERVER_JSON: canonical_json(role_config)},
        }
    )


# --- pod parts shared by the server and the apiserver sidecar ------------------------------


def _probe(path: str, port_name: str, *, period: int = 5, failures: int = 3) -> dict[str, Any]:
    return {
        "failureThreshold": failures,
        "httpGet": {"path": path, "port": port_name},
        "periodSeconds": period,
        "timeoutSeconds": 2,
    }


def _item(key: str, path: str, *, mode: int = _FILE_MODE) -> dict[str, Any]:
    return {"key": key, "mode": mode, "path": path}


def _relative(path: str, *, under: str) -> str:
    if not path.startswith(under + "/"):
        raise ValueError(f"{path} is not under {under}")
    return path[len(under) + 1 :]


def _tls_secret_source(
    name: str, tls_crypt_v2_key: str, p: type[ServerPaths] | type[ApiserverPaths]
) -> dict[str, Any]:
    """The projected-volume source of a `_tls_secret`: its four files where P reads them."""

    def rel(path: str) -> str:
        return _relative(path, under=p.config_dir)

    items = [
        _item(CA_CERT, rel(p.ca)),
        _item(TLS_CERT, rel(p.cert)),
        _item(TLS_KEY, rel(p.key), mode=_KEY_MODE),
        _item(tls_crypt_v2_key, rel(p.tls_crypt_v2), mode=_KEY_MODE),
    ]
    return {"secret": {"name": name, "items": items}}


# --- the server ---------------------------------------------------------------------------


def _server_projected_volume(tenant: TenantSpec) -> dict[str, Any]:
    names = _names(tenant)
    p = ServerPaths

    def rel(path: str) -> str:
        return _relative(path, under=p.config_dir)

    return {
        "name": "config",
        "projected": {
            "defaultMode": _FILE_MODE,
            "sources": [
                {
                    "configMap": {
                        "name": names.server_config,
                        "items": [
                            _item(CRL_PEM, rel(p.crl_source)),
                            _item(DESIRED_JSON, rel(p.desired)),
                            _item(SERVER_JSON, rel(p.role_config)),
                        ],
                    }
                },
                _tls_secret_source(names.server_secret, TLS_CRYPT_V2_SERVER, p),
            ],
        },
    }


def server_deployment(
    *, tenant: TenantSpec, settings: Settings, role_config: Mapping[str, Any]
) -> KubeObject:
    """The tenant's openvpn server: `python -m agent server`, which runs and drives openvpn.

    The pod template carries a digest of `role_config`, read once at start, so changing
    it rolls the pods; desired.json and crl.pem are re-read live and roll nothing.

    Replicas: each replica is an independent server with the same address plan. The
    apiserver sidecar connects to one of them and each node to one of them, so only
    nodes on the apiserver's replica are reachable; more than one replica is a hot
    standby for faster failover, not load sharing.
    """
    spec = tenant.spec
    names = _names(tenant)
    selector = selector_labels(cluster_name=tenant.cluster_name, component=COMPONENT_SERVER)
    tun_volumes, tun_mounts, tun_limits = tun_parts(settings)
    resources = (spec.resources.server or settings.server_resources).body(extra_limits=tun_limits)
    protocol = spec.transport.protocol.upper()
    container: dict[str, Any] = {
        **agent_container(
            SERVER_CONTAINER, "server", ServerPaths.role_config, settings, image=spec.agent_image
        ),
        "ports": [
            {"containerPort": spec.transport.port, "name": VPN_PORT_NAME, "protocol": protocol},
            {
                "containerPort": settings.server_health_port,
                "name": HEALTH_PORT_NAME,
                "protocol": "TCP",
            },
        ],
        "livenessProbe": _probe("/healthz", HEALTH_PORT_NAME, period=10, failures=3),
        "readinessProbe": _probe("/readyz", HEALTH_PORT_NAME, period=2, failures=2),
        "securityContext": container_security(settings, port=spec.transport.port),
        "volumeMounts": sorted(
            [
                {"mountPath": ServerPaths.config_dir, "name": "config", "readOnly": True},
                {"mountPath": ServerPaths.state_dir, "name": "run"},
                {"mountPath": "/tmp", "name": "tmp"},
                *tun_mounts,
            ],
            key=lambda m: str(m["mountPath"]),
        ),
    }
    if resources:
        container["resources"] = resources
    pod_spec: dict[str, Any] = {
        "automountServiceAccountToken": False,
        "containers": [container],
        "enableServiceLinks": False,
        "terminationGracePeriodSeconds": 10,
        "volumes": sorted(
            [
                _server_projected_volume(tenant),
                {"emptyDir": {"medium": "Memory"}, "name": "run"},
                {"emptyDir": {}, "name": "tmp"},
                *tun_volumes,
            ],
            key=lambda v: str(v["name"]),
        ),
    }
    pod_security: dict[str, Any] = {"seccompProfile": {"type": "RuntimeDefault"}}
    if settings.server_pod_sysctls:
        pod_security["sysctls"] = [{"name": n, "value": v} for n, v in settings.server_pod_sysctls]
    pod_spec["securityContext"] = pod_security
    if settings.image_pull_secrets:
        pod_spec["imagePullSecrets"] = [{"name": n} for n in settings.image_pull_secrets]
    template_labels = labels(cluster_name=tenant.cluster_name, component=COMPONENT_SERVER)
    return stamp(
        {
            "apiVersion": "apps/v1",
            "kind": "Deployment",
            "metadata": _metadata(tenant=tenant, name=names.deployment, component=COMPONENT_SERVER),
            "spec": {
                "replicas": spec.replicas,
                "selector": {"matchLabels": selector},
                # Start the new server before stopping the old: clients reconnect to it.
                "strategy": {
                    "rollingUpdate": {"maxSurge": 1, "maxUnavailable": 0},
                    "type": "RollingUpdate",
                },
                "template": {
                    "metadata": {
                        "annotations": {CONFIG_HASH_ANNOTATION: digest(role_config)},
                        "labels": template_labels,
                    },
                    "spec": pod_spec,
                },
            },
        }
    )


def server_service(*, tenant: TenantSpec) -> KubeObject:
    """How nodes reach the server: type, annotations and protocol from spec.expose."""
    spec = tenant.spec
    names = _names(tenant)
    return stamp(
        {
            "apiVersion": "v1",
            "kind": "Service",
            "metadata": _metadata(
                tenant=tenant,
                name=names.service,
                component=COMPONENT_SERVER,
                annotations=dict(spec.expose.annotations),
            ),
            "spec": {
                "ports": [
                    {
                        "name": VPN_PORT_NAME,
                        "port": spec.transport.port,
                        "protocol": spec.transport.protocol.upper(),
                        "targetPort": VPN_PORT_NAME,
                    }
                ],
                "selector": selector_labels(
                    cluster_name=tenant.cluster_name, component=COMPONENT_SERVER
                ),
                "sessionAffinity": "ClientIP",
                "type": spec.expose.service_type,
            },
        }
    )
