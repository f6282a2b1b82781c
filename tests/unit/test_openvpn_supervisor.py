"""Supervisor against small real Python child processes (no mocks of subprocess or signals).

The central property: a new child starts only after the old one has exited. Children write
`start`/`term`/`exit` lines with their own CLOCK_MONOTONIC timestamps (system-wide on Linux),
so the test compares what the processes themselves saw.
"""

from __future__ import annotations

import asyncio
import os
import random
import signal
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from agent.openvpn.supervisor import Supervisor, backoff_delay
from vpnctl.kube.clock import ManualClock

CHILD = r"""
import os, signal, subprocess, sys, time

EV = os.environ["EV"]

def rec(kind, extra=""):
    fd = os.open(EV, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    os.write(fd, f"{kind} {time.monotonic():.6f} {os.getpid()} {extra}\n".encode())
    os.close(fd)

args = sys.argv[1:]
opt = {args[i]: args[i + 1] for i in range(0, len(args), 2)}
term_delay = float(opt.get("--term-delay", "0"))
if opt.get("--ignore-term") == "1":
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
else:
    def on_term(signum, frame):
        rec("term")
        time.sleep(term_delay)
        rec("exit")
        os._exit(0)
    signal.signal(signal.SIGTERM, on_term)
if opt.get("--grandchild") == "1":
    gc = subprocess.Popen(["sleep", "60"])
    rec("grandchild", str(gc.pid))
if "--print" in opt:
    print(opt["--print"], flush=True)
rec("start")
# A per-run counter lets a test script different behaviour for each attempt.
counter = os.environ.get("COUNTER")
n = 0
if counter:
    try:
        n = int(open(counter).read() or "0")
    except FileNotFoundError:
        n = 0
    open(counter, "w").write(str(n + 1))
healthy_on = int(opt.get("--healthy-on-run", "-1"))
if n == healthy_on:
    time.sleep(float(opt.get("--healthy-for", "0")))
    rec("exit")
    sys.exit(int(opt.get("--code", "0")))
if "--exit-after" in opt:
    time.sleep(float(opt["--exit-after"]))
    rec("exit")
    sys.exit(int(opt.get("--code", "0")))
while True:
    time.sleep(3600)
"""


class Child:
    def __init__(self, tmp_path: Path) -> None:
        self.script = tmp_path / "child.py"
        self.script.write_text(CHILD)
        self.events_path = tmp_path / "events"
        self.counter = tmp_path / "counter"
        self.env = {
            "EV": str(self.events_path),
            "COUNTER": str(self.counter),
            "PATH": "/usr/bin:/bin",
        }

    def argv(self, *opts: str) -> list[str]:
        return [sys.executable, str(self.script), *opts]

    def events(self) -> list[tuple[str, float, int, str]]:
        if not self.events_path.exists():
            return []
        out = []
        for line in self.events_path.read_text().splitlines():
            kind, ts, pid, *extra = line.split(" ")
            out.append((kind, float(ts), int(pid), " ".join(extra).strip()))
        return out

    def of(self, kind: str) -> list[tuple[float, int]]:
        return [(ts, pid) for k, ts, pid, _ in self.events() if k == kind]


