"""The server role's decisions, as pure functions: what to write, remove and kick.

Kept apart from the I/O so the rules can be read (and unit-tested) in one place:

* CCD: the directory is owned by the agent. Every desired client has exactly its rendered
  file; every other file goes. A client whose file changed (new address, new iroutes)
  or was removed is kicked, because openvpn reads a CCD file only when a client connects:
  the kick makes it reconnect and pick up the new config (or be refused, with
  `ccd-exclusive`, when its file is gone).
* Revocation: the CRL gives serials; the desired state maps serials to common names; a
  client whose serial is revoked is kicked at once. openvpn's own `crl-verify` only
  refuses *new* handshakes, so without the kick a revoked node would stay connected
  until it reconnects on its own.
* Who may connect (`authorize`): openvpn asks at every connect and renegotiation; the
  answer is yes only for a certificate serial the desired state lists for that common
  name and the CRL does not revoke. A CA-valid certificate is not an identity: a tenant
  can get one with any CN, and the impostor of the apiserver would hold the one address
  allowed to open connections. Unknown is no.
* CRL install time: openvpn re-reads the `crl-verify` file only when its mtime (whole
  seconds) or size changed since the last read. Two CRLs of the same size written in the
  same second would look identical to it, so the new file's mtime is pushed past the
  old one's when needed.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from ipaddress import IPv4Network

from agent.desired_state import DesiredState
from agent.openvpn.client_auth import ClientAuthRequest
from agent.openvpn.config import CCDEntry, render_ccd

KICK_CCD_CHANGED = "ccd_changed"
KICK_REMOVED = "removed"
KICK_REVOKED = "revoked"


def desired_ccd(state: DesiredState, *, tunnel_cidr: IPv4Network) -> dict[str, str]:
    """common name -> CCD file content, for every client of STATE."""
    out: dict[str, str] = {}
    for e in state.entries:
        entry = CCDEntry(
            common_name=e.common_name,
            ifconfig_ip=e.ifconfig_ip,
            iroutes=e.iroutes,
            push_routes=e.push_routes,
        )
        out[e.common_name] = render_ccd(entry, tunnel_cidr=tunnel_cidr)
    return out


@dataclass(frozen=True, kw_only=True)
class CcdPlan:
    write: Mapping[str, str]  # file name (common name) -> content
    remove: frozenset[str]
    kick: Mapping[str, str]  # common name -> reason

    @property
    def empty(self) -> bool:
        return not self.write and not self.remove and not self.kick


def plan_ccd(*, desired: Mapping[str, str], current: Mapping[str, str]) -> CcdPlan:
    """What to do to turn the CCD directory's CURRENT files into DESIRED.

    Both map file name -> content. New files are written without a kick (nobody can be
    connected with that name: `ccd-exclusive` refused it), changed files are rewritten and
    their client kicked, unwanted files removed and their client kicked.
    """
    write: dict[str, str] = {}
    kick: dict[str, str] = {}
    for name, content in desired.items():
        old = current.get(name)
        if old == content:
            continue
        write[name] = content
        if old is not None:
            kick[name] = KICK_CCD_CHANGED
    remove = frozenset(name for name in current if name not in desired)
    for name in remove:
        kick[name] = KICK_REMOVED
    return CcdPlan(write=write, remove=remove, kick=kick)


def revoked_names(*, revoked: Iterable[int], serial_to_cn: Mapping[int, str]) -> frozenset[str]:
    """Common names whose certificate serial is in REVOKED."""
    return frozenset(serial_to_cn[s] for s in revoked if s in serial_to_cn)


def crl_install_mtime(
    *, now: float, old_mtime: float | None, old_size: int | None, new_size: int
) -> float:
    """The mtime to give a freshly installed CRL so openvpn notices the change.

    openvpn compares whole-second mtime and size with what it last loaded. If the size is
    the same and NOW falls in the same (or an earlier) second as the old file's mtime,
    use the next whole second after the old mtime instead.
    """
    if old_mtime is None or old_size is None or old_size != new_size:
        return now
    if math.floor(now) > math.floor(old_mtime):
        return now
    return float(math.floor(old_mtime) + 1)


@dataclass(frozen=True, kw_only=True)
class AuthVerdict:
    allow: bool
    reason: str  # for logs and openvpn's log; never key material
    # A denial that the next desired state may turn into an admission: a node whose
    # certificate vpnctl has just signed (or whose Machine just appeared) connects before
    # its serial reaches this server. Never set for a revoked or malformed request.
    pending: bool = False


def authorize(
    request: ClientAuthRequest, *, desired: DesiredState | None, revoked: frozenset[int]
) -> AuthVerdict:
    """Admit REQUEST's client only if its serial is one vpnctl issued for its common name
    and not revoked; every other case is a denial with the reason."""
    cn = request.common_name
    serial = request.serial
    if request.problems:
        return AuthVerdict(allow=False, reason=f"malformed request: {request.problems[0]}")
    if cn is None:
        return AuthVerdict(allow=False, reason="no common_name in the request")
    if serial is None:
        return AuthVerdict(allow=False, reason=f"no usable certificate serial for {cn}")
    if desired is None:
        return AuthVerdict(allow=False, reason="desired state not read yet", pending=True)
    entry = desired.entry(cn)
    if entry is None:
        return AuthVerdict(allow=False, reason=f"{cn} is not a client of this tunnel", pending=True)
    if serial in revoked:
        return AuthVerdict(allow=False, reason=f"serial {serial:x} of {cn} is revoked")
    if serial not in entry.allowed_serials:
        return AuthVerdict(
            allow=False,
            reason=f"serial {serial:x} was not issued by vpnctl for {cn}",
            pending=True,
        )
    return AuthVerdict(allow=True, reason=f"serial {serial:x} issued for {cn}")
