"""Certificate material: checked before openvpn ever loads it, and watched for changes.

Bad input never crash-loops: a failure becomes a readiness reason and a counted config
error, and the role waits for the files to change and tries again.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime

import certs
from agent.agent_clock import AgentClock
from agent.event_log import EventLog
from agent.files import ContentWatch
from agent.openvpn.supervisor import Supervisor
from agent.roles.openvpn_process import restart_openvpn
from agent.roles.readiness import CommonMetrics, Conditions

_TLS_CRYPT_V2_CLIENT_HEADER = b"-----BEGIN OpenVPN tls-crypt-v2 client key-----"
_TLS_CRYPT_V2_SERVER_HEADER = b"-----BEGIN OpenVPN tls-crypt-v2 server key-----"
_MAX_MATERIAL_BYTES = 1024 * 1024


class MaterialError(ValueError):
    """Certificate, key, CA or tls-crypt-v2 file unusable; the message names the file."""


@dataclass(frozen=True, kw_only=True)
class MaterialPaths:
    ca: str
    cert: str
    key: str
    tls_crypt_v2: str
    usage: certs.check.CheckedUsage  # "server" or "client"

    @property
    def all(self) -> tuple[str, ...]:
        return (self.ca, self.cert, self.key, self.tls_crypt_v2)


def check_material(paths: MaterialPaths, *, now: datetime) -> certs.CertInfo:
    """Validate what openvpn is about to load: parse, chain, key match, time, usage.

    openvpn would refuse bad material too, but only by exiting with an OpenSSL error in
    its log, over and over under the supervisor. Checking first turns that into one
    clear reason on /readyz.
    """
    ca = read_small(paths.ca, what="CA certificate")
    cert = read_small(paths.cert, what="certificate")
    key = read_small(paths.key, what="private key")
    tc = read_small(paths.tls_crypt_v2, what="tls-crypt-v2 key")
    try:
        certs.validate(ca, now=now, usage="ca")
    except certs.PKIError as e:
        raise MaterialError(f"CA certificate {paths.ca}: {e}") from None
    try:
        info = certs.validate(cert, key_pem=key, ca_pem=ca, now=now, usage=paths.usage)
    except certs.KeyMismatch as e:
        raise MaterialError(f"private key {paths.key} / certificate {paths.cert}: {e}") from None
    except certs.PKIError as e:
        raise MaterialError(f"certificate {paths.cert}: {e}") from None
    header = _TLS_CRYPT_V2_SERVER_HEADER if paths.usage == "server" else _TLS_CRYPT_V2_CLIENT_HEADER
    if header not in tc:
        raise MaterialError(
            f"tls-crypt-v2 key {paths.tls_crypt_v2} has no {header.decode()!r} block; "
            f"install the {paths.usage}'s tls-crypt-v2 key"
        )
    return info


@dataclass(kw_only=True)
class MaterialWatch:
    """Waits for valid material, then restarts openvpn on every valid change of it.

    Readiness condition CONDITION carries the reason while the material is invalid; each
    failure is counted in METRICS and logged in EVENTS.
    """

    paths: MaterialPaths
    clock: AgentClock
    conditions: Conditions
    condition: str
    metrics: CommonMetrics
    events: EventLog
    poll_interval: float = 0.5

    def _check(self, *, invalid: str, action: str) -> certs.CertInfo | None:
        """The checked material, or None after reporting why it is not usable."""
        try:
            info = check_material(self.paths, now=self.clock.now())
        except MaterialError as e:
            self.conditions.set(self.condition, invalid.format(e))
            self.metrics.config_errors.labels(self.metrics.role, "material").inc()
            self.events.error("material_invalid", error=str(e), action=action)
            return None
        self.conditions.ok(self.condition)
        return info

    async def wait(self) -> certs.CertInfo:
        """Return once the material is valid; until then report why and wait for a change.

        Each distinct failure is logged and counted once (not once per poll), readiness
        carries the reason, and the files are only re-checked after one of them changed.
        """
        watch = ContentWatch(self.paths.all)
        while True:
            watch.changed()  # remember this version; a retry needs a newer one
            info = self._check(invalid="{}", action="waiting for the files to change")
            if info is not None:
                break
            await watch.wait_changed(interval=self.poll_interval, clock=self.clock)
        self.events("material_valid", cn=info.common_name, serial=f"{info.serial:x}",
                    not_after=info.not_after.isoformat())  # fmt: skip
        return info

    async def watch(
        self, supervisor: Supervisor, *, on_change: Callable[[], None] | None = None
    ) -> None:
        """After `wait`: restart openvpn on every valid change of the files.

        Invalid new material is reported and ignored: openvpn keeps running on what it
        has. `on_change` runs just before the restart (the node role marks it as a forced
        reconnect).
        """
        watch = ContentWatch(self.paths.all)
        watch.changed()
        while True:
            await watch.wait_changed(interval=self.poll_interval, clock=self.clock)
            info = self._check(
                invalid="{} (openvpn keeps the previous material)",
                action="keeping openvpn running",
            )
            if info is None:
                continue
            self.events("material_changed", cn=info.common_name, serial=f"{info.serial:x}",
                        action="restart openvpn")  # fmt: skip
            if on_change is not None:
                on_change()
            await restart_openvpn(supervisor, events=self.events, reason="material_changed")


def read_small(path: str, *, what: str) -> bytes:
    """Read a PEM-sized file; raise MaterialError naming the file on any problem."""
    try:
        with open(path, "rb") as f:
            data = f.read(_MAX_MATERIAL_BYTES + 1)
    except FileNotFoundError:
        raise MaterialError(f"{what} {path} does not exist; mount or create it") from None
    except OSError as e:
        raise MaterialError(f"{what} {path} cannot be read: {e.strerror}") from None
    if len(data) > _MAX_MATERIAL_BYTES:
        raise MaterialError(f"{what} {path} is over {_MAX_MATERIAL_BYTES} bytes; wrong file?")
    return data
