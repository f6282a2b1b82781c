"""Check the forwarding sysctls, set them where the agent can, report them where it can't.

The node agent runs with hostNetwork, so /proc/sys/net is the node's own; inside a
container it is mounted read-only (and mounting the host's /proc/sys writable instead is
a known container escape, so vpnctl doesn't). The server pod's namespace is its own and
usually writable. So the keeper here:

- reads each sysctl and compares its *effective* value: for `conf.<dev>.rp_filter` that
  is max(conf.all.rp_filter, conf.<dev>.rp_filter), as the kernel applies it, so a node
  whose `all` is loose already needs no write at all;
- writes only what is wrong, and where the write works, counts it as set or repaired;
- where the write is refused (read-only /proc/sys, no permission), reports the key as
  *wrong*: a gauge per key (`vpnctl_agent_sysctl_ok`), one warning line naming the
  command that fixes it on the host, and a readiness reason. A refusal is not counted
  as a failure of the keeper (`vpnctl_agent_sysctl_errors`, `healthy`): retrying or
  restarting would not make /proc/sys writable. A refused key whose effective value is
  right is no problem at all.

The kernel is reached through `SysctlAccess`, so the decisions are tested against a fake
of that interface, and `ProcSysctls` against real files.
"""

from __future__ import annotations

import asyncio
import errno
import logging
import os
import threading
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Final, Protocol

from prometheus_client import CollectorRegistry, Counter, Gauge

from agent.netlink import NetlinkError, PermissionDenied, SysctlNotFound

log = logging.getLogger(__name__)

DEFAULT_UNHEALTHY_AFTER: Final = 3
_REFUSED_ERRNOS: Final = frozenset({errno.EROFS, errno.EACCES, errno.EPERM})


# --- /proc/sys -------------------------------------------------------------------------------


def _sysctl_path(key: str, proc_root: str) -> Path:
    """`net.ipv4.ip_forward` or `net/ipv4/conf/eth0.100/rp_filter` -> a path.

    With a '/' anywhere the key is taken as a path: that is how to name a device
    whose name has a dot (as sysctl(8) does).
    """
    parts = key.split("/") if "/" in key else key.split(".")
    if not key or any(p in ("", ".", "..") for p in parts):
        raise ValueError(
            f"sysctl key {key!r} is malformed; use dotted (net.ipv4.ip_forward) or "
            "slashed (net/ipv4/conf/eth0.100/rp_filter) form"
        )
    return Path(proc_root, *parts)


def get_sysctl(key: str, *, proc_root: str = "/proc/sys") -> str:
    """The sysctl's current value, whitespace-normalised ("1", "4096 131072 6291456")."""
    path = _sysctl_path(key, proc_root)
    try:
        return " ".join(path.read_text().split())
    except FileNotFoundError as exc:
        raise SysctlNotFound(
            f"sysctl {key} does not exist ({path}); for net.ipv4.conf.<dev>.* the device "
            "must exist first",
            errno=errno.ENOENT,
        ) from exc


def set_sysctl(key: str, value: str, *, proc_root: str = "/proc/sys") -> bool:
    """Set the sysctl if it differs; True if it changed anything. Idempotent."""
    wanted = " ".join(value.split())
    if get_sysctl(key, proc_root=proc_root) == wanted:
        return False
    path = _sysctl_path(key, proc_root)
    try:
        path.write_text(wanted + "\n")
    except FileNotFoundError as exc:
        raise SysctlNotFound(f"sysctl {key} vanished while writing it ({path})") from exc
    except PermissionError as exc:
        raise PermissionDenied(
            f"cannot set sysctl {key}={wanted} ({path}): {exc.strerror}; the agent needs "
            "root and a writable /proc/sys (in a container: privileged or NET_ADMIN with "
            "/proc/sys/net not read-only)",
            errno=exc.errno,
        ) from exc
    except OSError as exc:
        raise NetlinkError(
            f"cannot set sysctl {key}={wanted} ({path}): {exc.strerror}", errno=exc.errno
        ) from exc
    return True


class SysctlRefused(NetlinkError):
    """The kernel refused the write: read-only /proc/sys or no permission."""


class SysctlAccess(Protocol):
    """The part of the kernel the keeper uses."""

    def read(self, key: str) -> str:
        """The whitespace-normalised value; SysctlNotFound if the key does not exist."""
        ...

    def write(self, key: str, value: str) -> None:
        """Set it; SysctlRefused if the kernel refuses, NetlinkError for other trouble."""
        ...


