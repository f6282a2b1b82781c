"""``Kube``: one apiserver connection, generic over every resource, on plain dicts.

kubernetes_asyncio is used for two things only: its configuration (see
``vpnctl.kube.apiconfig``: a tenant's kubeconfig never reaches the library's loader) and
its ``ApiClient`` as an authenticated HTTP session. Every request goes through
``ApiClient.call_api`` with ``_preload_content=False``: we get the raw response, so
status, headers (Retry-After) and body are ours to map onto ``vpnctl.kube.errors``,
watch streams are read line by line without the library's model deserialisation, and no
model class leaks upwards.
"""

from __future__ import annotations

import base64
import builtins
import copy
import json
import logging
from collections.abc import AsyncGenerator, Callable, Mapping, Sequence
from types import TracebackType
from typing import Any, Literal

import aiohttp
from kubernetes_asyncio import client as k8s_client

from vpnctl.kube.apiconfig import api_client_for_operator, api_client_for_tenant
from vpnctl.kube.errors import (
    Gone,
    KubeconfigError,
    NotFound,
    TransportError,
    error_from_response,
)
from vpnctl.kube.resources import (
    CERTIFICATE_SIGNING_REQUEST,
    KubeObject,
    Resource,
    WatchEvent,
)
from vpnctl.reconcile.kubeconfig import (
    Kubeconfig,
    KubeconfigRejected,
    parse_kubeconfig,
)

_log = logging.getLogger(__name__)

Propagation = Literal["Background", "Foreground", "Orphan"]
Objects = builtins.list[KubeObject]
Query = builtins.list[tuple[str, str]]

JSON = "application/json"
APPLY_PATCH = "application/apply-patch+yaml"
MERGE_PATCH = "application/merge-patch+json"

# The apiserver ends a watch after timeoutSeconds; a socket silent for that long plus
# this grace is dead (a half-open connection), not quiet.
_WATCH_READ_GRACE = 30.0
_TRANSPORT_ERRORS = (aiohttp.ClientError, TimeoutError, OSError)


