"""The only layer that imports kubernetes_asyncio.

Everything above works on plain JSON dicts (see ``vpnctl.api`` for their TypedDicts)
and on the small pieces here:

- ``Kube`` (``connect()`` for the operator's kubeconfig; ``Kube.from_kubeconfig_text()``
  for a tenant's, parsed strictly, see ``apiconfig``): get, list, watch, create,
  replace, server-side apply (also of status), merge patch, delete, CSR decisions;
  ``Resource`` constants name the kinds.
- ``errors``: the ``ApiError`` tiers (transport/429/409 retryable, the rest permanent)
  and ``with_retries`` for the retryable ones, logged kopf-style.
- ``Watcher`` + ``Store``: list-then-watch that relists on 410 and reports its own
  liveness for ``/healthz``.
- ``LeaderElector``: Lease-based leader election.
- ``record_event``: Events that count repeats instead of piling up.
"""

from vpnctl.kube.apiconfig import kubeconfig_text_from_secret
from vpnctl.kube.client import Kube, connect
from vpnctl.kube.clock import Clock, ManualClock, SystemClock
from vpnctl.kube.errors import (
    AlreadyExists,
    ApiError,
    BadRequest,
    Conflict,
    Forbidden,
    Gone,
    Invalid,
    KubeconfigError,
    NotFound,
    TooManyRequests,
    TransportError,
    Unauthorized,
)
from vpnctl.kube.events import record_event
from vpnctl.kube.lease import LeaderElector
from vpnctl.kube.resources import (
    CERTIFICATE_SIGNING_REQUEST,
    CLUSTER,
    CLUSTER_ROLE,
    CLUSTER_ROLE_BINDING,
    CONFIG_MAP,
    CUSTOM_RESOURCE_DEFINITION,
    DAEMON_SET,
    DEPLOYMENT,
    EVENT,
    LEASE,
    MACHINE,
    NAMESPACE,
    NETWORK_POLICY,
    NODE,
    POD,
    REPLICA_SET,
    ROLE,
    ROLE_BINDING,
    SECRET,
    SERVICE,
    SERVICE_ACCOUNT,
    SERVICE_CIDR,
    TUNNEL,
    KubeObject,
    ObjectApi,
    Resource,
    WatchEvent,
    object_key,
)
from vpnctl.kube.retry import with_retries
from vpnctl.kube.watch import Store, Watcher, WatchMetrics, WatchSource

__all__ = [
    "CERTIFICATE_SIGNING_REQUEST",
    "CLUSTER",
    "CLUSTER_ROLE",
    "CLUSTER_ROLE_BINDING",
    "CONFIG_MAP",
    "CUSTOM_RESOURCE_DEFINITION",
    "DAEMON_SET",
    "DEPLOYMENT",
    "EVENT",
    "LEASE",
    "MACHINE",
    "NAMESPACE",
    "NETWORK_POLICY",
    "NODE",
    "POD",
    "REPLICA_SET",
    "ROLE",
    "ROLE_BINDING",
    "SECRET",
    "SERVICE",
    "SERVICE_ACCOUNT",
    "SERVICE_CIDR",
    "TUNNEL",
    "AlreadyExists",
    "ApiError",
    "BadRequest",
    "Clock",
    "Conflict",
    "Forbidden",
    "Gone",
    "Invalid",
    "Kube",
    "KubeObject",
    "KubeconfigError",
    "LeaderElector",
    "ManualClock",
    "NotFound",
    "ObjectApi",
    "Resource",
    "Store",
    "SystemClock",
    "TooManyRequests",
    "TransportError",
    "Unauthorized",
    "WatchEvent",
    "WatchMetrics",
    "WatchSource",
    "Watcher",
    "connect",
    "kubeconfig_text_from_secret",
    "object_key",
    "record_event",
    "with_retries",
]
