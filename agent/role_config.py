"""The agent's role config: one file per process, read once at startup (the apiserver
role alone re-reads its `routes`).

Role config (`python -m agent <role> --config FILE`). Common keys of every role:

    health_address   "host:port" the /healthz, /readyz, /metrics server binds (default
                     "0.0.0.0:9100")
    state_dir        absolute path of a directory the agent owns; it writes the rendered
                     openvpn config there
    openvpn_binary   path or name of openvpn (default "openvpn")
    openvpn_log      optional absolute path; openvpn's stdout and stderr are appended there

server role:

    {"openvpn": {"proto": "udp", "port": 1194, "listen": "198.18.0.1",
                 "tunnel_cidr": "198.18.8.0/24", "dev": "tun0",
                 "ca": "/pki/ca.pem", "cert": "/pki/server.pem", "key": "/pki/server.key",
                 "tls_crypt_v2": "/pki/tc2-server.key", "ccd_dir": "/run/vpnctl/ccd",
                 "management": "/run/vpnctl/server.sock", "crl": "/run/vpnctl/crl.pem",
                 "keepalive": [1, 5], "reneg_sec": 3600, "verb": 3,
                 "user": "nobody", "group": "nogroup"},
     "desired_path": "/etc/vpnctl/desired.json",
     "crl_source": "/etc/vpnctl/crl.pem",
     "probe_port": 7947, "status_interval": 1.0,
     "kubelet_probe_interval": 2.0, "kubelet_probe_timeout": 1.0,
     "firewall": true, ...common keys}

    `openvpn.user`/`openvpn.group` (every role): who openvpn runs as once started
    (default nobody/nogroup; null keeps root). `openvpn.crl` is where openvpn's
    `crl-verify` reads; the agent installs `crl_source` there (validated against the CA)
    and never lets openvpn read `crl_source` directly. `openvpn.reneg_sec` (every role,
    optional, 10..86400, default 3600): seconds between TLS renegotiations; the controller
    writes the Tunnel's `spec.transport.renegotiateSeconds` into every role, because the
    end with the shorter interval decides.

node and apiserver roles (the apiserver adds `routes`):

    {"openvpn": {"proto": "udp", "remotes": [["198.18.0.1", 1194]], "dev": "tun0",
                 "ca": ..., "cert": ..., "key": ..., "tls_crypt_v2": ...,
                 "management": "/run/vpnctl/client.sock",
                 "connect_retry": [1, 5], "keepalive": [1, 5], "server_poll_timeout": 10,
                 "reneg_sec": 3600, "verb": 3, "user": "nobody", "group": "nogroup"},
     "probe": {"target": "198.18.8.1:7947", "interval": 1.0, "timeout": 1.0, "misses": 3},
     "routes": ["198.19.0.0/24", "198.19.64.0/18", "198.19.192.0/20"],   # apiserver only
     "bootstrap": {...},                                                   # node only
     ...common keys}

    apiserver role, `routes`: the tenant's networks the hosted apiserver reaches through
    the tunnel (the controller writes pods, services, extraRoutes and each node address
    those do not cover). The role is their one owner: it keeps them on tun (proto 211),
    puts back one deleted by hand within a second without a reconnect, and re-reads
    `routes` from this file every second (the only key it re-reads; everything else is
    read once at startup). The server pushes the apiserver no routes.

    apiserver role, optional `slot`: {"file": ..., "dir": ...}. Each replica of the
    hosted apiserver connects with its own identity, the slot the controller wrote on its
    pod (agent/apiserver_slot.py): `file` is a downward-API file holding that slot's
    number, `dir/<n>/` holds slot n's tls.crt, tls.key, ca.crt and
    tls-crypt-v2-client.key. Slot 0 is `openvpn`'s own paths.

    node role, optional `bootstrap`: the node makes its own key and gets its certificate
    with a CSR (agent/bootstrap.py) instead of having them mounted. `openvpn.key` and
    `openvpn.cert` are then where it writes them (a host directory), `openvpn.ca` is the
    tunnel CA the certificate must chain to:

    {"server": "https://198.18.0.10:6443",          # the tenant apiserver, as nodes reach it
     "ca": "/etc/vpnctl/tenant-ca.crt",             # CA of that apiserver's serving cert
     "client_cert": "/var/lib/kubelet/pki/kubelet-client-current.pem",
     "client_key": "/var/lib/kubelet/pki/kubelet-client-current.pem",   # default client_cert
     "node_name": null,          # default: the NODE_NAME environment variable
     "expiration_seconds": null, # ask for a shorter certificate (>= 600)
     "renew_fraction": 0.66,     # renew after this part of the lifetime (0 < f <= 1)
     "timeout": 300,             # seconds to wait for one CSR's answer before retrying
     "retry": [2, 300]}          # backoff between failed attempts, min and max seconds
"""

