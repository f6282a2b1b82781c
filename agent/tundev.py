"""/dev/net/tun without a hostPath: the agent makes the device node when it is missing.

A container's /dev is a tmpfs of its own with no /dev/net/tun in it. Mounting the host's
needs a hostPath (a namespace that allows them) and a privileged pod is worse. But the
device itself is not privileged: the runtime's default device cgroup allows c 10:200
(the tun/tap clone device), so with CAP_MKNOD the agent can make the node and openvpn can
open it. vpnctl's pod specs add MKNOD for exactly this (vpnctl/reconcile/service_objects.py);
with a device plugin or `--tun-host-path` the device is already there and nothing is made.
"""

from __future__ import annotations

import errno
import os
import stat
from pathlib import Path
from typing import Final, Literal

TUN_PATH: Final = "/dev/net/tun"
TUN_MAJOR: Final = 10
TUN_MINOR: Final = 200


class TunDeviceError(OSError):
    """/dev/net/tun is missing and cannot be made, or is something else."""


def ensure_tun_device(path: str = TUN_PATH) -> Literal["present", "created"]:
    """Make PATH the tun clone device (c 10:200) unless it already is. Idempotent."""
    where = Path(path)
    try:
        st = where.stat()
    except (FileNotFoundError, NotADirectoryError):
        pass
    else:
        if stat.S_ISCHR(st.st_mode) and st.st_rdev == os.makedev(TUN_MAJOR, TUN_MINOR):
            return "present"
        raise TunDeviceError(
            errno.EEXIST,
            f"{path} exists but is not the tun device (char 10:200); remove whatever "
            "mounted or made it there",
        )
    try:
        where.parent.mkdir(mode=0o755, parents=True, exist_ok=True)
        try:
            os.mknod(path, 0o600 | stat.S_IFCHR, os.makedev(TUN_MAJOR, TUN_MINOR))
        except FileExistsError:
            return ensure_tun_device(path)  # made by someone else meanwhile: check it
    except OSError as exc:
        raise TunDeviceError(
            exc.errno,
            f"{path} is missing and cannot be made ({exc.strerror}); give the container "
            "CAP_MKNOD, or run the controller with --tun-host-path (the host's device, a "
            "hostPath) or --tun-resource (a device plugin)",
        ) from exc
    return "created"