async def eventually(pred: Callable[[], bool], *, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not pred():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        await asyncio.sleep(0.02)


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (FileNotFoundError, ProcessLookupError):
        return False
    return state not in ("Z", "X")


@pytest.fixture
def child(tmp_path: Path) -> Child:
    return Child(tmp_path)


class Recorder:
    def __init__(self) -> None:
        self.starts: list[tuple[float, int]] = []
        self.exits: list[tuple[float, int]] = []

    def on_start(self, pid: int) -> None:
        self.starts.append((time.monotonic(), pid))

    def on_exit(self, rc: int) -> None:
        self.exits.append((time.monotonic(), rc))


def _supervisor(child: Child, rec: Recorder, *opts: str, **kw: object) -> Supervisor:
    params: dict[str, object] = {
        "backoff_initial": 0.05,
        "backoff_max": 0.2,
        "jitter": 0.0,
        "stop_timeout": 3.0,
        "healthy_after": 10.0,
    }
    params.update(kw)
    return Supervisor(
        name="test-child",
        argv=child.argv(*opts),
        rng=random.Random(1),
        env=child.env,
        on_start=rec.on_start,
        on_exit=rec.on_exit,
        **params,  # type: ignore[arg-type]
    )


async def test_crashing_child_is_restarted_with_growing_capped_backoff(child: Child) -> None:
    rec = Recorder()
    sup = _supervisor(child, rec, "--exit-after", "0", "--code", "3")
    task = asyncio.create_task(sup.run())
    try:
        await eventually(lambda: len(rec.starts) >= 5, timeout=20, what="5 starts")
    finally:
        await sup.stop()
        await task
    assert sup.restarts >= 4
    assert [rc for _, rc in rec.exits[:4]] == [3, 3, 3, 3]
    assert sup.last_returncode is not None
    expected = [0.05, 0.1, 0.2, 0.2]  # doubling, capped at backoff_max=0.2, no jitter
    for i, delay in enumerate(expected):
        gap = rec.starts[i + 1][0] - rec.exits[i][0]
        assert gap >= delay * 0.95, (i, gap, delay)
    assert not sup.running
    assert sup.pid is None


async def test_restart_waits_for_the_old_process_to_exit(child: Child) -> None:
    rec = Recorder()
    sup = _supervisor(child, rec, "--term-delay", "1.0")
    task = asyncio.create_task(sup.run())
    try:
        first_pid = await sup.wait_started(timeout=10)
        await eventually(lambda: len(child.of("start")) == 1, timeout=10, what="child start")
        t0 = time.monotonic()
        await sup.restart()
        took = time.monotonic() - t0
        second_pid = await sup.wait_started(timeout=10)
        await eventually(lambda: len(child.of("start")) == 2, timeout=10, what="second start")
    finally:
        await sup.stop()
        await task
    assert first_pid != second_pid
    assert took >= 1.0  # restart() really waited for the slow exit
    ((term_ts, term_pid),) = child.of("term")[:1]
    exits = dict((pid, ts) for ts, pid in child.of("exit"))
    starts = dict((pid, ts) for ts, pid in child.of("start"))
    assert term_pid == first_pid
    assert exits[first_pid] - term_ts >= 1.0
    assert starts[second_pid] > exits[first_pid], "new process started before the old one exited"
    assert sup.restarts == 1


async def test_concurrent_restarts_never_overlap_processes(child: Child) -> None:
    rec = Recorder()
    sup = _supervisor(child, rec, "--term-delay", "0.3")
    task = asyncio.create_task(sup.run())
    try:
        await sup.wait_started(timeout=10)
        await eventually(lambda: len(child.of("start")) == 1, timeout=10, what="child start")
        await asyncio.gather(sup.restart(), sup.restart(), sup.restart())
        await eventually(lambda: len(rec.starts) == 4, timeout=10, what="4 starts")
        # The last one lives until stop(), so it gets to record its start.
        await eventually(lambda: len(child.of("start")) >= 2, timeout=10, what="last start")
    finally:
        await sup.stop()
        await task
    assert sup.restarts == 3
    # Supervisor side: each start comes after the previous process was reaped.
    for i in range(3):
        assert rec.starts[i + 1][0] >= rec.exits[i][0]
    # Child side (a child killed before it installed its handler records neither line):
    # on one time line, at most one process is ever alive.
    timeline = sorted(
        [(ts, 1) for ts, _ in child.of("start")] + [(ts, -1) for ts, _ in child.of("exit")]
    )
    assert len(timeline) >= 4
    alive = 0
    for _, delta in timeline:
        alive += delta
        assert 0 <= alive <= 1, timeline


async def test_stop_sigkills_a_child_that_ignores_sigterm(child: Child) -> None:
    rec = Recorder()
    sup = _supervisor(child, rec, "--ignore-term", "1", stop_timeout=0.3)
    task = asyncio.create_task(sup.run())
    pid = await sup.wait_started(timeout=10)
    await eventually(lambda: len(child.of("start")) == 1, timeout=10, what="child start")
    t0 = time.monotonic()
    await sup.stop()
    await asyncio.wait_for(task, timeout=5)
    assert 0.3 <= time.monotonic() - t0 < 3
    assert sup.last_returncode == -signal.SIGKILL
    assert not _alive(pid)
    assert child.of("exit") == []


async def test_child_has_its_own_group_and_stop_kills_the_group(child: Child) -> None:
    rec = Recorder()
    sup = _supervisor(child, rec, "--grandchild", "1")
    task = asyncio.create_task(sup.run())
    try:
        pid = await sup.wait_started(timeout=10)
        await eventually(lambda: bool(child.of("grandchild")), timeout=10, what="grandchild")
        assert os.getpgid(pid) == pid
        assert os.getpgid(pid) != os.getpgid(0)
        grandchild = int(next(e for k, _, _, e in child.events() if k == "grandchild"))
        assert _alive(grandchild)
        assert os.getpgid(grandchild) == pid
    finally:
        await sup.stop()
        await task
    await eventually(lambda: not _alive(grandchild), timeout=5, what="grandchild gone")
    assert not _alive(pid)


async def test_backoff_resets_after_the_process_stayed_healthy(child: Child) -> None:
    rec = Recorder()
    # Runs 0-4 exit at once (delays 0.05, 0.1, 0.2, 0.4, 0.8), run 5 stays up 2 s with
    # healthy_after=1.5, so the delay before run 6 is back to 0.05 instead of 1.6. (A quick
    # run must stay under healthy_after even on a loaded machine, hence the wide margin.)
    sup = _supervisor(
        child,
        rec,
        "--exit-after",
        "0",
        "--code",
        "1",
        "--healthy-on-run",
        "5",
        "--healthy-for",
        "2.0",
        backoff_max=5.0,
        healthy_after=1.5,
    )
    task = asyncio.create_task(sup.run())
    try:
        await eventually(lambda: len(rec.starts) >= 7, timeout=30, what="7 starts")
    finally:
        await sup.stop()
        await task
    gaps = [rec.starts[i + 1][0] - rec.exits[i][0] for i in range(6)]
    assert gaps[4] >= 0.8 * 0.95, gaps
    assert gaps[5] < 0.8, gaps  # reset: not 1.6
    assert rec.exits[5][0] - rec.starts[5][0] >= 2.0


def test_backoff_delay_is_bounded_capped_and_seeded() -> None:
    rng = random.Random(42)
    for failures in range(1, 12):
        base = min(10.0, 0.2 * 2 ** (failures - 1))
        for _ in range(500):
            d = backoff_delay(failures=failures, initial=0.2, maximum=10.0, jitter=0.2, rng=rng)
            assert base * 0.8 - 1e-9 <= d <= min(10.0, base * 1.2) + 1e-9
    seq = [
        backoff_delay(failures=3, initial=0.2, maximum=10, jitter=0.2, rng=random.Random(7))
        for _ in range(3)
    ]
    assert len(set(seq)) == 1  # same seed, same draw
    r1, r2 = random.Random(1), random.Random(2)
    a = [backoff_delay(failures=2, initial=1, maximum=10, jitter=0.5, rng=r1) for _ in range(20)]
    b = [backoff_delay(failures=2, initial=1, maximum=10, jitter=0.5, rng=r2) for _ in range(20)]
    assert a != b
    assert len(set(a)) > 10  # jitter really varies
    assert backoff_delay(failures=100, initial=1, maximum=10, jitter=0.0, rng=r1) == 10
    assert backoff_delay(failures=1, initial=0.2, maximum=10, jitter=0.0, rng=r1) == 0.2


async def test_output_is_appended_to_log_path(child: Child, tmp_path: Path) -> None:
    rec = Recorder()
    log = tmp_path / "child.log"
    log.write_text("previous run\n")
    sup = _supervisor(child, rec, "--print", "hello-from-child", log_path=str(log))
    task = asyncio.create_task(sup.run())
    try:
        await sup.wait_started(timeout=10)
        await eventually(lambda: "hello" in log.read_text(), timeout=10, what="first output")
        await sup.restart()
        await eventually(
            lambda: log.read_text().count("hello-from-child") == 2, timeout=10, what="output"
        )
    finally:
        await sup.stop()
        await task
    assert log.read_text().startswith("previous run\n")


async def test_missing_binary_backs_off_without_crashing(tmp_path: Path) -> None:
    starts: list[int] = []
    clock = ManualClock()  # backoff waits on it: time moves when the test says
    sup = Supervisor(
        name="missing",
        argv=[str(tmp_path / "no-such-binary")],
        rng=random.Random(3),
        backoff_initial=0.02,
        backoff_max=0.05,
        jitter=0.2,
        on_start=starts.append,
        clock=clock,
    )
    task = asyncio.create_task(sup.run())
    await eventually(lambda: len(clock.sleeps) == 1, timeout=5, what="the first backoff")
    clock.advance(clock.sleeps[0])
    await eventually(lambda: len(clock.sleeps) == 2, timeout=5, what="the second backoff")
    clock.advance(clock.sleeps[1])
    await eventually(lambda: len(clock.sleeps) == 3, timeout=5, what="the third backoff")
    first, second, third = clock.sleeps
    assert 0.016 <= first <= 0.024  # 0.02 s +-20 %
    assert 0.032 <= second <= 0.048  # doubled
    assert 0.04 <= third <= 0.05  # capped at 0.05 s, jitter included
    assert not task.done()
    assert not sup.running
    await sup.stop()
    await asyncio.wait_for(task, timeout=5)
    assert starts == []
    assert sup.pid is None


async def test_cancelling_run_terminates_the_child(child: Child) -> None:
    rec = Recorder()
    sup = _supervisor(child, rec)
    task = asyncio.create_task(sup.run())
    pid = await sup.wait_started(timeout=10)
    assert sup.running
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert not _alive(pid)
    assert not sup.running


async def test_stop_before_run_makes_run_return_and_restart_needs_run(child: Child) -> None:
    rec = Recorder()
    sup = _supervisor(child, rec)
    with pytest.raises(RuntimeError, match="needs an active run"):
        await sup.restart()
    await sup.stop()
    await asyncio.wait_for(sup.run(), timeout=5)
    assert rec.starts == []


def test_constructor_rejects_nonsense() -> None:
    with pytest.raises(ValueError, match="argv is empty"):
        Supervisor(name="x", argv=[], rng=random.Random())
    with pytest.raises(ValueError, match="jitter"):
        Supervisor(name="x", argv=["true"], rng=random.Random(), jitter=1.5)
    with pytest.raises(ValueError, match="backoff_initial"):
        Supervisor(name="x", argv=["true"], rng=random.Random(), backoff_initial=5, backoff_max=1)
