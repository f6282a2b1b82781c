"""Turning a pod spec into files and a command line: the part of a kubelet the lab needs.

The lab has no container runtime, so a "container" is a process started with
`ip netns exec <namespace>`, sharing the host's filesystem. Its volumes are made real
the way kubelet makes them:

- `configMap`, `secret` and `projected` volumes: one directory per volume with a file per
  item, the item's mode (or the volume's defaultMode); a file is replaced atomically
  (write, then rename) and only when its bytes changed, so a reader that watches inode,
  size and mtime (the server role re-reading desired.json and crl.pem) sees each change
  once. Kubelet instead writes the whole volume into a new folder and swaps a `..data`
  symlink, so every file of a projected volume gets a new inode when any source
  changes: the agent compares bytes, not inodes, for that reason (`ContentWatch`).
  A projected `downwardAPI` source (the sidecar's slot number from its pod's
  annotation) is written from the pod's metadata and rewritten on a pod update.
- `emptyDir`: an empty directory per pod.
- `hostPath`: the node's own directory under the lab's per-node root (every lab node
  shares one real filesystem), except the kernel's own paths (`/dev`, `/proc`, `/sys`),
  which are the real ones: their network parts already belong to the process's network
  namespace.

How the container finds them (the honest shortcut): there is no mount namespace per
container, so each volumeMount's `mountPath` is mapped to the volume's lab directory by
**rewriting paths**: in the command line and in every `.json` file a volume carries (the
role configs), a string that is a mountPath or lies under one is rewritten to the lab
directory. Nothing else in those files changes; they are vpnctl's bytes otherwise.
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import json
import os
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

DEFAULT_MODE = 0o644
REAL_HOST_PATHS = ("/dev/", "/proc/", "/sys/")
SERVICE_ACCOUNT_DIR = "/var/run/secrets/kubernetes.io/serviceaccount"


class PodError(Exception):
    """The pod cannot start yet or at all; the message says which object or field."""


@dataclass(frozen=True, kw_only=True)
class File:
    data: bytes
    mode: int


@dataclass(frozen=True, kw_only=True)
class Mount:
    """A container's mountPath and where it is in the lab."""

    path: str
    source: str


@dataclass(frozen=True, kw_only=True)
class Ref:
    kind: str  # "ConfigMap" or "Secret"
    name: str
    optional: bool = False


# --- volumes -------------------------------------------------------------------------------


def referenced(volumes: Iterable[Mapping[str, Any]]) -> list[Ref]:
    """The ConfigMaps and Secrets the volumes need, in order, without duplicates."""
    out: dict[tuple[str, str], Ref] = {}
    for volume in volumes:
        for source in _sources(volume):
            if "configMap" in source:
                cm = source["configMap"]
                ref = Ref(kind="ConfigMap", name=str(cm["name"]),
                          optional=bool(cm.get("optional")))  # fmt: skip
            elif "secret" in source:
                sec = source["secret"]
                ref = Ref(kind="Secret", name=str(sec.get("secretName") or sec.get("name")),
                          optional=bool(sec.get("optional")))  # fmt: skip
            else:
                continue
            out.setdefault((ref.kind, ref.name), ref)
    return list(out.values())


def _sources(volume: Mapping[str, Any]) -> list[Mapping[str, Any]]:
    if "projected" in volume:
        return list(volume["projected"].get("sources") or [])
    if "configMap" in volume:
        return [{"configMap": volume["configMap"]}]
    if "secret" in volume:
        return [{"secret": volume["secret"]}]
    return []


def object_data(obj: Mapping[str, Any]) -> dict[str, bytes]:
    """A ConfigMap's data and binaryData, or a Secret's data, as bytes per key."""
    out: dict[str, bytes] = {}
    if obj.get("kind") == "Secret":
        for key, value in (obj.get("data") or {}).items():
            out[key] = _b64(value, f"Secret {_name(obj)} key {key}")
        return out
    for key, value in (obj.get("data") or {}).items():
        out[key] = str(value).encode()
    for key, value in (obj.get("binaryData") or {}).items():
        out[key] = _b64(value, f"ConfigMap {_name(obj)} binaryData key {key}")
    return out


def _b64(value: object, where: str) -> bytes:
    try:
        return base64.b64decode(str(value), validate=True)
    except (binascii.Error, ValueError):
        raise PodError(f"{where} is not base64") from None


def _name(obj: Mapping[str, Any]) -> str:
    meta = obj.get("metadata") or {}
    return f"{meta.get('namespace', '')}/{meta.get('name', '')}"


