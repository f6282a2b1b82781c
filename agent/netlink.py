"""The agent's only door to the kernel's routing state: one small typed interface, one
pyroute2 implementation.

Why this shape (taken from neutron's privileged ip_lib and os-vif):

* The rest of the agent codes against `Kernel`, a Protocol of a handful of flat,
  idempotent operations on plain data. Its tests use a fake of *that*, never a mock
  of pyroute2; `PyRoute2Kernel` itself is tested against a real network namespace.
* Every write is idempotent (`route replace`, address replace, delete of a missing
  route is fine), so a sync loop can simply re-apply the desired state.
* Our routes carry our own protocol number `VPNCTL_RT_PROTO`. That is how the agent,
  after a restart, finds exactly the routes it owns and deletes the stale ones,
  without trusting anything it remembered and without touching anyone else's routes.
* errno values become domain errors (`NetworkInterfaceNotFound`, `LinkDown`, ...)
  whose messages name the operation, the device and the namespace.
* Interrupted dumps (NLM_F_DUMP_INTR) and EINTR/EAGAIN/EBUSY are retried a few times.

pyroute2 has no type stubs. Nothing of it leaks out of this module: every value read
from a netlink message is converted to a plain Python type here. This is also the only
module that may import pyroute2 (an import-linter contract).

sysctls are plain writes under /proc/sys (`agent.sysctls`): the agent runs inside the
namespace it manages (`ip netns exec` in the lab, hostNetwork on a node), and
/proc/sys/net always shows the namespace of the process that opens it, so no netlink is
needed for them. Their errors (`SysctlNotFound`, `PermissionDenied`) are defined here.
"""

from __future__ import annotations

import asyncio
import errno
import logging
import os
import socket
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from ipaddress import IPv4Address, IPv4Interface, IPv4Network
from typing import Any, Final, Protocol, TypeVar, runtime_checkable

from pyroute2 import AsyncIPRoute
from pyroute2.netlink.exceptions import NetlinkError as _PyRoute2NetlinkError

log = logging.getLogger(__name__)

VPNCTL_RT_PROTO: Final = 211
"""The rtm_protocol our routes carry; `ip route show proto 211` lists exactly ours.

Values up to 192 are reserved or taken by well-known daemons (/etc/iproute2/rt_protos,
e.g. bird=12, zebra=11, babel=42, bgp=186...); 211 is free in iproute2's table.
"""

ANY_PROTO: Final = -1
"""`list_routes(proto=ANY_PROTO)` lists routes of every protocol (kernel, static, ours...)."""

MAIN_TABLE: Final = 254
IFNAMSIZ_MAX: Final = 15  # longest interface name the kernel accepts (IFNAMSIZ - 1)

_NLM_F_DUMP_INTR: Final = 0x10
_RT_SCOPE_UNIVERSE: Final = 0
_RT_SCOPE_LINK: Final = 253
_RT_SCOPE_NOWHERE: Final = 255  # on delete: "match any scope"
_RETRYABLE_ERRNOS: Final = frozenset({errno.EINTR, errno.EAGAIN, errno.EBUSY})
_ATTEMPTS: Final = 4
_DEFAULT_TIMEOUT: Final = 10.0


# --------------------------------------------------------------------------- errors


class NetlinkError(Exception):
    """A kernel operation failed. The base of every error this module raises.

    `errno` is the kernel's error number when there was one; `netns` is the namespace
    the operation ran in (None: the agent's own).
    """

    def __init__(self, message: str, *, errno: int | None = None, netns: str | None = None):
        super().__init__(message)
        self.errno = errno
        self.netns = netns


class NetworkInterfaceNotFound(NetlinkError):
    """The named device does not exist (ENODEV), e.g. the tun is not created yet."""


class NetworkNamespaceNotFound(NetlinkError):
    """The named network namespace does not exist under /run/netns."""


class LinkDown(NetlinkError):
    """The device exists but is administratively down (ENETDOWN)."""


class NetworkUnreachable(NetlinkError):
    """A route's gateway is not on any connected network of its device (ENETUNREACH)."""


class AlreadyExists(NetlinkError):
    """The object already exists (EEXIST); idempotent operations never raise this."""


class InvalidRequest(NetlinkError):
    """The kernel rejected the request as malformed (EINVAL, ERANGE), e.g. a bad src."""


