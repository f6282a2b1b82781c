"""The server's desired state: which clients may connect, with which address and routes.

Desired state of the server (`desired_path`), re-read whenever it changes:

    {"apiserver": {"common_name": "apiserver", "ifconfig_ip": "198.18.8.2",
                   "push_routes": [], "serial": "3f9a...", "serials": ["3f9a..."]},
     "clients": [{"common_name": "node-1", "ifconfig_ip": "198.18.8.11",
                  "iroutes": ["198.19.0.11/32", "198.19.65.0/24"], "push_routes": [],
                  "kubelet": "198.19.0.11:10250", "serial": "5b01...",
                  "serials": ["4a77...", "5b01..."]}]}

    - `apiserver` may be null (then nothing may open connections through the tunnel);
    - `apiserver_replicas` (optional, default []) lists further apiserver clients, one per
      hosted apiserver replica beyond the first, each with its own common name, address
      and serials, in the same form as `apiserver`. Every apiserver client may open
      connections through the tunnel; none of them may be opened to. Left out when there
      is one replica, so a single-replica tenant's file is what older agents read;
    - `serial` is the client certificate's serial in hex (colons allowed, as `openssl x509
      -serial` prints it), or null; the server kicks a connected client the moment its
      serial appears in the CRL, so a client without one is only refused on reconnect;
    - `serials` (optional, default []) lists the serials, in the same hex form, of every
      certificate vpnctl issued for that common name that may still be in use. The server
      admits a client (openvpn `management-client-auth`, at connect and at every
      renegotiation) only if its certificate's serial is `serial` or in `serials`, and not
      in the CRL: a CA-valid certificate with an unknown serial is refused, and an entry
      with no serial at all admits nobody;
    - `kubelet` is "ip:port" inside one of the client's iroutes, or null (not probed).
    - Rejected: duplicate common names, addresses or serials; an address outside the
      tunnel CIDR or on its network, broadcast or server address; iroutes that overlap
      the tunnel CIDR or another client's iroutes. The server keeps its last good state
      and reports the error on /readyz until the file is fixed.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from ipaddress import IPv4Address, IPv4Network

from agent.config_reader import (
    NO_NETS,
    InputError,
    Problems,
    Reader,
    as_common_name,
    as_ip,
    as_list,
    as_net,
    as_opt_hostport,
    as_serial,
    join_where,
    kind_of,
    read_json,
)
from agent.openvpn.config import (
    server_address,
)


@dataclass(frozen=True, kw_only=True)
class ClientEntry:
    """One tunnel client as the server should know it."""

    common_name: str
    ifconfig_ip: IPv4Address
    iroutes: tuple[IPv4Network, ...] = ()
    push_routes: tuple[IPv4Network, ...] = ()
    kubelet: tuple[IPv4Address, int] | None = None
    serial: int | None = None
    # Every serial vpnctl issued for this common name that may still be in use.
    serials: tuple[int, ...] = ()
    is_apiserver: bool = False

    @property
    def allowed_serials(self) -> frozenset[int]:
        """The certificate serials this client may connect with (before the CRL)."""
        return frozenset(self.serials) | ({self.serial} if self.serial is not None else set())


@dataclass(frozen=True, kw_only=True)
class DesiredState:
    apiserver: ClientEntry | None
    clients: tuple[ClientEntry, ...] = ()
    # The apiserver clients after the first (one per further hosted apiserver replica).
    apiserver_replicas: tuple[ClientEntry, ...] = ()
    # Raw digest of the file the state came from, for logs ("which version is live").
    source_digest: str = field(default="", compare=False)

    @property
    def apiservers(self) -> tuple[ClientEntry, ...]:
        """Every apiserver client: the ones that may open connections to the nodes."""
        return ((self.apiserver,) if self.apiserver is not None else ()) + self.apiserver_replicas

    @property
    def entries(self) -> tuple[ClientEntry, ...]:
        """The apiserver clients and every node client."""
        return self.apiservers + self.clients

    def serial_to_cn(self) -> dict[int, str]:
        return {s: e.common_name for e in self.entries for s in e.allowed_serials}

    def entry(self, common_name: str) -> ClientEntry | None:
        return next((e for e in self.entries if e.common_name == common_name), None)

    @property
    def routes(self) -> tuple[IPv4Network, ...]:
        """The union of all iroutes: what the server's kernel must send into tun."""
        return tuple(sorted({n for e in self.entries for n in e.iroutes}))


_CLIENT_KEYS = (
    "common_name", "ifconfig_ip", "iroutes", "push_routes", "kubelet", "serial", "serials",
)  # fmt: skip
_APISERVER_KEYS = ("common_name", "ifconfig_ip", "push_routes", "serial", "serials")


def _entry(r: Reader, raw: object, where: str, *, apiserver: bool) -> ClientEntry | None:
    def parse() -> ClientEntry:
        o = r.obj(raw, where, keys=_APISERVER_KEYS if apiserver else _CLIENT_KEYS)
        g = r.get
        name = r.soft(lambda: g(o, where, "common_name", as_common_name))
        ip = r.soft(lambda: g(o, where, "ifconfig_ip", as_ip))
        iroutes = r.soft(lambda: g(o, where, "iroutes", as_list(as_net), NO_NETS))
        push_routes = r.soft(lambda: g(o, where, "push_routes", as_list(as_net), NO_NETS))
        kubelet = r.soft(lambda: g(o, where, "kubelet", as_opt_hostport, None))
        serial = r.soft(lambda: g(o, where, "serial", as_serial, None))
        no_serials: tuple[int | None, ...] = ()
        serials = r.soft(lambda: g(o, where, "serials", as_list(as_serial), no_serials))
        if name is None or ip is None or iroutes is None or push_routes is None:
            raise Problems
        if serials is None or any(s is None for s in serials):
            if serials is not None:
                r.fail(join_where(where, "serials"), "must list hex serials, not null")
            raise Problems
        return ClientEntry(
            common_name=name,
            ifconfig_ip=ip,
            iroutes=iroutes,
            push_routes=push_routes,
            kubelet=kubelet,
            serial=serial,
            serials=tuple(s for s in serials if s is not None),
            is_apiserver=apiserver,
        )

    return r.soft(parse)


