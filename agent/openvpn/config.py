"""Render openvpn server, client and per-client (CCD) configuration from typed inputs.

Why this module is pure and strict: everything here ends up as lines of an openvpn config
file, and openvpn's parser treats a newline as "next directive" and whitespace or quotes as
argument separators. A node name or path carrying a newline could smuggle in `script-security
3` / `up /bin/sh`. So every value is validated before rendering, every rendered argument is a
single bare token, and an invalid input raises `ConfigError` naming the field and value.

Choices that are not obvious, with the openvpn(8) reasoning:

- The server uses the `server <net> <mask> nopool` helper with `topology subnet`: it expands
  to `mode server`, `tls-server`, `ifconfig <.1> <mask>` and the pushed `topology` and
  `route-gateway`. `nopool` because stable addresses come only from CCD `ifconfig-push`,
  together with `ccd-exclusive` (a client without a CCD file is refused): nothing in the pool
  can ever collide with an address we allocated.
- No `client-to-client`: node-to-node traffic must leave openvpn through tun so the server
  pod's firewall sees it (and drops it).
- `user`/`group` (default nobody/nogroup) on both sides: openvpn drops root once tun,
  sockets and keys are open (openvpn 2.6 on Linux keeps only CAP_NET_ADMIN, for routes and
  tun). What it re-reads afterwards must be readable by that user: the CRL (`crl-verify`,
  re-read when it changes) and the CCD files (read at each connect); the agent writes both
  0644 in directories of their own. The management socket stays open across the drop.
- `persist-key` and `persist-tun` on both sides: after the drop openvpn could not re-read
  its key or re-create tun on a soft restart (SIGUSR1, ping-restart). On the client
  persist-tun also keeps tun and the pushed routes across a reconnect, so traffic for the
  tenant networks is dropped rather than leaking onto the direct path while the tunnel
  recovers. A full restart is a new process, started as root by the agent's supervisor.
- `management-client-auth` on the server: openvpn holds every client that passed TLS until
  the agent answers `client-auth`/`client-deny` (agent/roles/server_auth.py), so only a
  certificate serial vpnctl issued for that common name gets in; a CA-valid certificate
  is not enough. While nobody answers, nobody gets in.
- `explicit-exit-notify 1` is rendered for UDP on both sides: the client tells the server it
  is leaving, and a UDP server that restarts sends RESTART to its clients so they reconnect
  at once instead of waiting for ping-restart. openvpn refuses it with TCP.
- `fast-io` only with UDP (openvpn ignores or refuses it otherwise).
- `sndbuf`/`rcvbuf` of 2 MiB with UDP (`UDP_SOCKET_BUFFER`). openvpn is one thread that
  relays every packet; when it is short of CPU (a busy node, or the server relaying for
  many clients) its UDP socket fills, and with the operating system's default (208 KiB)
  the kernel drops datagrams: bench/dataplane.py counted 32,407 receive-buffer drops in
  4 s of iperf3 through the tunnel on the 2-core development machine, none with 2 MiB.
  Each drop is a loss the TCP inside sees and backs off for (a TCP tunnel has flow
  control instead). The kernel caps the request at `net.core.rmem_max`/`wmem_max`;
  where those are smaller, openvpn gets the cap and works as before.
- `reneg-sec N` on both sides, the same N: either end starts a TLS renegotiation when
  its own timer runs out, so the shorter of the two wins and setting only one end changes
  nothing against openvpn's default of 3600 s on the other. The server picks each
  session's interval at random in [0.9 N, N], the client uses N. Every renegotiation is a
  new `>CLIENT:REAUTH` question to the server agent (management-client-auth).
- `dh none`: ECDHE only, no DH parameter file to manage.
- `script-security 1` and no script hooks: the agent does everything a script would.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from ipaddress import IPv4Address, IPv4Network
from typing import Literal

Proto = Literal["udp", "tcp"]

DATA_CIPHERS = "AES-256-GCM:CHACHA20-POLY1305"
TLS_VERSION_MIN = "1.2"
# UDP socket send and receive buffer, bytes (see the module docstring: sndbuf/rcvbuf).
UDP_SOCKET_BUFFER = 2 * 1024 * 1024

_MAX_COMMON_NAME = 64
_DNS1123_SUBDOMAIN = re.compile(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*")
_HOSTNAME = re.compile(
    r"[A-Za-z0-9]([-A-Za-z0-9]*[A-Za-z0-9])?(\.[A-Za-z0-9]([-A-Za-z0-9]*[A-Za-z0-9])?)*", re.ASCII
)
_IFNAME = re.compile(r"[A-Za-z0-9_-]{1,15}")
# Characters that openvpn's config lexer treats specially, or that end a directive.
_UNSAFE_PATH_CHARS = re.compile(r"[\s\"'\\#;\x00-\x1f\x7f]")
_SUN_PATH_MAX = 107  # sizeof(sockaddr_un.sun_path) - 1 on Linux
_ACCOUNT = re.compile(r"[a-z_][a-z0-9_-]{0,31}")
DEFAULT_USER = "nobody"
DEFAULT_GROUP = "nogroup"
# TLS renegotiation interval (reneg-sec), seconds: openvpn's default, and the bounds
# vpnctl allows. Below 10 s the handshakes (and the server's REAUTH questions) of many
# nodes would be a load of their own; above a day a key lives longer than is wise.
DEFAULT_RENEG_SEC = 3600
MIN_RENEG_SEC = 10
MAX_RENEG_SEC = 86400


class ConfigError(ValueError):
    """An input to a rendering function is invalid; the message names the field and value."""


def validate_common_name(name: str) -> str:
    """Return `name` if it is a safe client common name, else raise ConfigError.

    A common name becomes a CCD file name and a management `kill` argument, so it must be a
    DNS-1123 subdomain (what Kubernetes allows for node names) and at most 64 characters,
    the X.509 upper bound for a CN.
    """
    if not isinstance(name, str):
        raise ConfigError(f"common name must be a string, got {type(name).__name__} {name!r}")
    if len(name) > _MAX_COMMON_NAME:
        raise ConfigError(
            f"common name {name!r} is {len(name)} characters long; "
            f"at most {_MAX_COMMON_NAME} are allowed (X.509 CN limit)"
        )
    if not _DNS1123_SUBDOMAIN.fullmatch(name):
        raise ConfigError(
            f"common name {name!r} is not a DNS-1123 subdomain: use lower-case letters, "
            "digits, '-' and '.', starting and ending with a letter or digit"
        )
    return name


def _check_path(field: str, value: str) -> None:
    if not isinstance(value, str) or not value:
        raise ConfigError(f"{field} must be a non-empty path, got {value!r}")
    if not value.startswith("/"):
        raise ConfigError(f"{field} {value!r} must be an absolute path")
    if _UNSAFE_PATH_CHARS.search(value):
        raise ConfigError(
            f"{field} {value!r} contains whitespace, a quote, a backslash, '#', ';' or a "
            "control character, which openvpn's config parser would split or reinterpret"
        )


def _check_management_path(field: str, value: str) -> None:
    _check_path(field, value)
    if len(value.encode()) > _SUN_PATH_MAX:
        raise ConfigError(
            f"{field} {value!r} is {len(value.encode())} bytes; a unix socket path may be at "
            f"most {_SUN_PATH_MAX} bytes, use a shorter directory"
        )


def _check_account(field: str, value: str | None) -> None:
    if value is not None and (not isinstance(value, str) or not _ACCOUNT.fullmatch(value)):
        raise ConfigError(
            f"{field} {value!r} is not a user or group name (lower-case letters, digits, "
            "'_' and '-', at most 32); use null to keep openvpn running as root"
        )


def _check_int(field: str, value: int, *, low: int, high: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        raise ConfigError(f"{field} must be an integer in {low}..{high}, got {value!r}")


def _check_port(field: str, value: int) -> None:
    _check_int(field, value, low=1, high=65535)


def _check_proto(field: str, value: str) -> None:
    if value not in ("udp", "tcp"):
        raise ConfigError(f"{field} must be 'udp' or 'tcp', got {value!r}")


def _check_dev(field: str, value: str) -> None:
    if not isinstance(value, str) or not _IFNAME.fullmatch(value):
        raise ConfigError(
            f"{field} {value!r} is not a valid interface name: 1 to 15 of letters, digits, "
            "'_' and '-'"
        )


def _check_network(field: str, value: object) -> IPv4Network:
    if not isinstance(value, IPv4Network):
        raise ConfigError(f"{field} must be an IPv4Network, got {type(value).__name__} {value!r}")
    return value


def _check_networks(field: str, values: object) -> tuple[IPv4Network, ...]:
    if not isinstance(values, Sequence) or isinstance(values, str | bytes):
        raise ConfigError(f"{field} must be a sequence of IPv4Network, got {values!r}")
    return tuple(_check_network(f"{field}[{i}]", v) for i, v in enumerate(values))


def _check_outside_tunnel(field: str, nets: Sequence[IPv4Network], tunnel: IPv4Network) -> None:
    for net in nets:
        if net.overlaps(tunnel):
            raise ConfigError(
                f"{field} entry {net} overlaps the tunnel CIDR {tunnel}; the tunnel subnet is "
                "routed by openvpn itself, remove it from the list or pick another tunnel CIDR"
            )


def _check_timer_pair(field: str, value: tuple[int, int], *, ratio: int) -> None:
    if (
        not isinstance(value, tuple)
        or len(value) != 2
        or not all(isinstance(v, int) and not isinstance(v, bool) for v in value)
    ):
        raise ConfigError(f"{field} must be a pair of integers, got {value!r}")
    first, second = value
    if first < 1 or second < first * ratio:
        raise ConfigError(
            f"{field} {value!r} is invalid: the first value must be >= 1 and the second at "
            f"least {ratio} times the first"
        )


def _check_tunnel_cidr(field: str, value: object) -> IPv4Network:
    net = _check_network(field, value)
    if net.prefixlen > 30:
        raise ConfigError(
            f"{field} {net} is too small: it must hold the server address and at least one "
            "client, use a prefix of /30 or shorter"
        )
    return net


def server_address(tunnel_cidr: IPv4Network) -> IPv4Address:
    """The server's own tunnel address: the first host of the tunnel CIDR (the helper's .1)."""
    return tunnel_cidr.network_address + 1


@dataclass(frozen=True, kw_only=True)
class TunnelConfig:
    """What the server and the client configs share, and its checks."""

    proto: Proto = "udp"
    dev: str = "tun0"
    ca: str
    cert: str
    key: str
    tls_crypt_v2: str
    management: str
    # (ping interval, restart timeout): failure detection, and so recovery, takes seconds.
    keepalive: tuple[int, int] = (1, 5)
    # Seconds between TLS renegotiations (new data-channel keys); both ends render it.
    reneg_sec: int = DEFAULT_RENEG_SEC
    verb: int = 3
    txqueuelen: int = 1000
    # The unprivileged user and group openvpn switches to after start (None: stay root).
    user: str | None = DEFAULT_USER
    group: str | None = DEFAULT_GROUP

    def _check_shared(self) -> None:
        _check_proto("proto", self.proto)
        _check_account("user", self.user)
        _check_account("group", self.group)
        _check_dev("dev", self.dev)
        for field in ("ca", "cert", "key", "tls_crypt_v2"):
            _check_path(field, getattr(self, field))
        _check_management_path("management", self.management)
        _check_timer_pair("keepalive", self.keepalive, ratio=2)
        _check_int("reneg_sec", self.reneg_sec, low=MIN_RENEG_SEC, high=MAX_RENEG_SEC)
        _check_int("verb", self.verb, low=0, high=11)
        _check_int("txqueuelen", self.txqueuelen, low=1, high=100000)


@dataclass(frozen=True, kw_only=True)
class ServerConfig(TunnelConfig):
    port: int = 1194
    listen: IPv4Address | None = None
    tunnel_cidr: IPv4Network
    crl: str | None
    ccd_dir: str
    # Kernel routes the server installs towards tun: the union of all clients' iroutes.
    routes: Sequence[IPv4Network] = ()
    max_clients: int = 1024
    status_file: str | None = None

    def __post_init__(self) -> None:
        self._check_shared()
        _check_port("port", self.port)
        if self.listen is not None and not isinstance(self.listen, IPv4Address):
            raise ConfigError(f"listen must be an IPv4Address or None, got {self.listen!r}")
        tunnel = _check_tunnel_cidr("tunnel_cidr", self.tunnel_cidr)
        _check_path("ccd_dir", self.ccd_dir)
        if self.crl is not None:
            _check_path("crl", self.crl)
        if self.status_file is not None:
            _check_path("status_file", self.status_file)
        routes = _check_networks("routes", self.routes)
        _check_outside_tunnel("routes", routes, tunnel)
        object.__setattr__(self, "routes", routes)
        _check_int("max_clients", self.max_clients, low=1, high=65535)


@dataclass(frozen=True, kw_only=True)
class ClientConfig(TunnelConfig):
    remotes: Sequence[tuple[str, int]]
    # Extra routes the client installs itself; normally the server pushes them instead.
    routes: Sequence[IPv4Network] = ()
    # (initial wait, max wait) between connection attempts.
    connect_retry: tuple[int, int] = (1, 5)
    # Give up on a silent remote after this many seconds (openvpn's default is 120).
    server_poll_timeout: int = 10

    def __post_init__(self) -> None:
        self._check_shared()
        remotes_in: object = self.remotes
        if (
            not isinstance(remotes_in, Sequence)
            or isinstance(remotes_in, str | bytes)
            or not remotes_in
        ):
            raise ConfigError(
                f"remotes must be a non-empty list of (host, port), got {self.remotes!r}"
            )
        remotes = tuple(remotes_in)
        for i, remote in enumerate(remotes):
            if not isinstance(remote, tuple) or len(remote) != 2:
                raise ConfigError(f"remotes[{i}] must be a (host, port) pair, got {remote!r}")
            host, port = remote
            if not isinstance(host, str) or len(host) > 253 or not _HOSTNAME.fullmatch(host):
                raise ConfigError(f"remotes[{i}] host {host!r} is not a hostname or IPv4 address")
            _check_port(f"remotes[{i}] port", port)
        object.__setattr__(self, "remotes", remotes)
        object.__setattr__(self, "routes", _check_networks("routes", self.routes))
        _check_timer_pair("connect_retry", self.connect_retry, ratio=1)
        _check_int("server_poll_timeout", self.server_poll_timeout, low=1, high=3600)


@dataclass(frozen=True, kw_only=True)
class CCDEntry:
    common_name: str
    ifconfig_ip: IPv4Address
    iroutes: Sequence[IPv4Network] = ()
    push_routes: Sequence[IPv4Network] = ()

    def __post_init__(self) -> None:
        validate_common_name(self.common_name)
        if not isinstance(self.ifconfig_ip, IPv4Address):
            raise ConfigError(
                f"ifconfig_ip of {self.common_name!r} must be an IPv4Address, "
                f"got {self.ifconfig_ip!r}"
            )
        object.__setattr__(
            self, "iroutes", _check_networks(f"iroutes of {self.common_name!r}", self.iroutes)
        )
        object.__setattr__(
            self,
            "push_routes",
            _check_networks(f"push_routes of {self.common_name!r}", self.push_routes),
        )


def _route_args(net: IPv4Network) -> str:
    return f"{net.network_address} {net.netmask}"


def _keepalive_account_and_material(cfg: TunnelConfig) -> list[str]:
    """The lines both ends render alike: timers, persistence, account, certificate files."""
    return [
        f"keepalive {cfg.keepalive[0]} {cfg.keepalive[1]}",
        f"reneg-sec {cfg.reneg_sec}",
        "persist-key",
        "persist-tun",
        *_drop_privileges(cfg.user, cfg.group),
        f"ca {cfg.ca}",
        f"cert {cfg.cert}",
        f"key {cfg.key}",
    ]


def _drop_privileges(user: str | None, group: str | None) -> list[str]:
    return [*([f"user {user}"] if user else []), *([f"group {group}"] if group else [])]


def _udp_buffers() -> list[str]:
    return [f"sndbuf {UDP_SOCKET_BUFFER}", f"rcvbuf {UDP_SOCKET_BUFFER}"]


def _lines(directives: Sequence[str]) -> str:
    return "".join(f"{d}\n" for d in directives)


def render_server(cfg: ServerConfig) -> str:
    """The server's config file; one directive per line, every argument a bare token."""
    net = cfg.tunnel_cidr
    d: list[str] = [
        "# rendered by vpnctl agent; do not edit",
        f"proto {'udp4' if cfg.proto == 'udp' else 'tcp4-server'}",
        f"port {cfg.port}",
    ]
    if cfg.listen is not None:
        d.append(f"local {cfg.listen}")
    d += [
        f"dev {cfg.dev}",
        "dev-type tun",
        f"txqueuelen {cfg.txqueuelen}",
        "topology subnet",
        f"server {net.network_address} {net.netmask} nopool",
        f"client-config-dir {cfg.ccd_dir}",
        "ccd-exclusive",
        f"max-clients {cfg.max_clients}",
        *_keepalive_account_and_material(cfg),
        "dh none",
        f"tls-crypt-v2 {cfg.tls_crypt_v2}",
        "remote-cert-tls client",
        f"tls-version-min {TLS_VERSION_MIN}",
        f"data-ciphers {DATA_CIPHERS}",
    ]
    if cfg.crl is not None:
        d.append(f"crl-verify {cfg.crl}")
    d += [f"route {_route_args(r)}" for r in cfg.routes]
    if cfg.proto == "udp":
        d += ["explicit-exit-notify 1", "fast-io", *_udp_buffers()]
    else:
        # Without TCP_NODELAY, Nagle on the tunnel's TCP socket meets delayed ACKs of the
        # TCP inside it: new connections through the tunnel took ~220 ms instead of ~8 ms
        # (bench/dataplane.py). The macro also pushes the flag to clients.
        d.append("tcp-nodelay")
    d += [
        f"management {cfg.management} unix",
        "management-client-auth",
        # The question is about the certificate; no username/password is asked for.
        "auth-user-pass-optional",
        "script-security 1",
        f"verb {cfg.verb}",
    ]
    if cfg.status_file is not None:
        d += [f"status {cfg.status_file} 10", "status-version 3"]
    return _lines(d)