class PermissionDenied(NetlinkError):
    """The process lacks CAP_NET_ADMIN in the target namespace (EPERM, EACCES)."""


class SysctlNotFound(NetlinkError):
    """The sysctl does not exist, e.g. `net.ipv4.conf.<dev>` for a missing device."""


NOT_READY_ERRORS: Final[tuple[type[NetlinkError], ...]] = (
    NetworkInterfaceNotFound,
    LinkDown,
    NetworkUnreachable,
)
"""Errors that mean "the device is not there or not ready yet; try again later".

A sync loop records a route that failed with one of these as pending instead of
counting an error: the tun device comes and goes with the openvpn process.
"""


# --------------------------------------------------------------------------- data


@dataclass(frozen=True, kw_only=True)
class Route:
    """An IPv4 unicast route through a device.

    The kernel identifies a route by (table, dst, metric); `route replace` with the same
    key overwrites dev, gateway and src in place.
    """

    dst: IPv4Network
    dev: str
    gateway: IPv4Address | None = None
    table: int = MAIN_TABLE
    metric: int = 0
    src: IPv4Address | None = None

    @property
    def key(self) -> tuple[int, IPv4Network, int]:
        """What the kernel uses to tell routes apart: (table, dst, metric)."""
        return (self.table, self.dst, self.metric)

    def __str__(self) -> str:
        parts = [str(self.dst)]
        if self.gateway is not None:
            parts += ["via", str(self.gateway)]
        parts += ["dev", self.dev]
        if self.table != MAIN_TABLE:
            parts += ["table", str(self.table)]
        if self.metric:
            parts += ["metric", str(self.metric)]
        if self.src is not None:
            parts += ["src", str(self.src)]
        return " ".join(parts)


@dataclass(frozen=True, kw_only=True)
class LinkStats:
    """A device's identity, state and byte counters at one moment."""

    index: int
    name: str
    admin_up: bool  # IFF_UP: `ip link set up` was done
    carrier: bool  # IFF_LOWER_UP: e.g. a tun with an attached process
    rx_bytes: int
    tx_bytes: int


# --------------------------------------------------------------------------- interface


@runtime_checkable
class Kernel(Protocol):
    """What the agent may ask of the kernel. Tests of the agent use a fake of this."""

    async def list_routes(self, *, proto: int = VPNCTL_RT_PROTO) -> list[Route]:
        """IPv4 unicast routes through a device with this protocol (ANY_PROTO: all),
        in every table."""
        ...

    async def replace_route(self, route: Route) -> None:
        """Create or overwrite the route, tagged with VPNCTL_RT_PROTO."""
        ...

    async def delete_route(self, route: Route) -> None:
        """Delete our route if it exists; a missing route or device is fine."""
        ...

    async def link_exists(self, dev: str) -> bool: ...

    async def link_index(self, dev: str) -> int:
        """Raises NetworkInterfaceNotFound."""
        ...

    async def link_counters(self, dev: str) -> tuple[int, int]:
        """(rx_bytes, tx_bytes). Raises NetworkInterfaceNotFound."""
        ...

    async def addresses(self, dev: str) -> list[IPv4Interface]:
        """IPv4 addresses on the device. Raises NetworkInterfaceNotFound."""
        ...

    async def replace_address(self, dev: str, addr: IPv4Interface) -> None:
        """Add the address, or do nothing if it is already there."""
        ...

    async def set_link_up(self, dev: str) -> None: ...

    async def close(self) -> None: ...


# --------------------------------------------------------------------------- pyroute2

_T = TypeVar("_T")


class _DumpInterrupted(Exception):
    """The kernel flagged a dump as inconsistent (the table changed while dumping)."""