from __future__ import annotations

import contextlib
import urllib.parse
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from ipaddress import IPv4Address, IPv4Network
from typing import Any, Literal, TypeVar

from agent.config_reader import (
    NO_NETS,
    FieldError,
    InputError,
    Problems,
    Reader,
    as_abspath,
    as_any,
    as_bool,
    as_common_name,
    as_hostport,
    as_int,
    as_list,
    as_listen,
    as_net,
    as_opt_abspath,
    as_opt_ip,
    as_opt_str,
    as_pair,
    as_port,
    as_proto,
    as_remote,
    as_seconds,
    as_str,
    join_where,
    kind_of,
    read_json,
)
from agent.openvpn.config import (
    DEFAULT_RENEG_SEC,
    MAX_RENEG_SEC,
    MIN_RENEG_SEC,
    ClientConfig,
    ConfigError,
    ServerConfig,
    server_address,
)

_C = TypeVar("_C", ServerConfig, ClientConfig)

Role = Literal["node", "server", "apiserver"]
ROLES: tuple[Role, ...] = ("node", "server", "apiserver")

DEFAULT_HEALTH_ADDRESS = "0.0.0.0:9100"
DEFAULT_PROBE_PORT = 7947


@dataclass(frozen=True, kw_only=True)
class Common:
    """Keys every role has."""

    health_host: str = "0.0.0.0"
    health_port: int = 9100
    state_dir: str
    openvpn_binary: str = "openvpn"
    openvpn_log: str | None = None


@dataclass(frozen=True, kw_only=True)
class SlotSettings:
    """Where an apiserver sidecar learns its slot and finds each slot's credentials."""

    file: str
    dir: str


@dataclass(frozen=True, kw_only=True)
class ProbeSettings:
    """How a client role checks its tunnel end to end (UDP echo to the server)."""

    target: tuple[IPv4Address, int]
    interval: float = 1.0
    timeout: float = 1.0
    misses: int = 3


@dataclass(frozen=True, kw_only=True)
class ServerRoleConfig:
    common: Common
    openvpn: ServerConfig
    desired_path: str
    crl_source: str
    probe_port: int = DEFAULT_PROBE_PORT
    status_interval: float = 1.0
    kubelet_probe_interval: float = 2.0
    kubelet_probe_timeout: float = 1.0
    firewall: bool = True

    @property
    def server_ip(self) -> IPv4Address:
        return server_address(self.openvpn.tunnel_cidr)


@dataclass(frozen=True, kw_only=True)
class BootstrapSettings:
    """node role: how the node obtains its own certificate with a CSR (agent.bootstrap)."""

    server: str
    ca: str
    client_cert: str
    client_key: str
    node_name: str | None = None
    expiration_seconds: int | None = None
    renew_fraction: float = 2 / 3
    timeout: float = 300.0
    retry: tuple[float, float] = (2.0, 300.0)


@dataclass(frozen=True, kw_only=True)
class ClientRoleConfig:
    """node and apiserver: an openvpn client, a probe, and (apiserver) owned routes."""

    role: Role
    common: Common
    openvpn: ClientConfig
    probe: ProbeSettings
    routes: tuple[IPv4Network, ...] = ()
    bootstrap: BootstrapSettings | None = None  # node only
    slot: SlotSettings | None = None  # apiserver only


