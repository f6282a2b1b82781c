"""How an ``ApiClient`` is configured, for the two kinds of kubeconfig vpnctl meets.

- The operator's own (``vpnctl run --kubeconfig``, ``$KUBECONFIG``, in-cluster): trusted
  like the command line that named it, so kubernetes_asyncio's loader reads it, with
  everything it supports (exec plugins, file paths, merged files).
- A tenant's (CAPI's ``<cluster>-kubeconfig`` Secret): hostile input. It never reaches the
  loader: ``vpnctl.reconcile.kubeconfig`` parses it into plain credentials, and
  ``api_client_for_tenant`` sets the client configuration from those, field by field.

In both cases inline key material is written only to a private temporary directory, and
only while the TLS context is built (the library loads certificates from files only).
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import builtins
import contextlib
import copy
import os
import ssl
import tempfile
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import yaml
from kubernetes_asyncio import client as k8s_client
from kubernetes_asyncio import config as k8s_config

from vpnctl.kube.errors import KubeconfigError
from vpnctl.reconcile.kubeconfig import Kubeconfig, yaml_problem


def api_client_for_tenant(credentials: Kubeconfig, *, where: str) -> k8s_client.ApiClient:
    """A client with exactly the parsed credentials: server, CA, client certificate and
    key, token. No loader, no plugin, no file of ours is involved."""
    configuration = k8s_client.Configuration()
    configuration.host = credentials.server
    if credentials.token is not None:
        configuration.api_key = {"BearerToken": credentials.token}
        configuration.api_key_prefix = {"BearerToken": "Bearer"}
    # The library's TLS context loads CA, certificate and key from files only, once,
    # when the ApiClient is made: they exist in a private directory just for that.
    with tempfile.TemporaryDirectory(prefix="vpnctl-kubeconfig-") as tmp:
        if credentials.ca_pem is not None:
            configuration.ssl_ca_cert = _private_file(tmp, "ca.crt", credentials.ca_pem)
        if credentials.client_cert_pem is not None and credentials.client_key_pem is not None:
            configuration.cert_file = _private_file(tmp, "client.crt", credentials.client_cert_pem)
            configuration.key_file = _private_file(tmp, "client.key", credentials.client_key_pem)
        return _api_client(configuration, where)


async def api_client_for_operator(
    *, kubeconfig: str | None, context: str | None, in_cluster: bool
) -> tuple[k8s_client.ApiClient, str]:
    """A client from the pod's service account or the operator's kubeconfig file, and
    a name for where it came from."""
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
        return _api_client(configuration, where), where

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
            raise KubeconfigError(f"{where}: not valid YAML ({yaml_problem(exc)})") from None
        _check_kubeconfig(doc, context=context, where=where)
        api = await _client_from_doc(doc, context=context, where=where, base_dir=base_dir)
        return api, where
    # Several files in $KUBECONFIG: the library merges them.
    with _explained(where):
        await k8s_config.load_kube_config(
            config_file=path,
            context=context,
            client_configuration=configuration,
            persist_config=False,
        )
    return _api_client(configuration, where), where


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


def _first_line(exc: BaseException) -> str:
    return str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__


async def _client_from_doc(
    doc: dict[str, Any], *, context: str | None, where: str, base_dir: Path | None
) -> k8s_client.ApiClient:
    """An ApiClient for the operator's own kubeconfig file (``connect``), trusted like
    the command line that named it: the library's loader may run its exec plugins.
    A tenant's kubeconfig never comes here (``Kube.from_kubeconfig``).

    TLS needs certificate and key *files*. Left to itself the library writes inline
    ``*-data`` to files in /tmp that live as long as the process, and a kubeconfig holds
    a cluster-admin key. So the data goes to a private temporary directory just while
    the TLS context is built, and is gone when this returns.
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


def _private_file(folder: str, name: str, content: bytes) -> str:
    path = os.path.join(folder, name)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as out:
        out.write(content)
    return path


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
