"""``Kube``: one apiserver connection, generic over every resource, on plain dicts.

kubernetes_asyncio is used for two things only: reading kubeconfigs (file, in-cluster,
or text from CAPI's ``<cluster>-kubeconfig`` Secret) and its ``ApiClient`` as an
authenticated HTTP session. Every request goes through ``ApiClient.call_api`` with
``_preload_content=False``: we get the raw response, so status, headers (Retry-After)
and body are ours to map onto ``vpnctl.kube.errors``, watch streams are read line by
line without the library's model deserialisation, and no model class leaks upwards.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import builtins
import contextlib
import copy
import json
import logging
import os
import ssl
import tempfile
from collections.abc import AsyncGenerator, Iterator, Mapping, Sequence
from pathlib import Path
from types import TracebackType
from typing import Any, Literal

import aiohttp
import yaml
from kubernetes_asyncio import client as k8s_client
from kubernetes_asyncio import config as k8s_config

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
        """A Kube from kubeconfig YAML, e.g. CAPI's ``<cluster>-kubeconfig`` Secret.

        Raises KubeconfigError, saying what is wrong, for text that isn't a usable
        kubeconfig. ``name`` says where the text came from, for those messages.
        """
        try:
            doc = yaml.safe_load(text)
        except yaml.YAMLError as exc:
            raise KubeconfigError(f"{name}: not valid YAML ({_yaml_problem(exc)})") from None
        _check_kubeconfig(doc, context=context, where=name)
        api = await _client_from_doc(doc, context=context, where=name, base_dir=None)
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
    ) -> tuple[Objects, str]:
        """All matching objects (every page) and the list's resourceVersion, to watch from.

        ``namespace=None`` on a namespaced resource lists all namespaces. Items carry
        apiVersion and kind (list items from the apiserver often don't).
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
                    items.extend(_with_type(res, item) for item in page.get("items") or [])
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
    """A Kube from the pod's service account (``in_cluster``) or a kubeconfig file
    (``kubeconfig``, else $KUBECONFIG, else ~/.kube/config)."""
    configuration = k8s_client.Configuration()
    if in_cluster:
        where = "in-cluster service account"
        try:
            # Untyped in the library; it only fills in `configuration`.
            k8s_config.load_incluster_config(  # type: ignore[no-untyped-call]
                client_configuration=configuration
            )
        except k8s_config.ConfigException as exc:
            raise KubeconfigError(
                f"{where}: {exc}; run inside a pod with a service account token, "
                "or pass a kubeconfig"
            ) from None
        return Kube(_api_client(configuration, where), name=where, request_timeout=request_timeout)

    path = kubeconfig or os.environ.get("KUBECONFIG") or str(Path.home() / ".kube" / "config")
    where = f"kubeconfig {path}"
    if os.pathsep not in path:
        # One file (the usual case): check it ourselves first for a readable message.
        try:
            text, base_dir = await asyncio.to_thread(_read_file, path)
        except OSError as exc:
            raise KubeconfigError(f"{where}: can't read it ({exc.strerror})") from None
        try:
            doc = yaml.safe_load(text)
        except yaml.YAMLError as exc:
            raise KubeconfigError(f"{where}: not valid YAML ({_yaml_problem(exc)})") from None
        _check_kubeconfig(doc, context=context, where=where)
        api = await _client_from_doc(doc, context=context, where=where, base_dir=base_dir)
        return Kube(api, name=where, request_timeout=request_timeout)
    # Several files in $KUBECONFIG: the library merges them.
    with _explained(where):
        await k8s_config.load_kube_config(
            config_file=path,
            context=context,
            client_configuration=configuration,
            persist_config=False,
        )
    return Kube(_api_client(configuration, where), name=where, request_timeout=request_timeout)


def kubeconfig_text_from_secret(secret: Mapping[str, Any], *, key: str = "value") -> str:
    """The kubeconfig in a Secret such as CAPI's ``<cluster>-kubeconfig`` (key ``value``,
    base64 as the API returns it). KubeconfigError if it's missing or not text."""
    meta = secret.get("metadata") or {}
    where = f"Secret {meta.get('namespace', '?')}/{meta.get('name', '?')}"
    data = secret.get("data") or {}
    raw = data.get(key) if isinstance(data, Mapping) else None
    if not raw:
        have = ", ".join(sorted(data)) if isinstance(data, Mapping) and data else "none"
        raise KubeconfigError(
            f"{where} has no key {key!r} (keys: {have}); it should hold the cluster's kubeconfig"
        )
    try:
        return base64.b64decode(str(raw), validate=True).decode("utf-8")
    except (binascii.Error, ValueError):
        raise KubeconfigError(f"{where}: key {key!r} is not base64-encoded UTF-8 text") from None


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


def _first_line(exc: BaseException) -> str:
    return str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__


async def _client_from_doc(
    doc: dict[str, Any], *, context: str | None, where: str, base_dir: Path | None
) -> k8s_client.ApiClient:
    """An ApiClient for a parsed (and checked) kubeconfig.

    TLS needs certificate and key *files*. Left to itself the library writes inline
    ``*-data`` to files in /tmp that live as long as the process, and a tenant's
    kubeconfig holds a cluster-admin key. So the data goes to a private temporary
    directory just while the TLS context is built, and is gone when this returns.
    """
    configuration = k8s_client.Configuration()
    with tempfile.TemporaryDirectory(prefix="vpnctl-kubeconfig-") as tmp:
        materialised = _materialised(doc, Path(tmp), base_dir)
        with _explained(where):
            await k8s_config.load_kube_config_from_dict(
                materialised, context=context, client_configuration=configuration
            )
        return _api_client(configuration, where)


def _read_file(path: str) -> tuple[str, Path]:
    """The file's text and its folder (relative paths in a kubeconfig start there)."""
    absolute = Path(path).expanduser().absolute()
    return absolute.read_text(), absolute.parent


def _materialised(doc: dict[str, Any], tmp: Path, base_dir: Path | None) -> dict[str, Any]:
    """A copy of ``doc`` whose inline certificate/key data are files in ``tmp`` and
    whose relative file paths are relative to ``base_dir`` (the kubeconfig's folder)."""
    out: dict[str, Any] = copy.deepcopy(doc)
    written = 0

    def to_file(section: dict[str, Any], file_key: str) -> None:
        nonlocal written
        data_key = f"{file_key}-data"
        data = section.get(data_key)
        if data:
            try:
                content = base64.b64decode("".join(str(data).split()), validate=True)
            except (binascii.Error, ValueError):
                return  # not the chosen context's (that one was checked); leave it be
            written += 1
            target = tmp / f"{written}-{file_key}"
            target.write_bytes(content)
            section[file_key] = str(target)
            del section[data_key]
        elif isinstance(section.get(file_key), str) and base_dir is not None:
            section[file_key] = str(base_dir / section[file_key])

    for entry in out.get("clusters") or []:
        if isinstance(entry, dict) and isinstance(entry.get("cluster"), dict):
            to_file(entry["cluster"], "certificate-authority")
    for entry in out.get("users") or []:
        if isinstance(entry, dict) and isinstance(entry.get("user"), dict):
            to_file(entry["user"], "client-certificate")
            to_file(entry["user"], "client-key")
            token_file = entry["user"].get("tokenFile")
            if isinstance(token_file, str) and base_dir is not None:
                entry["user"]["tokenFile"] = str(base_dir / token_file)
    return out


def _yaml_problem(exc: yaml.YAMLError) -> str:
    """Where the YAML broke, without PyYAML's "problem" text: that can quote the
    offending scalar, which in a kubeconfig may be key material."""
    if isinstance(exc, yaml.MarkedYAMLError):
        mark = exc.problem_mark or exc.context_mark
        where = f"line {mark.line + 1}, column {mark.column + 1}" if mark else "unknown position"
        return f"{exc.context}, {where}" if exc.context else where
    return type(exc).__name__


def _api_client(configuration: k8s_client.Configuration, where: str) -> k8s_client.ApiClient:
    try:
        return k8s_client.ApiClient(configuration)
    except (ssl.SSLError, OSError, ValueError) as exc:
        raise KubeconfigError(
            f"{where}: the CA certificate or the client certificate/key can't be loaded "
            f"({_first_line(exc)}); check certificate-authority(-data), "
            "client-certificate(-data) and client-key(-data)"
        ) from None


@contextlib.contextmanager
def _explained(where: str) -> Iterator[None]:
    """Turn whatever the kubeconfig loader raises into a KubeconfigError naming ``where``
    (the library reports a bad kubeconfig with asserts, KeyErrors and the like)."""
    try:
        yield
    except KubeconfigError:
        raise
    except (
        k8s_config.ConfigException,
        KeyError,
        TypeError,
        ValueError,
        AssertionError,
        AttributeError,
        OSError,
    ) as exc:
        raise KubeconfigError(
            f"{where}: can't be used ({type(exc).__name__}: {_first_line(exc)})"
        ) from None


def _check_kubeconfig(doc: object, *, context: str | None, where: str) -> None:
    """Enough structure checks to say what is wrong, before the library's loader (whose
    errors are asserts and KeyErrors) sees the document. Never quotes key material."""
    if not isinstance(doc, dict):
        got = "nothing" if doc is None else type(doc).__name__
        raise KubeconfigError(
            f"{where}: not a kubeconfig (expected a mapping with clusters, contexts and "
            f"users, got {got})"
        )

    def named(section: str, inner: str) -> dict[str, dict[str, Any]]:
        entries = doc.get(section) or []
        if not isinstance(entries, builtins.list):
            raise KubeconfigError(f"{where}: {section} must be a list")
        out: dict[str, dict[str, Any]] = {}
        for entry in entries:
            if not isinstance(entry, dict) or "name" not in entry:
                raise KubeconfigError(f"{where}: every entry of {section} needs a name")
            value = entry.get(inner)
            out[str(entry["name"])] = value if isinstance(value, dict) else {}
        return out

    contexts = named("contexts", "context")
    clusters = named("clusters", "cluster")
    users = named("users", "user")
    chosen = context or doc.get("current-context")
    if not chosen:
        raise KubeconfigError(f"{where}: no current-context, and no context was asked for")
    if chosen not in contexts:
        have = ", ".join(sorted(contexts)) or "none"
        raise KubeconfigError(f"{where}: context {chosen!r} not found (contexts: {have})")
    ctx = contexts[chosen]
    cluster_name = ctx.get("cluster")
    if cluster_name not in clusters:
        raise KubeconfigError(
            f"{where}: context {chosen!r} names cluster {cluster_name!r}, which isn't defined"
        )
    cluster = clusters[str(cluster_name)]
    server = cluster.get("server")
    if not isinstance(server, str) or not server.startswith(("https://", "http://")):
        raise KubeconfigError(
            f"{where}: cluster {cluster_name!r} has no http(s) server URL (got {server!r})"
        )
    user_name = ctx.get("user")
    user = users.get(str(user_name), {}) if user_name else {}
    if user_name and str(user_name) not in users:
        raise KubeconfigError(
            f"{where}: context {chosen!r} names user {user_name!r}, which isn't defined"
        )
    for owner, section, field in (
        (f"cluster {cluster_name!r}", cluster, "certificate-authority-data"),
        (f"user {user_name!r}", user, "client-certificate-data"),
        (f"user {user_name!r}", user, "client-key-data"),
    ):
        value = section.get(field)
        if value is None:
            continue
        try:
            base64.b64decode("".join(str(value).split()), validate=True)
        except (binascii.Error, ValueError):
            raise KubeconfigError(f"{where}: {owner} {field} is not valid base64") from None