class ProcSysctls:
    """`SysctlAccess` on /proc/sys (or another root, for tests)."""

    def __init__(self, proc_root: str = "/proc/sys") -> None:
        self._root = proc_root

    def read(self, key: str) -> str:
        return get_sysctl(key, proc_root=self._root)

    def write(self, key: str, value: str) -> None:
        try:
            set_sysctl(key, value, proc_root=self._root)
        except SysctlNotFound:
            raise
        except NetlinkError as exc:
            if exc.errno in _REFUSED_ERRNOS:
                raise SysctlRefused(str(exc), errno=exc.errno) from exc
            raise


def forwarding_sysctls(*, tun: str, rp_filter: int = 2) -> dict[str, str]:
    """The sysctls a router in front of a tun needs: forwarding on, and rp_filter on the
    tun loose (2) or off (0), because replies from tenant networks arrive on the tun
    while the kernel's reverse path may point elsewhere.

    The kernel applies max(conf.all.rp_filter, conf.<dev>.rp_filter), so 0 only takes
    effect if conf.all is 0 too; 2 works either way, hence the default.
    """
    if rp_filter not in (0, 2):
        raise ValueError(
            f"rp_filter={rp_filter} for {tun} would drop tunnel replies; use 2 (loose) or 0 (off)"
        )
    # Slashed form: a device name may contain dots (e.g. eth0.100).
    return {"net.ipv4.ip_forward": "1", f"net/ipv4/conf/{tun}/rp_filter": str(rp_filter)}


def _rp_filter_all(key: str) -> str | None:
    """For `net/ipv4/conf/<dev>/rp_filter` (either spelling), the `conf.all` key."""
    parts = key.split("/") if "/" in key else key.split(".")
    if len(parts) == 5 and parts[:3] == ["net", "ipv4", "conf"] and parts[4] == "rp_filter":
        return None if parts[3] == "all" else "net/ipv4/conf/all/rp_filter"
    return None


def effective_value(access: SysctlAccess, key: str) -> str:
    """What the kernel acts on: the value, or for a device's rp_filter the larger of it
    and conf.all's (SysctlNotFound propagates for the key itself)."""
    value = access.read(key)
    all_key = _rp_filter_all(key)
    if all_key is None:
        return value
    try:
        other = access.read(all_key)
    except SysctlNotFound:
        return value
    if value.isdigit() and other.isdigit():
        return str(max(int(value), int(other)))
    return value


def satisfied(key: str, want: str, have: str) -> bool:
    """HAVE (the effective value) does what WANT is for. Exact, except that a tun's
    rp_filter wanted loose (2) or off (0) is satisfied by either: both let tunnel replies
    in; only strict (1) drops them. A fresh node's tun0 inherits conf.default (often 0)
    and, in a container, /proc/sys is read-only: off must not read as broken."""
    if have == want:
        return True
    is_rp_filter = key.replace(".", "/").endswith("/rp_filter")
    return is_rp_filter and want in ("0", "2") and have in ("0", "2")


@dataclass(frozen=True, kw_only=True)
class SysctlResult:
    """What one `SysctlKeeper.sync_once` found and did.

    `applied`: set for the first time; `repaired`: found changed after being right, set
    back; `pending`: the key does not exist yet (a device's, before the device);
    `wrong`: wrong and the kernel refused the write, one readable line each; `errors`:
    other failures.
    """

    applied: tuple[str, ...] = ()
    repaired: tuple[str, ...] = ()
    pending: tuple[str, ...] = ()
    wrong: tuple[str, ...] = ()
    errors: tuple[str, ...] = ()


def readiness_reason(result: SysctlResult, *, dev: str) -> str | None:
    """The /readyz reason for a pass, or None when every sysctl is in effect."""
    if result.errors:
        return "; ".join(result.errors)
    if result.wrong:
        return "; ".join(result.wrong)
    if result.pending:
        return f"waiting for {dev}: {', '.join(result.pending)}"
    return None


