"""A tenant's kubeconfig, parsed by us into plain credentials, never by a kubeconfig loader.

Whoever can write the ``<cluster>-kubeconfig`` Secret in a tenant's namespace writes this
document, and the controller acts on it. A kubeconfig loader does what the document says:
it runs ``users[].user.exec`` commands and auth-provider plugins, reads ``tokenFile`` and
every ``*-file``/path form from the *controller's* disk (its own service account token,
then sent to a server the tenant chose), and honours ``insecure-skip-tls-verify`` and
``proxy-url``. So the document is read here, as data, and only what Cluster API writes is
accepted:

- ``clusters[].cluster``: an ``https://`` ``server`` and, optionally,
  ``certificate-authority-data`` (without it the system's trust roots verify the server);
- ``users[].user``: ``client-certificate-data`` with ``client-key-data``, and/or a
  literal ``token``;
- ``contexts[].context``: ``cluster``, ``user`` (and ``namespace``, unused).

Unknown keys are refused, not ignored: a key we don't know is one whose effect we can't
vouch for (``tls-server-name``, impersonation, basic auth, a future plugin form). The
only keys accepted and ignored are inert by definition: ``extensions``, ``preferences``,
``disable-compression``, a context's ``namespace``, ``insecure-skip-tls-verify: false``.
Every entry of every list is checked, not only the chosen context's, so a refused form
anywhere in the document is reported. Every refusal names the field
(``users[0].user.exec``) and never quotes a value.

Pure: no I/O, no Kubernetes client. ``vpnctl.kube`` turns a ``Kubeconfig`` into a client.
"""

from __future__ import annotations

import base64
import binascii
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

import yaml

# A CAPI kubeconfig with a CA bundle is a few KiB; anything near this is not one.
MAX_KUBECONFIG_BYTES = 256 * 1024
MAX_ENTRIES = 32  # per list (clusters, users, contexts)

_TOKEN = re.compile(r"[\x21-\x7e]{1,8192}")  # printable ASCII, no spaces: a header value
_NAME_MAX = 253

_FIX_CREDENTIALS = (
    "put the credentials in the file itself: client-certificate-data and client-key-data, or token"
)

# Forms a kubeconfig loader would act on and we refuse, with why.
_REFUSED_CLUSTER = {
    "certificate-authority": (
        "is a file path on the controller's disk; embed the CA as certificate-authority-data"
    ),
    "proxy-url": "would send the controller's requests through a proxy; remove it",
    "tls-server-name": "is not supported; use a server URL whose name the certificate has",
}
_REFUSED_USER = {
    "exec": f"runs a command inside the controller; vpnctl never does: {_FIX_CREDENTIALS}",
    "auth-provider": f"runs an auth-provider plugin; vpnctl never does: {_FIX_CREDENTIALS}",
    "tokenFile": f"reads a file from the controller's disk; {_FIX_CREDENTIALS}",
    "client-certificate": (
        "is a file path on the controller's disk; embed it as client-certificate-data"
    ),
    "client-key": "is a file path on the controller's disk; embed it as client-key-data",
    "username": f"basic authentication is not supported; {_FIX_CREDENTIALS}",
    "password": f"basic authentication is not supported; {_FIX_CREDENTIALS}",
    "as": "impersonation is not supported; remove it",
    "as-uid": "impersonation is not supported; remove it",
    "as-groups": "impersonation is not supported; remove it",
    "as-user-extra": "impersonation is not supported; remove it",
}
_CLUSTER_KEYS = {"server", "certificate-authority-data", "insecure-skip-tls-verify",
                 "disable-compression", "extensions"}  # fmt: skip
_USER_KEYS = {"client-certificate-data", "client-key-data", "token", "extensions"}
_CONTEXT_KEYS = {"cluster", "user", "namespace", "extensions"}
_TOP_KEYS = {"apiVersion", "kind", "clusters", "users", "contexts", "current-context",
             "preferences", "extensions"}  # fmt: skip


