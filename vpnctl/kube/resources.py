"""The resource types vpnctl touches, as data: enough to build every REST path.

One generic mechanism (a path and a JSON body) serves every kind, ours, CAPI's and the
built-in ones alike, so there is no per-kind client code to keep in step and nothing of
the client library's model classes reaches the layers above.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Protocol, TypedDict
from urllib.parse import quote

from vpnctl.api import KubeObject as KubeObject  # one definition, re-exported

# A Kubernetes object as the apiserver sends it: JSON, camelCase keys.


@dataclass(frozen=True)
class Resource:
    group: str  # "" for the core API
    version: str
    plural: str
    namespaced: bool
    kind: str

    @property
    def api_version(self) -> str:
        return f"{self.group}/{self.version}" if self.group else self.version

    @property
    def label(self) -> str:
        """``plural.group`` (kubectl's spelling), e.g. ``tunnels.vpnctl.io``, ``secrets``."""
        return f"{self.plural}.{self.group}" if self.group else self.plural

    def path(
        self,
        *,
        namespace: str | None = None,
        name: str | None = None,
        subresource: str | None = None,
    ) -> str:
        """The REST path. A namespaced resource without a namespace means "all namespaces"
        (lists and watches only)."""
        if namespace is not None and not self.namespaced:
            raise ValueError(f"{self.label} is cluster-scoped; got namespace {namespace!r}")
        if subresource is not None and name is None:
            raise ValueError(f"{self.label}: subresource {subresource!r} needs an object name")
        if name is not None and self.namespaced and namespace is None:
            raise ValueError(f"{self.label} {name!r} is namespaced; pass its namespace")
        parts = ["/api", self.version] if not self.group else ["/apis", self.group, self.version]
        if namespace is not None:
            parts += ["namespaces", quote(namespace, safe="")]
        parts.append(self.plural)
        if name is not None:
            if not name:
                raise ValueError(f"{self.label}: empty object name")
            parts.append(quote(name, safe=""))
        if subresource is not None:
            parts.append(subresource)
        return "/".join(parts)

    def describe(self, name: str, namespace: str | None = None) -> str:
        """``tunnels.vpnctl.io t-1/foo`` for messages."""
        return f"{self.label} {namespace}/{name}" if namespace else f"{self.label} {name}"


CLUSTER = Resource("cluster.x-k8s.io", "v1beta1", "clusters", True, "Cluster")
MACHINE = Resource("cluster.x-k8s.io", "v1beta1", "machines", True, "Machine")
TUNNEL = Resource("vpnctl.io", "v1alpha1", "tunnels", True, "Tunnel")

NAMESPACE = Resource("", "v1", "namespaces", False, "Namespace")
NODE = Resource("", "v1", "nodes", False, "Node")
SECRET = Resource("", "v1", "secrets", True, "Secret")
CONFIG_MAP = Resource("", "v1", "configmaps", True, "ConfigMap")
SERVICE = Resource("", "v1", "services", True, "Service")
SERVICE_ACCOUNT = Resource("", "v1", "serviceaccounts", True, "ServiceAccount")
EVENT = Resource("", "v1", "events", True, "Event")
POD = Resource("", "v1", "pods", True, "Pod")

DEPLOYMENT = Resource("apps", "v1", "deployments", True, "Deployment")
DAEMON_SET = Resource("apps", "v1", "daemonsets", True, "DaemonSet")
REPLICA_SET = Resource("apps", "v1", "replicasets", True, "ReplicaSet")

CLUSTER_ROLE = Resource("rbac.authorization.k8s.io", "v1", "clusterroles", False, "ClusterRole")
CLUSTER_ROLE_BINDING = Resource(
    "rbac.authorization.k8s.io", "v1", "clusterrolebindings", False, "ClusterRoleBinding"
)
ROLE = Resource("rbac.authorization.k8s.io", "v1", "roles", True, "Role")
ROLE_BINDING = Resource("rbac.authorization.k8s.io", "v1", "rolebindings", True, "RoleBinding")

NETWORK_POLICY = Resource("networking.k8s.io", "v1", "networkpolicies", True, "NetworkPolicy")
SERVICE_CIDR = Resource("networking.k8s.io", "v1", "servicecidrs", False, "ServiceCIDR")

LEASE = Resource("coordination.k8s.io", "v1", "leases", True, "Lease")
CERTIFICATE_SIGNING_REQUEST = Resource(
    "certificates.k8s.io", "v1", "certificatesigningrequests", False, "CertificateSigningRequest"
)
CUSTOM_RESOURCE_DEFINITION = Resource(
    "apiextensions.k8s.io", "v1", "customresourcedefinitions", False, "CustomResourceDefinition"
)


def object_key(obj: KubeObject) -> tuple[str, str]:
    """(namespace, name) of an object; namespace is "" for cluster-scoped ones."""
    meta = obj.get("metadata") or {}
    return str(meta.get("namespace") or ""), str(meta.get("name") or "")


class WatchEvent(TypedDict):
    """One line of a watch stream: ADDED, MODIFIED, DELETED, BOOKMARK or ERROR (whose
    object is a metav1.Status)."""

    type: str
    object: KubeObject


class ObjectApi(Protocol):
    """The part of ``Kube`` that leader election and event recording use (fakeable)."""

    async def get(
        self, res: Resource, name: str, namespace: str | None = None
    ) -> KubeObject | None: ...

    async def create(self, res: Resource, body: dict[str, Any]) -> KubeObject: ...

    async def replace(
        self, res: Resource, body: dict[str, Any], *, subresource: str | None = None
    ) -> KubeObject: ...
