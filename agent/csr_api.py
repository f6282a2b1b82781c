"""The node's client of the tenant apiserver's CSR API, authenticated as the kubelet.

Only what `agent.bootstrap` needs: create a CertificateSigningRequest, read it, and
watch it until it is answered; TLS with the kubelet's client certificate, so the
apiserver attributes the CSR to the node (`system:node:<name>`).
"""

from __future__ import annotations

import json
import ssl
import urllib.parse
from collections.abc import Mapping
from typing import Any, Literal

import aiohttp

from certs.key_delivery import KEY_ANNOTATION

CSR_PATH = "/apis/certificates.k8s.io/v1/certificatesigningrequests"
_REQUEST_TIMEOUT = 15.0


class BootstrapError(Exception):
    """The certificate could not be obtained; the message says why and what to do."""


class ApiRequestError(BootstrapError):
    """The tenant apiserver could not be reached, or refused a request."""

    def __init__(self, message: str, *, status: int | None = None) -> None:
        self.status = status
        super().__init__(message)


class CSRRefused(BootstrapError):
    """vpnctl denied the CSR, or approved it but failed to sign it."""

    def __init__(
        self, *, csr_name: str, outcome: Literal["Denied", "Failed"], reason: str, message: str
    ) -> None:
        self.csr_name = csr_name
        self.outcome = outcome
        self.reason = reason
        self.message = message
        super().__init__(
            f"CSR {csr_name} was {outcome.lower()} ({reason or 'no reason given'}): "
            f"{message or 'no message'}; the next attempt uses a new key"
        )


class BootstrapTimeout(BootstrapError):
    """The CSR was not answered in time (vpnctl not running for this cluster?)."""


def ssl_context(*, ca_file: str, client_cert_file: str, client_key_file: str) -> ssl.SSLContext:
    try:
        context = ssl.create_default_context(cafile=ca_file)
    except (OSError, ssl.SSLError) as e:
        raise BootstrapError(
            f"cannot load the tenant apiserver's CA {ca_file}: {e}; set bootstrap.ca to the "
            "CA that signed the apiserver's serving certificate"
        ) from None
    try:
        context.load_cert_chain(client_cert_file, client_key_file)
    except (OSError, ssl.SSLError) as e:
        raise BootstrapError(
            f"cannot load the kubelet's client certificate {client_cert_file} with key "
            f"{client_key_file}: {e}; point bootstrap.client_cert/client_key at the "
            "kubelet's credentials (e.g. /var/lib/kubelet/pki/kubelet-client-current.pem)"
        ) from None
    return context


def sealed_key(csr: Mapping[str, Any]) -> str | None:
    """The sealed tls-crypt-v2 client key on CSR (``KEY_ANNOTATION``), None if absent."""
    meta = csr.get("metadata")
    annotations = meta.get("annotations") if isinstance(meta, Mapping) else None
    value = annotations.get(KEY_ANNOTATION) if isinstance(annotations, Mapping) else None
    return value if isinstance(value, str) and value else None


def _status_message(body: bytes) -> str:
    try:
        doc = json.loads(body)
    except (ValueError, UnicodeDecodeError):
        return body[:200].decode("utf-8", "replace").strip() or "no message"
    if isinstance(doc, dict) and isinstance(doc.get("message"), str):
        return str(doc["message"])
    return "no message"


