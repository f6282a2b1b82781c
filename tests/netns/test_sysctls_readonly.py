"""The node agent's sysctl check against a real read-only /proc/sys (issue 9, item 7).

Container runtimes mount /proc/sys read-only; the node agent no longer gets the host's
mounted writable. This builds that situation for real: a private mount namespace (and a
network namespace of its own, so no write could reach the host's sysctls even if the
read-only mount failed) with /proc/sys bind-mounted read-only, then runs SysctlKeeper on
it. A sysctl that is already right (as the kernel applies it) is ready without a write;
a wrong one is reported with the command that fixes it, and counts as no error of the
agent's own.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]

_SCRIPT = """
import asyncio, json
from prometheus_client import CollectorRegistry
from agent.sysctls import SysctlKeeper, readiness_reason

async def main():
    with open("/proc/sys/net/ipv4/ip_forward") as f:
        current = f.read().strip()
    other = "0" if current == "1" else "1"
    out = {"current": current}
    for name, want in (("right", current), ("wrong", other)):
        keeper = SysctlKeeper(registry=CollectorRegistry(), role="node")
        keeper.set_desired({"net.ipv4.ip_forward": want})
        for _ in range(5):  # more than the keeper's unhealthy threshold
            result = await keeper.sync_once()
        out[name] = {
            "reason": readiness_reason(result, dev="tun0"),
            "healthy": keeper.healthy,
            "errors": list(result.errors),
            "wrong": list(result.wrong),
        }
    # conf.lo.rp_filter is 1 (strict) but conf.all is 2: the kernel applies max() = 2.
    keeper = SysctlKeeper(registry=CollectorRegistry(), role="node")
    keeper.set_desired({"net/ipv4/conf/lo/rp_filter": "2"})
    result = await keeper.sync_once()
    out["effective"] = {"reason": readiness_reason(result, dev="lo"), "wrong": list(result.wrong)}
    with open("/proc/sys/net/ipv4/ip_forward") as f:
        out["after"] = f.read().strip()
    print(json.dumps(out))

asyncio.run(main())
"""


def test_read_only_proc_sys_is_checked_and_reported() -> None:
    if os.geteuid() != 0 or shutil.which("unshare") is None:
        pytest.skip("needs root and unshare(1) for a mount namespace")
    shell = (
        # In the new network namespace only: loose rp_filter for all, strict for lo.
        "echo 2 > /proc/sys/net/ipv4/conf/all/rp_filter && "
        "echo 1 > /proc/sys/net/ipv4/conf/lo/rp_filter && "
        "mount --bind /proc/sys /proc/sys && mount -o remount,bind,ro /proc/sys && "
        f'exec {sys.executable} -c "$0"'
    )
    done = subprocess.run(
        ["unshare", "--mount", "--net", "--propagation", "private", "sh", "-c", shell, _SCRIPT],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=REPO,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    out = json.loads(done.stdout.strip().splitlines()[-1])
    assert out["after"] == out["current"]  # nothing was written
    assert out["right"] == {"reason": None, "healthy": True, "errors": [], "wrong": []}
    wrong = out["wrong"]
    want = "0" if out["current"] == "1" else "1"
    assert wrong["healthy"] is True
    assert wrong["errors"] == []
    assert wrong["reason"] == wrong["wrong"][0]
    assert f"sysctl net.ipv4.ip_forward is {out['current']}, wants {want}" in wrong["reason"]
    assert "Read-only file system" in wrong["reason"]
    assert f"sysctl -w net.ipv4.ip_forward={want}" in wrong["reason"]
    # Right as the kernel applies it: ready, though the literal value differs and the
    # write would be refused.
    assert out["effective"] == {"reason": None, "wrong": []}
