"""Which identity this apiserver sidecar connects with: its pod's slot.

Each replica of a hosted kube-apiserver needs its own tunnel identity: openvpn evicts a
connection when a second one with the same common name arrives, and the server gives
each name one address. The controller writes a slot number on every apiserver pod
(annotation `vpnctl.io/apiserver-slot`, vpnctl/reconcile/apiserver_slots.py) and keeps
each slot's certificate in a Secret; the pod mounts the annotation as a downward-API
file and every slot's Secret (optional sources, so the mount never waits for one).

The sidecar reads the file once, at start, before openvpn runs:

- no file (a pod spec from before slots, or a kubelet without downward-API files): slot
  0, the role config's own credential paths, exactly as before;
- an empty file: the controller has not given this pod a slot yet; wait for it (kubelet
  rewrites the file when the annotation appears: the controller's pod update makes it
  sync the pod at once). Connecting as another slot meanwhile would evict its holder;
- a number n: slot n; n > 0 uses `dir/<n>/`'s tls.crt, tls.key, ca.crt and
  tls-crypt-v2-client.key. A pod keeps its slot for life, so it is never re-read.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Callable

from agent.agent_clock import AgentClock
from agent.event_log import EventLog
from agent.role_config import ClientRoleConfig

POLL = 0.5
_MAX_SLOT = 999


class SlotFileError(ValueError):
    """The slot file holds something that is not a slot number."""


def read_slot(path: str) -> int | None:
    """The slot in the file at PATH: None while it is empty; -1 when there is no file
    (slot 0's credentials, as before slots). Raises SlotFileError for anything else."""
    try:
        with open(path, encoding="ascii", errors="replace") as f:
            text = f.read(16).strip()
    except FileNotFoundError:
        return -1
    if not text:
        return None
    if not text.isdigit() or int(text) > _MAX_SLOT:
        raise SlotFileError(
            f"{path} holds {text!r}, not a slot number; the controller writes it from the "
            "pod's vpnctl.io/apiserver-slot annotation: remove a hand-written value"
        )
    return int(text)


def for_slot(cfg: ClientRoleConfig, slot: int) -> ClientRoleConfig:
    """CFG with slot SLOT's credentials (slot 0 and "no file" keep CFG's own)."""
    if slot <= 0 or cfg.slot is None:
        return cfg
    base = os.path.join(cfg.slot.dir, str(slot))
    ovpn = dataclasses.replace(
        cfg.openvpn,
        ca=os.path.join(base, "ca.crt"),
        cert=os.path.join(base, "tls.crt"),
        key=os.path.join(base, "tls.key"),
        tls_crypt_v2=os.path.join(base, "tls-crypt-v2-client.key"),
    )
    return dataclasses.replace(cfg, openvpn=ovpn)


async def wait_for_slot(
    cfg: ClientRoleConfig,
    *,
    clock: AgentClock,
    events: EventLog,
    stopping: Callable[[], bool] = lambda: False,
) -> ClientRoleConfig | None:
    """CFG for this pod's slot, once the slot file names one (see the module docstring);
    None if STOPPING says so first. Without `slot` in CFG, CFG itself."""
    if cfg.slot is None:
        return cfg
    logged: str | None = None
    while not stopping():
        try:
            slot = read_slot(cfg.slot.file)
        except (SlotFileError, OSError) as e:
            problem: str | None = str(e)
            slot = None
        else:
            problem = None if slot is not None else "no slot on this pod yet"
        if slot is not None:
            events("apiserver_slot", slot=max(slot, 0),
                   source="file" if slot >= 0 else "none (no slot file: slot 0)")  # fmt: skip
            return for_slot(cfg, slot)
        if problem != logged:
            events.warning("apiserver_slot_waiting", path=cfg.slot.file, reason=problem)
            logged = problem
        await clock.sleep(POLL)
    return None