class PyRoute2Kernel:
    """`Kernel` on pyroute2 0.9's asyncio-native `AsyncIPRoute`.

    With `netns`, the netlink socket is opened inside that namespace (pyroute2 forks
    a short-lived child that enters it and passes the socket back), so one agent
    process can manage another namespace without `setns` of its own threads. Create
    with `await PyRoute2Kernel.open(...)` from inside the event loop that will use it.
    """

    def __init__(self, *, ipr: Any, netns: str | None, timeout: float) -> None:
        # Private: use open(). `ipr` is an AsyncIPRoute (untyped; stays inside).
        self._ipr = ipr
        self._netns = netns
        self._timeout = timeout
        self._closed = False

    @classmethod
    async def open(
        cls, *, netns: str | None = None, timeout: float = _DEFAULT_TIMEOUT
    ) -> PyRoute2Kernel:
        """Open a netlink socket (in `netns` if given; it must already exist)."""
        # flags=0: never create the namespace as a side effect (pyroute2's default
        # O_CREAT would silently make an empty one).
        ipr = AsyncIPRoute(netns=netns, flags=0)
        try:
            await ipr.setup_endpoint()  # opens the socket (in the namespace) now
        except BaseException as exc:
            ipr.close()
            mapped = _open_error(exc, netns)
            if mapped is exc:
                raise
            raise mapped from exc
        log.debug("event=netlink_open netns=%s", netns or "-")
        return cls(ipr=ipr, netns=netns, timeout=timeout)

    @property
    def netns(self) -> str | None:
        return self._netns

    async def close(self) -> None:
        if not self._closed:
            self._closed = True
            self._ipr.close()

    async def __aenter__(self) -> PyRoute2Kernel:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    # ---------------------------------------------------------------- routes

    async def list_routes(self, *, proto: int = VPNCTL_RT_PROTO) -> list[Route]:
        msgs = await self._dump("list routes", lambda: self._ipr.route("dump", family=_AF_INET))
        names: dict[int, str] = {}
        routes: list[Route] = []
        for msg in msgs:
            if proto != ANY_PROTO and int(msg["proto"]) != proto:
                continue
            if int(msg["type"]) != _RTN_UNICAST:
                # Local/broadcast entries are the kernel's bookkeeping, not routes anyone
                # configured; we only ever write unicast routes.
                continue
            oif = msg.get("oif")
            if oif is None:  # blackhole, multipath: not something we write or manage
                continue
            index = int(oif)
            if index not in names:
                names[index] = await self._link_name(index)
            routes.append(_route_from_msg(msg, dev=names[index]))
        return routes

    async def replace_route(self, route: Route) -> None:
        index = await self.link_index(route.dev)
        kwargs: dict[str, Any] = {
            "dst": str(route.dst),
            "oif": index,
            "table": route.table,
            "priority": route.metric,
            "proto": VPNCTL_RT_PROTO,
            # As `ip route` does: a route without a gateway reaches its destination
            # directly on the link.
            "scope": _RT_SCOPE_UNIVERSE if route.gateway is not None else _RT_SCOPE_LINK,
        }
        if route.gateway is not None:
            kwargs["gateway"] = str(route.gateway)
        if route.src is not None:
            kwargs["prefsrc"] = str(route.src)
        await self._request(f"replace route {route}", lambda: self._ipr.route("replace", **kwargs))

    async def delete_route(self, route: Route) -> None:
        try:
            index = await self.link_index(route.dev)
        except NetworkInterfaceNotFound:
            return  # the kernel drops a device's routes with it: nothing to delete
        kwargs: dict[str, Any] = {
            "dst": str(route.dst),
            "oif": index,
            "table": route.table,
            "priority": route.metric,
            "proto": VPNCTL_RT_PROTO,  # never delete someone else's route at this key
            "scope": _RT_SCOPE_NOWHERE,  # any scope; pyroute2's default 0 would not match
        }
        if route.gateway is not None:
            kwargs["gateway"] = str(route.gateway)
        try:
            await self._request(f"delete route {route}", lambda: self._ipr.route("del", **kwargs))
        except NetlinkError as exc:
            if exc.errno == errno.ESRCH:
                return
            raise

    # ---------------------------------------------------------------- links

    async def link_exists(self, dev: str) -> bool:
        try:
            await self.link_index(dev)
        except NetworkInterfaceNotFound:
            return False
        return True

    async def link_index(self, dev: str) -> int:
        return (await self.link_stats(dev)).index

    async def link_counters(self, dev: str) -> tuple[int, int]:
        stats = await self.link_stats(dev)
        return (stats.rx_bytes, stats.tx_bytes)

    async def link_stats(self, dev: str) -> LinkStats:
        """Index, state and counters of `dev`. Raises NetworkInterfaceNotFound."""
        self._check_ifname(dev)
        msgs = await self._request(
            f"get link {dev}", lambda: self._ipr.link("get", ifname=dev), dev=dev
        )
        if not msgs:
            raise self._not_found(dev)
        msg = msgs[0]
        flags = int(msg["flags"])
        stats = msg.get("stats64") or msg.get("stats") or {}
        return LinkStats(
            index=int(msg["index"]),
            name=str(msg.get("ifname")),
            admin_up=bool(flags & _IFF_UP),
            carrier=bool(flags & _IFF_LOWER_UP),
            rx_bytes=int(stats.get("rx_bytes", 0)),
            tx_bytes=int(stats.get("tx_bytes", 0)),
        )

    async def set_link_up(self, dev: str) -> None:
        index = await self.link_index(dev)
        await self._request(
            f"set link {dev} up",
            lambda: self._ipr.link("set", index=index, state="up"),
            dev=dev,
        )

    # ---------------------------------------------------------------- addresses

    async def addresses(self, dev: str) -> list[IPv4Interface]:
        index = await self.link_index(dev)
        msgs = await self._dump(
            f"list addresses of {dev}", lambda: self._ipr.addr("dump", family=_AF_INET)
        )
        found: list[IPv4Interface] = []
        for msg in msgs:
            if int(msg["index"]) != index:
                continue
            # IFA_LOCAL is the interface's own address; on point-to-point links
            # IFA_ADDRESS is the peer's, so prefer IFA_LOCAL.
            addr = msg.get("local") or msg.get("address")
            if addr is not None:
                found.append(IPv4Interface(f"{addr}/{int(msg['prefixlen'])}"))
        return found

    async def replace_address(self, dev: str, addr: IPv4Interface) -> None:
        index = await self.link_index(dev)
        await self._request(
            f"replace address {addr} on {dev}",
            lambda: self._ipr.addr(
                "replace", index=index, address=str(addr.ip), prefixlen=addr.network.prefixlen
            ),
            dev=dev,
        )

    async def _link_name(self, index: int) -> str:
        msgs = await self._request(f"get link #{index}", lambda: self._ipr.link("get", index=index))
        if not msgs:
            return f"#{index}"
        return str(msgs[0].get("ifname"))

    async def _dump(self, what: str, start: Callable[[], Awaitable[Any]]) -> list[Any]:
        """Run a dump to completion, retrying when the kernel marks it interrupted."""

        async def collect() -> list[Any]:
            responses: AsyncIterator[Any] = await start()
            msgs = [msg async for msg in responses]
            if any(int(m["header"].get("flags", 0)) & _NLM_F_DUMP_INTR for m in msgs):
                raise _DumpInterrupted()
            return msgs

        return await self._request(what, collect)

    async def _request(
        self, what: str, call: Callable[[], Awaitable[_T]], *, dev: str | None = None
    ) -> _T:
        """Run one request with a timeout, retry transient failures, map errno."""
        if self._closed:
            raise NetlinkError(f"cannot {what} {_where(self._netns)}: the netlink socket is closed")
        transient = ""
        for attempt in range(1, _ATTEMPTS + 1):
            try:
                async with asyncio.timeout(self._timeout):
                    return await call()
            except _DumpInterrupted:
                transient = "dump interrupted by a concurrent change"
            except _PyRoute2NetlinkError as exc:
                code = abs(int(exc.code)) if isinstance(exc.code, int) else None
                if code not in _RETRYABLE_ERRNOS:
                    raise self._map(what, code, str(exc.args[-1]), dev=dev) from exc
                transient = os.strerror(code) if code else str(exc)
            except TimeoutError as exc:
                raise NetlinkError(
                    f"cannot {what} {_where(self._netns)}: no answer from the kernel "
                    f"within {self._timeout}s",
                    netns=self._netns,
                ) from exc
            except OSError as exc:
                if exc.errno not in _RETRYABLE_ERRNOS:
                    raise self._map(what, exc.errno, exc.strerror or str(exc), dev=dev) from exc
                transient = exc.strerror or str(exc)
            if attempt < _ATTEMPTS:
                delay = 0.01 * 2**attempt
                log.debug(
                    "event=netlink_retry what=%r attempt=%d/%d delay=%.2fs reason=%r",
                    what, attempt, _ATTEMPTS, delay, transient,
                )  # fmt: skip
                await asyncio.sleep(delay)
        raise NetlinkError(
            f"cannot {what} {_where(self._netns)}: still failing after {_ATTEMPTS} attempts "
            f"({transient})",
            netns=self._netns,
        )

    def _map(self, what: str, code: int | None, reason: str, *, dev: str | None) -> NetlinkError:
        where = _where(self._netns)
        ns = self._netns
        if code == errno.ENODEV and dev is not None:
            return self._not_found(dev)
        if code == errno.ENODEV:
            return NetworkInterfaceNotFound(
                f"cannot {what} {where}: no such device", errno=code, netns=ns
            )
        if code == errno.ENETDOWN:
            return LinkDown(
                f"cannot {what} {where}: the device is down; it must be up "
                "(`ip link set <dev> up`, or wait for openvpn to bring the tun up)",
                errno=code,
                netns=ns,
            )
        if code == errno.ENETUNREACH:
            return NetworkUnreachable(
                f"cannot {what} {where}: the gateway is not on a network of the device; "
                "the device needs an address whose network covers the gateway",
                errno=code,
                netns=ns,
            )
        if code == errno.EEXIST:
            return AlreadyExists(f"cannot {what} {where}: it already exists", errno=code, netns=ns)
        if code in (errno.EPERM, errno.EACCES):
            return PermissionDenied(
                f"cannot {what} {where}: {reason}; the agent needs CAP_NET_ADMIN",
                errno=code,
                netns=ns,
            )
        if code in (errno.EINVAL, errno.ERANGE):
            return InvalidRequest(
                f"cannot {what} {where}: the kernel rejected it ({reason}); check that "
                "src is an address of this namespace and the gateway/dst are valid",
                errno=code,
                netns=ns,
            )
        return NetlinkError(f"cannot {what} {where}: {reason}", errno=code, netns=ns)

    def _not_found(self, dev: str) -> NetworkInterfaceNotFound:
        return NetworkInterfaceNotFound(
            f"network interface {dev!r} does not exist {_where(self._netns)}",
            errno=errno.ENODEV,
            netns=self._netns,
        )

    def _check_ifname(self, dev: str) -> None:
        if not dev or len(dev.encode()) > IFNAMSIZ_MAX or "/" in dev or dev.strip() != dev:
            raise NetworkInterfaceNotFound(
                f"network interface {dev!r} cannot exist {_where(self._netns)}: a name is "
                f"1-{IFNAMSIZ_MAX} bytes without '/' or whitespace",
                netns=self._netns,
            )


