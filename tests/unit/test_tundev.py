"""The agent makes /dev/net/tun itself when a pod has no hostPath for it (issue 9, item 7).

Real mknod in a temporary directory (the tests run as root, as the agent does)."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

from agent.tundev import TunDeviceError, ensure_tun_device


def test_missing_device_is_made_once(tmp_path: Path) -> None:
    if os.geteuid() != 0:
        pytest.skip("mknod of a char device needs root (CAP_MKNOD), like the agent has")
    path = tmp_path / "dev" / "net" / "tun"
    assert ensure_tun_device(str(path)) == "created"
    st = path.stat()
    assert stat.S_ISCHR(st.st_mode)
    assert (os.major(st.st_rdev), os.minor(st.st_rdev)) == (10, 200)
    assert stat.S_IMODE(st.st_mode) == 0o600
    assert ensure_tun_device(str(path)) == "present"


def test_something_else_in_its_place_is_an_error_that_says_so(tmp_path: Path) -> None:
    path = tmp_path / "tun"
    path.write_text("not a device")
    with pytest.raises(TunDeviceError, match=r"exists but is not the tun device \(char 10:200\)"):
        ensure_tun_device(str(path))


def test_cannot_make_it_says_what_to_do(tmp_path: Path) -> None:
    blocker = tmp_path / "net"
    blocker.write_text("a file where the directory should be")
    with pytest.raises(TunDeviceError, match=r"CAP_MKNOD.*--tun-host-path.*--tun-resource"):
        ensure_tun_device(str(blocker / "tun"))