class SysctlKeeper:
    """Keeps a few sysctls at their desired values where it can, and reports the rest.

    Sysctls of a device that does not exist yet (`conf.<tun>.*`) are pending until it
    appears. Reads and writes are plain /proc/sys file operations in the agent's own
    namespace; they take microseconds, so they run on the loop.
    """

    def __init__(
        self,
        *,
        registry: CollectorRegistry,
        role: str,
        access: SysctlAccess | None = None,
        proc_root: str = "/proc/sys",
        interval: float = 1.0,
        unhealthy_after: int = DEFAULT_UNHEALTHY_AFTER,
    ) -> None:
        self._role = role
        self._access: SysctlAccess = access if access is not None else ProcSysctls(proc_root)
        self._interval = interval
        self._unhealthy_after = unhealthy_after
        self._lock = threading.Lock()
        self._desired: dict[str, str] = {}
        # (key, value) pairs seen in effect; a value changing later is then a repair.
        self._applied: set[tuple[str, str]] = set()
        self._consecutive_failures = 0
        self._last_errors: tuple[str, ...] = ()
        self._last_wrong: tuple[str, ...] = ()
        self._pending: tuple[str, ...] = ()
        self._m_repairs = Counter(
            "vpnctl_agent_sysctl_repairs",
            "Sysctls found changed after the agent had set them, and set back.",
            ["role", "key"],
            registry=registry,
        )
        self._m_errors = Counter(
            "vpnctl_agent_sysctl_errors",
            "Failed sysctl reads or writes (refused writes not included: see sysctl_ok).",
            ["role"],
            registry=registry,
        ).labels(role)
        self._m_ok = Gauge(
            "vpnctl_agent_sysctl_ok",
            "1 when the sysctl's effective value is the wanted one, 0 when it is wrong "
            "(and the agent may not set it: set it on the host) or does not exist yet.",
            ["role", "key"],
            registry=registry,
        )

    def set_desired(self, values: Mapping[str, str]) -> None:
        snapshot = {key: " ".join(value.split()) for key, value in values.items()}
        with self._lock:
            self._desired = snapshot

    @property
    def healthy(self) -> bool:
        return self._consecutive_failures < self._unhealthy_after

    @property
    def in_sync(self) -> bool:
        return self._consecutive_failures == 0 and not self._pending and not self._last_wrong

    @property
    def pending(self) -> tuple[str, ...]:
        return self._pending

    def _refused(self, key: str, want: str, have: str, exc: SysctlRefused) -> str:
        why = os.strerror(exc.errno) if exc.errno else str(exc)
        return (
            f"sysctl {key} is {have}, wants {want}, and the agent may not set it ({why}); "
            f"set it on the host: sysctl -w {key}={want}"
        )

    async def sync_once(self) -> SysctlResult:
        with self._lock:
            desired = dict(self._desired)
        self._applied &= set(desired.items())
        applied: list[str] = []
        repaired: list[str] = []
        pending: list[str] = []
        wrong: list[str] = []
        errors: list[str] = []
        for key, value in sorted(desired.items()):
            ok = 0
            try:
                before = effective_value(self._access, key)
                if not satisfied(key, value, before):
                    self._access.write(key, value)
                    changed = True
                else:
                    changed = False
                ok = 1
            except SysctlNotFound:
                pending.append(key)
                continue
            except SysctlRefused as exc:
                wrong.append(self._refused(key, value, before, exc))
                continue
            except (NetlinkError, ValueError) as exc:
                errors.append(str(exc))
                continue
            finally:
                self._m_ok.labels(self._role, key).set(ok)
            if not changed:
                self._applied.add((key, value))
            elif (key, value) in self._applied:
                repaired.append(key)
                self._m_repairs.labels(self._role, key).inc()
                log.warning(
                    "event=sysctl_repaired role=%s key=%s was=%r now=%r",
                    self._role, key, before, value,
                )  # fmt: skip
            else:
                applied.append(key)
                self._applied.add((key, value))
                log.info(
                    "event=sysctl_set role=%s key=%s was=%r now=%r", self._role, key, before, value
                )
        result = SysctlResult(
            applied=tuple(applied),
            repaired=tuple(repaired),
            pending=tuple(pending),
            wrong=tuple(wrong),
            errors=tuple(errors),
        )
        self._pending = result.pending
        if result.wrong != self._last_wrong:
            for line in result.wrong:
                log.warning("event=sysctl_wrong role=%s problem=%r", self._role, line)
        self._last_wrong = result.wrong
        if errors:
            self._m_errors.inc(len(errors))
            self._consecutive_failures += 1
            if result.errors != self._last_errors:
                for err in errors:
                    log.warning("event=sysctl_error role=%s error=%r", self._role, err)
        else:
            self._consecutive_failures = 0
        self._last_errors = result.errors
        return result

    async def run(self) -> None:
        """Sync every `interval` seconds until cancelled."""
        while True:
            await self.sync_once()
            await asyncio.sleep(self._interval)
