"""Kubernetes Events for people running ``kubectl describe``, without flooding etcd.

A reconcile loop that fails the same way every 30 s would otherwise write a new Event
each time. Here an Event's name is derived from everything that makes it "the same"
(the object it is about, type, reason, note, action, reporter), so a repeat finds the
existing Event and bumps its ``count`` and ``lastTimestamp`` instead; this also works
across controller restarts and replicas, with no cache to lose. core/v1 Events are
used: ``kubectl describe`` shows their count as ``(x5 over 2m)``.
"""

from __future__ import annotations

import hashlib
import json
import logging
from typing import Any, Literal

from vpnctl.kube.clock import Clock
from vpnctl.kube.errors import AlreadyExists, Conflict
from vpnctl.kube.resources import EVENT, KubeObject, ObjectApi

_log = logging.getLogger(__name__)

EventType = Literal["Normal", "Warning"]

# The apiserver's limits (note: events.k8s.io's 1 kB; reason and action: 128).
_MAX_NOTE = 1024
_MAX_WORD = 128
_UPDATE_ATTEMPTS = 5


def _timestamp(clock: Clock) -> str:
    return clock.now().strftime("%Y-%m-%dT%H:%M:%SZ")


def _clip(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[: limit - 3] + "..."


def event_name(*, regarding: KubeObject, identity: dict[str, Any]) -> str:
    """``<object name>.<16 hex>``: stable for the same event about the same object."""
    digest = hashlib.sha256(json.dumps(identity, sort_keys=True).encode()).hexdigest()[:16]
    base = str((regarding.get("metadata") or {}).get("name") or "object")
    return f"{base[: 253 - 17]}.{digest}"


async def record_event(
    kube: ObjectApi,
    *,
    regarding: KubeObject,
    type: EventType,
    reason: str,
    note: str,
    action: str,
    clock: Clock,
    reporting_instance: str,
    reporting_controller: str = "vpnctl.io/controller",
) -> KubeObject:
    """Record (or count once more) an Event about ``regarding`` (any object as read from
    the API, or just its apiVersion, kind and metadata). Returns the Event.

    Raises ApiError if the apiserver refuses; callers usually log that and carry on,
    an Event is never worth failing a reconcile for. The note must not hold secrets.
    """
    meta = regarding.get("metadata") or {}
    involved = {
        "apiVersion": str(regarding.get("apiVersion", "")),
        "kind": str(regarding.get("kind", "")),
        "name": str(meta.get("name", "")),
        "namespace": str(meta.get("namespace") or ""),
        "uid": str(meta.get("uid") or ""),
    }
    if not involved["kind"] or not involved["name"]:
        raise ValueError("record_event: `regarding` needs at least kind and metadata.name")
    reason = _clip(reason, _MAX_WORD)
    action = _clip(action, _MAX_WORD)
    note = _clip(note, _MAX_NOTE)
    # Events about cluster-scoped objects live in "default", as kubectl expects.
    namespace = involved["namespace"] or "default"
    name = event_name(
        regarding=regarding,
        identity={
            "involved": involved,
            "type": type,
            "reason": reason,
            "note": note,
            "action": action,
            "controller": reporting_controller,
        },
    )
    now = _timestamp(clock)
    body: KubeObject = {
        "apiVersion": "v1",
        "kind": "Event",
        "metadata": {"name": name, "namespace": namespace},
        "involvedObject": {k: v for k, v in involved.items() if v},
        "type": type,
        "reason": reason,
        "message": note,
        "action": action,
        "source": {"component": reporting_controller},
        "reportingComponent": reporting_controller,
        "reportingInstance": reporting_instance,
        "firstTimestamp": now,
        "lastTimestamp": now,
        "count": 1,
    }
    try:
        created = await kube.create(EVENT, body)
    except AlreadyExists:
        pass
    else:
        _log.debug("event=k8s_event_created name=%s/%s reason=%s", namespace, name, reason)
        return created

    # The same event again: count it on the existing object (optimistic concurrency).
    for _ in range(_UPDATE_ATTEMPTS):
        existing = await kube.get(EVENT, name, namespace)
        if existing is None:
            try:
                return await kube.create(EVENT, body)
            except AlreadyExists:
                continue
        existing["count"] = int(existing.get("count") or 1) + 1
        existing["lastTimestamp"] = _timestamp(clock)
        existing["reportingInstance"] = reporting_instance
        try:
            return await kube.replace(EVENT, existing)
        except Conflict:
            continue
    raise Conflict(
        f"Event {namespace}/{name} kept changing under us ({_UPDATE_ATTEMPTS} tries)",
        status=409,
        reason="Conflict",
        method="PUT",
        path=EVENT.path(namespace=namespace, name=name),
    )