def render_client(cfg: ClientConfig) -> str:
    """A client's config file; it pulls its address and routes from the server's CCD."""
    d: list[str] = [
        "# rendered by vpnctl agent; do not edit",
        "client",
        f"proto {'udp' if cfg.proto == 'udp' else 'tcp-client'}",
    ]
    d += [f"remote {host} {port}" for host, port in cfg.remotes]
    d += [
        "nobind",
        "resolv-retry infinite",
        f"connect-retry {cfg.connect_retry[0]} {cfg.connect_retry[1]}",
        f"server-poll-timeout {cfg.server_poll_timeout}",
        f"dev {cfg.dev}",
        "dev-type tun",
        f"txqueuelen {cfg.txqueuelen}",
        *_keepalive_account_and_material(cfg),
        f"tls-crypt-v2 {cfg.tls_crypt_v2}",
        "remote-cert-tls server",
        f"tls-version-min {TLS_VERSION_MIN}",
        f"data-ciphers {DATA_CIPHERS}",
    ]
    d += [f"route {_route_args(r)}" for r in cfg.routes]
    if cfg.proto == "udp":
        d += ["explicit-exit-notify 1", "fast-io", *_udp_buffers()]
    else:
        d.append("socket-flags TCP_NODELAY")  # see render_server: Nagle under TCP over TCP
    d += [
        f"management {cfg.management} unix",
        "script-security 1",
        f"verb {cfg.verb}",
    ]
    return _lines(d)


