from vpnctl.lab.connectivity_table import (
    NodeRow,
    any_failed,
    cell,
    failures,
    format_latency,
    render,
    render_table,
    summary,
)
from vpnctl.lab.probe import ProbeResult

OK = ProbeResult(ok=True, latency_ms=2.14)
STREAM = ProbeResult(ok=True, latency_ms=250.0, bytes=4_000_000, rate=True)


def _row(name: str, ip: str, tunnel: str | None, *, kubelet: ProbeResult = OK,
         logs: ProbeResult = OK, webhook: ProbeResult = OK) -> NodeRow:  # fmt: skip
    return NodeRow(node=name, internal_ip=ip, tunnel_ip=tunnel, kubelet=kubelet, logs=logs,
                   exec=STREAM, port_forward=STREAM, webhook=webhook, top=OK)  # fmt: skip


def test_cells_read_like_the_spec() -> None:
    assert cell(ProbeResult(ok=True, latency_ms=2.14)) == "OK 2.1ms"
    assert cell(ProbeResult(ok=True)) == "OK"
    assert cell(ProbeResult(ok=False, error="timeout")) == "FAIL timeout"
    assert cell(ProbeResult(ok=False)) == "FAIL failed"
    assert cell(ProbeResult(ok=False, error="tls: bad\ncert")) == "FAIL tls: bad cert"


def test_latency_has_about_two_significant_digits() -> None:
    assert [format_latency(x) for x in (0.416, 2.14, 12.6, 153.2)] == [
        "0.42ms", "2.1ms", "13ms", "153ms",
    ]  # fmt: skip


def test_table_is_aligned_like_kubectl() -> None:
    rows = [
        _row("node-1", "198.19.0.11", "198.18.8.11"),
        _row("node-12", "198.19.0.22", None, kubelet=ProbeResult(ok=False, error="timeout")),
    ]
    assert render_table(rows).splitlines() == [
        "NODE      INTERNAL-IP   TUNNEL-IP     KUBELET        LOGS       EXEC        "
        "PORT-FORWARD   WEBHOOK    TOP",
        "node-1    198.19.0.11   198.18.8.11   OK 2.1ms       OK 2.1ms   OK 16MB/s   "
        "OK 16MB/s      OK 2.1ms   OK 2.1ms",
        "node-12   198.19.0.22   <none>        FAIL timeout   OK 2.1ms   OK 16MB/s   "
        "OK 16MB/s      OK 2.1ms   OK 2.1ms",
    ]


def test_all_ok_summary_and_no_failure() -> None:
    rows = [_row("node-1", "198.19.0.11", "198.18.8.11"), _row("node-2", "198.19.0.12", "x")]
    assert not any_failed(rows)
    assert failures(rows) == []
    assert summary(rows) == "2/2 nodes OK, 12/12 checks OK"


def test_any_fail_is_reported_and_named() -> None:
    bad = ProbeResult(ok=False, error="refused")
    rows = [
        _row("node-1", "198.19.0.11", "198.18.8.11", webhook=bad),
        _row("node-2", "198.19.0.12", "198.18.8.12", kubelet=bad, logs=bad),
    ]
    assert any_failed(rows)
    assert failures(rows) == [
        "node-1 WEBHOOK: refused", "node-2 KUBELET: refused", "node-2 LOGS: refused",
    ]  # fmt: skip
    assert summary(rows).startswith("0/2 nodes OK, 9/12 checks OK; FAIL: node-1 WEBHOOK: refused")
    text = render(rows)
    assert text.splitlines()[0].split() == ["NODE", "INTERNAL-IP", "TUNNEL-IP", "KUBELET",
                                            "LOGS", "EXEC", "PORT-FORWARD", "WEBHOOK",
                                            "TOP"]  # fmt: skip
    assert text.splitlines()[-1] == summary(rows)
    assert all(line == line.rstrip() for line in text.splitlines())


def test_empty_table_has_only_the_header() -> None:
    assert render_table([]) == (
        "NODE   INTERNAL-IP   TUNNEL-IP   KUBELET   LOGS   EXEC   PORT-FORWARD   WEBHOOK   TOP"
    )
    assert not any_failed([])


def test_streams_show_a_rate() -> None:
    assert cell(STREAM) == "OK 16MB/s"
    assert cell(ProbeResult(ok=True, latency_ms=2000.0, bytes=4_000_000, rate=True)) == (
        "OK 2.0MB/s"
    )
    assert cell(ProbeResult(ok=True, latency_ms=2000.0, bytes=400_000, rate=True)) == (
        "OK 0.20MB/s"
    )


def test_probe_result_round_trips_the_probe_json() -> None:
    text = '{"ok": false, "latency_ms": null, "error": "timeout", "bytes": 0}'
    assert ProbeResult.from_json(text) == ProbeResult(ok=False, error="timeout")
    ok = ProbeResult.from_json('{"ok": true, "latency_ms": 1.5, "error": null, "bytes": 2}')
    assert ok == ProbeResult(ok=True, latency_ms=1.5, bytes=2)
