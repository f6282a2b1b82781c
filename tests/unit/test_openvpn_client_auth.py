"""openvpn's >CLIENT: blocks read as authorisation requests, hostile ENV included."""

from __future__ import annotations

import pytest

from agent.openvpn.client_auth import MAX_ENV_LINES, ClientAuthRequest, ClientBlockReader


def feed(lines: list[str]) -> list[ClientAuthRequest]:
    reader = ClientBlockReader()
    out = []
    for line in lines:
        request = reader.feed(line.removeprefix(">CLIENT:"))
        if request is not None:
            out.append(request)
    return out


def connect(cid: int, kid: int, *env: str, kind: str = "CONNECT") -> list[str]:
    return [f"{kind},{cid},{kid}", *(f"ENV,{e}" for e in env), "ENV,END"]


def test_connect_and_reauth_blocks_become_requests() -> None:
    (a, b) = feed(
        connect(3, 0, "common_name=node-1", "tls_serial_0=255", "tls_serial_hex_0=ff", "n=1")
        + connect(3, 1, "common_name=node-1", "tls_serial_hex_0=00:ff", kind="REAUTH")
    )
    assert (a.kind, a.cid, a.kid, a.common_name, a.serial, a.problems) == (
        "CONNECT", 3, 0, "node-1", 255, ()
    )  # fmt: skip
    assert (b.kind, b.kid, b.serial) == ("REAUTH", 1, 255)


def test_other_blocks_are_swallowed_with_their_env() -> None:
    lines = [
        "ESTABLISHED,3", "ENV,common_name=node-1", "ENV,END",
        "ADDRESS,3,198.18.8.11,1",
        "DISCONNECT,3", "ENV,bytes_sent=1", "ENV,END",
        "CR_RESPONSE,3,0,YWJj", "ENV,common_name=node-1", "ENV,END",
    ]  # fmt: skip
    assert feed(lines) == []


@pytest.mark.parametrize(
    ("env", "serial"),
    [
        (["tls_serial_0=255", "tls_serial_hex_0=fe"], None),  # the two forms disagree
        (["tls_serial_0=0xff"], None),
        (["tls_serial_hex_0=zz"], None),
        ([], None),
        (["tls_serial_0=" + "9" * 61], None),
    ],
)
def test_serial_is_given_only_when_unambiguous(env: list[str], serial: int | None) -> None:
    (request,) = feed(connect(1, 0, "common_name=a", *env))
    assert request.serial == serial


def test_hostile_blocks_are_returned_with_their_problems() -> None:
    (dup,) = feed(connect(1, 0, "common_name=node-1", "common_name=vpnctl-apiserver"))
    assert dup.common_name == "node-1"
    assert dup.problems == ("ENV variable 'common_name' repeated",)
    # A block cut short by the next header is answered (as a problem), not lost.
    cut, whole = feed(["CONNECT,1,0", "ENV,common_name=a", *connect(2, 0, "common_name=b")])
    assert (cut.cid, cut.problems) == (
        1,
        ("the ENV block was cut short by another >CLIENT: header",),
    )
    assert (whole.cid, whole.problems) == (2, ())
    (big,) = feed(connect(1, 0, *(f"v{i}=x" for i in range(MAX_ENV_LINES + 5))))
    assert f"more than {MAX_ENV_LINES} ENV lines" in big.problems
    assert len(big.env) == MAX_ENV_LINES
    (odd,) = feed(connect(1, 0, "no-equals-sign", "common_name=a"))
    assert odd.problems
    assert "without name=value" in odd.problems[0]


def test_garbage_is_skipped() -> None:
    lines = ["ENV,common_name=a", "CONNECT,x,0", "ENV,common_name=a", "ENV,END", "WHAT,1"]
    assert feed(lines) == []
    # The request's repr never carries the ENV (it holds addresses and peer info).
    (request,) = feed(connect(1, 0, "common_name=a", "untrusted_ip=198.18.0.3"))
    assert "198.18.0.3" not in repr(request)
