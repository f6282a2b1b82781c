"""`vpnctl lab up | status | down` as a user runs them: the whole data path, then nothing left.

The lab runs under a unique prefix and state directory so it never touches a lab the
developer has up. What `down` must leave behind is nothing: no namespace with the
prefix, no process started from the state directory, no change to the root namespace's
routes or links.
"""

from __future__ import annotations

import os
import secrets
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from vpnctl.lab.plan import make_plan

pytestmark = pytest.mark.netns


def _vpnctl(*args: str, timeout: float = 180) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "vpnctl", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


def _root_net_state() -> tuple[str, str]:
    routes = subprocess.run(["ip", "route", "show", "table", "all"], capture_output=True,
                            text=True, check=True).stdout  # fmt: skip
    links = subprocess.run(["ip", "-o", "link", "show"], capture_output=True, text=True,
                           check=True).stdout  # fmt: skip
    return routes, "\n".join(sorted(line.split(":")[1] for line in links.splitlines()))


def _namespaces(prefix: str) -> list[str]:
    out = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True, check=True)
    return [ln.split()[0] for ln in out.stdout.splitlines() if ln.startswith(f"{prefix}-")]


def _procs_mentioning(text: str) -> list[int]:
    pids = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            cmdline = Path(f"/proc/{entry}/cmdline").read_bytes().replace(b"\0", b" ")
        except OSError:
            continue
        if text.encode() in cmdline and int(entry) != os.getpid():
            pids.append(int(entry))
    return pids


@pytest.fixture
def lab_args(tmp_path: Path) -> Iterator[list[str]]:
    if os.geteuid() != 0:
        pytest.skip("needs root for network namespaces")
    prefix = f"vl{secrets.token_hex(3)}"
    args = ["--prefix", prefix, "--state-dir", str(tmp_path / "lab")]
    try:
        yield args
    finally:
        _vpnctl("lab", "down", *args)


def test_lab_up_prints_all_ok_and_down_leaves_nothing(lab_args: list[str]) -> None:
    prefix, state = lab_args[1], lab_args[3]
    before = _root_net_state()

    up = _vpnctl("lab", "up", "--nodes", "2", *lab_args)
    assert up.returncode == 0, up.stdout + up.stderr
    rows = [ln for ln in up.stdout.splitlines() if ln.startswith("node-")]
    assert [r.split()[0] for r in rows] == ["node-1", "node-2"], up.stdout
    for row in rows:
        assert row.count(" OK ") == 3, up.stdout
        assert "FAIL" not in row, up.stdout
    assert "2/2 nodes OK, 6/6 checks OK" in up.stdout
    assert "dev tun0" in up.stdout, "the apiserver's route to the nodes must be the tunnel"
    assert sorted(_namespaces(prefix)) == sorted(make_plan(prefix=prefix, nodes=2).namespaces)
    assert _procs_mentioning(state), "the lab's processes must outlive `lab up`"

    status = _vpnctl("lab", "status", *lab_args)
    assert status.returncode == 0, status.stdout + status.stderr
    assert "2/2 nodes OK" in status.stdout

    down = _vpnctl("lab", "down", *lab_args)
    assert down.returncode == 0, down.stdout + down.stderr
    assert _namespaces(prefix) == []
    assert _procs_mentioning(state) == []
    assert not Path(state).exists()
    assert _root_net_state() == before, "the lab must not touch the root namespace"

    again = _vpnctl("lab", "down", *lab_args)
    assert again.returncode == 0, again.stderr


def test_lab_status_without_a_lab_says_what_to_do(lab_args: list[str]) -> None:
    status = _vpnctl("lab", "status", *lab_args)
    assert status.returncode == 1
    assert "run `vpnctl lab up`" in status.stderr