def _check_semantics(r: Reader, state: DesiredState, *, tunnel: IPv4Network) -> None:
    server_ip = server_address(tunnel)
    names: dict[str, str] = {}
    ips: dict[IPv4Address, str] = {}
    serials: dict[int, str] = {}
    owned: list[tuple[IPv4Network, str]] = []
    n_api = state.apiserver is not None
    if state.apiserver is None and state.apiserver_replicas:
        r.fail("apiserver_replicas", "must be empty while apiserver is null; "
               "list the first apiserver client under apiserver")  # fmt: skip
    for i, e in enumerate(state.entries):
        if i < n_api:
            where = "apiserver"
        elif i < n_api + len(state.apiserver_replicas):
            where = f"apiserver_replicas[{i - n_api}]"
        else:
            where = f"clients[{i - n_api - len(state.apiserver_replicas)}]"
        label = f"{where} ({e.common_name})"
        if e.common_name in names:
            r.fail(f"{where}.common_name", f"{e.common_name!r} is also used by "
                   f"{names[e.common_name]}; common names must be unique")  # fmt: skip
        names.setdefault(e.common_name, label)
        ip = e.ifconfig_ip
        if ip not in tunnel:
            r.fail(f"{where}.ifconfig_ip", f"{ip} is outside the tunnel CIDR {tunnel}; "
                   "allocate an address inside it")  # fmt: skip
        elif ip in (tunnel.network_address, tunnel.broadcast_address):
            r.fail(f"{where}.ifconfig_ip", f"{ip} is the network or broadcast address of "
                   f"{tunnel}; allocate a host address")  # fmt: skip
        elif ip == server_ip:
            r.fail(f"{where}.ifconfig_ip", f"{ip} is the server's own tunnel address; "
                   "allocate another")  # fmt: skip
        if ip in ips:
            r.fail(f"{where}.ifconfig_ip", f"{ip} is also given to {ips[ip]}; "
                   "every client needs its own address")  # fmt: skip
        ips.setdefault(ip, label)
        for serial in sorted(e.allowed_serials):
            if serial in serials:
                r.fail(f"{where}.serials", f"{serial:x} is also a serial of "
                       f"{serials[serial]}; each client has its own certificates")  # fmt: skip
            serials.setdefault(serial, label)
        for j, net in enumerate(e.push_routes):
            if net.overlaps(tunnel):
                r.fail(f"{where}.push_routes[{j}]", f"{net} overlaps the tunnel CIDR {tunnel}; "
                       "openvpn routes the tunnel itself, remove it")  # fmt: skip
        for j, net in enumerate(e.iroutes):
            loc = f"{where}.iroutes[{j}]"
            if net.overlaps(tunnel):
                r.fail(loc, f"{net} overlaps the tunnel CIDR {tunnel}; remove it")
                continue
            for other, whose in owned:
                if net.overlaps(other):
                    r.fail(loc, f"{net} overlaps {other}, an iroute of {whose}; a network "
                           "must be routed to exactly one client, remove one of them")  # fmt: skip
            owned.append((net, label))
        if e.kubelet is not None:
            kip = e.kubelet[0]
            if not any(kip in net for net in e.iroutes):
                r.fail(f"{where}.kubelet", f"{kip} is not inside any iroute of {label}; the "
                       "probe would not go through this client's tunnel, add the node's "
                       "InternalIP/32 to its iroutes")  # fmt: skip


def parse_desired(doc_raw: object, *, path: str, tunnel_cidr: IPv4Network) -> DesiredState:
    """Validate a parsed desired-state document (see the module docstring)."""
    r = Reader(path)
    state: DesiredState | None = None
    try:
        doc = r.obj(doc_raw, "", keys=("apiserver", "apiserver_replicas", "clients"))
        api = doc.get("apiserver")
        api_entry = None if api is None else _entry(r, api, "apiserver", apiserver=True)
        replicas_raw = doc.get("apiserver_replicas", [])
        if not isinstance(replicas_raw, list):
            r.fail("apiserver_replicas", f"must be a list, got {kind_of(replicas_raw)}")
            raise Problems
        replicas = [
            _entry(r, a, f"apiserver_replicas[{i}]", apiserver=True)
            for i, a in enumerate(replicas_raw)
        ]
        clients_raw = doc.get("clients", [])
        if not isinstance(clients_raw, list):
            r.fail("clients", f"must be a list, got {kind_of(clients_raw)}")
            raise Problems
        entries = [
            _entry(r, c, f"clients[{i}]", apiserver=False) for i, c in enumerate(clients_raw)
        ]
        if not r.problems:
            state = DesiredState(
                apiserver=api_entry,
                clients=tuple(e for e in entries if e is not None),
                apiserver_replicas=tuple(a for a in replicas if a is not None),
            )
            _check_semantics(r, state, tunnel=tunnel_cidr)
    except Problems:
        pass
    if r.problems or state is None:
        raise InputError(path, r.problems or ["the file could not be read as a desired state"])
    return state


def load_desired(path: str, *, tunnel_cidr: IPv4Network) -> DesiredState:
    """Read and validate the server's desired state at PATH; raises InputError."""
    return parse_desired(read_json(path), path=path, tunnel_cidr=tunnel_cidr)
