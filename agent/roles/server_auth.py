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
  then times out (hand-window) like any unanswered one.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable

from prometheus_client import CollectorRegistry, Counter

from agent.event_log import EventLog
from agent.openvpn.client_auth import ClientAuthRequest
from agent.openvpn.management import Event
from agent.roles.mgmt import LINK_ERRORS, Management
from agent.roles.server_state import AuthVerdict

QUEUE_SIZE = 1024


class ClientAuthorizer:
    def __init__(
        self,
        *,
        client: Callable[[], tuple[int, Management | None]],
        decide: Callable[[ClientAuthRequest], AuthVerdict],
        events: EventLog,
        registry: CollectorRegistry,
        role: str,
    ) -> None:
        """CLIENT gives the link's connection number and its usable client (or None)."""
        self._client = client
        self._decide = decide
        self._events = events
        self._role = role
        self._queue: asyncio.Queue[tuple[int, ClientAuthRequest]] = asyncio.Queue(QUEUE_SIZE)
        self.answers = Counter(
            "vpnctl_agent_client_auth",
            "Answers to openvpn's client authorisation questions, by kind (CONNECT, REAUTH) "
            "and result (allowed, denied, unanswered).",
            ["role", "kind", "result"],
            registry=registry,
        )

    def submit(self, event: Event) -> None:
        """The management link's event callback: queue authorisation questions."""
        if not isinstance(event, ClientAuthRequest):
            return
        if self._queue.full():
            with contextlib.suppress(asyncio.QueueEmpty):
                _, dropped = self._queue.get_nowait()
                self._unanswered(dropped, "queue full")
        self._queue.put_nowait((self._client()[0], event))

    def _unanswered(self, request: ClientAuthRequest, why: str) -> None:
        self.answers.labels(self._role, request.kind, "unanswered").inc()
        self._events.warning("client_auth_unanswered", cn=request.common_name or "-",
                             cid=request.cid, reason=why,
                             effect="openvpn holds the client until it retries")  # fmt: skip

    async def answer(self, generation: int, request: ClientAuthRequest) -> None:
        connection, client = self._client()
        if client is None or connection != generation:
            self._unanswered(request, "the management connection it came on is gone")
            return
        verdict = self._decide(request)
        try:
            if verdict.allow:
                await client.client_auth(request.cid, request.kid)
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

    async def run(self) -> None:
        while True:
            generation, request = await self._queue.get()
            await self.answer(generation, request)