_AF_INET: Final = int(socket.AF_INET)
_RTN_UNICAST: Final = 1
_IFF_UP: Final = 0x1
_IFF_LOWER_UP: Final = 0x10000


def _where(netns: str | None) -> str:
    return f"in network namespace {netns!r}" if netns else "in the agent's network namespace"


def _open_error(exc: BaseException, netns: str | None) -> BaseException:
    """The error to raise for a failed socket open; non-OS errors pass unchanged."""
    where = _where(netns)
    if isinstance(exc, FileNotFoundError):
        return NetworkNamespaceNotFound(
            f"network namespace {netns!r} does not exist (no /run/netns/{netns}); "
            "create it (`ip netns add`) or fix the --netns setting",
            errno=errno.ENOENT,
            netns=netns,
        )
    if isinstance(exc, PermissionError):
        return PermissionDenied(
            f"cannot open a netlink socket {where}: {exc}; the agent needs root or "
            "CAP_NET_ADMIN (and CAP_SYS_ADMIN to enter a namespace)",
            errno=exc.errno,
            netns=netns,
        )
    if isinstance(exc, OSError):
        return NetlinkError(
            f"cannot open a netlink socket {where}: {exc}", errno=exc.errno, netns=netns
        )
    return exc


def _route_from_msg(msg: Any, *, dev: str) -> Route:
    dst = msg.get("dst") or "0.0.0.0"
    gateway = msg.get("gateway")
    prefsrc = msg.get("prefsrc")
    # rtm_table is 8 bits; tables above 255 are only in the RTA_TABLE attribute.
    table = msg.get("table")
    return Route(
        dst=IPv4Network(f"{dst}/{int(msg['dst_len'])}"),
        dev=dev,
        gateway=IPv4Address(str(gateway)) if gateway else None,
        table=int(table if table is not None else msg["table"]),
        metric=int(msg.get("priority") or 0),
        src=IPv4Address(str(prefsrc)) if prefsrc else None,
    )