def render_ccd(entry: CCDEntry, *, tunnel_cidr: IPv4Network) -> str:
    """The CCD file for one client (its file name is `entry.common_name`)."""
    tunnel = _check_tunnel_cidr("tunnel_cidr", tunnel_cidr)
    ip = entry.ifconfig_ip
    who = f"client {entry.common_name!r}"
    if ip not in tunnel:
        raise ConfigError(f"ifconfig_ip {ip} of {who} is outside the tunnel CIDR {tunnel}")
    if ip == tunnel.network_address or ip == tunnel.broadcast_address:
        raise ConfigError(
            f"ifconfig_ip {ip} of {who} is the network or broadcast address of {tunnel}; "
            "allocate a host address"
        )
    if ip == server_address(tunnel):
        raise ConfigError(
            f"ifconfig_ip {ip} of {who} is the server's own tunnel address; allocate another"
        )
    _check_outside_tunnel(f"iroutes of {who}", entry.iroutes, tunnel)
    _check_outside_tunnel(f"push_routes of {who}", entry.push_routes, tunnel)
    d = [
        f"# rendered by vpnctl agent for {entry.common_name}; do not edit",
        f"ifconfig-push {ip} {tunnel.netmask}",
    ]
    d += [f"iroute {_route_args(r)}" for r in entry.iroutes]
    d += [f'push "route {_route_args(r)}"' for r in entry.push_routes]
    return _lines(d)