class KubeconfigRejected(ValueError):
    """A kubeconfig vpnctl will not use. ``field`` is the path of what is wrong
    (``users[0].user.exec``; ``document`` for the whole text); the message never holds
    a value from the document other than names."""

    def __init__(self, field: str, problem: str) -> None:
        super().__init__(f"{field} {problem}")
        self.field = field
        self.problem = problem


@dataclass(frozen=True, kw_only=True)
class Kubeconfig:
    """What a client needs to reach the tenant apiserver, and nothing a loader could act on.

    PEM bytes as decoded from the ``*-data`` fields. At least one of a client
    certificate (with its key) and a token is set.
    """

    context: str
    server: str
    ca_pem: bytes | None = field(default=None, repr=False)
    client_cert_pem: bytes | None = field(default=None, repr=False)
    client_key_pem: bytes | None = field(default=None, repr=False)
    token: str | None = field(default=None, repr=False)

    def __repr__(self) -> str:
        auth = " and ".join(
            what
            for what, present in (
                ("client certificate", self.client_key_pem is not None),
                ("token", self.token is not None),
            )
            if present
        )
        ca = "its CA" if self.ca_pem is not None else "system roots"
        return f"Kubeconfig(context={self.context!r}, server={self.server!r}, {auth}, {ca})"

    __str__ = __repr__


def parse_kubeconfig(text: str | bytes, *, context: str | None = None) -> Kubeconfig:
    """The credentials of ``context`` (default: ``current-context``, or the only context).

    Raises KubeconfigRejected naming the field for anything refused or malformed.
    """
    raw = (
        text
        if isinstance(text, bytes)
        else text[: MAX_KUBECONFIG_BYTES + 1].encode("utf-8", "replace")
    )
    if len(raw) > MAX_KUBECONFIG_BYTES:
        raise KubeconfigRejected(
            "document", f"is over {MAX_KUBECONFIG_BYTES} bytes, too large for a kubeconfig"
        )
    if isinstance(text, bytes):
        try:
            text = text.decode("utf-8")
        except UnicodeDecodeError:
            raise KubeconfigRejected("document", "is not UTF-8 text") from None
    try:
        doc = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise KubeconfigRejected("document", f"is not valid YAML ({yaml_problem(exc)})") from None
    except (ValueError, OverflowError, RecursionError) as exc:
        # A scalar PyYAML resolves but cannot build (a timestamp like 2024-02-30), or
        # nesting deeper than the composer's recursion.
        raise KubeconfigRejected(
            "document", f"is not a YAML kubeconfig ({type(exc).__name__})"
        ) from None
    if not isinstance(doc, Mapping):
        got = "nothing" if doc is None else type(doc).__name__
        raise KubeconfigRejected(
            "document",
            f"is not a kubeconfig (expected a mapping with clusters, users and contexts, "
            f"got {got})",
        )
    _only(doc, "", _TOP_KEYS, {})
    _list(doc, "", "extensions")
    for key, expected in (("apiVersion", "v1"), ("kind", "Config")):
        if key in doc and doc[key] != expected:
            raise KubeconfigRejected(key, f"must be {expected!r}")

    clusters = {n: _cluster(p, b) for n, (p, b) in _named(doc, "clusters", "cluster").items()}
    users = {n: _user(p, b) for n, (p, b) in _named(doc, "users", "user").items()}
    contexts = _named(doc, "contexts", "context")
    for path, body in contexts.values():
        _only(body, path, _CONTEXT_KEYS, {})
        _list(body, path, "extensions")
        for key in ("cluster", "user"):
            if not isinstance(body.get(key), str) or not body[key]:
                raise KubeconfigRejected(f"{path}.{key}", f"is missing; it names the {key} to use")

    chosen = context if context is not None else doc.get("current-context")
    if chosen is None or chosen == "":
        if len(contexts) != 1:
            raise KubeconfigRejected(
                "current-context",
                f"is missing and the file has {len(contexts)} contexts; set it",
            )
        chosen = next(iter(contexts))
    if not isinstance(chosen, str) or chosen not in contexts:
        have = ", ".join(_shown(c) for c in contexts) or "none"
        raise KubeconfigRejected(
            "current-context" if context is None else "context",
            f"names context {_shown(chosen)}, which is not in contexts (have: {have})",
        )
    path, body = contexts[chosen]
    cluster_name, user_name = str(body["cluster"]), str(body["user"])
    if cluster_name not in clusters:
        raise KubeconfigRejected(
            f"{path}.cluster", f"names cluster {_shown(cluster_name)}, which is not in clusters"
        )
    if user_name not in users:
        raise KubeconfigRejected(
            f"{path}.user", f"names user {_shown(user_name)}, which is not in users"
        )
    server, ca_pem = clusters[cluster_name]
    cert_pem, key_pem, token = users[user_name]
    return Kubeconfig(
        context=chosen,
        server=server,
        ca_pem=ca_pem,
        client_cert_pem=cert_pem,
        client_key_pem=key_pem,
        token=token,
    )


