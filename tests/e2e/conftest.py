"""The e2e tests run on the lab itself: `vpnctl lab up` once per test module.

Bringing the lab up costs about a minute (two control planes, vpnctl, the server pod,
three nodes), so a module shares one, brought up through the real CLI under a unique
prefix and state directory, and taken down by the CLI in `finally` even when a test
fails. A failed test gets the tail of the lab's logs in its report.

Talking to the lab from the test process: the root namespace has no route into the lab
(by design). kubectl runs under `ip netns exec`; quick HTTP checks run in a short-lived
thread that has `setns()`-ed into the namespace (`vpnctl.lab.dataplane.in_netns`).
"""

from __future__ import annotations

import os
import secrets
import ssl
import subprocess
import sys
import urllib.error
import urllib.request
from collections.abc import Generator, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from vpnctl.lab.dataplane import in_netns
from vpnctl.lab.lab_state import Lab
from vpnctl.testenv import BuildError, ensure_binaries

_HERE = Path(__file__).resolve().parent
_BUILT = pytest.StashKey[object]()
UP_TIMEOUT = 420
# Short node certificates, so that renewals happen while the tests run. The signer
# backdates notBefore by 5 minutes (clock skew) and agents renew at 2/3 of notBefore to
# notAfter: with 6m that is about 2 min 20 s after each certificate is issued.
NODE_CERT_LIFETIME = "6m"


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Build the Kubernetes binaries (the nodes' too) at collection time when an e2e
    test is selected, so a cold build (about 25 minutes) is not cut by a test's timeout."""
    if os.geteuid() == 0 and any(_HERE in Path(str(i.fspath)).parents for i in items):
        try:
            config.stash[_BUILT] = ensure_binaries(with_nodes=True)
        except BuildError as exc:
            config.stash[_BUILT] = exc


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(
    item: pytest.Item, call: pytest.CallInfo[None]
) -> Generator[None, pytest.TestReport, pytest.TestReport]:
    report = yield
    lab = _RUNNING.get(str(item.fspath))
    if report.failed and lab is not None:
        report.sections.append(("lab logs", _log_tails(lab.state)))
    return report


_RUNNING: dict[str, Lab] = {}


def _log_tails(state: Path, lines: int = 25) -> str:
    """The lab's own logs, and the service node's pod logs (the chart's controller
    replicas and the server pod: `<namespace>_<pod>_<uid>/<container>/<n>.log`)."""
    pods = state / "nodes" / "service-1" / "host" / "var" / "log" / "pods"
    parts = []
    for log in [*sorted((state / "logs").glob("*.log")), *sorted(pods.glob("*/*/*.log"))]:
        text = log.read_text(errors="replace").splitlines()[-lines:]
        parts.append(f"--- {log.relative_to(state)}\n" + "\n".join(text))
    return "\n".join(parts)


def vpnctl(*args: str, timeout: float = UP_TIMEOUT) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "vpnctl", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


@dataclass(frozen=True)
class LabRun:
    """A lab brought up by `vpnctl lab up` for this module, and what `up` printed."""

    lab: Lab
    args: list[str]  # --prefix P --state-dir S, for the other lab commands
    up: subprocess.CompletedProcess[str]
    root_before: tuple[str, str]  # the root namespace's routes and links before `up`


@pytest.fixture(scope="module")
def lab_run(request: pytest.FixtureRequest, pytestconfig: pytest.Config) -> Iterator[LabRun]:
    if os.geteuid() != 0:
        pytest.skip("the lab needs root for network namespaces")
    built = pytestconfig.stash.get(_BUILT, None)
    if isinstance(built, BuildError):
        raise built
    prefix = f"vt{secrets.token_hex(3)}"
    state = Path("/run/vpnctl-lab") / prefix  # short: unix socket paths live under it
    args = ["--prefix", prefix, "--state-dir", str(state)]
    root_before = root_net_state()
    try:
        up = vpnctl("lab", "up", "--nodes", "3", "--node-cert-lifetime", NODE_CERT_LIFETIME,
                    *args)  # fmt: skip
        if up.returncode != 0:
            tails = _log_tails(state) if state.exists() else ""
            pytest.fail(f"vpnctl lab up failed:\n{up.stdout}\n{up.stderr[-6000:]}\n{tails}")
        lab = Lab.open(state)
        _RUNNING[str(request.node.fspath)] = lab
        yield LabRun(lab=lab, args=args, up=up, root_before=root_before)
    finally:
        _RUNNING.pop(str(request.node.fspath), None)
        vpnctl("lab", "down", *args, timeout=120)


# --- HTTP from inside a namespace -------------------------------------------------------------


def api_get(lab: Lab, path: str, *, timeout: float = 3.0) -> tuple[int, bytes]:
    """GET PATH from the tenant apiserver as its admin, from inside P-api.

    (status, body); status 0 with the error text when there is no answer.
    """
    cert, key = lab.tenant_admin
    ctx = ssl.create_default_context(cafile=str(lab.tenant_ca))
    ctx.load_cert_chain(str(cert), str(key))

    def get() -> tuple[int, bytes]:
        try:
            with urllib.request.urlopen(
                f"{lab.tenant_url}{path}", timeout=timeout, context=ctx
            ) as r:
                return int(r.status), r.read()
        except urllib.error.HTTPError as e:
            return e.code, e.read()
        except (OSError, urllib.error.URLError) as e:
            return 0, f"{type(e).__name__}: {e}".encode()

    return in_netns(lab.plan.api_ns, get)


def kubelet_ok(lab: Lab, node: str, *, timeout: float = 3.0) -> bool:
    """The node's kubelet answers through the apiserver's node proxy (so through the tunnel)."""
    status, _ = api_get(lab, f"/api/v1/nodes/{node}/proxy/healthz", timeout=timeout)
    return status == 200


def root_net_state() -> tuple[str, str]:
    """The root namespace's routes (all tables) and link names: the lab must not touch them."""
    routes = subprocess.run(
        ["ip", "route", "show", "table", "all"], capture_output=True, text=True, check=True
    ).stdout
    links = subprocess.run(
        ["ip", "-o", "link", "show"], capture_output=True, text=True, check=True
    ).stdout
    return routes, "\n".join(sorted(line.split(":")[1] for line in links.splitlines()))