class CsrApi:
    """The four calls, against one tenant apiserver, as one node."""

    def __init__(
        self, *, session: aiohttp.ClientSession, server: str, node_name: str, client_cert_file: str
    ) -> None:
        self._session = session
        self._server = server.rstrip("/")
        self._node = node_name
        self._cert_file = client_cert_file

    def _url(self, path: str, query: Mapping[str, str] | None = None) -> str:
        url = f"{self._server}{path}"
        return f"{url}?{urllib.parse.urlencode(query)}" if query else url

    def _error(self, method: str, path: str, status: int, body: bytes) -> ApiRequestError:
        what = f"{method} {self._server}{path}"
        message = _status_message(body)
        if status == 401:
            hint = (
                f"the apiserver does not accept the kubelet's client certificate "
                f"{self._cert_file}: expired, or issued by another cluster's CA?"
            )
        elif status == 403:
            hint = (
                f"system:node:{self._node} may not do this; nodes get create/get/list/watch "
                "on CSRs from the Node authorizer: is the certificate the kubelet's "
                "(O=system:nodes) and --authorization-mode Node enabled?"
            )
        else:
            hint = "see the apiserver's message"
        return ApiRequestError(f"{what} answered {status}: {message} ({hint})", status=status)

    async def _call(
        self,
        method: str,
        path: str,
        *,
        body: Mapping[str, Any] | None = None,
        ok: tuple[int, ...] = (200,),
    ) -> tuple[int, dict[str, Any]]:
        try:
            async with self._session.request(
                method,
                self._url(path),
                json=body,
                timeout=aiohttp.ClientTimeout(total=_REQUEST_TIMEOUT),
            ) as resp:
                data = await resp.read()
                if resp.status not in ok:
                    raise self._error(method, path, resp.status, data)
                try:
                    doc = json.loads(data)
                except (ValueError, UnicodeDecodeError):
                    raise ApiRequestError(
                        f"{method} {self._server}{path} answered {resp.status} with a body "
                        "that is not JSON; is this a Kubernetes apiserver?"
                    ) from None
                return resp.status, doc if isinstance(doc, dict) else {}
        except aiohttp.ClientError as e:
            raise self._unreachable(e) from None
        except TimeoutError:
            raise ApiRequestError(
                f"{method} {self._server}{path} got no answer within {_REQUEST_TIMEOUT} s"
            ) from None

    def _unreachable(self, e: Exception) -> ApiRequestError:
        if isinstance(e, aiohttp.ClientConnectorCertificateError):
            return ApiRequestError(
                f"the tenant apiserver {self._server} presented a certificate that "
                f"bootstrap.ca does not verify: {e.certificate_error}"
            )
        return ApiRequestError(
            f"cannot reach the tenant apiserver {self._server}: {type(e).__name__}: {e}"
        )

    async def create(self, body: Mapping[str, Any]) -> tuple[bool, dict[str, Any]]:
        """POST the CSR; (False, {}) when one of that name already exists (409)."""
        status, doc = await self._call("POST", CSR_PATH, body=body, ok=(200, 201, 202, 409))
        return status != 409, doc if status != 409 else {}

    async def get(self, name: str) -> dict[str, Any] | None:
        """The CSR, or None when it does not exist (404)."""
        status, doc = await self._call("GET", f"{CSR_PATH}/{name}", ok=(200, 404))
        return None if status == 404 else doc

    async def watch(
        self, name: str, *, resource_version: str, seconds: int
    ) -> tuple[str, dict[str, Any]] | None:
        """The first change of CSR NAME after RESOURCE_VERSION within SECONDS, as
        (type, object); None if nothing changed. Raises ApiRequestError on any trouble
        (the caller then polls)."""
        query = {
            "watch": "1",
            "fieldSelector": f"metadata.name={name}",
            "resourceVersion": resource_version,
            "timeoutSeconds": str(seconds),
        }
        try:
            async with self._session.get(
                self._url(CSR_PATH, query),
                timeout=aiohttp.ClientTimeout(total=seconds + _REQUEST_TIMEOUT),
            ) as resp:
                if resp.status != 200:
                    raise self._error("WATCH", CSR_PATH, resp.status, await resp.read())
                async for line in resp.content:
                    if not line.strip():
                        continue
                    event = json.loads(line)
                    kind, obj = event.get("type"), event.get("object")
                    if kind == "ERROR" or not isinstance(obj, dict):
                        raise ApiRequestError(f"watch of CSR {name} ended: {obj}")
                    if kind in ("ADDED", "MODIFIED", "DELETED"):
                        return str(kind), obj
        except aiohttp.ClientError as e:
            raise self._unreachable(e) from None
        except (TimeoutError, ValueError) as e:
            raise ApiRequestError(f"watch of CSR {name} failed: {type(e).__name__}") from None
        return None
