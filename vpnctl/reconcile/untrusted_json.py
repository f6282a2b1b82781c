"""Small typed readers over untrusted JSON (the objects the controller reads).

Each either returns a checked value or raises `PermanentError(InvalidSpec)` whose message
names the field and says how to fix it; shared by the parsers of one tenant's inputs
(`tunnel_spec`, `cluster_networks`, `tenant_members`, `tenant`).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, cast

from vpnctl.reconcile.errors import PermanentError


def field_mapping(value: object, *, field: str) -> Mapping[str, Any]:
    if value is None:
        return {}
    if not isinstance(value, Mapping):
        raise PermanentError(
            reason="InvalidSpec", message=f"{field} must be an object, got {value!r}"
        )
    return cast(Mapping[str, Any], value)


def field_str_list(value: object, *, field: str) -> list[str]:
    if value is None:
        return []
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise PermanentError(
            reason="InvalidSpec", message=f"{field} must be a list of strings, got {value!r}"
        )
    return list(value)


def field_int(value: object, *, field: str, default: int, low: int, high: int) -> int:
    if value is None:
        return default
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        raise PermanentError(
            reason="InvalidSpec",
            message=f"{field} must be an integer in {low}..{high}, got {value!r}; fix {field}",
        )
    return value


def field_choice(value: object, *, field: str, default: str, choices: Sequence[str]) -> str:
    if value is None:
        return default
    if value not in choices:
        raise PermanentError(
            reason="InvalidSpec",
            message=f"{field} must be one of {', '.join(choices)}, got {value!r}; fix {field}",
        )
    return cast(str, value)


def metadata_of(obj: Mapping[str, Any]) -> Mapping[str, Any]:
    return field_mapping(obj.get("metadata"), field="metadata")


def name_of(obj: Mapping[str, Any]) -> str:
    name = metadata_of(obj).get("name")
    return name if isinstance(name, str) else ""
