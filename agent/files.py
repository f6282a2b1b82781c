"""Files the agent reads and writes: change detection by signature and atomic replacement.

Polling, not inotify: the files live on ConfigMap/Secret volumes whose updates are
symlink swaps that inotify watchers famously miss, and a stat every half second costs
nothing.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import tempfile
from collections.abc import Iterable
from dataclasses import dataclass

from agent.agent_clock import SYSTEM_CLOCK, AgentClock


@dataclass(frozen=True)
class FileSignature:
    """What identifies a version of a file without reading it: changes on any rewrite."""

    inode: int
    size: int
    mtime_ns: int


def file_signature(path: str) -> FileSignature | None:
    """The file's signature, or None if it doesn't exist (or can't be stat'ed)."""
    try:
        st = os.stat(path)
    except OSError:
        return None
    return FileSignature(inode=st.st_ino, size=st.st_size, mtime_ns=st.st_mtime_ns)


class FileWatch:
    """Tells whether any of a few files changed since the last look (by inode, size, mtime).

    Polling, not inotify: the files live on ConfigMap/Secret volumes whose updates are
    symlink swaps that inotify watchers famously miss, and a stat every half second costs
    nothing.
    """

    def __init__(self, paths: Iterable[str]) -> None:
        self.paths = tuple(paths)
        self._seen: tuple[FileSignature | None, ...] | None = None

    def snapshot(self) -> tuple[FileSignature | None, ...]:
        return tuple(file_signature(p) for p in self.paths)

    def changed(self) -> bool:
        """True on the first call and whenever a file changed, appeared or vanished."""
        now = self.snapshot()
        if now == self._seen:
            return False
        self._seen = now
        return True

    async def wait_changed(self, *, interval: float, clock: AgentClock = SYSTEM_CLOCK) -> None:
        while not self.changed():
            await clock.sleep(interval)


class ContentWatch(FileWatch):
    """A FileWatch that reports a change only when some file's bytes changed.

    A projected volume (the server's and the sidecar's Secret and ConfigMap in one) is
    rewritten whole by the kubelet whenever any of its sources changes: every file gets
    a new inode, also those whose content is the same. Restarting openvpn for that would
    drop every client on each desired-state change (found under the service node's
    real kubelet). The bytes are read only when a file's signature changed.
    """

    def __init__(self, paths: Iterable[str]) -> None:
        super().__init__(paths)
        self._digests: tuple[bytes | None, ...] | None = None

    def changed(self) -> bool:
        if not super().changed():
            return False
        digests = tuple(_digest(p) for p in self.paths)
        if digests == self._digests:
            return False
        self._digests = digests
        return True


def _digest(path: str) -> bytes | None:
    try:
        with open(path, "rb") as f:
            return hashlib.file_digest(f, "sha256").digest()
    except OSError:
        return None


def atomic_write(path: str, data: bytes, *, mode: int = 0o644, mtime: float | None = None) -> None:
    """Write DATA to PATH so readers see the old or the new file, never a mix.

    tmp file in the same directory, fsync, optional mtime, rename over the target.
    """
    directory = os.path.dirname(path) or "."
    fd, tmp = tempfile.mkstemp(prefix=".tmp-", dir=directory)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, mode)
        if mtime is not None:
            os.utime(tmp, (mtime, mtime))
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