def yaml_problem(exc: yaml.YAMLError) -> str:
    """Where the YAML broke, without PyYAML's "problem" text: that can quote the
    offending scalar, which in a kubeconfig may be key material."""
    if isinstance(exc, yaml.MarkedYAMLError):
        mark = exc.problem_mark or exc.context_mark
        where = f"line {mark.line + 1}, column {mark.column + 1}" if mark else "unknown position"
        return f"{exc.context}, {where}" if exc.context else where
    return type(exc).__name__


# --- the parts ---------------------------------------------------------------------------


def _shown(name: object) -> str:
    """A name from the document, safe to put in a message (names are not secrets, but
    a hostile file may put anything anywhere: keep it short and printable)."""
    text = str(name)
    if len(text) > 64 or not text.isprintable():
        return f"<{len(text)} characters>"
    return repr(text)


def _key(key: object) -> str:
    """A mapping key for a field path: itself when it is a short printable string."""
    if isinstance(key, str) and len(key) <= 64 and key.isprintable():
        return key
    return f"<{type(key).__name__} key>"


def _only(
    body: Mapping[Any, Any], path: str, allowed: set[str], refused: Mapping[str, str]
) -> None:
    """Refuse the keys in ``refused`` with their reason, and any key not in ``allowed``."""
    prefix = f"{path}." if path else ""
    for key in body:
        if isinstance(key, str) and key in refused:
            raise KubeconfigRejected(f"{prefix}{key}", refused[key])
        if key not in allowed:
            raise KubeconfigRejected(
                f"{prefix}{_key(key)}",
                "is not a key vpnctl knows; it is refused rather than ignored, because it "
                "could change how the tenant cluster is reached: remove it",
            )


def _named(
    doc: Mapping[str, Any], section: str, inner: str
) -> dict[str, tuple[str, Mapping[str, Any]]]:
    """name -> (field path of the inner mapping, the inner mapping), checked for shape."""
    entries = doc.get(section)
    if entries is None:
        return {}
    if not isinstance(entries, list):
        raise KubeconfigRejected(section, "must be a list")
    if len(entries) > MAX_ENTRIES:
        raise KubeconfigRejected(section, f"has {len(entries)} entries; at most {MAX_ENTRIES}")
    out: dict[str, tuple[str, Mapping[str, Any]]] = {}
    for i, entry in enumerate(entries):
        where = f"{section}[{i}]"
        if not isinstance(entry, Mapping):
            raise KubeconfigRejected(where, "must be a mapping with name and " + inner)
        _only(entry, where, {"name", inner}, {})
        name = entry.get("name")
        if not isinstance(name, str) or not name or len(name) > _NAME_MAX:
            raise KubeconfigRejected(f"{where}.name", "must be a non-empty string")
        if name in out:
            raise KubeconfigRejected(f"{where}.name", f"repeats the name {_shown(name)}")
        body = entry.get(inner)
        if not isinstance(body, Mapping):
            raise KubeconfigRejected(f"{where}.{inner}", "must be a mapping")
        out[name] = (f"{where}.{inner}", body)
    return out


