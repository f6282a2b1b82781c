"""The server role's answers to openvpn's `management-client-auth` questions.

openvpn holds every client that passed TLS until the management client answers (see
agent/openvpn/client_auth.py), so this is on the path of every connect and every
renegotiation, and a slow or absent answer stalls them. Hence:

* the question is only queued by the link's event callback (which must not block), and
  one task answers in arrival order; the decision is the pure `server_state.authorize`,
  from what the role already holds in memory (desired state, revoked serials), so an
  answer costs one management command;
* while the management link is down nobody answers and openvpn keeps the client waiting
  (fail closed); the waiting client gives up and retries by itself (ping-restart on its
  side), and its retry meets the reconnected link. A question that came on an earlier
  connection of the link is dropped, never answered on the next: if openvpn restarted in
  between, its client IDs start again, and the answer would admit a different client;
* the queue is bounded: a flood of handshakes drops the oldest question, which openvpn
  then times out (hand-window) like any unanswered one;
* a first connect that the *next* desired state may admit (a serial vpnctl signed a
  moment ago, a node whose Machine just appeared) is held, not denied, for up to
  `HOLD_SECONDS`, and decided again as soon as the desired state changes
  (`reconsider`). Denying it would send the node into its reconnect backoff, and a new
  node would wait tens of seconds for a tunnel it was already entitled to. Revoked and
  malformed requests, renegotiations and anything past `MAX_HELD` held clients are
  answered at once; a held client gets the same answer at the deadline as it would
  have got at first.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable, Iterable

from prometheus_client import CollectorRegistry, Counter

from agent.event_log import EventLog
from agent.openvpn.client_auth import ClientAuthRequest
from agent.openvpn.management import Event
from agent.roles.mgmt import LINK_ERRORS, Management
from agent.roles.server_state import AuthVerdict

QUEUE_SIZE = 1024
HOLD_SECONDS = 4.0
MAX_HELD = 64
_RECHECK = -1  # a queue item that asks for the held questions to be decided again


class ClientAuthorizer:
    def __init__(
        self,
        *,
        client: Callable[[], tuple[int, Management | None]],
        decide: Callable[[ClientAuthRequest], AuthVerdict],
        events: EventLog,
        registry: CollectorRegistry,
        role: str,
        hold_seconds: float = HOLD_SECONDS,
    ) -> None:
        """CLIENT gives the link's connection number and its usable client (or None)."""
        self.hold_seconds = hold_seconds
        self._client = client
        self._decide = decide
        self._events = events
        self._role = role
        self._queue: asyncio.Queue[tuple[int, ClientAuthRequest | None]] = asyncio.Queue(QUEUE_SIZE)
        # (cid, kid) -> (the link connection it came on, the question, its deadline)
        self._held: dict[tuple[int, int], tuple[int, ClientAuthRequest, float]] = {}
        # client id -> the certificate serial it was admitted with (CONNECT and REAUTH)
        self.admitted: dict[int, int] = {}
        self.answers = Counter(
            "vpnctl_agent_client_auth",
            "Answers to openvpn's client authorisation questions, by kind (CONNECT, REAUTH) "
            "and result (allowed, denied, held, unanswered).",
            ["role", "kind", "result"],
            registry=registry,
        )

    def submit(self, event: Event) -> None:
        """The management link's event callback: queue authorisation questions."""
        if not isinstance(event, ClientAuthRequest):
            return
        self._put((self._client()[0], event))

    def keep_admitted(self, client_ids: Iterable[int]) -> None:
        """Forget the serials of clients no longer connected (openvpn's status)."""
        live = set(client_ids)
        for cid in [c for c in self.admitted if c not in live]:
            del self.admitted[cid]

    def reconsider(self) -> None:
        """The desired state changed: decide the held questions again, now."""
        if self._held:
            self._put((_RECHECK, None))

    def _put(self, item: tuple[int, ClientAuthRequest | None]) -> None:
        if self._queue.full():
            with contextlib.suppress(asyncio.QueueEmpty):
                _, dropped = self._queue.get_nowait()
                if dropped is not None:
                    self._unanswered(dropped, "queue full")
        self._queue.put_nowait(item)

    def _unanswered(self, request: ClientAuthRequest, why: str) -> None:
        self.answers.labels(self._role, request.kind, "unanswered").inc()
        self._events.warning("client_auth_unanswered", cn=request.common_name or "-",
                             cid=request.cid, reason=why,
                             effect="openvpn holds the client until it retries")  # fmt: skip

    async def answer(
        self, generation: int, request: ClientAuthRequest, *, final: bool = False
    ) -> None:
        connection, client = self._client()
        if client is None or connection != generation:
            self._held.pop((request.cid, request.kid), None)
            self._unanswered(request, "the management connection it came on is gone")
            return
        verdict = self._decide(request)
        if (
            not verdict.allow
            and verdict.pending
            and not final
            and self._hold(generation, request, verdict.reason)
        ):
            return
        self._held.pop((request.cid, request.kid), None)
        try:
            if verdict.allow:
                await client.client_auth(request.cid, request.kid)
                if request.serial is not None:
                    self.admitted[request.cid] = request.serial
            else:
                await client.client_deny(request.cid, request.kid, verdict.reason)
        except LINK_ERRORS as e:
            self._unanswered(request, f"{type(e).__name__}: {e}")
            return
        result = "allowed" if verdict.allow else "denied"
        self.answers.labels(self._role, request.kind, result).inc()
        log = self._events if verdict.allow else self._events.warning
        log(f"client_{result}", cn=request.common_name or "-", kind=request.kind,
            cid=request.cid, reason=verdict.reason)  # fmt: skip

    def _hold(self, generation: int, request: ClientAuthRequest, reason: str) -> bool:
        """Hold a first connect the next desired state may admit; False: answer it now."""
        key = (request.cid, request.kid)
        if key in self._held:
            return True  # decided again before its deadline, still not admitted
        if request.kind != "CONNECT" or len(self._held) >= MAX_HELD:
            return False
        deadline = asyncio.get_running_loop().time() + self.hold_seconds
        self._held[key] = (generation, request, deadline)
        self.answers.labels(self._role, request.kind, "held").inc()
        self._events("client_held", cn=request.common_name or "-", cid=request.cid,
                     reason=reason, hold_s=self.hold_seconds)  # fmt: skip
        return True

    async def _decide_held(self, *, expired_only: bool) -> None:
        now = asyncio.get_running_loop().time()
        for generation, request, deadline in list(self._held.values()):
            expired = now >= deadline
            if expired or not expired_only:
                await self.answer(generation, request, final=expired)

    def _next_deadline(self) -> float | None:
        if not self._held:
            return None
        return max(
            0.0, min(d for _, _, d in self._held.values()) - asyncio.get_running_loop().time()
        )

    async def run(self) -> None:
        while True:
            try:
                async with asyncio.timeout(self._next_deadline()):
                    generation, request = await self._queue.get()
            except TimeoutError:
                await self._decide_held(expired_only=True)
                continue
            if request is None:
                await self._decide_held(expired_only=False)
            else:
                await self.answer(generation, request)