def volume_files(
    volume: Mapping[str, Any],
    *,
    objects: Mapping[tuple[str, str], Mapping[str, Any] | None],
    pod: Mapping[str, Any] | None = None,
) -> dict[str, File]:
    """Relative path -> File for a configMap, secret or projected volume.

    OBJECTS maps (kind, name) to the object or None when it does not exist. A missing
    object or key that is not optional raises PodError, as kubelet leaves such a pod in
    ContainerCreating. A projected `downwardAPI` source's fields are read from POD (its
    metadata: name, namespace, uid, labels and annotations by key); a pod update
    rewrites them, as kubelet does.
    """
    projected = volume.get("projected")
    default_mode = int((projected or volume.get("configMap") or volume.get("secret")
                        or {}).get("defaultMode", DEFAULT_MODE))  # fmt: skip
    files: dict[str, File] = {}
    for source in _sources(volume):
        if "configMap" in source:
            kind, body = "ConfigMap", source["configMap"]
        elif "secret" in source:
            kind, body = "Secret", source["secret"]
        elif "downwardAPI" in source:
            files.update(_downward_files(source["downwardAPI"], pod or {}, mode=default_mode))
            continue
        else:
            continue  # serviceAccountToken: not used by vpnctl's pods
        name = str(body.get("name") or body.get("secretName"))
        obj = objects.get((kind, name))
        if obj is None:
            if body.get("optional"):
                continue
            raise PodError(f"volume {volume.get('name')!r}: {kind} {name} does not exist")
        data = object_data(obj)
        mode = int(body.get("defaultMode", default_mode))
        items = body.get("items")
        if items is None:
            for key, value in data.items():
                files[key] = File(data=value, mode=mode)
            continue
        for item in items:
            key = str(item["key"])
            if key not in data:
                if body.get("optional"):
                    continue
                raise PodError(f"volume {volume.get('name')!r}: {kind} {name} has no key {key!r}")
            files[str(item.get("path", key))] = File(
                data=data[key], mode=int(item.get("mode", mode))
            )
    return files


_FIELD = re.compile(r"metadata\.(annotations|labels)\['([^']+)'\]")


def _downward_files(
    body: Mapping[str, Any], pod: Mapping[str, Any], *, mode: int
) -> dict[str, File]:
    meta = pod.get("metadata") or {}
    files: dict[str, File] = {}
    for item in body.get("items") or []:
        path = str(item.get("fieldRef", {}).get("fieldPath", ""))
        keyed = _FIELD.fullmatch(path)
        if keyed is not None:
            value = str((meta.get(keyed.group(1)) or {}).get(keyed.group(2), ""))
        elif path in ("metadata.name", "metadata.namespace", "metadata.uid"):
            value = str(meta.get(path.split(".", 1)[1], ""))
        else:
            raise PodError(f"downwardAPI field {path!r}: the lab kubelet does not serve it")
        files[str(item["path"])] = File(data=value.encode(), mode=int(item.get("mode", mode)))
    return files