def _cluster(path: str, body: Mapping[str, Any]) -> tuple[str, bytes | None]:
    _only(body, path, _CLUSTER_KEYS, _REFUSED_CLUSTER)
    if body.get("insecure-skip-tls-verify", False) is not False:
        raise KubeconfigRejected(
            f"{path}.insecure-skip-tls-verify",
            "turns off server certificate checks; remove it and set certificate-authority-data",
        )
    _boolean(body, path, "disable-compression")
    _list(body, path, "extensions")
    server = body.get("server")
    if not isinstance(server, str) or not server:
        raise KubeconfigRejected(f"{path}.server", "is missing; set the apiserver's https:// URL")
    _check_server(f"{path}.server", server)
    ca = _pem(body, path, "certificate-authority-data", "CERTIFICATE")
    return server.rstrip("/"), ca


def _user(path: str, body: Mapping[str, Any]) -> tuple[bytes | None, bytes | None, str | None]:
    _only(body, path, _USER_KEYS, _REFUSED_USER)
    _list(body, path, "extensions")
    cert = _pem(body, path, "client-certificate-data", "CERTIFICATE")
    key = _pem(body, path, "client-key-data", "PRIVATE KEY")
    if (cert is None) != (key is None):
        have, missing = (
            ("client-certificate-data", "client-key-data")
            if key is None
            else ("client-key-data", "client-certificate-data")
        )
        raise KubeconfigRejected(f"{path}.{missing}", f"is missing; {have} needs it")
    token = body.get("token")
    if token is not None and (not isinstance(token, str) or not _TOKEN.fullmatch(token)):
        raise KubeconfigRejected(
            f"{path}.token", "must be a literal token: printable ASCII without spaces"
        )
    if cert is None and token is None:
        raise KubeconfigRejected(path, f"has no credentials; {_FIX_CREDENTIALS}")
    return cert, key, token


def _check_server(where: str, server: str) -> None:
    try:
        url = urlsplit(server)
        port = url.port
    except ValueError:
        raise KubeconfigRejected(where, "is not a URL") from None
    if url.scheme != "https":
        raise KubeconfigRejected(
            where, "must be an https:// URL (plain http would send the credentials in clear)"
        )
    if not url.hostname or url.username is not None or url.password is not None:
        raise KubeconfigRejected(where, "must be https://HOST[:PORT], without user or password")
    if url.query or url.fragment or port == 0:
        raise KubeconfigRejected(where, "must be https://HOST[:PORT][/PATH], without ?query or #")
    if not server.isprintable() or any(c.isspace() for c in server):
        raise KubeconfigRejected(where, "must not contain spaces or control characters")


def _pem(body: Mapping[str, Any], path: str, key: str, label: str) -> bytes | None:
    value = body.get(key)
    if value is None:
        return None
    where = f"{path}.{key}"
    if not isinstance(value, str):
        raise KubeconfigRejected(where, "must be base64 text")
    try:
        data = base64.b64decode("".join(value.split()), validate=True)
    except (binascii.Error, ValueError):
        raise KubeconfigRejected(where, "is not valid base64") from None
    if b"-----BEGIN " not in data or label.encode() not in data:
        raise KubeconfigRejected(where, f"does not hold a PEM {label}")
    return data


def _boolean(body: Mapping[str, Any], path: str, key: str) -> None:
    if key in body and not isinstance(body[key], bool):
        raise KubeconfigRejected(f"{path}.{key}" if path else key, "must be true or false")


def _list(body: Mapping[str, Any], path: str, key: str) -> None:
    """``extensions`` are ignored, but must have their documented shape."""
    if key in body and not isinstance(body[key], list):
        raise KubeconfigRejected(f"{path}.{key}" if path else key, "must be a list")
