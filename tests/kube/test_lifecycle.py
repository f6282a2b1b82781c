"""The test environment itself: failures are reported with logs, and nothing leaks."""

from __future__ import annotations

import asyncio
import dataclasses
import json
import os
import signal
import sys
import time
from pathlib import Path

import pytest

from tests.support.polling import aeventually
from vpnctl.testenv import Binaries, ClusterStartError, TenantCluster
from vpnctl.testenv.cluster import stop_recorded_cluster

pytestmark = pytest.mark.kube


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # A zombie is dead for our purposes.
    try:
        return Path(f"/proc/{pid}/stat").read_text().split()[2] != "Z"
    except OSError:
        return False


async def test_a_crashing_apiserver_fails_fast_with_its_log(
    k8s_binaries: Binaries, tmp_path: Path
) -> None:
    broken = tmp_path / "kube-apiserver"
    broken.write_text("#!/bin/sh\necho 'error: no such flag --pretend' >&2\nexit 3\n")
    broken.chmod(0o755)
    binaries = dataclasses.replace(k8s_binaries, kube_apiserver=broken)
    started = time.monotonic()
    with pytest.raises(ClusterStartError, match=r"(?s)exited with code 3.*no such flag"):
        await TenantCluster.launch(tmp_path / "t", binaries, name="broken")
    assert time.monotonic() - started < 30
    # etcd, which did start, was stopped again; its data is gone, the logs stay.
    assert not (tmp_path / "t" / "etcd-data").exists()
    assert (tmp_path / "t" / "logs" / "etcd.log").exists()


_ORPHAN = """
import asyncio, json, sys
from pathlib import Path
from vpnctl.testenv import Binaries, TenantCluster

async def main() -> None:
    binaries = Binaries(**{k: Path(v) for k, v in json.loads(sys.argv[1]).items() if v})
    cluster = await TenantCluster.launch(Path(sys.argv[2]), binaries, name="orphan")
    print(json.dumps([p.pid for p in cluster.processes.values()]), flush=True)
    await asyncio.sleep(3600)

asyncio.run(main())
"""


async def test_processes_die_with_a_killed_test_run(k8s_binaries: Binaries, tmp_path: Path) -> None:
    """Even a SIGKILLed pytest leaves no etcd or apiserver behind (PR_SET_PDEATHSIG)."""
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-c",
        _ORPHAN,
        json.dumps(k8s_binaries.as_dict()),
        str(tmp_path / "orphan"),
        stdout=asyncio.subprocess.PIPE,
    )
    assert proc.stdout is not None
    line = await asyncio.wait_for(proc.stdout.readline(), 120)
    pids = json.loads(line)
    assert len(pids) == 2
    assert all(_alive(pid) for pid in pids)
    proc.send_signal(signal.SIGKILL)
    await proc.wait()
    await aeventually(
        lambda: not any(_alive(pid) for pid in pids),
        what=f"the processes {pids} gone with their supervisor",
        timeout=10,
        interval=0.1,
    )


async def test_a_detached_cluster_is_stopped_from_its_state_file(
    k8s_binaries: Binaries, tmp_path: Path
) -> None:
    """The lab's way: processes outlive `lab up`; `lab down` stops them by cluster.json."""
    workdir = tmp_path / "detached"
    cluster = await TenantCluster.launch(
        workdir, k8s_binaries, name="detached", die_with_parent=False
    )
    try:
        pids = [p.pid for p in cluster.processes.values()]
        assert json.loads((workdir / "cluster.json").read_text())["pids"]["etcd"] in pids
        stopped = await asyncio.to_thread(stop_recorded_cluster, workdir)
        assert sorted(stopped) == sorted(pid for pid in pids if pid is not None)
        await cluster.stop()  # reaps our children; nothing is left to signal
        assert not any(_alive(pid) for pid in stopped)
        assert not (workdir / "etcd-data").exists()
    finally:
        await cluster.stop()
