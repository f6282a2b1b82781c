"""Names, labels and owner references of everything vpnctl creates for a tenant.

One place decides them, so the builders, the kube layer's watches (label selectors) and
the cleanup agree. Names are bounded to 63 characters (a DNS-1123 label, what Services
need) by cutting the cluster name and adding a short hash, so two long cluster names
never map to the same object.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

from vpnctl.api import TUNNEL_API_VERSION, TUNNEL_KIND, OwnerReference

MANAGED_BY_LABEL = "app.kubernetes.io/managed-by"
MANAGED_BY = "vpnctl"
NAME_LABEL = "app.kubernetes.io/name"
PRODUCT_NAME = "vpnctl"  # NAME_LABEL's value on everything vpnctl builds
COMPONENT_LABEL = "app.kubernetes.io/component"
CLUSTER_LABEL = "vpnctl.io/cluster"
# On every object we build: a digest of what we last wanted (see diff.py).
DESIRED_HASH_ANNOTATION = "vpnctl.io/desired-hash"
# On the server pod template: a digest of the role config, which the server reads only at
# start, so a change rolls the pods. Desired state and CRL are re-read live and excluded.
CONFIG_HASH_ANNOTATION = "vpnctl.io/config-hash"

# Common names of vpnctl's own certificates in a tenant's PKI (the apiserver sidecar's is
# APISERVER_COMMON_NAME in reconcile/tenant_spec.py). Every name starting with
# RESERVED_NAME_PREFIX is kept for vpnctl: the CSR signer never gives one to a node.
SERVER_COMMON_NAME = "vpnctl-server"
RESERVED_NAME_PREFIX = "vpnctl-"

COMPONENT_SERVER = "server"
COMPONENT_PKI = "pki"
COMPONENT_APISERVER = "apiserver-client"
COMPONENT_NODE_AGENT = "node-agent"

_MAX_NAME = 63


def bounded_name(base: str, suffix: str) -> str:
    """`<base>-<suffix>`, or a cut base plus an 8-hex digest of it when that is too long."""
    name = f"{base}-{suffix}"
    if len(name) <= _MAX_NAME:
        return name
    digest = hashlib.sha256(base.encode()).hexdigest()[:8]
    keep = _MAX_NAME - len(suffix) - len(digest) - 2
    return f"{base[:keep].rstrip('-.')}-{digest}-{suffix}"


@dataclass(frozen=True, kw_only=True)
class TenantNames:
    """Names of a tenant's objects in its namespace of the service cluster."""

    ca_secret: str
    server_secret: str
    tls_crypt_secret: str
    apiserver_secret: str
    server_config: str  # ConfigMap: server.json, desired.json, crl.pem
    apiserver_config: str  # ConfigMap: apiserver.json
    revocations: str  # ConfigMap: revocations.json, vpnctl's record (reconcile/revocation_book.py)
    deployment: str
    service: str
    cluster_name: str = ""

    def apiserver_slot_secret(self, index: int) -> str:
        """The Secret of apiserver slot INDEX (apiserver_slots.py); slot 0's is the one
        the single apiserver client always had."""
        if index == 0:
            return self.apiserver_secret
        return bounded_name(self.cluster_name, f"vpn-apiserver-{index}-tls")

    @classmethod
    def for_cluster(cls, cluster_name: str) -> TenantNames:
        return cls(
            ca_secret=bounded_name(cluster_name, "vpn-ca"),
            server_secret=bounded_name(cluster_name, "vpn-server-tls"),
            tls_crypt_secret=bounded_name(cluster_name, "vpn-tls-crypt"),
            apiserver_secret=bounded_name(cluster_name, "vpn-apiserver-tls"),
            server_config=bounded_name(cluster_name, "vpn-server"),
            apiserver_config=bounded_name(cluster_name, "vpn-apiserver"),
            revocations=bounded_name(cluster_name, "vpn-revocations"),
            deployment=bounded_name(cluster_name, "vpn-server"),
            service=bounded_name(cluster_name, "vpn"),
            cluster_name=cluster_name,
        )


# Objects in each tenant cluster (one set per cluster, so fixed names).
NODE_AGENT_NAME = "vpnctl-node-agent"


def labels(*, cluster_name: str, component: str) -> dict[str, str]:
    return {
        COMPONENT_LABEL: component,
        MANAGED_BY_LABEL: MANAGED_BY,
        NAME_LABEL: PRODUCT_NAME,
        CLUSTER_LABEL: cluster_name,
    }


def selector_labels(*, cluster_name: str, component: str) -> dict[str, str]:
    """The immutable subset used in Deployment/DaemonSet selectors and Services."""
    return {COMPONENT_LABEL: component, CLUSTER_LABEL: cluster_name}


def tunnel_owner_reference(*, tunnel_name: str, tunnel_uid: str) -> OwnerReference:
    """Owner reference to the Tunnel: deleting it (or its Cluster) deletes all of ours."""
    if not tunnel_uid:
        raise ValueError(
            f"Tunnel {tunnel_name!r} has no metadata.uid; build objects from a Tunnel read "
            "from the apiserver"
        )
    return {
        "apiVersion": TUNNEL_API_VERSION,
        "kind": TUNNEL_KIND,
        "name": tunnel_name,
        "uid": tunnel_uid,
        "controller": True,
        "blockOwnerDeletion": True,
    }