RoleConfig = ServerRoleConfig | ClientRoleConfig

_COMMON_KEYS = ("health_address", "state_dir", "openvpn_binary", "openvpn_log")


def _common(r: Reader, doc: Mapping[str, Any]) -> Common | None:
    def parse() -> Common:
        host, port = r.get(
            doc, "", "health_address", as_listen, as_listen(DEFAULT_HEALTH_ADDRESS, "")
        )
        return Common(
            health_host=host,
            health_port=port,
            state_dir=r.get(doc, "", "state_dir", as_abspath),
            openvpn_binary=r.get(doc, "", "openvpn_binary", as_str, "openvpn"),
            openvpn_log=r.get(doc, "", "openvpn_log", as_opt_abspath, None),
        )

    return r.soft(parse)


_SERVER_OVPN_KEYS = (
    "proto", "port", "listen", "tunnel_cidr", "dev", "ca", "cert", "key", "tls_crypt_v2",
    "ccd_dir", "management", "crl", "keepalive", "reneg_sec", "max_clients", "verb", "user",
    "group",
)  # fmt: skip
_CLIENT_OVPN_KEYS = (
    "proto", "remotes", "dev", "ca", "cert", "key", "tls_crypt_v2", "management",
    "connect_retry", "keepalive", "reneg_sec", "server_poll_timeout", "verb", "user", "group",
)  # fmt: skip


# (key, converter) pairs of an openvpn section; every key after the paths is optional.
_Fields = tuple[tuple[str, Callable[[object, str], Any]], ...]
_PATHS: _Fields = tuple(
    (key, as_abspath) for key in ("ca", "cert", "key", "tls_crypt_v2")
)  # fmt: skip


def _reneg_sec(value: object, where: str) -> int:
    seconds = as_int(value, where)
    if not MIN_RENEG_SEC <= seconds <= MAX_RENEG_SEC:
        raise FieldError(
            f"{seconds} s is out of range; use {MIN_RENEG_SEC}..{MAX_RENEG_SEC} seconds "
            f"between TLS renegotiations, or leave it out for {DEFAULT_RENEG_SEC}"
        )
    return seconds


def _openvpn_section(
    r: Reader,
    raw: object,
    *,
    keys: Sequence[str],
    required: _Fields,
    optional: _Fields,
    build: Callable[..., _C],
) -> _C | None:
    """Parse the role's `openvpn` section: REQUIRED keys in order, then the OPTIONAL ones
    present, and BUILD the config; a `ConfigError` from BUILD is a problem at `openvpn`."""
    where = "openvpn"

    def parse() -> _C:
        o = r.obj(raw, where, keys=keys)
        kwargs: dict[str, Any] = {key: r.get(o, where, key, conv) for key, conv in required}
        for key, conv in optional:
            if key in o:
                kwargs[key] = r.get(o, where, key, conv)
        try:
            return build(**kwargs)
        except ConfigError as e:
            r.fail(where, f"{e}")
            raise Problems from None

    return r.soft(parse)


def _server_openvpn(r: Reader, raw: object) -> ServerConfig | None:
    return _openvpn_section(
        r, raw, keys=_SERVER_OVPN_KEYS, build=ServerConfig,
        required=(
            ("tunnel_cidr", as_net), *_PATHS, ("ccd_dir", as_abspath),
            ("management", as_abspath), ("crl", as_abspath),
        ),
        optional=(
            ("proto", as_proto), ("port", as_port), ("listen", as_opt_ip), ("dev", as_str),
            ("keepalive", as_pair), ("reneg_sec", _reneg_sec), ("max_clients", as_int),
            ("verb", as_int), ("user", as_opt_str), ("group", as_opt_str),
        ),
    )  # fmt: skip


