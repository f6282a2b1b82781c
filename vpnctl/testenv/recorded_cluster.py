"""Stop a cluster that another process started (``vpnctl lab down``) from the state
it recorded in ``<workdir>/cluster.json``."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import time
from pathlib import Path


def stop_recorded_cluster(workdir: Path, *, grace: float = 10.0) -> list[int]:
    """Stop a cluster started by another process (``die_with_parent=False``, as the
    lab does) from its ``<workdir>/cluster.json``. Only kills a recorded PID whose
    command line still names one of our binaries. Returns the PIDs signalled."""
    try:
        state = json.loads((workdir / "cluster.json").read_text())
    except (OSError, ValueError):
        return []
    ours: list[int] = []
    for name, pid in state.get("pids", {}).items():
        try:
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ")
        except OSError:
            continue  # already gone
        if name.encode() in cmdline:
            ours.append(int(pid))
    # The controller-manager and apiserver before etcd, as in stop().
    order = sorted(ours, key=lambda pid: pid == state["pids"].get("etcd"))
    for pid in order:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGTERM)
        deadline = time.monotonic() + grace
        while _pid_alive(pid) and time.monotonic() < deadline:
            time.sleep(0.05)
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    shutil.rmtree(workdir / "etcd-data", ignore_errors=True)
    return order


def _pid_alive(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[-1].split()[0] != "Z"
