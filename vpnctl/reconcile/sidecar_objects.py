"""The hosted kube-apiserver's vpnctl sidecar: its container and volumes
(`apiserver_sidecar`), how they are added to the apiserver's pod spec
(`attach_sidecar`), and the server-side apply body for its Deployment
(`sidecar_apply_body`). Split from service_objects.py, which keeps the PKI Secrets,
ConfigMaps, the server Deployment and Service and the pod parts both share."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from vpnctl.reconcile.agentdocs import ApiserverPaths
from vpnctl.reconcile.apiserver_slots import MAX_APISERVER_SLOTS, SLOT_ANNOTATION
from vpnctl.reconcile.diff import digest
from vpnctl.reconcile.names import (
    TenantNames,
)
from vpnctl.reconcile.pod_security import agent_container, container_security, tun_parts

# Secret keys, shared with the kube layer that reads them back.
from vpnctl.reconcile.service_objects import (
    _FILE_MODE,
    _KEY_MODE,
    APISERVER_CONTAINER,
    APISERVER_JSON,
    CA_CERT,
    TLS_CERT,
    TLS_CRYPT_V2_CLIENT,
    TLS_KEY,
    _item,
    _names,
    _probe,
    _relative,
    _tls_secret_source,
)
from vpnctl.reconcile.settings import Settings
from vpnctl.reconcile.tenant_spec import TenantSpec


def _slot_sources(names: TenantNames) -> list[dict[str, Any]]:
    """The apiserver slots (reconcile/apiserver_slots.py) in the sidecar's config volume:
    the pod's own slot number from its annotation (a downward-API file, empty until the
    controller writes it), and every further slot's Secret under `slots/<n>/`, each
    optional, so the pod starts whichever of them exist and scaling never changes the
    pod template."""
    p = ApiserverPaths
    slot_file = _relative(p.slot_file, under=p.config_dir)
    slots_dir = _relative(p.slots_dir, under=p.config_dir)
    sources: list[dict[str, Any]] = [
        {
            "downwardAPI": {
                "items": [
                    {
                        "path": slot_file,
                        "fieldRef": {"fieldPath": f"metadata.annotations['{SLOT_ANNOTATION}']"},
                    }
                ]
            }
        }
    ]
    for index in range(1, MAX_APISERVER_SLOTS):
        base = f"{slots_dir}/{index}"
        sources.append(
            {
                "secret": {
                    "name": names.apiserver_slot_secret(index),
                    "optional": True,
                    "items": [
                        _item(CA_CERT, f"{base}/ca.crt"),
                        _item(TLS_CERT, f"{base}/tls.crt"),
                        _item(TLS_KEY, f"{base}/tls.key", mode=_KEY_MODE),
                        _item(
                            TLS_CRYPT_V2_CLIENT, f"{base}/tls-crypt-v2-client.key", mode=_KEY_MODE
                        ),
                    ],
                }
            }
        )
    return sources


# --- the apiserver sidecar ------------------------------------------------------------------


@dataclass(frozen=True, kw_only=True)
class SidecarAttachment:
    """What to add to the hosted kube-apiserver pod: one container and its volumes.

    Add `container` to the pod's containers and `volumes` to its volumes (names are
    prefixed `vpnctl-` so they do not clash). The container has a liveness probe but no
    readiness probe on purpose: a tunnel that is down must not take the tenant's
    apiserver out of its Service, only the reverse connections stop.
    """

    container: dict[str, Any]
    volumes: tuple[dict[str, Any], ...]
    # A digest of everything above; put it on the pod template to roll on change.
    config_hash: str


def apiserver_sidecar(
    *, tenant: TenantSpec, settings: Settings, role_config: Mapping[str, Any]
) -> SidecarAttachment:
    names = _names(tenant)
    p = ApiserverPaths

    def rel(path: str) -> str:
        return _relative(path, under=p.config_dir)

    tun_volumes, tun_mounts, tun_limits = tun_parts(settings, volume_name="vpnctl-dev-net-tun")
    resources = (tenant.spec.resources.sidecar or settings.sidecar_resources).body(
        extra_limits=tun_limits
    )
    config_volume = {
        "name": "vpnctl-apiserver",
        "projected": {
            "defaultMode": _FILE_MODE,
            "sources": [
                {
                    "configMap": {
                        "name": names.apiserver_config,
                        "items": [_item(APISERVER_JSON, rel(p.role_config))],
                    }
                },
                _tls_secret_source(names.apiserver_secret, TLS_CRYPT_V2_CLIENT, p),
                *_slot_sources(names),
            ],
        },
    }
    container: dict[str, Any] = {
        **agent_container(
            APISERVER_CONTAINER,
            "apiserver",
            p.role_config,
            settings,
            image=tenant.spec.agent_image,
        ),
        "ports": [
            {
                "containerPort": settings.apiserver_health_port,
                "name": "vpnctl-metrics",
                "protocol": "TCP",
            }
        ],
        "livenessProbe": _probe("/healthz", "vpnctl-metrics", period=10, failures=3),
        "securityContext": container_security(settings),
        "volumeMounts": sorted(
            [
                {"mountPath": p.config_dir, "name": "vpnctl-apiserver", "readOnly": True},
                {"mountPath": p.state_dir, "name": "vpnctl-apiserver-run"},
                *tun_mounts,
            ],
            key=lambda m: str(m["mountPath"]),
        ),
    }
    if resources:
        container["resources"] = resources
    volumes = sorted(
        [
            config_volume,
            {"emptyDir": {"medium": "Memory"}, "name": "vpnctl-apiserver-run"},
            *tun_volumes,
        ],
        key=lambda v: str(v["name"]),
    )
    return SidecarAttachment(
        container=container,
        volumes=tuple(volumes),
        # Not the routes: the role re-reads them from its ConfigMap (and vpnctl nudges the
        # pod so that kubelet refreshes the volume at once). Hashing them rolled the hosted
        # kube-apiserver's Deployment on every Machine added or deleted.
        config_hash=digest({"container": container, "volumes": volumes,
                            "config": {k: v for k, v in role_config.items() if k != "routes"}}),
    )  # fmt: skip


def attach_sidecar(pod_spec: Mapping[str, Any], *, attachment: SidecarAttachment) -> dict[str, Any]:
    """A copy of `pod_spec` with the sidecar added or replaced (idempotent)."""
    spec = dict(pod_spec)
    own_volumes = {v["name"] for v in attachment.volumes}
    containers: Sequence[Mapping[str, Any]] = spec.get("containers") or []
    volumes: Sequence[Mapping[str, Any]] = spec.get("volumes") or []
    spec["containers"] = [
        *(c for c in containers if c.get("name") != APISERVER_CONTAINER),
        attachment.container,
    ]
    spec["volumes"] = [
        *(v for v in volumes if v.get("name") not in own_volumes),
        *attachment.volumes,
    ]
    return spec


# A Deployment in the tenant's namespace that carries this label, with the Cluster's name
# as its value, gets the apiserver sidecar attached by the controller (server-side apply
# of just our container, our volumes and one annotation: the user's own fields stay theirs).
ATTACH_SIDECAR_LABEL = "vpnctl.io/apiserver-for"
SIDECAR_HASH_ANNOTATION = "vpnctl.io/apiserver-sidecar-hash"


def sidecar_apply_body(
    deployment: Mapping[str, Any], *, attachment: SidecarAttachment
) -> dict[str, Any] | None:
    """The server-side-apply body that attaches the sidecar to `deployment`, or None when
    the live Deployment already runs this exact attachment (nothing to write).

    Only fields we own are in the body, so the apply never touches the apiserver
    container; containers and volumes merge by name. The hash on the pod template rolls
    the pods when the sidecar's config changes.
    """
    meta = deployment.get("metadata") or {}
    template = (deployment.get("spec") or {}).get("template") or {}
    live_hash = ((template.get("metadata") or {}).get("annotations") or {}).get(
        SIDECAR_HASH_ANNOTATION
    )
    live_names = {c.get("name") for c in (template.get("spec") or {}).get("containers") or []}
    if live_hash == attachment.config_hash and APISERVER_CONTAINER in live_names:
        return None
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": meta["name"], "namespace": meta["namespace"]},
        "spec": {
            "template": {
                "metadata": {"annotations": {SIDECAR_HASH_ANNOTATION: attachment.config_hash}},
                "spec": {
                    "containers": [attachment.container],
                    "volumes": list(attachment.volumes),
                },
            }
        },
    }