def _client_openvpn(r: Reader, raw: object) -> ClientConfig | None:
    return _openvpn_section(
        r, raw, keys=_CLIENT_OVPN_KEYS, build=ClientConfig,
        required=(("remotes", as_list(as_remote)), *_PATHS, ("management", as_abspath)),
        optional=(
            ("proto", as_proto), ("dev", as_str), ("connect_retry", as_pair),
            ("keepalive", as_pair), ("reneg_sec", _reneg_sec),
            ("server_poll_timeout", as_int), ("verb", as_int),
            ("user", as_opt_str), ("group", as_opt_str),
        ),
    )  # fmt: skip


def _probe(r: Reader, raw: object) -> ProbeSettings | None:
    where = "probe"

    def parse() -> ProbeSettings:
        o = r.obj(raw, where, keys=("target", "interval", "timeout", "misses"))
        misses = r.get(o, where, "misses", as_int, default=3)
        if not 1 <= misses <= 100:
            r.fail(join_where(where, "misses"), f"{misses} is out of range; use 1..100")
            raise Problems
        interval = r.get(o, where, "interval", as_seconds(0.1, 60.0), default=1.0)
        timeout = r.get(o, where, "timeout", as_seconds(0.05, 60.0), default=min(1.0, interval))
        if timeout > interval:
            r.fail(
                join_where(where, "timeout"),
                f"{timeout} s is longer than the interval {interval} s; probes would overlap, "
                "make it at most the interval",
            )
            raise Problems
        return ProbeSettings(
            target=r.get(o, where, "target", as_hostport),
            interval=interval,
            timeout=timeout,
            misses=misses,
        )

    return r.soft(parse)


def _server_role(r: Reader, doc_raw: object) -> ServerRoleConfig | None:
    keys = (*_COMMON_KEYS, "openvpn", "desired_path", "crl_source", "probe_port",
            "status_interval", "kubelet_probe_interval", "kubelet_probe_timeout",
            "firewall")  # fmt: skip
    doc = r.obj(doc_raw, "", keys=keys)
    common = _common(r, doc)
    ovpn = r.soft(lambda: _server_openvpn(r, r.get(doc, "", "openvpn", as_any)))

    def rest() -> dict[str, Any]:
        g = r.get
        return {
            "desired_path": g(doc, "", "desired_path", as_abspath),
            "crl_source": g(doc, "", "crl_source", as_abspath),
            "probe_port": g(doc, "", "probe_port", as_port, DEFAULT_PROBE_PORT),
            "status_interval": g(doc, "", "status_interval", as_seconds(0.1, 60.0), 1.0),
            "kubelet_probe_interval": g(
                doc, "", "kubelet_probe_interval", as_seconds(0.2, 600.0), 2.0
            ),
            "kubelet_probe_timeout": g(
                doc, "", "kubelet_probe_timeout", as_seconds(0.05, 60.0), 1.0
            ),
            "firewall": g(doc, "", "firewall", as_bool, True),
        }

    others = r.soft(rest)
    if common is None or ovpn is None or others is None:
        return None
    return ServerRoleConfig(common=common, openvpn=ovpn, **others)


_BOOTSTRAP_KEYS = (
    "server", "ca", "client_cert", "client_key", "node_name", "expiration_seconds",
    "renew_fraction", "timeout", "retry",
)  # fmt: skip


def _https_url(value: object, where: str) -> str:
    text = as_str(value, where)
    parsed = urllib.parse.urlsplit(text)
    if parsed.scheme != "https" or not parsed.hostname or parsed.path not in ("", "/"):
        raise FieldError(
            f"{text!r} must be the tenant apiserver's https URL, like https://198.18.0.10:6443"
        )
    try:
        parsed.port  # noqa: B018 (raises on a bad port)
    except ValueError:
        raise FieldError(f"{text!r} has an invalid port") from None
    return text.rstrip("/")


def _fraction(value: object, _where: str) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or not 0 < value <= 1:
        raise FieldError(f"must be a number in (0, 1] like 0.66, got {kind_of(value)}")
    return float(value)


