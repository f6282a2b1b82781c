"""Run an agent with the files where its pod would have them: a private mount namespace.

The controller's planner (`vpnctl.reconcile.agentdocs`) writes role configs that name pod
paths: `/etc/vpnctl/...` (ConfigMap and Secret volumes), `/var/lib/vpnctl/...` (the
node's host directory), `/run/vpnctl/...` (the pod's scratch space). The netns tier runs
the agents from exactly those configs, so it does not rewrite the paths. Instead, as a
container runtime mounts a pod's volumes, each agent process gets its own mount namespace
(`unshare --mount --propagation private`) in which the fixture's per-agent directories
are bind-mounted onto those paths; nothing outside that process sees the mounts, so the
agents of one lab, and of labs side by side, each have their own `/etc/vpnctl`.

What this does not give: a container's own root filesystem. A bind mount needs an
existing mount point, and the host's root filesystem is the agent's, so the mount points
(empty directories such as `/etc/vpnctl`) are created on the host if missing and left
there. Everything else on the host stays visible to the agent, as it would not be in a
pod.
"""

from __future__ import annotations

import os
import shlex
from collections.abc import Mapping, Sequence
from pathlib import Path


def ensure_mount_points(binds: Mapping[str, Path]) -> None:
    """Create each pod path of BINDS on the host (an empty directory, or an empty file for
    a file bind) if it does not exist; never changes one that does."""
    for target, source in binds.items():
        path = Path(target)
        if path.exists():
            continue
        if source.is_dir():
            path.mkdir(parents=True, exist_ok=True)
        else:
            path.parent.mkdir(parents=True, exist_ok=True)
            path.touch(exist_ok=True)


def pod_argv(binds: Mapping[str, Path], argv: Sequence[str]) -> list[str]:
    """ARGV run in a new private mount namespace with each source of BINDS bind-mounted
    onto its pod path (`{"/etc/vpnctl": Path(...)}`), read-write. Run it inside the
    network namespace (`ip netns exec NS ...`); the process keeps the pid it starts with
    (every step execs), so signals reach the agent itself."""
    for target, source in binds.items():
        if not Path(target).is_absolute() or not source.is_absolute():
            raise ValueError(f"bind {source} -> {target}: both paths must be absolute")
    mounts = "; ".join(
        f"mount --bind {shlex.quote(str(source))} {shlex.quote(target)}"
        for target, source in binds.items()
    )
    script = f'set -e; {mounts}; exec "$@"' if mounts else 'exec "$@"'
    return ["unshare", "--mount", "--propagation", "private", "--",
            "sh", "-c", script, "sh", *argv]  # fmt: skip


def host_path(binds: Mapping[str, Path], pod_path: str) -> Path:
    """Where POD_PATH is on the host, given an agent's BINDS."""
    for target, source in binds.items():
        if pod_path == target or pod_path.startswith(target.rstrip("/") + "/"):
            return source / os.path.relpath(pod_path, target)
    raise ValueError(f"{pod_path} is under none of the mounts {sorted(binds)}")
