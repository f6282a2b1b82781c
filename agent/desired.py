"""The agent's input files: one role config per process, and the server's desired state.

Why files, and why this strict: today a person or a test writes them; later the vpnctl
controller renders them from Kubernetes objects (Tunnel, Machines, Secrets) into a
ConfigMap or projected volume. Either way a mistake must stop at the door with a message
that names the file, the field and what to do, and never reach openvpn as a half-valid
config. So every file is plain JSON, unknown keys are refused (a typo is never silently
ignored), and each loads into frozen dataclasses.

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
                 "keepalive": [1, 5], "verb": 3, "user": "nobody", "group": "nogroup"},
     "desired_path": "/etc/vpnctl/desired.json",
     "crl_source": "/etc/vpnctl/crl.pem",
     "probe_port": 7947, "status_interval": 1.0,
     "kubelet_probe_interval": 2.0, "kubelet_probe_timeout": 1.0,
     "firewall": true, ...common keys}

    `openvpn.user`/`openvpn.group` (every role): who openvpn runs as once started
    (default nobody/nogroup; null keeps root). `openvpn.crl` is where openvpn's
    `crl-verify` reads; the agent installs `crl_source` there (validated against the CA)
    and never lets openvpn read `crl_source` directly.

node and apiserver roles (the apiserver adds `routes`):

    {"openvpn": {"proto": "udp", "remotes": [["198.18.0.1", 1194]], "dev": "tun0",
                 "ca": ..., "cert": ..., "key": ..., "tls_crypt_v2": ...,
                 "management": "/run/vpnctl/client.sock",
                 "connect_retry": [1, 5], "keepalive": [1, 5], "server_poll_timeout": 10,
                 "verb": 3, "user": "nobody", "group": "nogroup"},
     "probe": {"target": "198.18.8.1:7947", "interval": 1.0, "timeout": 1.0, "misses": 3},
     "routes": ["198.19.0.0/24", "198.19.64.0/18", "198.19.192.0/20"],   # apiserver only
     "bootstrap": {...},                                                   # node only
     ...common keys}

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

Desired state of the server (`desired_path`), re-read whenever it changes:

    {"apiserver": {"common_name": "apiserver", "ifconfig_ip": "198.18.8.2",
                   "push_routes": [], "serial": "3f9a...", "serials": ["3f9a..."]},
     "clients": [{"common_name": "node-1", "ifconfig_ip": "198.18.8.11",
                  "iroutes": ["198.19.0.11/32", "198.19.65.0/24"], "push_routes": [],
                  "kubelet": "198.19.0.11:10250", "serial": "5b01...",
                  "serials": ["4a77...", "5b01..."]}]}

    - `apiserver` may be null (then nothing may open connections through the tunnel);
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

import contextlib
import json
import re
import urllib.parse
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from ipaddress import AddressValueError, IPv4Address, IPv4Network, NetmaskValueError
from typing import Any, Literal, TypeVar

from agent.openvpn.config import (
    ClientConfig,
    ConfigError,
    Proto,
    ServerConfig,
    server_address,
    validate_common_name,
)

Role = Literal["node", "server", "apiserver"]
ROLES: tuple[Role, ...] = ("node", "server", "apiserver")

DEFAULT_HEALTH_ADDRESS = "0.0.0.0:9100"
DEFAULT_PROBE_PORT = 7947
_SERIAL = re.compile(r"[0-9A-Fa-f]{1,2}(:?[0-9A-Fa-f]{1,2})*")
_MAX_FILE_BYTES = 4 * 1024 * 1024

T = TypeVar("T")


class InputError(ValueError):
    """A config or desired-state file is unusable; `problems` lists each finding.

    The message starts with the file, then one line per problem naming the field (as a
    JSON path like `clients[2].iroutes[0]`) and what to do about it.
    """

    def __init__(self, path: str, problems: Sequence[str]) -> None:
        self.path = path
        self.problems = tuple(problems)
        lines = "\n".join(f"  - {p}" for p in self.problems)
        super().__init__(f"{path}: {len(self.problems)} problem(s):\n{lines}")

    @property
    def summary(self) -> str:
        """One line for a readiness reason or a log field."""
        extra = f" (+{len(self.problems) - 1} more)" if len(self.problems) > 1 else ""
        return f"{self.path}: {self.problems[0]}{extra}"


class _Problems(Exception):
    """Raised inside the parser to stop at a field that cannot be read further."""


class _Missing:
    """Marks "no default": the key is required."""


MISSING = _Missing()
NO_NETS: tuple[IPv4Network, ...] = ()


class _Reader:
    """Collects problems while walking one JSON document; every check names its JSON path."""

    def __init__(self, path: str) -> None:
        self.path = path
        self.problems: list[str] = []

    def fail(self, where: str, what: str) -> None:
        self.problems.append(f"{where}: {what}")

    def obj(self, value: object, where: str, *, keys: Sequence[str]) -> dict[str, Any]:
        if not isinstance(value, dict):
            self.fail(where, f"must be a JSON object, got {_kind(value)}")
            raise _Problems
        unknown = sorted(set(value) - set(keys))
        for key in unknown:
            self.fail(
                _join(where, key),
                f"unknown key; allowed keys here are {', '.join(sorted(keys))} "
                "(check the spelling)",
            )
        return value

    def get(
        self,
        obj: Mapping[str, Any],
        where: str,
        key: str,
        conv: Callable[[object, str], T],
        default: T | _Missing = MISSING,
    ) -> T:
        """OBJ[KEY] converted by CONV; a missing key is an error unless DEFAULT is given."""
        loc = _join(where, key)
        if key not in obj:
            if isinstance(default, _Missing):
                self.fail(loc, "is required")
                raise _Problems
            return default
        try:
            return conv(obj[key], loc)
        except _FieldError as e:
            self.fail(loc, str(e))
            raise _Problems from None

    def soft(self, fn: Callable[[], T]) -> T | None:
        """Run one field's parse; on a problem, record it and carry on with the next field."""
        try:
            return fn()
        except _Problems:
            return None


