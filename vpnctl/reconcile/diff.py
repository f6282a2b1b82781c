"""Decide whether an object needs writing, so a resync with no change writes nothing.

One check: every field we set must be present with the same value in the live object (a
subset comparison). This catches drift: a tenant who edits or strips our DaemonSet.
Fields the apiserver or other controllers add (defaults, status, their own labels) are
not ours and are ignored.

A subset comparison alone cannot see a field we *stopped* setting (an annotation removed
from spec.expose.annotations is still in the live object). That is why every object we
build carries the `vpnctl.io/desired-hash` annotation, the digest of the whole desired
object: it is one of the fields we set, so the same comparison finds a live object
built from a different desire.

The digest covers the whole desired object except Secret data, so no digest of key
material is ever published; Secret data is covered by the subset check.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from typing import Any

from vpnctl.api import KubeObject
from vpnctl.reconcile.names import DESIRED_HASH_ANNOTATION

# Server-set or foreign parts of an object, never compared.
_IGNORED_TOP = frozenset({"status"})
_IGNORED_META = frozenset(
    {"uid", "resourceVersion", "generation", "creationTimestamp", "managedFields", "selfLink"}
)


def digest(doc: Any) -> str:
    """sha256 of the canonical JSON of `doc`, first 16 hex digits."""
    text = json.dumps(doc, sort_keys=True, separators=(",", ":"), ensure_ascii=True)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def _hashable_part(obj: Mapping[str, Any]) -> dict[str, Any]:
    """`obj` without the hash annotation and Secret data; copies only what it changes."""
    body = dict(obj)
    meta = body.get("metadata")
    if isinstance(meta, Mapping) and isinstance(meta.get("annotations"), Mapping):
        annotations = {k: v for k, v in meta["annotations"].items() if k != DESIRED_HASH_ANNOTATION}
        body["metadata"] = {**meta, "annotations": annotations}
    if body.get("kind") == "Secret":
        body.pop("data", None)
        body.pop("stringData", None)
    return body


def stamp(obj: KubeObject) -> KubeObject:
    """`obj` with its desired-hash annotation set (in place, and returned)."""
    meta = obj.setdefault("metadata", {})
    annotations = meta.setdefault("annotations", {})
    annotations[DESIRED_HASH_ANNOTATION] = digest(_hashable_part(obj))
    return obj


def contains(live: Any, wanted: Any) -> bool:
    """True when every field of `wanted` is in `live` with the same value.

    Dicts compare key by key (extra live keys are fine), lists element by element with the
    same length, scalars by equality. An empty wanted dict or list matches a missing one:
    the apiserver drops empty maps on the way in.
    """
    if isinstance(wanted, Mapping):
        if live is None:
            return not wanted
        if not isinstance(live, Mapping):
            return False
        return all(contains(live.get(k), v) for k, v in wanted.items())
    if isinstance(wanted, list):
        if live is None:
            return not wanted
        if not isinstance(live, list) or len(live) != len(wanted):
            return False
        return all(contains(a, b) for a, b in zip(live, wanted, strict=True))
    return bool(live == wanted)


def owned_fields(desired: Mapping[str, Any]) -> dict[str, Any]:
    """The part of `desired` that is ours to compare (no status, no server-set metadata)."""
    body = {k: v for k, v in desired.items() if k not in _IGNORED_TOP}
    meta = body.get("metadata")
    if isinstance(meta, Mapping):
        body["metadata"] = {k: v for k, v in meta.items() if k not in _IGNORED_META}
    return body


def needs_update(existing: Mapping[str, Any] | None, desired: Mapping[str, Any]) -> bool:
    """Whether `desired` (as built, stamped) must be applied over `existing` (as read)."""
    if existing is None:
        return True
    # The desired-hash annotation is among the fields compared (see the module docstring).
    return not contains(existing, owned_fields(desired))