def write_volume(dest: Path, files: Mapping[str, File], *, mounts: Sequence[Mount]) -> bool:
    """Make DEST hold exactly FILES (JSON files with paths rewritten); True if anything
    changed. Each changed file is replaced atomically."""
    dest.mkdir(parents=True, exist_ok=True)
    changed = False
    for rel, f in files.items():
        data = rewrite_json_bytes(f.data, mounts) if rel.endswith(".json") else f.data
        path = dest / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        try:
            same = path.read_bytes() == data and (path.stat().st_mode & 0o777) == f.mode
        except FileNotFoundError:
            same = False
        if same:
            continue
        tmp = path.with_name(f".{path.name}.tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, f.mode)
        with os.fdopen(fd, "wb") as out:
            out.write(data)
        os.chmod(tmp, f.mode)
        os.replace(tmp, path)
        changed = True
    wanted = {dest / rel for rel in files}
    for path in sorted(dest.rglob("*"), reverse=True):
        if path.is_file() and path not in wanted and not path.name.startswith("."):
            path.unlink()
            changed = True
    return changed


# --- mounts and path rewriting ----------------------------------------------------------------


def pod_mounts(
    pod_spec: Mapping[str, Any],
    container: Mapping[str, Any],
    *,
    pod_dir: Path,
    host_root: Path,
    service_account_dir: Path | None = None,
) -> list[Mount]:
    """Where each of CONTAINER's mountPaths is in the lab (see the module docstring).

    SERVICE_ACCOUNT_DIR gets SERVICE_ACCOUNT_DIR's lab directory when the pod mounts the
    service account (the default), as the ServiceAccount admission plugin adds it.
    """
    volumes = {str(v["name"]): v for v in pod_spec.get("volumes") or []}
    mounts: list[Mount] = []
    for vm in container.get("volumeMounts") or []:
        name = str(vm["name"])
        volume = volumes.get(name)
        if volume is None:
            raise PodError(f"volumeMount {vm.get('mountPath')!r} names no volume {name!r}")
        if vm.get("subPath"):
            raise PodError(f"volumeMount {vm.get('mountPath')!r}: subPath is not supported")
        mounts.append(Mount(path=str(vm["mountPath"]),
                            source=volume_source(volume, pod_dir=pod_dir,
                                                 host_root=host_root)))  # fmt: skip
    if service_account_dir is not None and pod_spec.get("automountServiceAccountToken", True):
        mounts.append(Mount(path=SERVICE_ACCOUNT_DIR, source=str(service_account_dir)))
    return mounts


def volume_source(volume: Mapping[str, Any], *, pod_dir: Path, host_root: Path) -> str:
    name = str(volume["name"])
    if "hostPath" in volume:
        path = str(volume["hostPath"]["path"])
        if any(path.startswith(p) or path == p.rstrip("/") for p in REAL_HOST_PATHS):
            return path
        return str(host_root / path.lstrip("/"))
    if any(k in volume for k in ("projected", "configMap", "secret", "emptyDir")):
        return str(pod_dir / name)
    raise PodError(f"volume {name!r}: only configMap, secret, projected, emptyDir and "
                   "hostPath volumes are supported in the lab")  # fmt: skip


def rewrite(value: Any, mounts: Sequence[Mount]) -> Any:
    """VALUE with every string that is a mountPath, or under one, moved to its source."""
    if isinstance(value, str):
        return rewrite_path(value, mounts)
    if isinstance(value, list):
        return [rewrite(v, mounts) for v in value]
    if isinstance(value, dict):
        return {k: rewrite(v, mounts) for k, v in value.items()}
    return value


def rewrite_path(text: str, mounts: Sequence[Mount]) -> str:
    best: Mount | None = None
    for m in mounts:
        base = m.path.rstrip("/")
        if (text == base or text.startswith(base + "/")) and (
            best is None or len(base) > len(best.path.rstrip("/"))
        ):
            best = m
    if best is None:
        return text
    return best.source.rstrip("/") + text[len(best.path.rstrip("/")) :]


def rewrite_json_bytes(data: bytes, mounts: Sequence[Mount]) -> bytes:
    """A JSON document with its paths rewritten; bytes that are not JSON stay as they are."""
    try:
        doc = json.loads(data)
    except ValueError:
        return data
    return (json.dumps(rewrite(doc, mounts), indent=2, sort_keys=True) + "\n").encode()


def container_argv(container: Mapping[str, Any], mounts: Sequence[Mount]) -> list[str]:
    argv = [*(container.get("command") or []), *(container.get("args") or [])]
    if not argv:
        raise PodError(f"container {container.get('name')!r} has no command")
    return [rewrite_path(str(a), mounts) for a in argv]


def container_env(container: Mapping[str, Any], *, fields: Mapping[str, str]) -> dict[str, str]:
    """The container's env: plain values, and fieldRefs from FIELDS (e.g. spec.nodeName)."""
    env: dict[str, str] = {}
    for item in container.get("env") or []:
        name = str(item["name"])
        if "value" in item:
            env[name] = str(item["value"])
            continue
        ref = ((item.get("valueFrom") or {}).get("fieldRef") or {}).get("fieldPath")
        if isinstance(ref, str) and ref in fields:
            env[name] = fields[ref]
        else:
            raise PodError(f"env {name}: only values and fieldRefs {sorted(fields)} are "
                           "supported in the lab")  # fmt: skip
    return env


def make_dirs(mounts: Sequence[Mount], *, under: Sequence[Path]) -> None:
    """Create the lab directories behind the mounts (never a real host path)."""
    for m in mounts:
        path = Path(m.source)
        if any(path == u or u in path.parents for u in under):
            path.mkdir(parents=True, exist_ok=True)


def hosts_line(address: str, names: Sequence[str]) -> str:
    return f"{address} {' '.join(names)}\n"


def remove_tree(path: Path) -> None:
    """Remove PATH and everything below it; a missing path is fine."""
    if not path.exists():
        return
    for child in sorted(path.rglob("*"), key=lambda p: len(p.parts), reverse=True):
        with contextlib.suppress(FileNotFoundError):
            if child.is_dir() and not child.is_symlink():
                child.rmdir()
            else:
                child.unlink()
    with contextlib.suppress(FileNotFoundError):
        path.rmdir()