class _FieldError(ValueError):
    pass


def _join(where: str, key: str | int) -> str:
    if isinstance(key, int):
        return f"{where}[{key}]"
    return f"{where}.{key}" if where else key


def _kind(value: object) -> str:
    if value is None:
        return "null"
    return {dict: "an object", list: "a list", str: "a string", bool: "a boolean"}.get(
        type(value), f"a {type(value).__name__}"
    ) + (f" {value!r}" if isinstance(value, int | float | str) else "")


# --- converters: (raw JSON value, location) -> typed value, raising _FieldError -----------


def _str(value: object, _where: str) -> str:
    if not isinstance(value, str) or not value:
        raise _FieldError(f"must be a non-empty string, got {_kind(value)}")
    return value


def _opt_str(value: object, where: str) -> str | None:
    return None if value is None else _str(value, where)


def _abspath(value: object, where: str) -> str:
    text = _str(value, where)
    if not text.startswith("/"):
        raise _FieldError(f"{text!r} must be an absolute path (start with '/')")
    return text


def _opt_abspath(value: object, where: str) -> str | None:
    return None if value is None else _abspath(value, where)


def _bool(value: object, _where: str) -> bool:
    if not isinstance(value, bool):
        raise _FieldError(f"must be true or false, got {_kind(value)}")
    return value