class Kube:
    """An authenticated connection to one apiserver. Close it (or use ``async with``).

    Objects in and out are JSON dicts as the apiserver speaks them. Errors are
    ``vpnctl.kube.errors.ApiError`` subclasses; none is retried here (see
    ``with_retries``) except a list whose continue token expired mid-way.
    """

    def __init__(self, api: k8s_client.ApiClient, *, name: str, request_timeout: float) -> None:
        self._api = api
        self.name = name
        self.request_timeout = request_timeout

    # --- construction -------------------------------------------------------------------

    @classmethod
    async def from_kubeconfig_text(
        cls,
        text: str,
        *,
        context: str | None = None,
        name: str = "kubeconfig text",
        request_timeout: float = 30.0,
    ) -> Kube:
        """A Kube from kubeconfig YAML someone else wrote, e.g. CAPI's
        ``<cluster>-kubeconfig`` Secret: parsed strictly, never by the library's loader
        (see ``vpnctl.reconcile.kubeconfig``: no exec, no auth plugins, no file paths).

        Raises KubeconfigError, naming ``name`` (where the text came from) and the
        field, for text that isn't a usable or acceptable kubeconfig.
        """
        try:
            credentials = parse_kubeconfig(text, context=context)
        except KubeconfigRejected as exc:
            raise KubeconfigError(f"{name}: {exc}") from None
        return await cls.from_kubeconfig(credentials, name=name, request_timeout=request_timeout)

    @classmethod
    async def from_kubeconfig(
        cls, credentials: Kubeconfig, *, name: str, request_timeout: float = 30.0
    ) -> Kube:
        """A Kube from parsed credentials; the client configuration is built field by
        field, so nothing in it can run a command or read a file of ours."""
        api = api_client_for_tenant(credentials, where=name)
        return cls(api, name=name, request_timeout=request_timeout)

    async def close(self) -> None:
        await self._api.close()

    async def __aenter__(self) -> Kube:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()

    @property
    def server(self) -> str:
        return str(self._api.configuration.host)

    # --- reading ------------------------------------------------------------------------

    async def get(
        self, res: Resource, name: str, namespace: str | None = None
    ) -> KubeObject | None:
        """The object, or None if it doesn't exist."""
        try:
            obj = await self.request("GET", res.path(namespace=namespace, name=name))
        except NotFound:
            return None
        return _with_type(res, obj)

    async def list(
        self,
        res: Resource,
        namespace: str | None = None,
        *,
        label_selector: str | None = None,
        field_selector: str | None = None,
        page_size: int = 500,
        transform: Callable[[KubeObject], KubeObject] | None = None,
    ) -> tuple[Objects, str]:
        """All matching objects (every page) and the list's resourceVersion, to watch from.

        ``namespace=None`` on a namespaced resource lists all namespaces. Items carry
        apiVersion and kind (list items from the apiserver often don't). ``transform``
        is applied to each item as its page arrives, so a caller that slims big objects
        never holds more than one page of them in full.
        """
        path = res.path(namespace=namespace)
        selectors: Query = []
        if label_selector:
            selectors.append(("labelSelector", label_selector))
        if field_selector:
            selectors.append(("fieldSelector", field_selector))
        restarts = 0
        while True:
            items: Objects = []
            resource_version = ""
            token = ""
            try:
                while True:
                    query = [*selectors, ("limit", str(page_size))]
                    if token:
                        query.append(("continue", token))
                    page = await self.request("GET", path, query=query)
                    meta = page.get("metadata") or {}
                    resource_version = resource_version or str(meta.get("resourceVersion", ""))
                    typed = (_with_type(res, item) for item in page.get("items") or [])
                    items.extend(map(transform, typed) if transform else typed)
                    del page
                    token = str(meta.get("continue") or "")
                    if not token:
                        return items, resource_version
            except Gone:
                # The continue token expired between pages: start the list over.
                restarts += 1
                if not token or restarts > 3:
                    raise

    async def watch(
        self,
        res: Resource,
        namespace: str | None = None,
        *,
        resource_version: str,
        timeout_seconds: int,
        label_selector: str | None = None,
        field_selector: str | None = None,
    ) -> AsyncGenerator[WatchEvent, None]:
        """Events after ``resource_version``, with bookmarks, until the server ends the
        stream (after ``timeout_seconds``) or the connection breaks (TransportError).

        A too-old resourceVersion arrives either as a Gone error or as an ERROR event
        (code 410) in the stream; both are left to the caller (see ``Watcher``).
        """
        query: Query = [
            ("watch", "true"),
            ("allowWatchBookmarks", "true"),
            ("resourceVersion", resource_version),
            ("timeoutSeconds", str(timeout_seconds)),
        ]
        if label_selector:
            query.append(("labelSelector", label_selector))
        if field_selector:
            query.append(("fieldSelector", field_selector))
        path = res.path(namespace=namespace)
        timeout = aiohttp.ClientTimeout(
            total=None,
            connect=self.request_timeout,
            sock_read=timeout_seconds + _WATCH_READ_GRACE,
        )
        response = await self._send("GET", path, query=query, body=None, timeout=timeout)
        try:
            if response.status != 200:
                raise error_from_response(
                    status=response.status,
                    body=await response.read(),
                    headers=response.headers,
                    method="GET",
                    path=path,
                )
            async for line in response.content:
                line = line.strip()
                if not line:
                    continue
                yield _watch_event(res, line, path)
        except _TRANSPORT_ERRORS as exc:
            raise _transport("GET", path, exc) from exc
        except ValueError as exc:  # a line over aiohttp's buffer limit
            raise TransportError(
                f"unreadable watch stream: {exc}", method="GET", path=path
            ) from exc
        finally:
            if response.content.at_eof():
                response.release()
            else:
                response.close()

    # --- writing ------------------------------------------------------------------------

    async def create(self, res: Resource, body: Mapping[str, Any]) -> KubeObject:
        """POST a new object; AlreadyExists if the name is taken."""
        doc, name, namespace = _prepared(res, body)
        del name
        return _with_type(res, await self.request("POST", res.path(namespace=namespace), body=doc))

    async def replace(
        self, res: Resource, body: Mapping[str, Any], *, subresource: str | None = None
    ) -> KubeObject:
        """PUT the whole object. With metadata.resourceVersion set (as read) this is an
        optimistic-concurrency update: Conflict if someone wrote in between."""
        doc, name, namespace = _prepared(res, body)
        path = res.path(namespace=namespace, name=name, subresource=subresource)
        return _with_type(res, await self.request("PUT", path, body=doc))

    async def apply(
        self,
        res: Resource,
        body: Mapping[str, Any],
        *,
        field_manager: str = "vpnctl",
        force: bool = True,
    ) -> KubeObject:
        """Server-side apply: the fields in ``body`` are ours (``field_manager``); fields
        we no longer send are removed if only we owned them. Applying the same body
        twice writes nothing the second time (resourceVersion stays)."""
        return await self._apply(res, body, field_manager=field_manager, force=force)

    async def apply_status(
        self,
        res: Resource,
        body: Mapping[str, Any],
        *,
        field_manager: str = "vpnctl",
        force: bool = True,
    ) -> KubeObject:
        """Server-side apply to the status subresource (``body`` holds metadata.name,
        namespace and status)."""
        return await self._apply(
            res, body, field_manager=field_manager, force=force, subresource="status"
        )

    async def patch_merge(
        self,
        res: Resource,
        name: str,
        patch: Mapping[str, Any],
        *,
        namespace: str | None = None,
        subresource: str | None = None,
    ) -> KubeObject:
        """JSON merge patch (RFC 7386). Put metadata.resourceVersion in the patch to make
        it conditional (Conflict if the object changed)."""
        path = res.path(namespace=namespace, name=name, subresource=subresource)
        return _with_type(
            res, await self.request("PATCH", path, body=dict(patch), content_type=MERGE_PATCH)
        )

    async def delete(
        self,
        res: Resource,
        name: str,
        namespace: str | None = None,
        *,
        propagation: Propagation = "Background",
        uid: str | None = None,
    ) -> bool:
        """Delete; True if a delete was issued, False if there was nothing to delete.

        ``uid`` makes it a delete of exactly that incarnation (Conflict otherwise).
        """
        options: KubeObject = {
            "apiVersion": "v1",
            "kind": "DeleteOptions",
            "propagationPolicy": propagation,
        }
        if uid:
            options["preconditions"] = {"uid": uid}
        try:
            await self.request("DELETE", res.path(namespace=namespace, name=name), body=options)
        except NotFound:
            return False
        return True

    # --- CertificateSigningRequests -----------------------------------------------------

    async def approve_csr(
        self, decided: Mapping[str, Any], *, signer: str, reason: str, message: str
    ) -> KubeObject:
        """Approve exactly the CSR that was decided, not whatever bears its name now.

        ``decided`` is the object as read when it was decided. Its uid and
        resourceVersion go with the PUT to the approval subresource, so the apiserver
        answers Conflict when the CSR changed, or was deleted and re-created under the
        same name, since that read: decide again from a fresh read (never retry the same
        body). ValueError, before any request, when its spec.signerName is not
        ``signer`` or it carries no uid/resourceVersion. Idempotent: an approved CSR is
        returned as is."""
        return await self._decide_csr(
            decided, "Approved", signer=signer, reason=reason, message=message
        )

    async def deny_csr(
        self, decided: Mapping[str, Any], *, signer: str, reason: str, message: str
    ) -> KubeObject:
        """Add a Denied condition to exactly the CSR decided (as ``approve_csr``);
        ``message`` is what the requester will read."""
        return await self._decide_csr(
            decided, "Denied", signer=signer, reason=reason, message=message
        )

    async def sign_csr(
        self, approved: Mapping[str, Any], *, signer: str, certificate_pem: bytes
    ) -> KubeObject:
        """Set status.certificate (PEM, the leaf first) on exactly the approved CSR
        ``approved`` (as ``approve_csr`` returned it): the patch carries its uid and
        resourceVersion, so a CSR changed or replaced since is refused (Conflict or
        Invalid). ValueError when it is not approved, or not for ``signer``."""
        name, uid, version = _csr_identity(approved, signer=signer)
        if not _has_condition(approved, "Approved"):
            raise ValueError(f"CertificateSigningRequest {name!r} is not approved; not signing it")
        patch = {
            "metadata": {"uid": uid, "resourceVersion": version},
            "status": {"certificate": base64.b64encode(certificate_pem).decode("ascii")},
        }
        return await self.patch_merge(
            CERTIFICATE_SIGNING_REQUEST, name, patch, subresource="status"
        )

    async def annotate_csr(
        self, decided: Mapping[str, Any], *, signer: str, annotations: Mapping[str, str]
    ) -> KubeObject:
        """Set ``annotations`` on exactly the CSR ``decided`` (bound to its uid and
        resourceVersion, as ``sign_csr``); ValueError when it is not for ``signer``."""
        name, uid, version = _csr_identity(decided, signer=signer)
        meta = {"uid": uid, "resourceVersion": version, "annotations": dict(annotations)}
        return await self.patch_merge(CERTIFICATE_SIGNING_REQUEST, name, {"metadata": meta})

    # --- the one way requests are made ----------------------------------------------------

    async def request(
        self,
        method: str,
        path: str,
        *,
        query: Sequence[tuple[str, str]] = (),
        body: Mapping[str, Any] | None = None,
        content_type: str = JSON,
    ) -> KubeObject:
        """One request; the JSON answer, or an ApiError. For paths no Resource covers."""
        timeout = aiohttp.ClientTimeout(total=self.request_timeout)
        response = await self._send(
            method, path, query=query, body=body, timeout=timeout, content_type=content_type
        )
        try:
            data = await response.read()
        except _TRANSPORT_ERRORS as exc:
            raise _transport(method, path, exc) from exc
        finally:
            response.release()
        if not 200 <= response.status < 300:
            raise error_from_response(
                status=response.status,
                body=data,
                headers=response.headers,
                method=method,
                path=path,
            )
        _log.debug("event=request method=%s path=%s status=%d", method, path, response.status)
        if not data:
            return {}
        try:
            parsed = json.loads(data)
        except ValueError as exc:
            raise TransportError(
                f"answer is not JSON: {data[:200]!r}", method=method, path=path
            ) from exc
        return parsed if isinstance(parsed, dict) else {"value": parsed}

    async def _send(
        self,
        method: str,
        path: str,
        *,
        query: Sequence[tuple[str, str]],
        body: Mapping[str, Any] | None,
        timeout: aiohttp.ClientTimeout,
        content_type: str = JSON,
    ) -> aiohttp.ClientResponse:
        headers = {"Accept": JSON, "Content-Type": content_type}
        try:
            response = await self._api.call_api(
                path,
                method,
                query_params=builtins.list(query),
                header_params=headers,
                body=dict(body) if body is not None else None,
                auth_settings=["BearerToken"],
                _preload_content=False,
                _request_timeout=timeout,
            )
        except _TRANSPORT_ERRORS as exc:
            raise _transport(method, path, exc) from exc
        if not isinstance(response, aiohttp.ClientResponse):  # pragma: no cover - library drift
            raise TypeError(
                f"kubernetes_asyncio returned {type(response).__name__}, not a response"
            )
        return response

    async def _apply(
        self,
        res: Resource,
        body: Mapping[str, Any],
        *,
        field_manager: str,
        force: bool,
        subresource: str | None = None,
    ) -> KubeObject:
        doc, name, namespace = _prepared(res, body)
        # An object read back from the API can't be applied as is: SSA refuses
        # managedFields in the request.
        doc.get("metadata", {}).pop("managedFields", None)
        query: Query = [("fieldManager", field_manager)]
        if force:
            query.append(("force", "true"))
        path = res.path(namespace=namespace, name=name, subresource=subresource)
        answer = await self.request("PATCH", path, query=query, body=doc, content_type=APPLY_PATCH)
        return _with_type(res, answer)

    async def _decide_csr(
        self,
        decided: Mapping[str, Any],
        decision: Literal["Approved", "Denied"],
        *,
        signer: str,
        reason: str,
        message: str,
    ) -> KubeObject:
        _csr_identity(decided, signer=signer)
        csr = copy.deepcopy(dict(decided))
        if _has_condition(csr, decision):
            return csr
        csr.pop("kind", None)
        csr.pop("apiVersion", None)
        status = csr.get("status") or {}
        csr["status"] = status
        conditions: Objects = list(status.get("conditions") or [])
        conditions.append(
            {"type": decision, "status": "True", "reason": reason, "message": message}
        )
        status["conditions"] = conditions
        return await self.replace(CERTIFICATE_SIGNING_REQUEST, csr, subresource="approval")