def _opt_expiration(value: object, where: str) -> int | None:
    if value is None:
        return None
    seconds = as_int(value, where)
    if seconds < 600:
        raise FieldError(f"{seconds} s is below the 600 s the Kubernetes API accepts")
    return seconds


def _opt_node_name(value: object, where: str) -> str | None:
    return None if value is None else as_common_name(value, where)


def _retry(value: object, where: str) -> tuple[float, float]:
    if not isinstance(value, list) or len(value) != 2:
        raise FieldError(f"must be [min, max] seconds like [2, 300], got {kind_of(value)}")
    low = as_seconds(0.1, 3600.0)(value[0], where)
    high = as_seconds(0.1, 3600.0)(value[1], where)
    if low > high:
        raise FieldError(f"min {low} s is above max {high} s; swap them")
    return (low, high)


def _bootstrap(r: Reader, raw: object) -> BootstrapSettings | None:
    where = "bootstrap"

    def parse() -> BootstrapSettings:
        o = r.obj(raw, where, keys=_BOOTSTRAP_KEYS)
        g = r.get
        cert = g(o, where, "client_cert", as_abspath)
        return BootstrapSettings(
            server=g(o, where, "server", _https_url),
            ca=g(o, where, "ca", as_abspath),
            client_cert=cert,
            client_key=g(o, where, "client_key", as_abspath, cert),
            node_name=g(o, where, "node_name", _opt_node_name, None),
            expiration_seconds=g(o, where, "expiration_seconds", _opt_expiration, None),
            renew_fraction=g(o, where, "renew_fraction", _fraction, 2 / 3),
            timeout=g(o, where, "timeout", as_seconds(1.0, 3600.0), 300.0),
            retry=g(o, where, "retry", _retry, (2.0, 300.0)),
        )

    return r.soft(parse)


def _client_role(r: Reader, doc_raw: object, *, role: Role) -> ClientRoleConfig | None:
    keys = (
        *_COMMON_KEYS,
        "openvpn",
        "probe",
        *(("routes", "slot") if role == "apiserver" else ()),
        *(("bootstrap",) if role == "node" else ()),
    )
    doc = r.obj(doc_raw, "", keys=keys)
    common = _common(r, doc)
    ovpn = r.soft(lambda: _client_openvpn(r, r.get(doc, "", "openvpn", as_any)))
    probe = r.soft(lambda: _probe(r, r.get(doc, "", "probe", as_any)))
    routes = r.soft(lambda: r.get(doc, "", "routes", as_list(as_net), NO_NETS))
    bootstrap: BootstrapSettings | None = None
    if doc.get("bootstrap") is not None:
        bootstrap = _bootstrap(r, doc["bootstrap"])
        if bootstrap is None:
            return None
    slot: SlotSettings | None = None
    if doc.get("slot") is not None:
        slot = r.soft(lambda: _slot(r, doc["slot"]))
        if slot is None:
            return None
    if common is None or ovpn is None or probe is None or routes is None:
        return None
    return ClientRoleConfig(
        role=role, common=common, openvpn=ovpn, probe=probe, routes=routes,
        bootstrap=bootstrap, slot=slot,
    )  # fmt: skip


def _slot(r: Reader, raw: object) -> SlotSettings:
    o = r.obj(raw, "slot", keys=("file", "dir"))
    return SlotSettings(
        file=r.get(o, "slot", "file", as_abspath), dir=r.get(o, "slot", "dir", as_abspath)
    )


def load_role_config(path: str, *, role: Role) -> RoleConfig:
    """Read and validate the config of ROLE at PATH; raises InputError listing every problem."""
    doc_raw = read_json(path)
    r = Reader(path)
    result: RoleConfig | None = None
    with contextlib.suppress(Problems):
        if role == "server":
            result = _server_role(r, doc_raw)
        else:
            result = _client_role(r, doc_raw, role=role)
    if r.problems or result is None:
        raise InputError(path, r.problems or ["the file could not be read as a config"])
    return result
