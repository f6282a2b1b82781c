"""What a real node needs from the host, and how to take it all back.

- **cgroups** (this machine has cgroup v1): the kubelet's ``cgroupRoot`` must exist
  in every v1 hierarchy before it starts, with ``cpuset.cpus``/``mems`` copied from
  the parent (a new cpuset is empty and refuses tasks). ``remove_cgroup_root``
  removes the tree bottom-up once its tasks are gone.
- **a private mount namespace** (slave propagation) held by a small process, with
  the host paths that kubelet, containerd and CNI hard-code bind-mounted from the
  node's own folder, so two nodes never share a socket or a state directory.
  Everything of the node runs in it (``nsenter --net=... --mount=...``; not
  ``ip netns exec``, which remounts ``/sys`` and hides the cgroup mounts); when its
  last process is gone the kernel drops every mount made in it.
- **the sweep**: every process in the node's cgroups or in its mount namespace is
  the node's (containerd's shims and containers included) and is killed at stop.
"""

from __future__ import annotations

import contextlib
import os
import signal
import time
from collections.abc import Iterable
from pathlib import Path

CGROUP_V1 = Path("/sys/fs/cgroup")
# Host paths that collide between nodes, each bind-mounted from <node>/host/<path>.
PRIVATE_PATHS = (
    "/var/lib/kubelet",
    "/var/log/containers",
    "/var/log/pods",
    "/run/containerd",
    "/var/lib/containerd",
    "/var/lib/cni",
    "/etc/cni/net.d",
    "/var/lib/vpnctl",  # the node agent's hostPath state (its key never leaves the node)
)


def v1_hierarchies() -> list[Path]:
    """The mounted cgroup v1 hierarchies (cpu, memory, ..., name=systemd)."""
    return _cgroup_mounts(("cgroup",))


def all_hierarchies() -> list[Path]:
    """v1 and, on a hybrid host, the unified one, where runc mirrors the node's tree."""
    return _cgroup_mounts(("cgroup", "cgroup2"))


def _cgroup_mounts(types: tuple[str, ...]) -> list[Path]:
    found = []
    for line in Path("/proc/self/mountinfo").read_text().splitlines():
        fields = line.split()
        sep = fields.index("-")
        if fields[sep + 1] in types:
            found.append(Path(fields[4]))
    return sorted(set(found))


def create_cgroup_root(name: str) -> list[Path]:
    """``/<name>`` in every v1 hierarchy; returns the folders made."""
    made = []
    for hierarchy in v1_hierarchies():
        path = hierarchy / name.strip("/")
        path.mkdir(exist_ok=True)
        made.append(path)
        for knob in ("cpuset.cpus", "cpuset.mems"):
            parent = hierarchy / knob
            if parent.exists():
                (path / knob).write_text(parent.read_text().strip() or "0")
    return made


def cgroup_pids(name: str) -> set[int]:
    pids: set[int] = set()
    for hierarchy in all_hierarchies():
        root = hierarchy / name.strip("/")
        if not root.is_dir():
            continue
        for procs in root.rglob("cgroup.procs"):
            with contextlib.suppress(OSError, ValueError):
                pids.update(int(p) for p in procs.read_text().split())
    return pids


def remove_cgroup_root(name: str) -> list[Path]:
    """Remove ``/<name>`` and everything under it in every hierarchy, deepest first.
    Returns what could not be removed (still has tasks)."""
    left = []
    for hierarchy in all_hierarchies():
        root = hierarchy / name.strip("/")
        if not root.is_dir():
            continue
        for path in sorted((p for p in root.rglob("*") if p.is_dir()), key=lambda p: -len(p.parts)):
            with contextlib.suppress(OSError):
                path.rmdir()
        try:
            root.rmdir()
        except FileNotFoundError:
            pass
        except OSError:
            left.append(root)
    return left


def mount_ns_of(pid: int) -> str | None:
    try:
        return os.readlink(f"/proc/{pid}/ns/mnt")
    except OSError:
        return None


def pids_in_mount_ns(ns: str) -> set[int]:
    pids = set()
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit() and mount_ns_of(int(entry.name)) == ns:
            pids.add(int(entry.name))
    return pids


def holder_script(node_dir: Path, holder_binary: Path) -> str:
    """The shell that sets up a node's mount namespace and then becomes its holder."""
    lines = ["set -eu"]
    for path in PRIVATE_PATHS:
        source = node_dir / "host" / path.lstrip("/")
        lines.append(f"mkdir -p '{source}' '{path}'")
        lines.append(f"mount --bind '{source}' '{path}'")
    lines.append(f"exec '{holder_binary}'")
    return "\n".join(lines)


def kill_all(pids: Iterable[int], *, grace: float = 5.0) -> set[int]:
    """SIGTERM, wait up to ``grace``, SIGKILL; returns the PIDs that still exist."""
    wanted = {p for p in pids if p != os.getpid()}
    alive = wanted
    for sig in (signal.SIGTERM, signal.SIGKILL):
        for pid in alive:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, sig)
        deadline = time.monotonic() + grace
        while (alive := {p for p in wanted if _alive(p)}) and time.monotonic() < deadline:
            time.sleep(0.05)
    return alive


def _alive(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[-1].split()[0] not in ("Z", "X")