def _int(value: object, _where: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise _FieldError(f"must be an integer, got {_kind(value)}")
    return value


def _port(value: object, where: str) -> int:
    port = _int(value, where)
    if not 1 <= port <= 65535:
        raise _FieldError(f"port {port} is out of range; use 1..65535")
    return port


def _seconds(low: float, high: float) -> Callable[[object, str], float]:
    def conv(value: object, _where: str) -> float:
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise _FieldError(f"must be a number of seconds, got {_kind(value)}")
        if not low <= float(value) <= high:
            raise _FieldError(f"{value} s is out of range; use {low}..{high} seconds")
        return float(value)

    return conv


def _proto(value: object, _where: str) -> Proto:
    if value not in ("udp", "tcp"):
        raise _FieldError(f'must be "udp" or "tcp", got {_kind(value)}')
    return value


def _ip(value: object, where: str) -> IPv4Address:
    text = _str(value, where)
    try:
        return IPv4Address(text)
    except AddressValueError:
        raise _FieldError(f"{text!r} is not an IPv4 address like 198.18.8.11") from None


def _opt_ip(value: object, where: str) -> IPv4Address | None:
    return None if value is None else _ip(value, where)


def _net(value: object, where: str) -> IPv4Network:
    text = _str(value, where)
    try:
        return IPv4Network(text)
    except (AddressValueError, NetmaskValueError):
        raise _FieldError(f"{text!r} is not an IPv4 CIDR like 198.19.0.0/24") from None
    except ValueError:
        raise _FieldError(
            f"{text!r} has host bits set; use the network address {IPv4Network(text, strict=False)}"
        ) from None


def _list(item: Callable[[object, str], T]) -> Callable[[object, str], tuple[T, ...]]:
    def conv(value: object, where: str) -> tuple[T, ...]:
        if not isinstance(value, list):
            raise _FieldError(f"must be a list, got {_kind(value)}")
        out: list[T] = []
        for i, raw in enumerate(value):
            try:
                out.append(item(raw, _join(where, i)))
            except _FieldError as e:
                raise _FieldError(f"item {i}: {e}") from None
        return tuple(out)

    return conv


def _pair(value: object, where: str) -> tuple[int, int]:
    if not isinstance(value, list) or len(value) != 2:
        raise _FieldError(f"must be a list of two integers like [1, 5], got {_kind(value)}")
    return (_int(value[0], where), _int(value[1], where))


def _hostport(value: object, where: str) -> tuple[IPv4Address, int]:
    text = _str(value, where)
    host, sep, port = text.rpartition(":")
    if not sep or not port.isdigit():
        raise _FieldError(f'{text!r} must be "ip:port" like 198.19.0.11:10250')
    return (_ip(host, where), _port(int(port), where))


def _listen(value: object, where: str) -> tuple[str, int]:
    ip, port = _hostport(value, where)
    return (str(ip), port)


def _remote(value: object, where: str) -> tuple[str, int]:
    if not isinstance(value, list) or len(value) != 2 or not isinstance(value[0], str):
        raise _FieldError(
            f'must be a [host, port] pair like ["198.18.0.1", 1194], got {_kind(value)}'
        )
    return (value[0], _port(value[1], where))


def _any(value: object, _where: str) -> object:
    return value


def _common_name(value: object, where: str) -> str:
    text = _str(value, where)
    try:
        return validate_common_name(text)
    except ConfigError as e:
        raise _FieldError(str(e)) from None


def _serial(value: object, where: str) -> int | None:
    if value is None:
        return None
    text = _str(value, where)
    if not _SERIAL.fullmatch(text):
        raise _FieldError(
            f"{text!r} is not a hex certificate serial (like 5b:01:9f or 5b019f); "
            "copy it from `openssl x509 -serial -noout`"
        )
    return int(text.replace(":", ""), 16)


def _opt_hostport(value: object, where: str) -> tuple[IPv4Address, int] | None:
    return None if value is None else _hostport(value, where)


# --- file reading -------------------------------------------------------------------------


def read_json(path: str) -> object:
    """Parse the JSON file at PATH, raising InputError (never OSError/JSONDecodeError)."""
    try:
        with open(path, "rb") as f:
            data = f.read(_MAX_FILE_BYTES + 1)
    except FileNotFoundError:
        raise InputError(path, ["file not found; create it or fix the path"]) from None
    except OSError as e:
        raise InputError(path, [f"cannot read the file: {e.strerror}"]) from None
    if len(data) > _MAX_FILE_BYTES:
        raise InputError(
            path, [f"file is larger than {_MAX_FILE_BYTES} bytes; is it the right file?"]
        )
    try:
        return json.loads(data)
    except UnicodeDecodeError:
        raise InputError(path, ["file is not UTF-8 text"]) from None
    except json.JSONDecodeError as e:
        raise InputError(
            path, [f"line {e.lineno} column {e.colno}: invalid JSON ({e.msg}); fix the syntax"]
        ) from None


# --- role configs -------------------------------------------------------------------------


@dataclass(frozen=True, kw_only=True)
class Common:
    """Keys every role has."""

    health_host: str = "0.0.0.0"
    health_port: int = 9100
    state_dir: str
    openvpn_binary: str = "openvpn"
    openvpn_log: str | None = None


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


RoleConfig = ServerRoleConfig | ClientRoleConfig

_COMMON_KEYS = ("health_address", "state_dir", "openvpn_binary", "openvpn_log")


def _common(r: _Reader, doc: Mapping[str, Any]) -> Common | None:
    def parse() -> Common:
        host, port = r.get(doc, "", "health_address", _listen, _listen(DEFAULT_HEALTH_ADDRESS, ""))
        return Common(
            health_host=host,
            health_port=port,
            state_dir=r.get(doc, "", "state_dir", _abspath),
            openvpn_binary=r.get(doc, "", "openvpn_binary", _str, "openvpn"),
            openvpn_log=r.get(doc, "", "openvpn_log", _opt_abspath, None),
        )

    return r.soft(parse)


_SERVER_OVPN_KEYS = (
    "proto", "port", "listen", "tunnel_cidr", "dev", "ca", "cert", "key", "tls_crypt_v2",
    "ccd_dir", "management", "crl", "keepalive", "max_clients", "verb", "user", "group",
)  # fmt: skip
_CLIENT_OVPN_KEYS = (
    "proto", "remotes", "dev", "ca", "cert", "key", "tls_crypt_v2", "management",
    "connect_retry", "keepalive", "server_poll_timeout", "verb", "user", "group",
)  # fmt: skip


def _server_openvpn(r: _Reader, raw: object) -> ServerConfig | None:
    where = "openvpn"

    def parse() -> ServerConfig:
        o = r.obj(raw, where, keys=_SERVER_OVPN_KEYS)
        g = r.get
        kwargs: dict[str, Any] = {
            "tunnel_cidr": g(o, where, "tunnel_cidr", _net),
            "ca": g(o, where, "ca", _abspath),
            "cert": g(o, where, "cert", _abspath),
            "key": g(o, where, "key", _abspath),
            "tls_crypt_v2": g(o, where, "tls_crypt_v2", _abspath),
            "ccd_dir": g(o, where, "ccd_dir", _abspath),
            "management": g(o, where, "management", _abspath),
            "crl": g(o, where, "crl", _abspath),
        }
        for key, conv in (
            ("proto", _proto), ("port", _port), ("listen", _opt_ip), ("dev", _str),
            ("keepalive", _pair), ("max_clients", _int), ("verb", _int),
            ("user", _opt_str), ("group", _opt_str),
        ):  # fmt: skip
            if key in o:
                kwargs[key] = g(o, where, key, conv)
        try:
            return ServerConfig(**kwargs)
        except ConfigError as e:
            r.fail(where, f"{e}")
            raise _Problems from None

    return r.soft(parse)


def _client_openvpn(r: _Reader, raw: object) -> ClientConfig | None:
    where = "openvpn"

    def parse() -> ClientConfig:
        o = r.obj(raw, where, keys=_CLIENT_OVPN_KEYS)
        g = r.get
        kwargs: dict[str, Any] = {
            "remotes": g(o, where, "remotes", _list(_remote)),
            "ca": g(o, where, "ca", _abspath),
            "cert": g(o, where, "cert", _abspath),
            "key": g(o, where, "key", _abspath),
            "tls_crypt_v2": g(o, where, "tls_crypt_v2", _abspath),
            "management": g(o, where, "management", _abspath),
        }
        for key, conv in (
            ("proto", _proto), ("dev", _str), ("connect_retry", _pair), ("keepalive", _pair),
            ("server_poll_timeout", _int), ("verb", _int), ("user", _opt_str),
            ("group", _opt_str),
        ):  # fmt: skip
            if key in o:
                kwargs[key] = g(o, where, key, conv)
        try:
            return ClientConfig(**kwargs)
        except ConfigError as e:
            r.fail(where, f"{e}")
            raise _Problems from None

    return r.soft(parse)


def _probe(r: _Reader, raw: object) -> ProbeSettings | None:
    where = "probe"

    def parse() -> ProbeSettings:
        o = r.obj(raw, where, keys=("target", "interval", "timeout", "misses"))
        misses = r.get(o, where, "misses", _int, default=3)
        if not 1 <= misses <= 100:
            r.fail(_join(where, "misses"), f"{misses} is out of range; use 1..100")
            raise _Problems
        interval = r.get(o, where, "interval", _seconds(0.1, 60.0), default=1.0)
        timeout = r.get(o, where, "timeout", _seconds(0.05, 60.0), default=min(1.0, interval))
        if timeout > interval:
            r.fail(
                _join(where, "timeout"),
                f"{timeout} s is longer than the interval {interval} s; probes would overlap, "
                "make it at most the interval",
            )
            raise _Problems
        return ProbeSettings(
            target=r.get(o, where, "target", _hostport),
            interval=interval,
            timeout=timeout,
            misses=misses,
        )

    return r.soft(parse)


def _server_role(r: _Reader, doc_raw: object) -> ServerRoleConfig | None:
    keys = (*_COMMON_KEYS, "openvpn", "desired_path", "crl_source", "probe_port",
            "status_interval", "kubelet_probe_interval", "kubelet_probe_timeout",
            "firewall")  # fmt: skip
    doc = r.obj(doc_raw, "", keys=keys)
    common = _common(r, doc)
    ovpn = r.soft(lambda: _server_openvpn(r, r.get(doc, "", "openvpn", _any)))

    def rest() -> dict[str, Any]:
        g = r.get
        return {
            "desired_path": g(doc, "", "desired_path", _abspath),
            "crl_source": g(doc, "", "crl_source", _abspath),
            "probe_port": g(doc, "", "probe_port", _port, DEFAULT_PROBE_PORT),
            "status_interval": g(doc, "", "status_interval", _seconds(0.1, 60.0), 1.0),
            "kubelet_probe_interval": g(
                doc, "", "kubelet_probe_interval", _seconds(0.2, 600.0), 2.0
            ),
            "kubelet_probe_timeout": g(doc, "", "kubelet_probe_timeout", _seconds(0.05, 60.0), 1.0),
            "firewall": g(doc, "", "firewall", _bool, True),
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
    text = _str(value, where)
    parsed = urllib.parse.urlsplit(text)
    if parsed.scheme != "https" or not parsed.hostname or parsed.path not in ("", "/"):
        raise _FieldError(
            f"{text!r} must be the tenant apiserver's https URL, like https://198.18.0.10:6443"
        )
    try:
        parsed.port  # noqa: B018 (raises on a bad port)
    except ValueError:
        raise _FieldError(f"{text!r} has an invalid port") from None
    return text.rstrip("/")


def _fraction(value: object, _where: str) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or not 0 < value <= 1:
        raise _FieldError(f"must be a number in (0, 1] like 0.66, got {_kind(value)}")
    return float(value)


def _opt_expiration(value: object, where: str) -> int | None:
    if value is None:
        return None
    seconds = _int(value, where)
    if seconds < 600:
        raise _FieldError(f"{seconds} s is below the 600 s the Kubernetes API accepts")
    return seconds


def _opt_node_name(value: object, where: str) -> str | None:
    return None if value is None else _common_name(value, where)


def _retry(value: object, where: str) -> tuple[float, float]:
    if not isinstance(value, list) or len(value) != 2:
        raise _FieldError(f"must be [min, max] seconds like [2, 300], got {_kind(value)}")
    low = _seconds(0.1, 3600.0)(value[0], where)
    high = _seconds(0.1, 3600.0)(value[1], where)
    if low > high:
        raise _FieldError(f"min {low} s is above max {high} s; swap them")
    return (low, high)


def _bootstrap(r: _Reader, raw: object) -> BootstrapSettings | None:
    where = "bootstrap"

    def parse() -> BootstrapSettings:
        o = r.obj(raw, where, keys=_BOOTSTRAP_KEYS)
        g = r.get
        cert = g(o, where, "client_cert", _abspath)
        return BootstrapSettings(
            server=g(o, where, "server", _https_url),
            ca=g(o, where, "ca", _abspath),
            client_cert=cert,
            client_key=g(o, where, "client_key", _abspath, cert),
            node_name=g(o, where, "node_name", _opt_node_name, None),
            expiration_seconds=g(o, where, "expiration_seconds", _opt_expiration, None),
            renew_fraction=g(o, where, "renew_fraction", _fraction, 2 / 3),
            timeout=g(o, where, "timeout", _seconds(1.0, 3600.0), 300.0),
            retry=g(o, where, "retry", _retry, (2.0, 300.0)),
        )

    return r.soft(parse)


def _client_role(r: _Reader, doc_raw: object, *, role: Role) -> ClientRoleConfig | None:
    keys = (
        *_COMMON_KEYS,
        "openvpn",
        "probe",
        *(("routes",) if role == "apiserver" else ()),
        *(("bootstrap",) if role == "node" else ()),
    )
    doc = r.obj(doc_raw, "", keys=keys)
    common = _common(r, doc)
    ovpn = r.soft(lambda: _client_openvpn(r, r.get(doc, "", "openvpn", _any)))
    probe = r.soft(lambda: _probe(r, r.get(doc, "", "probe", _any)))
    routes = r.soft(lambda: r.get(doc, "", "routes", _list(_net), NO_NETS))
    bootstrap: BootstrapSettings | None = None
    if doc.get("bootstrap") is not None:
        bootstrap = _bootstrap(r, doc["bootstrap"])
        if bootstrap is None:
            return None
    if common is None or ovpn is None or probe is None or routes is None:
        return None
    return ClientRoleConfig(
        role=role, common=common, openvpn=ovpn, probe=probe, routes=routes, bootstrap=bootstrap
    )


def load_role_config(path: str, *, role: Role) -> RoleConfig:
    """Read and validate the config of ROLE at PATH; raises InputError listing every problem."""
    doc_raw = read_json(path)
    r = _Reader(path)
    result: RoleConfig | None = None
    with contextlib.suppress(_Problems):
        if role == "server":
            result = _server_role(r, doc_raw)
        else:
            result = _client_role(r, doc_raw, role=role)
    if r.problems or result is None:
        raise InputError(path, r.problems or ["the file could not be read as a config"])
    return result


# --- desired state of the server ----------------------------------------------------------


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
    # Raw digest of the file the state came from, for logs ("which version is live").
    source_digest: str = field(default="", compare=False)

    @property
    def entries(self) -> tuple[ClientEntry, ...]:
        """The apiserver (if any) and every node client."""
        return ((self.apiserver,) if self.apiserver is not None else ()) + self.clients

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


def _entry(r: _Reader, raw: object, where: str, *, apiserver: bool) -> ClientEntry | None:
    def parse() -> ClientEntry:
        o = r.obj(raw, where, keys=_APISERVER_KEYS if apiserver else _CLIENT_KEYS)
        g = r.get
        name = r.soft(lambda: g(o, where, "common_name", _common_name))
        ip = r.soft(lambda: g(o, where, "ifconfig_ip", _ip))
        iroutes = r.soft(lambda: g(o, where, "iroutes", _list(_net), NO_NETS))
        push_routes = r.soft(lambda: g(o, where, "push_routes", _list(_net), NO_NETS))
        kubelet = r.soft(lambda: g(o, where, "kubelet", _opt_hostport, None))
        serial = r.soft(lambda: g(o, where, "serial", _serial, None))
        no_serials: tuple[int | None, ...] = ()
        serials = r.soft(lambda: g(o, where, "serials", _list(_serial), no_serials))
        if name is None or ip is None or iroutes is None or push_routes is None:
            raise _Problems
        if serials is None or any(s is None for s in serials):
            if serials is not None:
                r.fail(_join(where, "serials"), "must list hex serials, not null")
            raise _Problems
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


def _check_semantics(r: _Reader, state: DesiredState, *, tunnel: IPv4Network) -> None:
    server_ip = server_address(tunnel)
    names: dict[str, str] = {}
    ips: dict[IPv4Address, str] = {}
    serials: dict[int, str] = {}
    owned: list[tuple[IPv4Network, str]] = []
    for i, e in enumerate(state.entries):
        where = "apiserver" if e.is_apiserver else f"clients[{i - (state.apiserver is not None)}]"
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
    r = _Reader(path)
    state: DesiredState | None = None
    try:
        doc = r.obj(doc_raw, "", keys=("apiserver", "clients"))
        api = doc.get("apiserver")
        api_entry = None if api is None else _entry(r, api, "apiserver", apiserver=True)
        clients_raw = doc.get("clients", [])
        if not isinstance(clients_raw, list):
            r.fail("clients", f"must be a list, got {_kind(clients_raw)}")
            raise _Problems
        entries = [
            _entry(r, c, f"clients[{i}]", apiserver=False) for i, c in enumerate(clients_raw)
        ]
        if not r.problems:
            state = DesiredState(
                apiserver=api_entry, clients=tuple(e for e in entries if e is not None)
            )
            _check_semantics(r, state, tunnel=tunnel_cidr)
    except _Problems:
        pass
    if r.problems or state is None:
        raise InputError(path, r.problems or ["the file could not be read as a desired state"])
    return state


def load_desired(path: str, *, tunnel_cidr: IPv4Network) -> DesiredState:
    """Read and validate the server's desired state at PATH; raises InputError."""
    return parse_desired(read_json(path), path=path, tunnel_cidr=tunnel_cidr)