def _csr_identity(csr: Mapping[str, Any], *, signer: str) -> tuple[str, str, str]:
    """(name, uid, resourceVersion) of a CSR as read, after checking it is ``signer``'s."""
    meta = csr.get("metadata") or {}
    spec = csr.get("spec") or {}
    name, uid, version = (str(meta.get(k) or "") for k in ("name", "uid", "resourceVersion"))
    if not (name and uid and version):
        raise ValueError(
            f"CertificateSigningRequest {name or '<no name>'!r} has no metadata.uid or "
            "resourceVersion: decide only CSRs read from the apiserver"
        )
    actual = spec.get("signerName") if isinstance(spec, Mapping) else None
    if actual != signer:
        raise ValueError(
            f"CertificateSigningRequest {name!r} is for signer {actual!r}, not {signer!r}; "
            "refusing to decide or sign another signer's request"
        )
    return name, uid, version


def _has_condition(csr: Mapping[str, Any], kind: str) -> bool:
    status = csr.get("status") or {}
    return any(
        isinstance(c, Mapping) and c.get("type") == kind and c.get("status") == "True"
        for c in (status.get("conditions") or [])
    )


async def connect(
    *,
    kubeconfig: str | None = None,
    context: str | None = None,
    in_cluster: bool = False,
    request_timeout: float = 30.0,
) -> Kube:
    """A Kube from the pod's service account (``in_cluster``) or the operator's kubeconfig
    file (``kubeconfig``, else $KUBECONFIG, else ~/.kube/config)."""
    api, where = await api_client_for_operator(
        kubeconfig=kubeconfig, context=context, in_cluster=in_cluster
    )
    return Kube(api, name=where, request_timeout=request_timeout)


# --- helpers ------------------------------------------------------------------------------


def _prepared(res: Resource, body: Mapping[str, Any]) -> tuple[KubeObject, str, str | None]:
    """A deep copy of ``body`` with apiVersion/kind filled in and checked, plus its name
    and namespace (None for cluster-scoped)."""
    doc: KubeObject = copy.deepcopy(dict(body))
    api_version = doc.setdefault("apiVersion", res.api_version)
    kind = doc.setdefault("kind", res.kind)
    if api_version != res.api_version or kind != res.kind:
        raise ValueError(
            f"body is {api_version}/{kind}, but the resource is {res.api_version}/{res.kind}"
        )
    meta = doc.get("metadata")
    if not isinstance(meta, dict) or not meta.get("name"):
        raise ValueError(f"{res.kind} body has no metadata.name")
    name = str(meta["name"])
    namespace = meta.get("namespace")
    if res.namespaced and not namespace:
        raise ValueError(f"{res.kind} {name!r} is namespaced; set metadata.namespace")
    if not res.namespaced and namespace:
        raise ValueError(f"{res.kind} {name!r} is cluster-scoped; drop metadata.namespace")
    return doc, name, str(namespace) if namespace else None


def _with_type(res: Resource, obj: KubeObject) -> KubeObject:
    obj.setdefault("apiVersion", res.api_version)
    obj.setdefault("kind", res.kind)
    return obj


def _watch_event(res: Resource, line: bytes, path: str) -> WatchEvent:
    try:
        raw = json.loads(line)
    except ValueError as exc:
        raise TransportError(
            f"watch stream line is not JSON: {line[:200]!r}", method="GET", path=path
        ) from exc
    if not isinstance(raw, dict) or not isinstance(raw.get("object"), dict):
        raise TransportError(f"unexpected watch event: {line[:200]!r}", method="GET", path=path)
    event_type = str(raw.get("type", ""))
    obj: KubeObject = raw["object"]
    if event_type != "ERROR":
        _with_type(res, obj)
    return {"type": event_type, "object": obj}


def _transport(method: str, path: str, exc: BaseException) -> TransportError:
    what = str(exc) or "no details"
    if isinstance(exc, TimeoutError):
        what = "timed out"
    return TransportError(f"{type(exc).__name__}: {what}", method=method, path=path)
